#!/usr/bin/env python3
"""The auto-box benchmark (issue 17 item 2): grocery dev queries with boxes we know.

Each grocery dev query photo is pasted, at its own resolution, at a random position into a
larger cluttered scene: the canvas is 1.6-2.4x the photo's width and height (so the product
covers 17-39 % of the scene) and is tiled 4 x 4 with photos of *other* products (other dev
queries, so the clutter looks like the query: in-store photos; each tile is 1/16 of the scene,
so the pasted photo is the scene's main object, as when a user points the camera at a product). The true box is where the photo
went.

    python3 tools/make_boxed_queries.py --dataset-dir ../shared/datasets/grocery-store/dataset \
        --out data/boxed [--seed 17]

writes, in a dev-set root the ranker reads (`--dataset-dir data/boxed`):
  - scenes/NNNNN.jpg (JPEG quality 90);
  - queries.csv        the scenes with their true boxes (`img_path,product_id,bbox_x,...`);
  - queries_nobox.csv  the same scenes without boxes (the "whole image" and `--auto-box` runs);
  - gallery.csv        the dev gallery, unchanged (its folders are linked in).

Then, with the same model:

    visual-search eval ... --dataset-dir data/boxed                                  # true box
    visual-search eval ... --dataset-dir data/boxed --queries queries_nobox.csv      # whole image
    visual-search eval ... --dataset-dir data/boxed --queries queries_nobox.csv --auto-box

Needs Pillow only. Refuses an --out folder holding files it did not make.
"""
import argparse
import csv
import io
import os
import random
import shutil

from PIL import Image

import grocery_out_dir

HEADER = ["img_path", "product_id", "bbox_x", "bbox_y", "bbox_w", "bbox_h"]


def write_atomically(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


def csv_text(rows):
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HEADER)
    w.writerows(rows)
    return buf.getvalue()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=17)
    p.add_argument("--min-scale", type=float, default=1.6)
    p.add_argument("--max-scale", type=float, default=2.4)
    a = p.parse_args()
    data = os.path.abspath(a.dataset_dir)
    out = os.path.abspath(a.out)
    scenes = grocery_out_dir.prepare(out, data, ["queries.csv", "queries_nobox.csv", "gallery.csv"],
                                     "scenes", 5)
    tmp_gallery = os.path.join(out, "gallery.csv.tmp")
    shutil.copyfile(os.path.join(data, "gallery.csv"), tmp_gallery)
    os.replace(tmp_gallery, os.path.join(out, "gallery.csv"))

    with open(os.path.join(data, "queries.csv")) as f:
        queries = list(csv.DictReader(f))
    rng = random.Random(a.seed)
    boxed, plain = [], []
    for i, q in enumerate(queries):
        photo = Image.open(os.path.join(data, q["img_path"])).convert("RGB")
        w, h = photo.size
        scale = rng.uniform(a.min_scale, a.max_scale)
        cw, ch = round(w * scale), round(h * scale)
        canvas = Image.new("RGB", (cw, ch))
        others = [r for r in queries if r["product_id"] != q["product_id"]]
        tw, th = (cw + 3) // 4, (ch + 3) // 4
        for tile in range(16):
            other = Image.open(os.path.join(data, rng.choice(others)["img_path"])).convert("RGB")
            canvas.paste(other.resize((tw, th), Image.BILINEAR), ((tile % 4) * tw, (tile // 4) * th))
        x, y = rng.randint(0, cw - w), rng.randint(0, ch - h)
        canvas.paste(photo, (x, y))
        name = f"scenes/{i:05d}.jpg"
        tmp = os.path.join(out, name + ".tmp")
        canvas.save(tmp, "JPEG", quality=90)
        os.replace(tmp, os.path.join(out, name))
        boxed.append([name, q["product_id"], x, y, w, h])
        plain.append([name, q["product_id"], "", "", "", ""])
    write_atomically(os.path.join(out, "queries.csv"), csv_text(boxed))
    write_atomically(os.path.join(out, "queries_nobox.csv"), csv_text(plain))
    print(f"{len(boxed)} scenes in {scenes}; queries.csv (true boxes), queries_nobox.csv")


if __name__ == "__main__":
    main()
