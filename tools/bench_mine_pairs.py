#!/usr/bin/env python3
"""Baseline for `visual-search bench mine`: step 1 of the mining pipeline as a PyTorch user
would write it — stream the gzip review dump with json.loads, collect review photos per product,
stream the metadata, write the products table with pyarrow. Prints JSON {"seconds", "products"}.
"""
import argparse
import gzip
import json
import time

import pyarrow as pa
import pyarrow.parquet as pq


def lines(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        yield from f


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reviews", required=True)
    ap.add_argument("--metadata", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    t = time.perf_counter()
    photos, counts = {}, {}
    for line in lines(a.reviews):
        try:
            r = json.loads(line)
        except ValueError:
            continue
        asin = r.get("parent_asin") or r.get("asin")
        if not asin:
            continue
        counts[asin] = counts.get(asin, 0) + 1
        for u in r.get("image") or []:
            lst = photos.setdefault(asin, [])
            if u not in lst:
                lst.append(u)
    rows = {"asin": [], "title": [], "product_images": [], "user_images": [], "n_reviews": []}
    done = set()
    for line in lines(a.metadata):
        try:
            m = json.loads(line)
        except ValueError:
            continue
        asin = m.get("parent_asin") or m.get("asin")
        if asin not in photos or asin in done:
            continue
        done.add(asin)
        imgs = m.get("imageURLHighRes") or []
        if not imgs:
            continue
        rows["asin"].append(asin)
        rows["title"].append(m.get("title"))
        rows["product_images"].append(imgs)
        rows["user_images"].append(photos[asin])
        rows["n_reviews"].append(counts[asin])
    pq.write_table(pa.table(rows), a.out, compression="snappy")
    print(json.dumps({"seconds": time.perf_counter() - t, "products": len(rows["asin"])}))


if __name__ == "__main__":
    main()
