#!/usr/bin/env python3
"""Reference loss and gradients of sub-centre ArcFace with dynamic margins (issue 5).

The PyTorch code below is the Google Landmark 2020 winners' `ArcMarginProduct_subcenter` +
`ArcFaceLossAdaptiveMargin` (the challenge solution's head) with the SPEC margin formula. For
seeded features, weights, labels and class counts it records the loss and the gradients with
respect to the features and to W.

Run: ~/.cache/visual-search/venv/bin/python tools/make_arcface_fixtures.py
"""
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "model", "tests", "fixtures")


class ArcMarginProductSubcenter(torch.nn.Module):
    def __init__(self, in_features, out_features, k=3):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.FloatTensor(out_features * k, in_features))
        stdv = 1.0 / math.sqrt(self.weight.size(1))
        self.weight.data.uniform_(-stdv, stdv)
        self.k = k
        self.out_features = out_features

    def forward(self, features):
        cosine_all = F.linear(F.normalize(features), F.normalize(self.weight))
        cosine_all = cosine_all.view(-1, self.out_features, self.k)
        cosine, _ = torch.max(cosine_all, dim=2)
        return cosine


def arcface_adaptive_margin_loss(logits, labels, margins, n_classes, s=30.0):
    ms = margins[labels.numpy()]
    cos_m = torch.from_numpy(np.cos(ms)).float()
    sin_m = torch.from_numpy(np.sin(ms)).float()
    th = torch.from_numpy(np.cos(math.pi - ms)).float()
    mm = torch.from_numpy(np.sin(math.pi - ms) * ms).float()
    onehot = F.one_hot(labels, n_classes).float()
    cosine = logits.float()
    sine = torch.sqrt(1.0 - torch.pow(cosine, 2))
    phi = cosine * cos_m.view(-1, 1) - sine * sin_m.view(-1, 1)
    phi = torch.where(cosine > th.view(-1, 1), phi, cosine - mm.view(-1, 1))
    output = (onehot * phi) + ((1.0 - onehot) * cosine)
    output = output * s
    return (-F.log_softmax(output, dim=-1) * onehot).sum(-1).mean()


def margins_from_counts(counts, m=0.45, m_min=0.05):
    t = np.power(counts.astype(np.float64), -0.25)
    return (t - t.min()) / (t.max() - t.min()) * m + m_min


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    classes, k, dim, batch = 7, 3, 16, 10
    head = ArcMarginProductSubcenter(dim, classes, k)
    features = torch.randn(batch, dim, requires_grad=True)
    # Make two samples nearly aligned with a class row so the `cos <= cos(pi - m)` branch and
    # large cosines both occur.
    with torch.no_grad():
        features[0] = -head.weight[2 * k] * 5.0
        features[1] = head.weight[4 * k + 1] * 3.0 + 0.01 * torch.randn(dim)
    labels = torch.tensor([2, 4, 0, 1, 3, 5, 6, 2, 4, 1])
    counts = np.array([50, 3, 12, 7, 100, 1, 20])
    margins = margins_from_counts(counts)
    loss = arcface_adaptive_margin_loss(head(features), labels, margins, classes)
    loss.backward()
    save_file({
        "features": features.detach(), "weight": head.weight.detach(),
        "labels": labels, "counts": torch.from_numpy(counts),
        "margins": torch.from_numpy(margins), "loss": loss.detach().reshape(1),
        "grad_features": features.grad, "grad_weight": head.weight.grad,
    }, os.path.join(OUT, "arcface_subcenter.safetensors"))
    print("loss", loss.item())


if __name__ == "__main__":
    main()
