#!/usr/bin/env python3
"""Reference AdamW steps, `torch.optim.AdamW` (issue 16).

A seeded f32 parameter [4, 5] and three seeded gradients; PyTorch's AdamW (lr 1e-3, betas
0.9/0.999, eps 1e-8, weight decay 0.05) run in float64 from them, and the parameter after each
step recorded, so our fused f32 step is checked against the exact answer.

Run: ~/.cache/visual-search/venv/bin/python tools/make_adamw_fixtures.py
"""
import os

import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "train", "tests", "fixtures")


def main():
    torch.manual_seed(16)
    p32 = torch.randn(4, 5)
    grads = [torch.randn(4, 5) * s for s in (1.0, 0.1, 3.0)]
    p = torch.nn.Parameter(p32.double().clone())
    opt = torch.optim.AdamW([p], lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
    tensors = {"param": p32}
    for i, g in enumerate(grads):
        tensors[f"grad{i}"] = g
        p.grad = g.double().clone()
        opt.step()
        tensors[f"param{i}"] = p.detach().float().clone()
    save_file(tensors, os.path.join(OUT, "adamw.safetensors"))


if __name__ == "__main__":
    main()
