#!/usr/bin/env python3
"""Reference output and gradients of LayerNorm over the last dimension, `F.layer_norm` (issue 16).

Seeded f32 inputs: `x` [2, 3, 5, 96] with a large per-row offset (so a one-pass variance would
lose precision), `gamma`, `beta` and an output gradient `gy`; the reference output and the
gradients with respect to `x`, `gamma` and `beta` are computed in float64 from them, so our f32
kernels are checked against the exact answer. Epsilon 1e-6 (ConvNeXt's).

Run: ~/.cache/visual-search/venv/bin/python tools/make_layer_norm_fixtures.py
"""
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "model", "tests", "fixtures")
EPS = 1e-6


def main():
    torch.manual_seed(16)
    x32 = torch.randn(2, 3, 5, 96) * 2.0 + torch.randn(2, 3, 5, 1) * 50.0
    gamma32 = torch.randn(96)
    beta32 = torch.randn(96)
    gy32 = torch.randn(x32.shape)
    x = x32.double().requires_grad_()
    gamma = gamma32.double().requires_grad_()
    beta = beta32.double().requires_grad_()
    y = F.layer_norm(x, (96,), gamma, beta, EPS)
    y.backward(gy32.double())
    save_file({"x": x32, "gamma": gamma32, "beta": beta32, "gy": gy32,
               "y": y.detach().float(), "gx": x.grad.float(), "ggamma": gamma.grad.float(),
               "gbeta": beta.grad.float()},
              os.path.join(OUT, "layer_norm.safetensors"), metadata={"epsilon": str(EPS)})


if __name__ == "__main__":
    main()
