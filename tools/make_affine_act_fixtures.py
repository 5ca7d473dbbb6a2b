#!/usr/bin/env python3
"""Reference values and gradients of a per-channel affine map + activation (issue 16).

Checks the gradient before the activation that a convolution with a folded frozen batch norm
computes from its output (`tests/affine_act_parity.rs`).

`act(x * scale[c] + shift[c])` over NCHW — a frozen batch norm and the ReLU/ReLU6 after it — for
identity, `F.relu` and `F.relu6` (hardtanh), in float64 from float32 inputs, so our fused f32
kernel is checked against PyTorch's own derivative rules (ReLU passes where the output is > 0,
hardtanh strictly inside (0, 6)).

Run: ~/.cache/visual-search/venv/bin/python tools/make_affine_act_fixtures.py
"""
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "model", "tests", "fixtures")
ACTIVATIONS = {"identity": lambda z: z, "relu": F.relu, "relu6": F.relu6}


def main():
    torch.manual_seed(16)
    n, c, h, w = 3, 5, 6, 7
    x32 = torch.randn(n, c, h, w) * 4.0
    scale32 = torch.randn(c) * 1.5
    shift32 = torch.randn(c) * 2.0
    gy32 = torch.randn(n, c, h, w)
    tensors = {"x": x32, "scale": scale32, "shift": shift32, "gy": gy32}
    for name, act in ACTIVATIONS.items():
        x = x32.double().requires_grad_()
        scale = scale32.double().requires_grad_()
        shift = shift32.double().requires_grad_()
        y = act(x * scale.view(1, c, 1, 1) + shift.view(1, c, 1, 1))
        y.backward(gy32.double())
        tensors[f"{name}.y"] = y.detach().float()
        tensors[f"{name}.gx"] = x.grad.float()
        tensors[f"{name}.gscale"] = scale.grad.float()
        tensors[f"{name}.gshift"] = shift.grad.float()
    save_file({k: v.contiguous() for k, v in tensors.items()},
              os.path.join(OUT, "affine_act.safetensors"))


if __name__ == "__main__":
    main()
