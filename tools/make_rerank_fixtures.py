#!/usr/bin/env python3
"""NumPy references for the ranker's post-processing (issue 19): centring on the joint mean,
query blending, DBA, the 1st place's chain, and k-reciprocal re-ranking.

k-reciprocal follows the authors' `re_ranking(probFea, galFea, k1, k2, lambda_value)` (Zhong et
al., CVPR 2017, github.com/zhunzhong07/person-re-ranking) step by step — full n x n matrices,
argsort, intersect1d, unique — with three stated changes that the Rust module doc also states:
float64 throughout (theirs stores V in float16), the squared distance of unit rows written as
max(2 - 2 x.y, 0), and a stable argsort so ties go to the lower index.

Data: seeded clusters (so neighbourhoods are non-trivial), 15 queries x 60 gallery x 16 dims,
rows L2-normalised in float32.

Run: python3 -m venv /tmp/np && /tmp/np/bin/pip install numpy && /tmp/np/bin/python tools/make_rerank_fixtures.py
"""
import json
import os

import numpy as np

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "retrieval", "tests", "fixtures",
                   "rerank.json")


def normalize(x):
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(n > 0, x / np.where(n > 0, n, 1), 0)


def top(q, g, k):
    """Top-k gallery rows by inner product, ties to the lower index."""
    return np.argsort(-(q @ g.T), axis=1, kind="stable")[:, :k]


def centre(q, g):
    m = np.concatenate([q, g]).mean(axis=0)
    return normalize(q - m), normalize(g - m)


def dba(q, g, k):
    """Standardise both with the gallery's mean/std, normalise, then augment the gallery."""
    mean, std = g.mean(axis=0), g.std(axis=0)
    std = np.where(std > 0, std, 1)
    q, g = normalize((q - mean) / std), normalize((g - mean) / std)
    w = np.logspace(0, -2, k + 1)
    order = top(g, g, k + 1)
    out = np.zeros_like(g)
    for r in range(len(g)):
        others = [n for n in order[r] if n != r][:k]
        out[r] = sum(wi * g[n] for wi, n in zip(w, [r] + others))
    return q, normalize(out)


def blend(q, g, rounds, max_distance):
    q = q.copy()
    for weights in rounds:
        own, nw = weights[0], weights[1:]
        s = q @ g.T
        order = top(q, g, len(nw))
        out = q.copy()
        for i in range(len(q)):
            close = [(w, n) for w, n in zip(nw, order[i])
                     if np.sqrt(max(2 - 2 * s[i, n], 0)) < max_distance]
            if close:
                out[i] = own * q[i] + sum(w * g[n] for w, n in close)
        q = normalize(out)
    return q


def re_ranking(q, g, k1, k2, lambda_value):
    query_num = q.shape[0]
    feat = np.concatenate([q, g])
    all_num = feat.shape[0]
    original_dist = np.maximum(2 - 2 * feat @ feat.T, 0)
    original_dist = np.transpose(original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist)
    initial_rank = np.argsort(original_dist, axis=1, kind="stable").astype(np.int32)
    for i in range(all_num):
        forward_k_neigh_index = initial_rank[i, :k1 + 1]
        backward_k_neigh_index = initial_rank[forward_k_neigh_index, :k1 + 1]
        fi = np.where(backward_k_neigh_index == i)[0]
        k_reciprocal_index = forward_k_neigh_index[fi]
        k_reciprocal_expansion_index = k_reciprocal_index
        for j in range(len(k_reciprocal_index)):
            candidate = k_reciprocal_index[j]
            half = int(np.around(k1 / 2))
            candidate_forward = initial_rank[candidate, :half + 1]
            candidate_backward = initial_rank[candidate_forward, :half + 1]
            fi_candidate = np.where(candidate_backward == candidate)[0]
            candidate_k_reciprocal_index = candidate_forward[fi_candidate]
            if len(np.intersect1d(candidate_k_reciprocal_index, k_reciprocal_index)) > \
                    2 / 3 * len(candidate_k_reciprocal_index):
                k_reciprocal_expansion_index = np.append(k_reciprocal_expansion_index,
                                                         candidate_k_reciprocal_index)
        k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)
        weight = np.exp(-original_dist[i, k_reciprocal_expansion_index])
        V[i, k_reciprocal_expansion_index] = weight / np.sum(weight)
    original_dist = original_dist[:query_num, ]
    if k2 != 1:
        V_qe = np.zeros_like(V)
        for i in range(all_num):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
    jaccard_dist = np.zeros_like(original_dist)
    for i in range(query_num):
        temp_min = np.minimum(V[i][None, :], V).sum(axis=1)
        jaccard_dist[i] = 1 - temp_min / (2 - temp_min)
    final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
    return final_dist[:query_num, query_num:]


def ranked(dist, k):
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(dist, order, axis=1)


def flat(x):
    return [float(v) for v in np.asarray(x, dtype=np.float64).ravel()]


def main():
    rng = np.random.default_rng(19)
    dim, classes = 16, 12
    centres = rng.normal(size=(classes, dim)) + 1.5  # a shared offset that centring removes
    gl = rng.integers(0, classes, size=60)
    ql = rng.integers(0, classes, size=15)
    g = normalize(centres[gl] + 0.6 * rng.normal(size=(60, dim))).astype(np.float32)
    q = normalize(centres[ql] + 0.6 * rng.normal(size=(15, dim))).astype(np.float32)
    q64, g64 = q.astype(np.float64), g.astype(np.float64)

    cq, cg = centre(q64, g64)
    rounds, gate = [[0.5, 0.5], [0.4, 0.3, 0.3]], 0.8
    blended = blend(q64, g64, rounds, gate)
    dq, dg = dba(q64, g64, 5)
    # The 1st place's chain: centre, DBA k=5, blend, cosine top-k.
    wq, wg = centre(q64, g64)
    wq, wg = dba(wq, wg, 5)
    wq = blend(wq, wg, rounds, gate)
    winner = top(wq, wg, 10)

    k_reciprocal = []
    for k1, k2, lam in [(20, 6, 0.3), (5, 1, 0.5), (7, 3, 0.3)]:
        order, dist = ranked(re_ranking(q64, g64, k1, k2, lam), 20)
        k_reciprocal.append({"k1": k1, "k2": k2, "lambda": lam, "top": 20,
                             "indices": [int(v) for v in order.ravel()], "distances": flat(dist)})

    fixture = {
        "dim": dim, "queries": flat(q), "gallery": flat(g),
        "centred_queries": flat(cq), "centred_gallery": flat(cg),
        "blend_rounds": rounds, "blend_max_distance": gate, "blended_queries": flat(blended),
        "dba_k": 5, "dba_queries": flat(dq), "dba_gallery": flat(dg),
        "winner_top": 10, "winner_indices": [int(v) for v in winner.ravel()],
        "k_reciprocal": k_reciprocal,
    }
    with open(OUT, "w") as f:
        json.dump(fixture, f)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
