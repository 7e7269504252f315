"""Metric losses on L2-normalised embeddings: the mean loss over the tuples a miner would choose.

Template (pytorch-metric-learning's): a base class whose ``forward`` checks shapes and calls
``compute``. Every loss takes an optional reference set (``ref``, ``ref_labels``, ``ref_ids``) so
the same code serves the batch and the cross-batch memory (anchors from the batch,
positives/negatives from the memory; a reference row labelled -1 is an empty slot).

The losses equal the mean over the tuples a miner would list (tests/test_training_losses.py checks
them against such a miner and brute-force loops) but never list those tuples: with semi-hard mining against a memory
there are millions, and listing them (``nonzero``) makes the host wait for the GPU. Instead the
negatives of each anchor are sorted once, and for every (anchor, positive) pair the number and
the sum of the negatives inside its window (d(a,p), d(a,p) + margin) come from ``searchsorted``
on that sorted row and its prefix sums. No step reads a value back to the host: the loss and the
tuple count stay on the device until the trainer reads them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from engine.training.miners import _defaults, check_triplet_mining, pair_masks, pairwise_distance


class LossOutput(NamedTuple):
    loss: torch.Tensor     # scalar, differentiable w.r.t. the anchors (and ref, if it carries gradients)
    tuples: torch.Tensor   # 0-dim long on the loss's device: number of mined triplets (or pairs)
    total: torch.Tensor | None = None   # the sum the loss averages (loss = total / max(count, 1)); both
    count: torch.Tensor | None = None   # add up over anchors, so data-parallel ranks can share one mean


def _output(total: torch.Tensor, count: torch.Tensor, tuples: torch.Tensor) -> LossOutput:
    return LossOutput(_mean(total, count), tuples, total, count)


def _mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """total / count, or 0 (still connected to the graph) when count == 0; no host sync."""
    return (total / count.clamp_min(1)).float()


class BaseMetricLoss(nn.Module):
    """forward(emb (N, D), labels (N,), ids (N,)?, ref (M, D)?, ref_labels (M,)?, ref_ids (M,)?) -> LossOutput."""

    def forward(self, emb: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor | None = None,
                ref: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None,
                ref_ids: torch.Tensor | None = None) -> LossOutput:
        ids, ref, ref_labels, ref_ids = _defaults(emb, labels, ids, ref, ref_labels, ref_ids)
        if not emb.is_floating_point():
            raise ValueError("embeddings must be floating point")
        return self.compute(emb.float(), labels, ids, ref.float(), ref_labels, ref_ids)

    def compute(self, emb, labels, ids, ref, ref_labels, ref_ids) -> LossOutput:  # pragma: no cover
        raise NotImplementedError


def window_triplet_sums(dist: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, margin: float,
                        semihard: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of max(0, d(a,p) - d(a,n) + margin) and the number of triplets, over every (a, p, n)
    with p in ``pos[a]``, n in ``neg[a]`` and d(a,n) in (d(a,p), d(a,p) + margin) (``semihard``) or
    d(a,n) < d(a,p) + margin (all margin violators). dist (N, M) differentiable; masks (N, M) bool.
    Cost O(N M log M); returns (float64 (float32 on MPS) 0-dim sum, long 0-dim count)."""
    n_rows = dist.shape[0]
    d_neg = dist.masked_fill(~neg, float("inf"))
    sorted_neg, _ = d_neg.sort(dim=1)                                   # negatives first, +inf after
    finite = torch.isfinite(sorted_neg)
    # float64 prefix sums (exact enough for long rows); Apple's MPS has no float64: float32 there
    acc = torch.float32 if dist.device.type == "mps" else torch.float64
    zero = torch.zeros(n_rows, 1, dtype=acc, device=dist.device)
    prefix = torch.cat([zero, torch.where(finite, sorted_neg, 0.0).to(acc).cumsum(1)], 1)  # (N, M+1)
    d_ap = dist.detach()
    hi = torch.searchsorted(sorted_neg.detach(), (d_ap + margin).contiguous(), right=False)  # # d_an < d_ap + m
    if semihard:
        lo = torch.searchsorted(sorted_neg.detach(), d_ap.contiguous(), right=True)        # # d_an <= d_ap
    else:
        lo = torch.zeros_like(hi)
    count = (hi - lo).clamp_min(0) * pos                                  # (N, M): triplets per (a, p)
    window = prefix.gather(1, hi) - prefix.gather(1, torch.minimum(lo, hi))  # sum of their d(a, n)
    per_pair = count.to(acc) * (dist.to(acc) + margin) - window
    return torch.where(pos, per_pair, 0.0).sum(), count.sum()


class TripletLoss(BaseMetricLoss):
    """mean over mined triplets with a positive loss of max(0, d(a,p) - d(a,n) + margin)."""

    def __init__(self, margin: float = 0.1, mining: str = "semihard") -> None:
        super().__init__()
        self.margin = float(margin)
        self.mining = check_triplet_mining(mining)

    def compute(self, emb, labels, ids, ref, ref_labels, ref_ids) -> LossOutput:
        dist = pairwise_distance(emb, ref)                       # (N, M), differentiable
        pos, neg = pair_masks(labels, ref_labels, ids, ref_ids)
        if self.mining == "hard":  # per anchor its farthest positive and nearest negative
            valid = pos.any(1) & neg.any(1)
            d_p = dist.masked_fill(~pos, float("-inf")).amax(1)
            d_n = dist.masked_fill(~neg, float("inf")).amin(1)
            per = torch.where(valid, torch.relu(d_p - d_n + self.margin), 0.0)
            return _output(per.sum(), (per > 0).sum(), valid.sum())
        total, count = window_triplet_sums(dist, pos, neg, self.margin, self.mining == "semihard")
        return _output(total, count, count)


class ContrastiveLoss(BaseMetricLoss):
    """Positive pairs: max(0, d - pos_margin); negative pairs: max(0, neg_margin - d); averaged
    over the pairs with a positive loss."""

    def __init__(self, pos_margin: float = 0.0, neg_margin: float = 0.5) -> None:
        super().__init__()
        self.pos_margin, self.neg_margin = float(pos_margin), float(neg_margin)

    def compute(self, emb, labels, ids, ref, ref_labels, ref_ids) -> LossOutput:
        dist = pairwise_distance(emb, ref)
        pos_m, neg_m = pair_masks(labels, ref_labels, ids, ref_ids)
        pos = torch.where(pos_m, torch.relu(dist - self.pos_margin), 0.0)
        neg = torch.where(neg_m, torch.relu(self.neg_margin - dist), 0.0)
        count = (pos > 0).sum() + (neg > 0).sum()
        return _output(pos.sum() + neg.sum(), count, count)


def build_loss(name: str, margin: float, mining: str) -> BaseMetricLoss:
    """'triplet' (margin, mining) or 'contrastive' (margin = the negative margin; pairs mined by loss)."""
    if name == "triplet":
        return TripletLoss(margin, mining)
    if name == "contrastive":
        return ContrastiveLoss(0.0, margin)
    raise ValueError(f"unknown loss {name!r}: use 'triplet' or 'contrastive'")
