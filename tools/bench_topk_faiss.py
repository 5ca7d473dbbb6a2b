#!/usr/bin/env python3
"""Baselines for `visual-search bench topk`: exact inner-product top-k with faiss IndexFlatIP and
with NumPy (blocked matmul + argpartition + sort of the kept k), on the same .npy matrices.
Optionally compares with our result (--ours indices.npy): fraction of queries whose top-k index
sets are identical to faiss's. Prints JSON.
"""
import argparse
import json
import os
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", required=True)
    ap.add_argument("--gallery", required=True)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--ours")
    ap.add_argument("--skip-numpy", action="store_true")
    a = ap.parse_args()
    q = np.load(a.queries, mmap_mode="r")
    g = np.load(a.gallery, mmap_mode="r")
    q = np.ascontiguousarray(q, dtype=np.float32)
    g = np.ascontiguousarray(g, dtype=np.float32)
    out = {"threads": os.cpu_count()}
    import faiss
    index = faiss.IndexFlatIP(g.shape[1])
    index.add(g)
    t = time.perf_counter()
    _, faiss_idx = index.search(q, a.k)
    out["faiss_seconds"] = time.perf_counter() - t
    out["faiss_version"] = faiss.__version__
    if not a.skip_numpy:
        t = time.perf_counter()
        block = max(1, int(2e8 // g.shape[0]))  # ~800 MB of scores per block
        for s in range(0, q.shape[0], block):
            scores = q[s:s + block] @ g.T
            part = np.argpartition(-scores, a.k - 1, axis=1)[:, :a.k]
            top = np.take_along_axis(scores, part, axis=1)
            np.take_along_axis(part, np.argsort(-top, axis=1), axis=1)
        out["numpy_seconds"] = time.perf_counter() - t
    if a.ours:
        ours = np.load(a.ours)
        same = [set(ours[i].tolist()) == set(faiss_idx[i].tolist()) for i in range(len(ours))]
        out["same_topk_sets_as_faiss"] = float(np.mean(same))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
