#!/usr/bin/env python3
"""Reference values and gradient of exact (erf) GELU, `F.gelu` (issue 16).

Inputs span [-10, 10] evenly plus normal draws (the range activations take), in float32; the
reference is computed in float64 from them, so our f32 kernel is checked against the exact
function.

Run: ~/.cache/visual-search/venv/bin/python tools/make_gelu_fixtures.py
"""
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "model", "tests", "fixtures")


def main():
    torch.manual_seed(16)
    x32 = torch.cat([torch.linspace(-10.0, 10.0, 2001), torch.randn(2000) * 3.0])
    gy32 = torch.randn(x32.shape)
    x = x32.double().requires_grad_()
    y = F.gelu(x)
    y.backward(gy32.double())
    save_file({"x": x32, "gy": gy32, "y": y.detach().float(), "gx": x.grad.float()},
              os.path.join(OUT, "gelu.safetensors"))


if __name__ == "__main__":
    main()
