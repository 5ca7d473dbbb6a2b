#!/usr/bin/env python3
"""Reference outputs of the image pipeline, produced with PIL + torchvision.

For a handful of real grocery photos (read from ../shared/datasets, never copied here) it applies
what the challenge's PyTorch code does — PIL decode (+ EXIF transpose), RGB conversion, the crop
(query box / white border per SPEC), torchvision Resize (antialiased bilinear on PIL images),
ToTensor + Normalize(CLIP) — and writes a JSON manifest of the results: 1,024 sampled pixels,
the mean of every row and column, and the normalised values of a few pixels. No image (nor a
resized copy of one) is written: the dataset's images stay outside this repository.

Run from the repository root:
    ~/.cache/visual-search/venv/bin/python tools/make_preprocess_fixtures.py
"""
import json
import os
import sys

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import transforms

ROOT = os.path.join(os.path.dirname(__file__), "..")
DATASETS = os.environ.get("VISUAL_SEARCH_DATASETS", os.path.join(ROOT, "..", "shared", "datasets"))
GROCERY = os.path.join(DATASETS, "grocery-store", "dataset")
OUT = os.path.join(ROOT, "crates", "data", "tests", "fixtures", "preprocess")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

CASES = [
    # name, image (relative to the grocery dataset root), crop, resize
    ("square_224", "train/Fruit/Apple/Golden-Delicious/Golden-Delicious_001.jpg", None, [224, 224]),
    ("portrait_224", None, None, [224, 224]),  # first 348x464 photo, filled in below
    ("iconic_white_border_224", "iconic-images-and-descriptions/Fruit/Apple/Granny-Smith/Granny-Smith_Iconic.jpg", "white_border", [224, 224]),
    ("bbox_272", "test/Vegetables/Carrots/Carrots_010.jpg", {"x": 30, "y": 20, "w": 300, "h": 310}, [272, 272]),
    ("shorter_side_256", None, None, 256),  # first 464x348 photo
    ("odd_97", "val/Packages/Milk/Arla-Standard-Milk/Arla-Standard-Milk_003.jpg", None, [97, 97]),
    # Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many
    # pixels as the width (a tall query box, or a 563x1000 phone photo): both orders are pinned.
    ("tall_bbox_vertical_first_224", "test/Fruit/Kiwi/Kiwi_005.jpg", {"x": 120, "y": 10, "w": 90, "h": 420}, [224, 224]),
    ("tall_crop_vertical_first_97", "test/Fruit/Kiwi/Kiwi_005.jpg", {"x": 0, "y": 0, "w": 200, "h": 464}, [97, 97]),
]


def white_border_box(a):
    """SPEC: edge rows/columns whose mean intensity is exactly 255 are cropped away."""
    rows = a.mean(axis=(1, 2)) == 255
    cols = a.mean(axis=(0, 2)) == 255
    if rows.all():
        return 0, 0, a.shape[1], a.shape[0]
    top = int(np.argmin(rows))
    bottom = len(rows) - int(np.argmin(rows[::-1]))
    left = int(np.argmin(cols))
    right = len(cols) - int(np.argmin(cols[::-1]))
    return left, top, right, bottom


def first_with_size(size):
    for dirpath, _, files in sorted(os.walk(os.path.join(GROCERY, "train"))):
        for f in sorted(files):
            p = os.path.join(dirpath, f)
            if f.endswith(".jpg") and Image.open(p).size == size:
                return os.path.relpath(p, GROCERY)
    raise SystemExit(f"no image of size {size}")


def main():
    if not os.path.isdir(GROCERY):
        sys.exit(f"grocery dataset not found at {GROCERY}")
    os.makedirs(OUT, exist_ok=True)
    normalize = transforms.Compose([transforms.ToTensor(), transforms.Normalize(CLIP_MEAN, CLIP_STD)])
    manifest = []
    for name, rel, crop, size in CASES:
        if rel is None:
            rel = first_with_size((348, 464) if name.startswith("portrait") else (464, 348))
        img = ImageOps.exif_transpose(Image.open(os.path.join(GROCERY, rel))).convert("RGB")
        crop_box = None
        if crop == "white_border":
            crop_box = white_border_box(np.asarray(img))
        elif isinstance(crop, dict):
            crop_box = (crop["x"], crop["y"], crop["x"] + crop["w"], crop["y"] + crop["h"])
        if crop_box is not None:
            img = img.crop(crop_box)
        resized = transforms.Resize(size if isinstance(size, int) else tuple(size), antialias=True)(img)
        a = np.asarray(resized).astype(np.int64)
        rng = np.random.default_rng(len(manifest))
        ys = rng.integers(0, a.shape[0], 1024)
        xs = rng.integers(0, a.shape[1], 1024)
        tensor = normalize(resized)
        manifest.append({
            "name": name,
            "image": rel,
            "crop": crop,
            "crop_box_ltrb": list(crop_box) if crop_box else None,
            "resize": size,
            "output_hw": [resized.size[1], resized.size[0]],
            # (y, x, r, g, b) of 1,024 seeded pixel positions of the resized RGB8 image.
            "samples": [[int(y), int(x), *map(int, a[y, x])] for y, x in zip(ys, xs)],
            "row_means": a.mean(axis=(1, 2)).round(4).tolist(),
            "col_means": a.mean(axis=(0, 2)).round(4).tolist(),
            # Normalised values of the first 8 pixels of each plane and the per-plane means.
            "head_pixels": a[0, :8].tolist(),
            "normalized_head": tensor[:, 0, :8].tolist(),
            "normalized_mean": tensor.mean(dim=(1, 2)).tolist(),
        })
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump({"generator": "tools/make_preprocess_fixtures.py", "torch": torch.__version__,
                   "pillow": Image.__version__, "cases": manifest}, f, separators=(",", ":"))
    print(f"wrote {len(manifest)} cases to {OUT}")


if __name__ == "__main__":
    main()
