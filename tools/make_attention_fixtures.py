#!/usr/bin/env python3
"""Reference output and gradient of multi-head self-attention from a packed QKV projection,
as `nn.MultiheadAttention` computes it inside OpenCLIP's ViT (issues 14 and 16).

Seeded f32 input `qkv` [3, 50, 3·4·16] (3 images, ViT-B/32's 50 tokens, 4 heads of 16: a
token's row is q | k | v, each [heads, head_dim]) and an output gradient `gy` [3, 50, 64]. The
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
BATCH, TOKENS, HEADS, HEAD_DIM = 3, 50, 4, 16


def attention(qkv):
    b, n, _ = qkv.shape
    q, k, v = qkv.reshape(b, n, 3, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, n, HEADS * HEAD_DIM)


def main():
    torch.manual_seed(14)
    qkv32 = torch.randn(BATCH, TOKENS, 3 * HEADS * HEAD_DIM) * 3.0
    gy32 = torch.randn(BATCH, TOKENS, HEADS * HEAD_DIM)
    qkv = qkv32.double().requires_grad_()
    y = attention(qkv)
    y.backward(gy32.double())
    save_file({"qkv": qkv32, "gy": gy32, "y": y.detach().float(), "gqkv": qkv.grad.float()},
              os.path.join(OUT, "attention.safetensors"), metadata={"heads": str(HEADS)})


if __name__ == "__main__":
    main()
