#!/usr/bin/env python3
"""Reference values for the XBM phase (issue 6): ring-buffer contents, contrastive loss and its
gradient, from three independent references.

1. The XBM paper's reference code: `ContrastiveLoss` (per-anchor loop with masked_select, margin
   0.5, self-pairs dropped by s < 1 - 1e-5) and the training step
   `loss = C(x, x) + w * C(x, memory)` with the batch enqueued first. Its memory class is replaced
   by a correct FIFO (the original's wrap-around and "is full" test were wrong, SPEC "XBM").
2. pytorch-metric-learning's `CrossBatchMemory` + `ContrastiveLoss(pos_margin=1, neg_margin=0.5,
   CosineSimilarity, SumReducer)`: same pairs and the same gradient up to the 1/B mean; its
   negative term is relu(s - 0.5) instead of s, so its loss is lower by 0.5 per hard negative
   (checked here and recorded).

The memory starts with 15 of 20 slots filled and the 12-row batch wraps around its end. Features
are clustered so that positives and hard negatives (s > 0.5) both occur.

Run: ~/.cache/visual-search/venv/bin/python tools/make_xbm_fixtures.py
"""
import json
import os

import torch
import torch.nn.functional as F
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.losses import ContrastiveLoss as PmlContrastive
from pytorch_metric_learning.losses import CrossBatchMemory
from pytorch_metric_learning.reducers import SumReducer
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "model", "tests", "fixtures")
D, B, CAPACITY, FILLED, WEIGHT = 16, 12, 20, 15, 1.0


class XbmContrastiveLoss(torch.nn.Module):
    """Verbatim logic of XBM's ret_benchmark/losses/contrastive_loss.py."""

    def __init__(self, margin=0.5):
        super().__init__()
        self.margin = margin

    def forward(self, inputs_col, targets_col, inputs_row, target_row):
        n = inputs_col.size(0)
        sim_mat = torch.matmul(inputs_col, inputs_row.t())
        epsilon = 1e-5
        loss = []
        for i in range(n):
            pos_pair_ = torch.masked_select(sim_mat[i], targets_col[i] == target_row)
            pos_pair_ = torch.masked_select(pos_pair_, pos_pair_ < 1 - epsilon)
            neg_pair_ = torch.masked_select(sim_mat[i], targets_col[i] != target_row)
            neg_pair = torch.masked_select(neg_pair_, neg_pair_ > self.margin)
            pos_loss = torch.sum(-pos_pair_ + 1)
            neg_loss = torch.sum(neg_pair) if len(neg_pair) > 0 else 0
            loss.append(pos_loss + neg_loss)
        return sum(loss) / n


def fifo_enqueue(feats, labels, nxt, length, new_feats, new_labels, capacity=CAPACITY):
    """A correct ring buffer: slot (nxt + i) % capacity gets row i (the newest `capacity` rows
    survive when a batch is larger than the memory)."""
    n = new_feats.shape[0]
    slots = (nxt + torch.arange(n)) % capacity
    feats, labels = feats.clone(), labels.clone()
    feats[slots[-capacity:]] = new_feats[-capacity:]
    labels[slots[-capacity:]] = new_labels[-capacity:]
    return feats, labels, (nxt + n) % capacity, min(length + n, capacity)


def main():
    g = torch.Generator().manual_seed(6)
    base = torch.randn(D, generator=g)
    centres = F.normalize(base + 0.9 * torch.randn(10, D, generator=g), dim=1)
    batch_classes = torch.tensor([0, 1, 2, 3, 4, 5]).repeat_interleave(2)
    x = (centres[batch_classes] * 3 + 0.8 * torch.randn(B, D, generator=g)).requires_grad_(True)
    labels = batch_classes.long()
    mem_classes = torch.randint(0, 10, (FILLED,), generator=g)
    mem_before = F.normalize(centres[mem_classes] * 3 + 0.8 * torch.randn(FILLED, D, generator=g), dim=1)
    mem_labels_before = mem_classes.long()

    # 1. XBM reference step.
    xn = F.normalize(x, dim=1)
    feats = torch.zeros(CAPACITY, D)
    mem_l = torch.zeros(CAPACITY, dtype=torch.long)
    feats[:FILLED], mem_l[:FILLED] = mem_before, mem_labels_before
    feats, mem_l, nxt, length = fifo_enqueue(feats, mem_l, FILLED, FILLED, xn.detach(), labels)
    assert length == CAPACITY and nxt == (FILLED + B) % CAPACITY
    crit = XbmContrastiveLoss(0.5)
    loss_batch = crit(xn, labels, xn, labels)
    loss_memory = crit(xn, labels, feats[:length], mem_l[:length])
    loss = loss_batch + WEIGHT * loss_memory
    (grad,) = torch.autograd.grad(loss, x)

    # 2. pytorch-metric-learning with the same semantics.
    inner = PmlContrastive(pos_margin=1, neg_margin=0.5, distance=CosineSimilarity(), reducer=SumReducer())
    pml_mem = CrossBatchMemory(PmlContrastive(pos_margin=1, neg_margin=0.5, distance=CosineSimilarity(),
                                              reducer=SumReducer()), embedding_size=D, memory_size=CAPACITY)
    pml_mem.embedding_memory[:FILLED] = mem_before
    pml_mem.label_memory[:FILLED] = mem_labels_before
    pml_mem.queue_idx = FILLED
    pml_loss = inner(x, labels) + WEIGHT * pml_mem(x, labels)
    (pml_grad,) = torch.autograd.grad(pml_loss, x)
    # PML stores raw embeddings (its distance normalises), so compare after normalising.
    assert torch.allclose(F.normalize(pml_mem.embedding_memory, dim=1), feats, atol=1e-6), "PML ring differs"
    assert torch.equal(pml_mem.label_memory.long(), mem_l)
    sim_b = xn.detach() @ xn.detach().t()
    sim_m = xn.detach() @ feats.t()
    hard = int(((labels[:, None] != labels[None, :]) & (sim_b > 0.5)).sum()
               + ((labels[:, None] != mem_l[None, :]) & (sim_m > 0.5)).sum())
    positives = int(((labels[:, None] == mem_l[None, :]) & (sim_m < 1 - 1e-5)).sum())
    assert hard > 0 and positives > 0, (hard, positives)
    pml_as_xbm = (pml_loss.item() + 0.5 * hard) / B
    assert abs(pml_as_xbm - loss.item()) < 1e-5, (pml_as_xbm, loss.item())
    assert torch.allclose(pml_grad / B, grad, atol=1e-6)

    os.makedirs(OUT, exist_ok=True)
    save_file({
        "x": x.detach().contiguous(),
        "labels": labels,
        "memory_before": mem_before.contiguous(),
        "memory_labels_before": mem_labels_before,
        "memory_after": feats.contiguous(),
        "memory_labels_after": mem_l,
        "grad_x": grad.contiguous(),
        "pml_grad_x_over_b": (pml_grad / B).contiguous(),
    }, os.path.join(OUT, "xbm_contrastive.safetensors"))
    meta = {
        "generator": "tools/make_xbm_fixtures.py",
        "torch": torch.__version__,
        "capacity": CAPACITY,
        "next_before": FILLED,
        "next_after": nxt,
        "weight": WEIGHT,
        "margin": 0.5,
        "loss_batch": loss_batch.item(),
        "loss_memory": loss_memory.item(),
        "loss": loss.item(),
        "pml_loss_sum": pml_loss.item(),
        "hard_negatives": hard,
    }
    with open(os.path.join(OUT, "xbm_contrastive.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
