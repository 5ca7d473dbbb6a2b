#!/usr/bin/env python3
"""The near-duplicate benchmark of `index dups` (issue 18 item 5), and its scorer.

make: a catalogue made of the grocery dev gallery plus, for a seeded subset of its images, one
altered copy each — re-encoded as JPEG at quality 40-75, resized to 50-90 %, or cropped by 2-8 %
on each side (then saved at quality 90) — with the true (original, copy) pairs:

    python3 tools/make_duplicate_set.py make --dataset-dir ../shared/datasets/grocery-store/dataset \
        --out data/dups [--copies 200 --seed 18]

  writes data/dups/catalogue.csv (`img_path,product_id`, paths relative to data/dups, which
  links to the dataset's folders), data/dups/copies/*.jpg and data/dups/truth.csv.

score: pair-level precision and recall of the groups `index dups --out groups.csv` found
(every pair inside a group is a predicted pair; the truth is the (original, copy) pairs, so a
genuine near-duplicate already in the gallery counts against precision):

    python3 tools/make_duplicate_set.py score --groups groups.csv --truth data/dups/truth.csv

Needs Pillow only.
"""
import argparse
import csv
import io
import itertools
import os
import random
import sys

from PIL import Image

import grocery_out_dir


def make(a):
    out = os.path.abspath(a.out)
    # Only ever replace what an earlier run made: refuse a folder holding anything else.
    grocery_out_dir.prepare(out, a.dataset_dir, ["catalogue.csv", "truth.csv"], "copies", 4)
    with open(os.path.join(a.dataset_dir, "gallery.csv")) as f:
        rows = list(csv.DictReader(f))
    rng = random.Random(a.seed)
    chosen = rng.sample(range(len(rows)), a.copies)
    catalogue = [(r["img_path"], r["product_id"]) for r in rows]
    truth = []
    for n, i in enumerate(chosen):
        src = rows[i]["img_path"]
        img = Image.open(os.path.join(a.dataset_dir, src)).convert("RGB")
        kind = ["reencode", "resize", "crop"][n % 3]
        quality = 90
        if kind == "reencode":
            quality = rng.randint(40, 75)
        elif kind == "resize":
            s = rng.uniform(0.5, 0.9)
            img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.BICUBIC)
        else:
            w, h = img.size
            l, t, r, b = (rng.uniform(0.02, 0.08) for _ in range(4))
            img = img.crop((round(w * l), round(h * t), round(w * (1 - r)), round(h * (1 - b))))
        name = f"copies/{n:04d}_{kind}.jpg"
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        tmp = os.path.join(out, name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(buf.getvalue())
        os.replace(tmp, os.path.join(out, name))
        catalogue.append((name, rows[i]["product_id"]))
        truth.append((src, name))
    for fname, header, data in [("catalogue.csv", ["img_path", "product_id"], catalogue),
                                ("truth.csv", ["original", "copy"], truth)]:
        tmp = os.path.join(out, fname + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(data)
        os.replace(tmp, os.path.join(out, fname))
    print(f"{len(catalogue)} catalogue images ({len(truth)} altered copies) in {out}")


def score(a):
    with open(a.truth) as f:
        truth = {frozenset((r["original"], r["copy"])) for r in csv.DictReader(f)}
    root = os.path.dirname(os.path.abspath(a.truth))
    groups = {}
    with open(a.groups) as f:
        for r in csv.DictReader(f):
            path = os.path.relpath(os.path.abspath(r["path"]), root)
            groups.setdefault(r["group"], []).append(path)
    predicted = {frozenset(p) for g in groups.values() for p in itertools.combinations(g, 2)}
    hits = len(predicted & truth)
    precision = hits / len(predicted) if predicted else 1.0
    recall = hits / len(truth)
    print(f"groups {len(groups)}  predicted pairs {len(predicted)}  true pairs {len(truth)}  "
          f"precision {precision:.3f}  recall {recall:.3f}")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--dataset-dir", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--copies", type=int, default=200)
    m.add_argument("--seed", type=int, default=18)
    s = sub.add_parser("score")
    s.add_argument("--groups", required=True)
    s.add_argument("--truth", required=True)
    a = ap.parse_args()
    {"make": make, "score": score}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
