#!/usr/bin/env python3
"""Reference outputs of a linear layer, `F.linear` then exact GELU (issue 14).

Seeded f32 inputs (`x` [37, 24], `weight` stored as burn keeps it, [d_in, d_out] = [24, 40],
`bias` [40]); the reference `y = x · weight + bias` and `y_gelu = gelu(y)` are computed in
float64 from them, so our f32 kernel is checked against the exact answer.

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
    y = F.linear(x.double(), weight.double().t(), bias.double())
    save_file({"x": x, "weight": weight.contiguous(), "bias": bias, "y": y.float(),
               "y_gelu": F.gelu(y).float()},
              os.path.join(OUT, "linear.safetensors"))


if __name__ == "__main__":
    main()
