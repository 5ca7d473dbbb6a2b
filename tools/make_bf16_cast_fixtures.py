#!/usr/bin/env python3
"""Reference outputs and gradients of a convolution and a matmul under PyTorch's CPU bf16
autocast, the rule `train_ops::bf16_casts` follows on tch and the GPU backends (issue 16): f32
inputs cast to bf16, the product in bf16 (f32 sums), a bf16 result read back as f32; the
backward takes the bf16 gradient through the same products and returns f32 gradients.

Seeded f32 tensors: a 3×3 convolution (x [2, 8, 9, 9], weight [6, 8, 3, 3], bias [6], stride 1,
padding 1) with an output gradient `conv_gy`, and a product a [40, 64] · b [64, 24] with `mm_gy`.
Saved: the inputs, the autocast outputs (as f32) and gradients, and the same in plain f32, so
the test can tell that bf16 really ran.

Run: ~/.cache/visual-search/venv/bin/python tools/make_bf16_cast_fixtures.py
"""
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "model", "tests", "fixtures")


def run(fn, inputs, gy, autocast):
    leaves = [t.clone().requires_grad_() for t in inputs]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = fn(*leaves)
    y = y.float()
    y.backward(gy)
    return y.detach(), [t.grad for t in leaves]


def main():
    torch.manual_seed(16)
    x = torch.randn(2, 8, 9, 9)
    w = torch.randn(6, 8, 3, 3) * 0.2
    b = torch.randn(6)
    conv_gy = torch.randn(2, 6, 9, 9)
    a = torch.randn(40, 64)
    m = torch.randn(64, 24) * 0.2
    mm_gy = torch.randn(40, 24)
    out = {"conv_x": x, "conv_w": w, "conv_b": b, "conv_gy": conv_gy,
           "mm_a": a, "mm_b": m, "mm_gy": mm_gy}

    def conv(x, w, b):
        return F.conv2d(x, w, b, stride=1, padding=1)

    for tag, autocast in [("bf16", True), ("f32", False)]:
        y, (gx, gw, gb) = run(conv, [x, w, b], conv_gy, autocast)
        out.update({f"conv_y_{tag}": y, f"conv_gx_{tag}": gx, f"conv_gw_{tag}": gw,
                    f"conv_gb_{tag}": gb})
        y, (ga, gm) = run(torch.matmul, [a, m], mm_gy, autocast)
        out.update({f"mm_y_{tag}": y, f"mm_ga_{tag}": ga, f"mm_gb_{tag}": gm})
    assert out["conv_y_bf16"].dtype == torch.float32
    save_file(out, os.path.join(OUT, "bf16_casts.safetensors"))


if __name__ == "__main__":
    main()
