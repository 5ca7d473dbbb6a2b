#!/usr/bin/env python3
"""Baseline for `visual-search bench embed`: PyTorch eager inference on the same model and input.

Models: efficientnet_lite0 (timm tf_efficientnet_lite0 with the real weights, when --weights is
given), convnext_<size> (timm), vit_<b32|b16|...>_clip (open_clip VisionTransformer), resnet<N>
(timm); random weights otherwise (speed does not depend on the values). The input batch is read
from --input (raw little-endian f32, shape [batch, 3, size, size]) so both sides see the same
images. Prints JSON: {"images_per_s": ..., "threads": ..., "top_ops": [...]}.
"""
import argparse
import json
import time

import numpy as np
import torch


def build(name, weights):
    import timm
    if name.startswith("efficientnet_lite"):
        model = timm.create_model("tf_" + name, pretrained=False)
        if weights:
            import sys, os
            sys.path.insert(0, os.path.dirname(__file__))
            from make_model_fixtures import timm_lite_to_efficientnet_pytorch
            sd = torch.load(weights, map_location="cpu", weights_only=False)
            repeats = [len(s) for s in model.blocks]
            to_timm = timm_lite_to_efficientnet_pytorch(
                {k: k for k in model.state_dict() if not k.endswith("num_batches_tracked")}, repeats)
            model.load_state_dict({to_timm[k]: v for k, v in sd.items() if k in to_timm}, strict=False)
        model.reset_classifier(0)
        return model
    if name.startswith("convnext_"):
        return timm.create_model(name, pretrained=False, num_classes=0)
    if name.startswith("resnet"):
        return timm.create_model(name, pretrained=False, num_classes=0)
    if name.startswith("vit_") and name.endswith("_clip"):
        from open_clip.transformer import VisionTransformer
        v = name[len("vit_"):-len("_clip")]
        patch, width, layers, heads, out = {"b32": (32, 768, 12, 12, 512), "b16": (16, 768, 12, 12, 512),
                                            "l14": (14, 1024, 24, 16, 768)}[v]
        return VisionTransformer(image_size=224, patch_size=patch, width=width, layers=layers, heads=heads,
                                 mlp_ratio=4.0, output_dim=out)
    raise SystemExit(f"unknown model {name}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--weights")
    ap.add_argument("--input", required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--iters", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    x = torch.from_numpy(np.fromfile(a.input, dtype="<f4").reshape(a.batch, 3, a.size, a.size).copy())
    model = build(a.model, a.weights).eval()
    with torch.inference_mode():
        model(x)  # warm-up
        best = float("inf")
        for _ in range(a.iters):
            t = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - t)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            model(x)
    ops = sorted(((e.key, e.self_cpu_time_total / 1e3) for e in prof.key_averages()), key=lambda kv: -kv[1])[:6]
    print(json.dumps({"images_per_s": a.batch / best, "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "top_ops_ms": ops}))


if __name__ == "__main__":
    main()
