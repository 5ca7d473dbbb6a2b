#!/usr/bin/env python3
"""Baselines for `visual-search bench train`: the same train step in PyTorch, on the same model,
batch and recipe, in one run:
  - eager f32;
  - bf16 autocast (torch.autocast("cpu", torch.bfloat16): bf16 convolutions and matmuls, f32
    master weights and optimiser state), the recipe's mixed precision.

A step: forward (frozen batch norm, as the recipe trains) → embedding dropout 0.2 → sub-centre
ArcFace (k 3) with adaptive margins → backward → global-norm clipping (5.0) → AdamW (weight
decay on >= 2-D tensors only). The input batch is read from --input (raw little-endian f32,
[batch, 3, size, size]) so both sides see the same photos; the labels are --classes classes in
turn. For each mode: the median step time over --steps after --warmup, the split into forward,
backward and optimiser, and the CPU cores busy in each (process CPU time / wall time). Then the
heaviest ops of one eager step from torch.profiler. Prints JSON.
"""
import argparse
import json
import math
import os
import resource
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from bench_embed_torch import build  # noqa: E402
from make_arcface_fixtures import (  # noqa: E402
    ArcMarginProductSubcenter,
    arcface_adaptive_margin_loss,
    margins_from_counts,
)


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Phases:
    """Wall and CPU seconds per phase of a step."""

    def __init__(self):
        self.wall, self.cpu = {}, {}

    def time(self, name, fn):
        w, c = time.perf_counter(), cpu_seconds()
        out = fn()
        self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - w
        self.cpu[name] = self.cpu.get(name, 0.0) + cpu_seconds() - c
        return out


def step_fn(model, head, margins, optim, params, x, y, autocast):
    def run(phases):
        def forward():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                feats = F.dropout(model(x), 0.2, training=True)
                cosine = head(feats)
            return arcface_adaptive_margin_loss(cosine.float(), y, margins, cosine.shape[1], 30.0)

        loss = phases.time("forward", forward)
        optim.zero_grad(set_to_none=True)
        phases.time("backward", loss.backward)

        def update():
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            optim.step()

        phases.time("optimizer", update)
        return float(loss)
    return run


def measure(args, model, head, margins, x, y, autocast):
    def groups(module, lr):
        decay = [p for p in module.parameters() if p.ndim >= 2]
        no_decay = [p for p in module.parameters() if p.ndim < 2]
        return [{"params": decay, "lr": lr, "weight_decay": 0.1},
                {"params": no_decay, "lr": lr, "weight_decay": 0.0}]
    optim = torch.optim.AdamW(groups(model, 1e-4) + groups(head, 1e-3), eps=1e-8)
    params = list(model.parameters()) + list(head.parameters())
    run = step_fn(model, head, margins, optim, params, x, y, autocast)
    for _ in range(args.warmup):
        run(Phases())
    times, losses, total = [], [], Phases()
    for _ in range(args.steps):
        p = Phases()
        t = time.perf_counter()
        losses.append(run(p))
        times.append(time.perf_counter() - t)
        for k in p.wall:
            total.wall[k] = total.wall.get(k, 0.0) + p.wall[k]
            total.cpu[k] = total.cpu.get(k, 0.0) + p.cpu[k]
    median = float(np.median(times))
    return {
        "images_per_s": x.shape[0] / median,
        "step_s": median,
        "phases_s": {k: v / args.steps for k, v in total.wall.items()},
        "cores": {k: total.cpu[k] / max(total.wall[k], 1e-9) for k in total.wall},
        "losses": losses,
    }


def native_bf16():
    """Whether oneDNN runs bf16 natively here (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - an older build without the probe
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--weights")
    ap.add_argument("--input", required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no-bf16", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.from_numpy(np.fromfile(args.input, dtype="<f4").reshape(args.batch, 3, args.size, args.size).copy())
    y = torch.arange(args.batch) % args.classes
    model = build(args.model, args.weights)
    model.train()
    for mod in model.modules():  # frozen batch norm
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.eval()
    with torch.no_grad():
        dim = model(x[:1]).shape[1]
    # Class sizes 1..7 in turn (as `bench train` builds its class index), so margins differ.
    margins = margins_from_counts(1 + np.arange(args.classes) % 7)
    head = ArcMarginProductSubcenter(dim, args.classes, 3)
    out = {"threads": torch.get_num_threads(), "torch": torch.__version__, "dim": dim}
    out["eager_f32"] = measure(args, model, head, margins, x, y, False)
    if not args.no_bf16 and not native_bf16():
        # Without AVX512-BF16/AMX, oneDNN emulates bf16 on one core: a ViT-B/32 step took
        # minutes (over 20 on a 2-core AVX2 machine), slower than f32, so it is not timed.
        out["bf16_autocast"] = None
        out["bf16_autocast_error"] = (f"not timed: this CPU ({torch.backends.cpu.get_cpu_capability()}) "
                                      "has no native bf16, and PyTorch's emulated bf16 is slower than f32")
    elif not args.no_bf16:
        try:
            out["bf16_autocast"] = measure(args, model, head, margins, x, y, True)
        except Exception as e:  # noqa: BLE001
            out["bf16_autocast"] = None
            out["bf16_autocast_error"] = str(e)
    optim = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), eps=1e-8)
    params = list(model.parameters()) + list(head.parameters())
    run = step_fn(model, head, margins, optim, params, x, y, False)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run(Phases())
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    out["top_ops_ms"] = [[e.key, e.self_cpu_time_total / 1e3] for e in ops]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
