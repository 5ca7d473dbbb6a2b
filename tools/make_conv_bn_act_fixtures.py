#!/usr/bin/env python3
"""Reference outputs and gradients of a convolution + frozen batch norm + activation (issue 16).

Our CNNs train with frozen batch-norm statistics (`freeze_batchnorm`): PyTorch runs the batch norm
in eval mode while gamma and beta still train. We fold it into the convolution in a training pass
(weight · s, bias · s + t), so the fixture is PyTorch's unfolded composition — `F.conv2d`, then
`F.batch_norm(training=False)`, then (a ResNet block's tail) a residual, then the activation —
in float64 from float32 inputs, with the gradients of the input, the convolution's weight and
bias, gamma, beta and the residual. Cases: a 1x1 convolution before ReLU6 (EfficientNet-Lite's
expansion), a depthwise 3x3 stride 2 with TF "same" (asymmetric) padding before ReLU6, a 3x3
stride-2 stem with a convolution bias before ReLU, a 1x1 convolution whose batch norm is
followed by a residual and ReLU (ResNet's block tail), and 1x1 projections without an activation,
alone and with a residual (EfficientNet-Lite's inverted-residual tail).

Run: ~/.cache/visual-search/venv/bin/python tools/make_conv_bn_act_fixtures.py
"""
import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "model", "tests", "fixtures")
EPS = 1e-3

# name: (batch, c_in, h, w, c_out, kernel, stride, (top, bottom, left, right), groups, bias,
#        residual, activation)
CASES = {
    "expand_relu6": (3, 8, 7, 6, 12, 1, 1, (0, 0, 0, 0), 1, False, False, "relu6"),
    "depthwise3_s2_same_relu6": (2, 6, 9, 8, 6, 3, 2, (0, 1, 0, 1), 6, False, False, "relu6"),
    "stem3_s2_bias_relu": (2, 3, 11, 10, 8, 3, 2, (1, 1, 1, 1), 1, True, False, "relu"),
    "tail_residual_relu": (2, 6, 5, 7, 10, 1, 1, (0, 0, 0, 0), 1, False, True, "relu"),
    "project_identity": (2, 12, 6, 6, 5, 1, 1, (0, 0, 0, 0), 1, False, False, "identity"),
    "project_residual_identity": (2, 12, 6, 6, 5, 1, 1, (0, 0, 0, 0), 1, False, True, "identity"),
}
ACTIVATIONS = {"identity": lambda z: z, "relu": F.relu, "relu6": F.relu6}


def main():
    torch.manual_seed(16)
    tensors = {}
    meta = {}
    for name, (n, ci, h, w, co, k, s, pad, g, with_bias, with_residual, act) in CASES.items():
        # Drawn in f32 and widened, so the f64 reference is exact for the f32 inputs we store.
        x = (torch.randn(n, ci, h, w) * 2.0).double().requires_grad_()
        weight = torch.randn(co, ci // g, k, k).double().requires_grad_()
        bias = torch.randn(co).double().requires_grad_()
        gamma = (torch.randn(co) * 1.5).double().requires_grad_()
        beta = torch.randn(co).double().requires_grad_()
        mean = torch.randn(co).double()
        var = (torch.rand(co) * 1.5 + 0.5).double()
        top, bottom, left, right = pad
        y = F.conv2d(F.pad(x, (left, right, top, bottom)), weight, bias if with_bias else None,
                     stride=s, groups=g)
        y = F.batch_norm(y, mean, var, gamma, beta, training=False, eps=EPS)
        residual = torch.randn(y.shape).double().requires_grad_()
        if with_residual:
            y = y + residual
        z = ACTIVATIONS[act](y)
        gz = torch.randn(z.shape).double()
        z.backward(gz)
        stored = {"x": x, "weight": weight, "gamma": gamma, "beta": beta, "mean": mean,
                  "var": var, "gz": gz, "z": z}
        grads = {"gx": x, "gweight": weight, "ggamma": gamma, "gbeta": beta}
        if with_bias:
            stored["bias"] = bias
            grads["gbias"] = bias
        if with_residual:
            stored["residual"] = residual
            grads["gresidual"] = residual
        for key, value in stored.items():
            tensors[f"{name}.{key}"] = value.detach().float().contiguous()
        for key, value in grads.items():
            tensors[f"{name}.{key}"] = value.grad.float().contiguous()
        meta[name] = {"stride": s, "padding": [[top, bottom], [left, right]], "groups": g,
                      "bias": with_bias, "residual": with_residual, "activation": act,
                      "epsilon": EPS}
    save_file(tensors, os.path.join(OUT, "conv_bn_act.safetensors"),
              metadata={"cases": json.dumps(meta)})


if __name__ == "__main__":
    main()
