#!/usr/bin/env python3
"""PIL reference for the crop-tolerant difference hash of `index dups`
(crates/data/src/image/difference_hash.rs): for a few real grocery photos, the 81 hashes (the
whole image first) of: RGB image resized to 90x80 (PIL bilinear), each crop [l, 90-r) x [t, 80-b)
for l, r in {0, 4, 9} and t, b in {0, 4, 8} cut out and resized to 9x8 (PIL bilinear), grey
0.299 R + 0.587 G + 0.114 B, bit 8y+x set when grey(x, y) > grey(x+1, y).

Run: ~/.cache/visual-search/venv/bin/python tools/make_dhash_fixtures.py  (needs Pillow, numpy)
"""
import json
import os

import numpy as np
from PIL import Image

ROOT = os.path.join(os.path.dirname(__file__), "..")
DATASETS = os.environ.get("VISUAL_SEARCH_DATASETS", os.path.join(ROOT, "..", "shared", "datasets"))
OUT = os.path.join(ROOT, "crates", "data", "tests", "fixtures", "dhash.json")
PHOTOS = [
    "test/Fruit/Kiwi/Kiwi_005.jpg",
    "test/Fruit/Kiwi/Kiwi_006.jpg",
    "test/Packages/Milk/Arla-Standard-Milk/Arla-Standard-Milk_003.jpg",
    "iconic-images-and-descriptions/Fruit/Banana/Banana_Iconic.jpg",
]


def hash_of(img):
    a = np.asarray(img).astype(np.float32)
    g = 0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]
    bits = (g[:, :-1] > g[:, 1:]).flatten()
    return sum(1 << i for i, b in enumerate(bits) if b)


def hashes(path):
    small = Image.open(path).convert("RGB").resize((90, 80), Image.BILINEAR)
    out = []
    for l in (0, 4, 9):
        for t in (0, 4, 8):
            for r in (0, 4, 9):
                for b in (0, 4, 8):
                    out.append(hash_of(small.crop((l, t, 90 - r, 80 - b)).resize((9, 8), Image.BILINEAR)))
    return out


def main():
    grocery = os.path.join(DATASETS, "grocery-store", "dataset")
    fixture = {"photos": PHOTOS,
               "hashes": [[format(h, "016x") for h in hashes(os.path.join(grocery, p))] for p in PHOTOS]}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(fixture, f, indent=0)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
