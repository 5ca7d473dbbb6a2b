#!/usr/bin/env python3
"""Baseline for `visual-search bench preprocess`: the same pipeline in PIL + torchvision.

PIL open + convert("RGB") -> Resize((s, s)) (antialiased bilinear) -> ToTensor -> Normalize(CLIP),
once on one thread and once with one process per core (like a DataLoader with workers).
Prints JSON: {"single_ips": ..., "multi_ips": ...}.
"""
import argparse
import json
import multiprocessing as mp
import time

import torch
from PIL import Image
from torchvision import transforms

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def make_pipeline(size):
    return transforms.Compose([
        transforms.Resize((size, size), antialias=True),
        transforms.ToTensor(),
        transforms.Normalize(CLIP_MEAN, CLIP_STD),
    ])


def work(args):
    paths, size = args
    torch.set_num_threads(1)
    pipeline = make_pipeline(size)
    for p in paths:
        pipeline(Image.open(p).convert("RGB"))
    return len(paths)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--list", required=True)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=mp.cpu_count())
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    paths = [p for p in open(a.list).read().splitlines() if p]
    single = 0.0
    for _ in range(a.repeat):
        t = time.perf_counter()
        work((paths, a.size))
        single = max(single, len(paths) / (time.perf_counter() - t))
    chunks = [paths[i::a.threads] for i in range(a.threads)]
    multi = 0.0
    with mp.get_context("fork").Pool(a.threads) as pool:
        pool.map(work, [([], a.size)] * a.threads)  # start the workers before timing
        for _ in range(a.repeat):
            t = time.perf_counter()
            pool.map(work, [(c, a.size) for c in chunks])
            multi = max(multi, len(paths) / (time.perf_counter() - t))
    print(json.dumps({"single_ips": single, "multi_ips": multi, "torch": torch.__version__,
                      "pillow": Image.__version__}))


if __name__ == "__main__":
    main()
