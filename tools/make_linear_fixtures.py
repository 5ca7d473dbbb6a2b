#!/usr/bin/env python3
"""Reference outputs and gradients of a linear layer, `F.linear` then exact GELU (issues 14, 16).

Seeded f32 inputs (`x` [37, 24], `weight` stored as burn keeps it, [d_in, d_out] = [24, 40],
`bias` [40], an output gradient `gy` [37, 40]); the reference `y = x · weight + bias`,
`y_gelu = gelu(y)` and the gradients `gx`, `gw`, `gb` of `sum(gelu(y) * gy)` are computed in
float64 from them, so our f32 kernels are checked against the exact answer.

Run: ~/.cache/visual-search/venv/bin/python tools/make_linear_fixtures.py
"""
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "model", "tests", "fixtures")


def main():
    torch.manual_seed(14)
    x = torch.randn(37, 24)
    weight = torch.randn(24, 40) / 5.0
    bias = torch.randn(40)
    gy = torch.randn(37, 40)
    xd, wd, bd = (t.double().requires_grad_() for t in (x, weight, bias))
    y = F.linear(xd, wd.t(), bd)
    (F.gelu(y) * gy.double()).sum().backward()
    save_file({"x": x, "weight": weight.contiguous(), "bias": bias, "y": y.detach().float(),
               "y_gelu": F.gelu(y).detach().float(), "gy": gy, "gx": xd.grad.float(),
               "gw": wd.grad.float(), "gb": bd.grad.float()},
              os.path.join(OUT, "linear.safetensors"))


if __name__ == "__main__":
    main()
