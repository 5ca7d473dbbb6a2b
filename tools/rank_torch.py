#!/usr/bin/env python3
"""A PyTorch ranker for a dev set: the reference for `visual-search eval` / `rank`.

Same weights, images and preprocessing as the Rust pipeline: PIL decode (+EXIF transpose) ->
RGB -> crop (query box / gallery white border, SPEC) -> torchvision Resize((s, s)) antialiased ->
ToTensor -> Normalize(mean, std) -> model -> NaN to 0 -> L2 normalise -> exact top-k
(ties to the lower index) -> mAP@k as SPEC defines it. A DataLoader with one worker per core
feeds the model, as a PyTorch user would run it. Prints JSON with the metrics and phase timings.

--engine picks what runs the model: `eager` (PyTorch as written), `folded` (batch norm folded
into the convolutions + channels-last, the fastest plain-PyTorch CPU setup), or `onnxruntime`
(the model exported by torch.onnx.export and run by ONNX Runtime's CPU EP with all graph
optimisations, as a deployment would).

  python tools/rank_torch.py --model efficientnet_lite0 --weights W --dataset-dir DIR [--size 224]
      [--engine eager|folded|onnxruntime]
"""
import argparse
import csv
import json
import os
import sys
import time

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import transforms

sys.path.insert(0, os.path.dirname(__file__))
from make_preprocess_fixtures import white_border_box  # noqa: E402 (the SPEC crop, written once)

NORMS = {"efficientnet_lite": ((127 / 255,) * 3, (128 / 255,) * 3)}


class DevList(torch.utils.data.Dataset):
    def __init__(self, root, csv_name, size, mean, std, gallery):
        with open(os.path.join(root, csv_name)) as f:
            self.rows = list(csv.DictReader(f))
        self.root, self.gallery = root, gallery
        self.t = transforms.Compose([transforms.Resize((size, size), antialias=True), transforms.ToTensor(),
                                     transforms.Normalize(mean, std)])

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        r = self.rows[i]
        img = ImageOps.exif_transpose(Image.open(os.path.join(self.root, r["img_path"]))).convert("RGB")
        if self.gallery:
            img = img.crop(white_border_box(np.asarray(img)))
        elif r.get("bbox_w") not in (None, "") and float(r["bbox_w"]) > 0 and float(r["bbox_h"]) > 0:
            x, y, w, h = (float(r[k]) for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h"))
            box = (max(int(np.floor(x)), 0), max(int(np.floor(y)), 0), min(int(np.ceil(x + w)), img.width),
                   min(int(np.ceil(y + h)), img.height))
            if box[2] > box[0] and box[3] > box[1]:
                img = img.crop(box)
        return self.t(img), int(r["product_id"])


def make_runner(model, engine, size):
    """A function from an NCHW float batch to features, for the chosen engine."""
    if engine == "eager":
        return model
    if engine == "folded":
        import copy
        from torch.fx.experimental.optimization import fuse
        try:
            m = fuse(copy.deepcopy(model))
        except Exception:
            m = torch.jit.freeze(torch.jit.trace(copy.deepcopy(model), torch.zeros(1, 3, size, size)))
        m = m.to(memory_format=torch.channels_last)
        return lambda x: m(x.contiguous(memory_format=torch.channels_last))
    if engine == "onnxruntime":
        import tempfile
        import onnxruntime as ort
        path = os.path.join(tempfile.mkdtemp(), "model.onnx")
        torch.onnx.export(model, (torch.zeros(1, 3, size, size),), path, opset_version=17,
                          input_names=["input"], output_names=["embedding"],
                          dynamic_axes={"input": {0: "batch"}}, dynamo=False)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])
    raise SystemExit(f"unknown engine {engine}")


def embed(model, ds, batch, workers):
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers)
    out, labels, t_model = [], [], 0.0
    with torch.inference_mode():
        for x, y in loader:
            t = time.perf_counter()
            f = model(x)
            t_model += time.perf_counter() - t
            out.append(f)
            labels.append(y)
    f = torch.nan_to_num(torch.cat(out), nan=0.0)
    return torch.nn.functional.normalize(f, dim=1), torch.cat(labels), t_model


def mean_ap(order, ql, gl, k):
    counts = {}
    for l in gl.tolist():
        counts[l] = counts.get(l, 0) + 1
    aps, r1 = [], []
    for i in range(len(ql)):
        gtp = counts.get(int(ql[i]), 0)
        rel = (gl[order[i]] == ql[i]).numpy()
        hits, s = 0, 0.0
        for j, r in enumerate(rel[:k]):
            if r:
                hits += 1
                s += hits / (j + 1)
        aps.append(s / gtp if gtp else 0.0)
        r1.append(float(rel[0]))
    return float(np.mean(aps)), float(np.mean(r1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--weights")
    ap.add_argument("--dataset-dir", required=True)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--top-k", type=int, default=1000)
    ap.add_argument("--engine", default="eager", choices=["eager", "folded", "onnxruntime"])
    a = ap.parse_args()
    from bench_embed_torch import build
    t_start = time.perf_counter()
    model = make_runner(build(a.model, a.weights).eval(), a.engine, a.size)
    t_load = time.perf_counter() - t_start
    mean, std = next(v for k, v in NORMS.items() if a.model.startswith(k))
    workers = os.cpu_count()
    t0 = time.perf_counter()
    q, ql, tq = embed(model, DevList(a.dataset_dir, "queries.csv", a.size, mean, std, False), a.batch, workers)
    g, gl, tg = embed(model, DevList(a.dataset_dir, "gallery.csv", a.size, mean, std, True), a.batch, workers)
    t1 = time.perf_counter()
    scores = q @ g.T
    k = min(a.top_k, g.shape[0])
    order = np.argsort(-scores.numpy(), axis=1, kind="stable")[:, :k]
    t2 = time.perf_counter()
    m, r1 = mean_ap(order, ql, gl, a.top_k)
    print(json.dumps({"map_at_k": m, "recall_at_1": r1, "k": a.top_k, "queries": len(ql), "gallery": len(gl),
                      "seconds_embed": t1 - t0, "seconds_model": tq + tg, "seconds_rank": t2 - t1,
                      "seconds_total": t2 - t0, "seconds_load": t_load, "engine": a.engine,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
