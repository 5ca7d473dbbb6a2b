#!/usr/bin/env python3
"""A mined-pair list (`image_path,label`, SPEC "Data formats") made from the grocery data, for the
XBM benchmark (configs/grocery_xbm_lite0.yml): for every training product (even class id), its
catalogue ("iconic") image plus its in-store test photos — the shape of what the Amazon-review
miner produces (a product image and user photos of it). Labels are the grocery class ids; the
config shifts them by its label_offset, so to the trainer they are new products.

  python3 tools/make_grocery_pairs.py [DATASET_ROOT] [OUT_CSV]
"""
import csv
import os
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "../shared/datasets/grocery-store/dataset"
out = sys.argv[2] if len(sys.argv) > 2 else "data/grocery_pairs.csv"
rows = []
with open(os.path.join(root, "classes.csv")) as f:
    for r in csv.DictReader(f):
        c = int(r["Class ID (int)"])
        if c % 2 == 0:
            rows.append((r["Iconic Image Path (str)"].lstrip("/"), c))
with open(os.path.join(root, "test_kaggletest.csv")) as f:
    rows += [(r["name"], int(r["class"])) for r in csv.DictReader(f)]
os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
tmp = out + ".tmp"
with open(tmp, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["image_path", "label"])
    w.writerows(sorted(rows, key=lambda r: (r[1], r[0])))
os.replace(tmp, out)
print(f"{out}: {len(rows)} images of {len({r[1] for r in rows})} products")
