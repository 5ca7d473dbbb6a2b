#!/usr/bin/env python3
"""Reference values for mAP@k, R@1 and mAP@R (issue 4).

Two references on the same seeded embeddings:
  * a direct implementation of the competition formula (SPEC "Metric"): AP@k = (1/GTP) * sum of
    precision@i at relevant ranks i <= k, GTP = gallery items with the query's label (not capped),
    a query whose label is absent from the gallery scores 0 and counts; ranking by inner product,
    ties broken by the lower gallery index;
  * pytorch-metric-learning's AccuracyCalculator (mean_average_precision, precision_at_1,
    mean_average_precision_at_r) with k=1000, which leaves queries without any relevant gallery
    item out of its means.
Cases: `main` (continuous values, some query labels absent from the gallery, a label with more
items than k=5 so GTP > k matters) and `ties` (duplicated gallery rows and coarse values).

Run: ~/.cache/visual-search/venv/bin/python tools/make_metric_fixtures.py
"""
import json
import os

import numpy as np
import torch
from safetensors.numpy import save_file
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN
from pytorch_metric_learning.distances import DotProductSimilarity

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "retrieval", "tests", "fixtures")


def ranking(q, g):
    scores = q @ g.T
    # Stable sort of -score: equal scores keep index order (lower index first).
    return np.argsort(-scores, axis=1, kind="stable")


def direct(q, g, ql, gl, k):
    order = ranking(q, g)
    aps, r1, apr = [], [], []
    for i in range(len(q)):
        gtp = int((gl == ql[i]).sum())
        rel = gl[order[i]] == ql[i]
        def ap(depth):
            if gtp == 0:
                return 0.0
            hits, s = 0, 0.0
            for j, r in enumerate(rel[:depth]):
                if r:
                    hits += 1
                    s += hits / (j + 1)
            return s / gtp
        aps.append(ap(k))
        apr.append(ap(gtp))
        r1.append(float(rel[0]))
    return {"map_at_k": float(np.mean(aps)), "recall_at_1": float(np.mean(r1)), "map_at_r": float(np.mean(apr))}


def pml(q, g, ql, gl):
    calc = AccuracyCalculator(include=("mean_average_precision", "precision_at_1", "mean_average_precision_at_r"),
                              k=1000, knn_func=CustomKNN(DotProductSimilarity()))
    r = calc.get_accuracy(torch.from_numpy(q), torch.from_numpy(ql), torch.from_numpy(g), torch.from_numpy(gl),
                          ref_includes_query=False)
    return {"map_at_k": r["mean_average_precision"], "recall_at_1": r["precision_at_1"],
            "map_at_r": r["mean_average_precision_at_r"]}


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(0)
    # main: 60 queries, 1200 gallery rows, 16-d; labels 0..24 in the gallery, queries 0..29
    # (labels 25..29 are absent from the gallery); label 0 has 200 gallery items.
    centers = rng.normal(size=(30, 16))
    gl = np.concatenate([np.zeros(200, dtype=np.int64), rng.integers(1, 25, 1000)])
    ql = rng.integers(0, 30, 60)
    g = unit(centers[gl] + rng.normal(scale=1.2, size=(1200, 16)))
    q = unit(centers[ql] + rng.normal(scale=1.2, size=(60, 16)))
    # ties: coarse values, and every gallery row duplicated.
    gt = np.round(rng.normal(size=(40, 4)) * 2) / 2
    gt = np.repeat(gt, 2, axis=0).astype(np.float32)
    glt = rng.integers(0, 5, 80)
    qt = (np.round(rng.normal(size=(15, 4)) * 2) / 2).astype(np.float32)
    qlt = rng.integers(0, 6, 15)
    expected = {
        "main": {"k5": direct(q, g, ql, gl, 5), "k1000": direct(q, g, ql, gl, 1000), "pml_k1000": pml(q, g, ql, gl),
                 "evaluated_queries": int(np.isin(ql, gl).sum())},
        "ties": {"k5": direct(qt, gt, qlt, glt, 5), "k1000": direct(qt, gt, qlt, glt, 1000),
                 "ranking_top10": ranking(qt, gt)[:, :10].tolist()},
    }
    save_file({"main_q": q, "main_g": g, "main_ql": ql, "main_gl": gl,
               "ties_q": qt, "ties_g": gt, "ties_ql": qlt, "ties_gl": glt}, os.path.join(OUT, "metrics.safetensors"))
    with open(os.path.join(OUT, "metrics.json"), "w") as f:
        json.dump(expected, f, indent=1)
    print(json.dumps(expected["main"], indent=1))


if __name__ == "__main__":
    main()
