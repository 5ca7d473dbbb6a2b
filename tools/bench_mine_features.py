#!/usr/bin/env python3
"""Baseline for `visual-search bench mine`: step 2 of the mining pipeline as a PyTorch user would
write it — a thread pool fetches each URL (urllib), decodes and resizes it (PIL + torchvision:
Resize((s, s)), ToTensor, Normalize), and the main thread embeds batches with PyTorch eager
(EfficientNet-Lite0 through timm, as in bench_embed_torch.py). Prints JSON {"images_per_s", "embedded"}.
"""
import argparse
import io
import json
import os
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import torch
from PIL import Image
from torchvision import transforms

sys.path.insert(0, os.path.dirname(__file__))
from bench_embed_torch import build  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--urls", required=True, help="file with one URL per line")
    ap.add_argument("--weights")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=32)
    a = ap.parse_args()
    urls = [u.strip() for u in open(a.urls) if u.strip()]
    model = build("efficientnet_lite0", a.weights).eval()
    tf = transforms.Compose([
        transforms.Resize((a.size, a.size)),
        transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])

    def load(url):
        with urllib.request.urlopen(url, timeout=30) as r:
            return tf(Image.open(io.BytesIO(r.read())).convert("RGB"))

    t = time.perf_counter()
    out, batch = [], []
    with ThreadPoolExecutor(a.concurrency) as pool, torch.inference_mode():
        for x in pool.map(load, urls):
            batch.append(x)
            if len(batch) == a.batch:
                out.append(torch.nn.functional.normalize(model(torch.stack(batch)), dim=1))
                batch = []
        if batch:
            out.append(torch.nn.functional.normalize(model(torch.stack(batch)), dim=1))
    seconds = time.perf_counter() - t
    n = sum(len(o) for o in out)
    print(json.dumps({"images_per_s": n / seconds, "embedded": n}))


if __name__ == "__main__":
    main()
