#!/usr/bin/env python3
"""Baselines for `visual-search bench embed`, on the same model and input, in one run:
  - PyTorch eager (inference mode);
  - PyTorch with batch norm folded into the convolutions (torch.fx's fuse) and channels-last
    memory format, the fastest plain-PyTorch CPU setup;
  - with --bf16, the same folded channels-last model under torch.autocast(bfloat16) (oneDNN's
    AMX kernels where the CPU has them);
  - ONNX Runtime (Python, CPU EP, all graph optimisations) on the model exported by
    torch.onnx.export (opset 17, dynamic batch), as a deployment would run it.

Models: efficientnet_lite0 (timm tf_efficientnet_lite0 with the real weights, when --weights is
given), convnext_<size> (timm), vit_<b32|b16|...>_clip (open_clip VisionTransformer), resnet<N>
(timm); random weights otherwise (speed does not depend on the values). The input batch is read
from --input (raw little-endian f32, shape [batch, 3, size, size]) so both sides see the same
images. Prints JSON: {"images_per_s": eager, "folded_channels_last": ..., "onnxruntime": ...,
"onnxruntime_version": ..., "threads": ..., "top_ops_ms": [...]}; a baseline that cannot run
reports null and its error.
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


def best_of(fn, iters):
    fn()  # warm-up
    best = float("inf")
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def folded_channels_last(model, x, iters, bf16=False):
    import copy
    from torch.fx.experimental.optimization import fuse
    try:
        m = fuse(copy.deepcopy(model))  # folds Conv2d + BatchNorm2d for eval
    except Exception:
        m = torch.jit.freeze(torch.jit.trace(copy.deepcopy(model), x))  # folds conv-bn too
    m = m.to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return best_of(lambda: m(xc), iters)


def onnxruntime_baseline(model, x, iters):
    import os
    import tempfile
    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.onnx")
        torch.onnx.export(model, (x[:1],), path, opset_version=17, input_names=["input"],
                          output_names=["embedding"], dynamic_axes={"input": {0: "batch"}},
                          dynamo=False)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        xn = x.numpy()
        return best_of(lambda: sess.run(None, {"input": xn}), iters), ort.__version__


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--weights")
    ap.add_argument("--input", required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--bf16", action="store_true",
                    help="also time the folded channels-last model under bf16 autocast")
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
    result = {"images_per_s": a.batch / best, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "top_ops_ms": ops}
    try:
        result["folded_channels_last"] = a.batch / folded_channels_last(model, x, a.iters)
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        result["folded_channels_last"] = None
        result["folded_channels_last_error"] = repr(e)
    if a.bf16:
        try:
            result["folded_channels_last_bf16"] = a.batch / folded_channels_last(model, x, a.iters, bf16=True)
        except Exception as e:  # noqa: BLE001
            result["folded_channels_last_bf16"] = None
            result["folded_channels_last_bf16_error"] = repr(e)
    try:
        t, version = onnxruntime_baseline(model, x, a.iters)
        result["onnxruntime"] = a.batch / t
        result["onnxruntime_version"] = version
    except Exception as e:  # noqa: BLE001
        result["onnxruntime"] = None
        result["onnxruntime_error"] = repr(e)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
