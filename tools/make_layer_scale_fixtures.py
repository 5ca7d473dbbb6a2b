#!/usr/bin/env python3
"""Reference values and gradients of ConvNeXt's layer scale and residual sum (timm's
`ConvNeXtBlock`: `shortcut + (x * gamma).permute(0, 3, 1, 2)`), for `train_ops::
layer_scale_residual` (issue 16).

`x` is the MLP's channels-last output `[n, h, w, c]`, `residual` the block's NCHW input; the
reference is computed in float64 from the float32 inputs. 30 pixels per image, so the NCHW
kernel's tiles of 16 end with a partial one.

Run: ~/.cache/visual-search/venv/bin/python tools/make_layer_scale_fixtures.py
"""
import os

import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "model", "tests", "fixtures")


def main():
    torch.manual_seed(16)
    n, h, w, c = 2, 5, 6, 8
    x32 = torch.randn(n, h, w, c)
    gamma32 = torch.randn(c)
    residual32 = torch.randn(n, c, h, w)
    gy32 = torch.randn(n, c, h, w)
    x, gamma, residual = (t.double().requires_grad_() for t in (x32, gamma32, residual32))
    y = residual + (x * gamma).permute(0, 3, 1, 2)
    y.backward(gy32.double())
    save_file(
        {
            "x": x32,
            "gamma": gamma32,
            "residual": residual32,
            "gy": gy32,
            "y": y.detach().float().contiguous(),
            "gx": x.grad.float(),
            "ggamma": gamma.grad.float(),
            "gresidual": residual.grad.float(),
        },
        os.path.join(OUT, "layer_scale.safetensors"),
    )


if __name__ == "__main__":
    main()
