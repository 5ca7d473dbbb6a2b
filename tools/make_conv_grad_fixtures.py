#!/usr/bin/env python3
"""Reference outputs and gradients of 2-D convolutions for our convolution kernels (issues 14, 16).

For each case below — the convolution shapes our backbones train (1x1 pointwise, depthwise 3x3 and
5x5 with TF "same" asymmetric padding at stride 2, depthwise 7x7, a grouped-by-one k x k stem,
patchify 4x4 stride 4, a dilated 3x3) — it draws seeded `x`, `weight` and an output gradient `gy`,
runs PyTorch's convolution (asymmetric padding as an explicit `F.pad` first, as timm's
`Conv2dSame` does) and records `gy`'s gradients with respect to `x` and `weight` in float64, so
the fixture is the exact answer and our f32 kernels are checked against it within 1e-5 relative.
For the forward kernels it also records a seeded `bias` and the output `conv + bias` as it is
(`y`), after ReLU (`y_relu`) and after ReLU6 (`y_relu6`), and the bias's gradient (`gb`).

Run: ~/.cache/visual-search/venv/bin/python tools/make_conv_grad_fixtures.py
"""
import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "model", "tests", "fixtures")

# name: (batch, c_in, h, w, c_out, kernel, stride, (top, bottom, left, right), dilation, groups)
CASES = {
    "pointwise": (3, 8, 7, 6, 12, 1, 1, (0, 0, 0, 0), 1, 1),
    "depthwise3_s2_same": (2, 6, 9, 8, 6, 3, 2, (1, 1, 0, 1), 1, 6),
    "depthwise5_s1": (2, 5, 8, 9, 5, 5, 1, (2, 2, 2, 2), 1, 5),
    "depthwise7": (2, 4, 10, 10, 4, 7, 1, (3, 3, 3, 3), 1, 4),
    "stem3_s2_same": (2, 3, 11, 10, 8, 3, 2, (0, 1, 0, 1), 1, 1),
    "patchify4_s4": (2, 3, 8, 12, 6, 4, 4, (0, 0, 0, 0), 1, 1),
    "dilated3": (2, 4, 9, 9, 5, 3, 1, (2, 2, 2, 2), 2, 1),
    "pointwise_s2": (2, 6, 7, 7, 4, 1, 2, (0, 0, 0, 0), 1, 1),
    # More channels than one 16-lane block, and not a multiple of it; odd sizes.
    "depthwise5_s2_20ch": (2, 20, 13, 11, 20, 5, 2, (1, 2, 1, 2), 1, 20),
    # Stride 1 (its input gradient is a correlation with the flipped kernel), dilated, with
    # uneven padding and two blocks of channels.
    "depthwise3_d2_20ch": (3, 20, 9, 10, 20, 3, 1, (2, 1, 2, 2), 2, 20),
}


def main():
    torch.manual_seed(16)
    tensors = {}
    meta = {}
    for name, (n, ci, h, w, co, k, s, pad, d, g) in CASES.items():
        # Drawn in f32 and widened, so the f64 reference is exact for the f32 inputs we store.
        x = torch.randn(n, ci, h, w).double().requires_grad_()
        weight = torch.randn(co, ci // g, k, k).double().requires_grad_()
        top, bottom, left, right = pad
        y = F.conv2d(F.pad(x, (left, right, top, bottom)), weight, stride=s, dilation=d, groups=g)
        gy = torch.randn(y.shape).double()
        y.backward(gy)
        bias = torch.randn(co).double()
        y_bias = y.detach() + bias.view(1, -1, 1, 1)
        # The bias's gradient, from PyTorch's own convolution with the bias.
        bias_leaf = bias.clone().requires_grad_()
        F.conv2d(F.pad(x.detach(), (left, right, top, bottom)), weight.detach(), bias_leaf,
                 stride=s, dilation=d, groups=g).backward(gy)
        tensors[f"{name}.gb"] = bias_leaf.grad.float().contiguous()
        tensors[f"{name}.bias"] = bias.float().contiguous()
        tensors[f"{name}.y"] = y_bias.float().contiguous()
        tensors[f"{name}.y_relu"] = F.relu(y_bias).float().contiguous()
        tensors[f"{name}.y_relu6"] = F.relu6(y_bias).float().contiguous()
        for key, value in (("x", x), ("weight", weight), ("gy", gy)):
            tensors[f"{name}.{key}"] = value.detach().float().contiguous()
        tensors[f"{name}.gx"] = x.grad.float().contiguous()
        tensors[f"{name}.gw"] = weight.grad.float().contiguous()
        meta[name] = {"stride": s, "padding": [[top, bottom], [left, right]], "dilation": d,
                      "groups": g}
    save_file(tensors, os.path.join(OUT, "conv_grad.safetensors"),
              metadata={"cases": json.dumps(meta)})


if __name__ == "__main__":
    main()
