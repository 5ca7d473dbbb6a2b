#!/usr/bin/env python3
"""Reference output and gradient of multi-head self-attention from a packed QKV projection,
as `nn.MultiheadAttention` computes it inside OpenCLIP's ViT (issues 14 and 16).

Seeded f32 input `qkv` [3, 50, 3·4·16] (3 images, ViT-B/32's 50 tokens, 4 heads of 16: a
token's row is q | k | v, each [heads, head_dim]) and an output gradient `gy` [3, 50, 64]
(`attention.safetensors`); and one image with 2 heads of 64, the head size of every OpenCLIP
ViT, which takes the AVX-512 kernel (`attention_head64.safetensors`). The
reference `F.scaled_dot_product_attention` output, merged back to [3, 50, 64], and the gradient
with respect to `qkv` are computed in float64, so our f32 kernels are checked against the exact
answer. The scores are made large enough (×3) for the softmax to be far from uniform.

Run: ~/.cache/visual-search/venv/bin/python tools/make_attention_fixtures.py
"""
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "model", "tests", "fixtures")
# (file, images, tokens, heads, head size)
CASES = [("attention.safetensors", 3, 50, 4, 16), ("attention_head64.safetensors", 1, 50, 2, 64)]


def attention(qkv, heads, head_dim):
    b, n, _ = qkv.shape
    q, k, v = qkv.reshape(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, n, heads * head_dim)


def main():
    for name, batch, tokens, heads, head_dim in CASES:
        torch.manual_seed(14)
        qkv32 = torch.randn(batch, tokens, 3 * heads * head_dim) * 3.0
        gy32 = torch.randn(batch, tokens, heads * head_dim)
        qkv = qkv32.double().requires_grad_()
        y = attention(qkv, heads, head_dim)
        y.backward(gy32.double())
        save_file({"qkv": qkv32, "gy": gy32, "y": y.detach().float(), "gqkv": qkv.grad.float()},
                  os.path.join(OUT, name), metadata={"heads": str(heads)})


if __name__ == "__main__":
    main()
