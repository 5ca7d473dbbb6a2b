#!/usr/bin/env python3
"""The issue-5 recipe in PyTorch, for comparison with `visual-search train`.

EfficientNet-Lite0 (timm tf_efficientnet_lite0 + the efficientnet_pytorch ImageNet weights),
frozen batch norm, embedding dropout 0.2, sub-centre ArcFace (k=3) with dynamic margins (s=30,
m=0.45, m_min=0.05), AdamW (backbone lr = factor x head lr, weight decay only on >=2-D tensors,
eps 1e-8), linear warmup + cosine per step, global-norm clipping at 5, AutoAugment pipeline
(Resize(s) -> AutoAugment(IMAGENET) -> Resize((s, s))), DataLoader workers, dev mAP@1000 before
and after. Reads the same YAML config as `visual-search train`. Prints JSON.

  python tools/train_torch.py --config configs/grocery_lite0.yml --weights W
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
from rank_torch import DevList, embed, mean_ap  # noqa: E402

MEAN, STD = (127 / 255,) * 3, (128 / 255,) * 3


class TrainList(torch.utils.data.Dataset):
    def __init__(self, root, csv_name, size, classes):
        with open(os.path.join(root, csv_name)) as f:
            self.rows = list(csv.DictReader(f))
        self.root, self.classes = root, classes
        self.t = transforms.Compose([
            transforms.Resize(size), transforms.AutoAugment(transforms.AutoAugmentPolicy.IMAGENET),
            transforms.Resize((size, size)), transforms.ToTensor(), transforms.Normalize(MEAN, STD)])

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        r = self.rows[i]
        img = ImageOps.exif_transpose(Image.open(os.path.join(self.root, r["name"]))).convert("RGB")
        return self.t(img), self.classes[int(r["class"])]


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--weights", required=True)
    a = ap.parse_args()
    c = yaml.safe_load(open(a.config))
    d, o, m = c["dataset"], c["optim"], c["model"]
    root = os.path.expanduser(d["product10k"]["train_valid_root"])
    dev_root = os.path.expanduser(d["dev_set"]["eval_root"])
    size, bs = d["input_size"], d["batch_size"]
    torch.manual_seed(d.get("seed", 42))
    with open(os.path.join(root, d["product10k"]["train_list"])) as f:
        labels = [int(r["class"]) for r in csv.DictReader(f)]
    uniq = sorted(set(labels))
    classes = {l: i for i, l in enumerate(uniq)}
    counts = np.array([labels.count(l) for l in uniq])
    margins = margins_from_counts(counts)
    model = build("efficientnet_lite0", a.weights)
    head = ArcMarginProductSubcenter(1280, len(uniq), 3)
    t0 = time.perf_counter()
    model.eval()
    before = dev_map(model, dev_root, size, bs)
    t_eval = time.perf_counter() - t0

    def groups(module, lr):
        decay = [p for p in module.parameters() if p.ndim >= 2]
        no_decay = [p for p in module.parameters() if p.ndim < 2]
        return [{"params": decay, "lr": lr, "weight_decay": o.get("weight_decay", 0.1)},
                {"params": no_decay, "lr": lr, "weight_decay": 0.0}]
    lr = o["lr_head"]
    factor = o.get("backbone_lr_factor", 0.01)
    optim = torch.optim.AdamW(groups(model, lr * factor) + groups(head, lr), eps=1e-8)
    base_lrs = [g["lr"] for g in optim.param_groups]
    loader = torch.utils.data.DataLoader(TrainList(root, d["product10k"]["train_list"], size, classes), batch_size=bs,
                                         shuffle=True, drop_last=True, num_workers=d.get("num_workers", 2))
    total = len(loader) * o["epochs"]
    warmup = o["warmup_steps"]
    step, seen = 0, 0
    model.train()
    for mod in model.modules():  # frozen batch norm
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.eval()
    t1 = time.perf_counter()
    for _ in range(o["epochs"]):
        for x, y in loader:
            mult = step / max(1, warmup) if step < warmup else max(0.0, 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))
            for g, b in zip(optim.param_groups, base_lrs):
                g["lr"] = b * mult
            feats = F.dropout(model(x), m.get("dropout", 0.2), training=True)
            loss = arcface_loss(head(feats), y, margins, 30.0)
            optim.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(head.parameters()), o.get("grad_clip", 5.0))
            optim.step()
            step += 1
            seen += x.shape[0]
    t_train = time.perf_counter() - t1
    model.eval()
    after = dev_map(model, dev_root, size, bs)
    print(json.dumps({"map_before": before, "map_after": after, "steps": step, "train_seconds": t_train,
                      "train_images_per_s": seen / t_train, "eval_seconds": t_eval,
                      "wall_seconds": time.perf_counter() - t0, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
