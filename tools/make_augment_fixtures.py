#!/usr/bin/env python3
"""Reference outputs of the AutoAugment/RandAugment operations on PIL images (issue 5).

A real grocery photo is resized (torchvision Resize(96), shorter side) and each of the 14
operations is applied at fixed magnitudes (both signs for signed ones) with torchvision's own
`_apply_op` (NEAREST, no fill) — which calls PIL. For each result the manifest records a checksum
of all bytes (sum of (i+1)*byte mod 2^61), the byte sum, and 256 sampled pixels; no image is
written.

Run: ~/.cache/visual-search/venv/bin/python tools/make_augment_fixtures.py
"""
import json
import os

import numpy as np
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms.autoaugment import _apply_op

ROOT = os.path.join(os.path.dirname(__file__), "..")
DATASETS = os.environ.get("VISUAL_SEARCH_DATASETS", os.path.join(ROOT, "..", "shared", "datasets"))
PHOTO = "test/Fruit/Apple/Golden-Delicious/Golden-Delicious_002.jpg"  # 348x464: not square
OUT = os.path.join(ROOT, "crates", "data", "tests", "fixtures", "augment")

CASES = [
    ("Identity", 0.0), ("ShearX", 0.2), ("ShearX", -0.3), ("ShearY", 0.1), ("ShearY", -0.2),
    ("TranslateX", 20.7), ("TranslateX", -13.2), ("TranslateY", 9.0), ("TranslateY", -30.0),
    ("Rotate", 30.0), ("Rotate", -13.3), ("Rotate", 90.0), ("Brightness", 0.5), ("Brightness", -0.3),
    ("Color", 0.9), ("Color", -0.6), ("Contrast", 0.4), ("Contrast", -0.8), ("Sharpness", 0.7),
    ("Sharpness", -0.5), ("Posterize", 4), ("Posterize", 7), ("Solarize", 141.67), ("Solarize", 28.3),
    ("AutoContrast", 0.0), ("Equalize", 0.0), ("Invert", 0.0),
]


def checksum(a):
    flat = a.astype(np.uint64).ravel()
    weights = np.arange(1, flat.size + 1, dtype=np.uint64)
    return int(np.sum((flat * weights) % np.uint64(2**61)) % (2**61))


def main():
    os.makedirs(OUT, exist_ok=True)
    img = Image.open(os.path.join(DATASETS, "grocery-store", "dataset", PHOTO)).convert("RGB")
    img = transforms.Resize(96)(img)
    rng = np.random.default_rng(0)
    ys = rng.integers(0, img.height, 256)
    xs = rng.integers(0, img.width, 256)
    cases = []
    for name, m in CASES:
        out = np.asarray(_apply_op(img, name, float(m), interpolation=InterpolationMode.NEAREST, fill=None))
        cases.append({"op": name, "magnitude": m, "checksum": checksum(out), "sum": int(out.astype(np.int64).sum()),
                      "samples": [[int(y), int(x), *map(int, out[y, x])] for y, x in zip(ys, xs)]})
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump({"photo": PHOTO, "resize": 96, "size": [img.width, img.height], "cases": cases}, f,
                  separators=(",", ":"))
    print(f"{len(cases)} cases on {img.size}")


if __name__ == "__main__":
    main()
