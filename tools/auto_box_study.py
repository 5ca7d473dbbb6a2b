#!/usr/bin/env python3
"""The offline study behind `--auto-box`'s window rule (BENCHMARKS.md, "Queries without a box").

On the boxed scenes of `tools/make_boxed_queries.py`, embeds 27 windows of every scene (sides
0.45, 0.57 and 0.7 of the scene, at 3 x 3 places) with `visual-search embed` (each window is a
query box), then compares, per scene, how the window to search with is chosen:
  - the oracle (the window with the best AP: what a perfect choice would give);
  - the best top-1 cosine (the rule before);
  - the confidence `retrieval::auto_box` uses: among the view's 20 best gallery items, each
    product's best cosine c_p; the first product's softmax share 1 / sum_p exp((c_p - c_max) / T);
  - the cosine margin between the first two products.
A window replaces the whole scene only when its score beats the whole scene's. Reports
mAP@1000 and the share of the gap between the whole scene and the true box that each closes.

    python3 tools/auto_box_study.py --visual-search target/release/visual-search \\
        --boxed data/boxed --gallery <grocery>/gallery.csv --work /tmp/auto_box_study \\
        -- --model efficientnet_lite0 --weights <lite0 .pth> --device ort [--size 141]

Arguments after `--` go to every `visual-search embed`. Needs NumPy and Pillow. Writes only under
--work (made if missing; the embeddings are reused by a re-run; a folder holding other files is
refused).
"""
import argparse
import csv
import os
import subprocess

import numpy as np
from PIL import Image

SIDES = (0.45, 0.57, 0.7)


def write_csv(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["img_path", "product_id", "bbox_x", "bbox_y", "bbox_w", "bbox_h"])
        w.writerows(rows)
    os.replace(tmp, path)


def embed(args, csv_path, root, out):
    if not os.path.exists(out):
        subprocess.run([args.visual_search, "embed", *args.embed_args, "--csv", csv_path,
                        "--root", root, "--out", out], check=True)
    return np.load(out)


def average_precision(queries, gallery, qy, gy, gtp):
    order = np.argsort(-(queries @ gallery.T), axis=1)[:, :1000]
    rel = gy[order] == qy[:, None]
    prec = np.cumsum(rel, 1) / np.arange(1, rel.shape[1] + 1)
    return (prec * rel).sum(1) / gtp


def product_scores(sims, gy, k):
    """Per row: the best cosine of each product among the row's k best items (list of arrays)."""
    top = np.argsort(-sims, axis=-1)[..., :k]
    out = []
    for row, idx in zip(sims.reshape(-1, sims.shape[-1]), top.reshape(-1, k)):
        best = {}
        for g in idx:
            best.setdefault(gy[g], row[g])
        out.append(np.array(sorted(best.values(), reverse=True)))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--visual-search", required=True)
    p.add_argument("--boxed", required=True, help="the folder make_boxed_queries.py wrote")
    p.add_argument("--gallery", required=True, help="the grocery gallery.csv")
    p.add_argument("--work", required=True)
    p.add_argument("--candidates", type=int, default=20)
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("embed_args", nargs=argparse.REMAINDER)
    a = p.parse_args()
    a.embed_args = [x for x in a.embed_args if x != "--"]
    os.makedirs(a.work, exist_ok=True)
    ours = {"gallery.npy", "true_box.npy", "whole.npy"} | {
        f"window{k:02d}.{ext}" for k in range(len(SIDES) * 9) for ext in ("csv", "csv.tmp", "npy")}
    foreign = sorted(set(os.listdir(a.work)) - ours)
    if foreign:
        raise SystemExit(f"--work {a.work} holds files this study did not make ({foreign[:3]}); "
                         "refusing to write there")
    boxed = os.path.abspath(a.boxed)
    with open(os.path.join(boxed, "queries.csv")) as f:
        rows = list(csv.DictReader(f))
    sizes = []
    for r in rows:
        with Image.open(os.path.join(boxed, r["img_path"])) as im:
            sizes.append(im.size)
    windows = [(s, (1 - s) * i / 2, (1 - s) * j / 2) for s in SIDES for j in range(3) for i in range(3)]
    gallery_csv = os.path.abspath(a.gallery)
    G = embed(a, gallery_csv, os.path.dirname(gallery_csv), os.path.join(a.work, "gallery.npy"))
    true_box = embed(a, os.path.join(boxed, "queries.csv"), boxed, os.path.join(a.work, "true_box.npy"))
    whole = embed(a, os.path.join(boxed, "queries_nobox.csv"), boxed, os.path.join(a.work, "whole.npy"))
    views = []
    for k, (s, x0, y0) in enumerate(windows):
        path = os.path.join(a.work, f"window{k:02d}.csv")
        write_csv(path, [[r["img_path"], r["product_id"], round(x0 * w), round(y0 * h),
                          max(1, round(s * w)), max(1, round(s * h))] for r, (w, h) in zip(rows, sizes)])
        views.append(embed(a, path, boxed, os.path.join(a.work, f"window{k:02d}.npy")))
    W = np.stack(views, 1)

    with open(gallery_csv) as f:
        gy = np.array([int(r["product_id"]) for r in csv.DictReader(f)])
    qy = np.array([int(r["product_id"]) for r in rows])
    gtp = np.array([(gy == y).sum() for y in qy])
    ap = lambda q: average_precision(q, G, qy, gy, gtp)
    ap_true, ap_whole = ap(true_box), ap(whole)
    ap_windows = np.stack([ap(W[:, k]) for k in range(len(windows))], 1)
    gap = lambda m: 100 * (m - ap_whole.mean()) / (ap_true.mean() - ap_whole.mean())
    print(f"true box {ap_true.mean():.4f}   whole scene {ap_whole.mean():.4f}")

    def scores(sims, rule):
        prods = product_scores(sims, gy, a.candidates)
        if rule == "top-1 cosine":
            v = [c[0] for c in prods]
        elif rule == "product margin":
            v = [c[0] - c[1] if len(c) > 1 else 1.0 for c in prods]
        else:
            v = [1 / np.exp((c - c[0]) / a.temperature).sum() for c in prods]
        return np.array(v).reshape(sims.shape[:-1])

    sims_whole = whole @ G.T
    sims_windows = np.einsum("qwd,gd->qwg", W, G)
    qi = np.arange(len(qy))
    for name, idx in [("sides 0.45, 3x3", range(0, 9)), ("sides 0.57, 3x3", range(9, 18)),
                      ("all 27 windows", range(27))]:
        idx = list(idx)
        print(f"== {name}: oracle closes {gap(ap_windows[:, idx].max(1).mean()):.0f} % of the gap")
        for rule in ("top-1 cosine", "product margin", "confidence"):
            sw = scores(sims_windows[:, idx], rule)
            pick = sw.argmax(1)
            use = sw[qi, pick] >= scores(sims_whole, rule)
            m = np.where(use, ap_windows[qi, np.array(idx)[pick]], ap_whole).mean()
            print(f"   {rule:15s} mAP@1000 {m:.4f}  gap closed {gap(m):3.0f} %  (a window for {use.mean():.0%})")


if __name__ == "__main__":
    main()
