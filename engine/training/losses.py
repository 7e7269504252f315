"""Metric losses on L2-normalised embeddings, computed on the tuples a miner chose.

Template: a base class whose ``forward`` checks shapes, calls the miner (no gradients), computes
the per-tuple losses and averages over the tuples with a non-zero loss. Every loss takes an
optional reference set (``ref``, ``ref_labels``, ``ref_ids``) so the same code serves the batch
and the cross-batch memory (anchors from the batch, positives/negatives from the memory).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from engine.training.miners import PairMiner, TripletMiner, _defaults, pair_masks, pairwise_distance


class LossOutput(NamedTuple):
    loss: torch.Tensor     # scalar, differentiable w.r.t. the anchors (and ref, if it carries gradients)
    tuples: int            # number of mined tuples (triplets, or pairs for the contrastive loss)


def _avg_nonzero(per_tuple: torch.Tensor, anchor_emb: torch.Tensor) -> torch.Tensor:
    nonzero = per_tuple > 0
    if not bool(nonzero.any()):
        return anchor_emb.sum() * 0.0          # zero, but still connected to the graph
    return per_tuple[nonzero].mean()


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


class TripletLoss(BaseMetricLoss):
    """mean over mined triplets with a positive loss of max(0, d(a,p) - d(a,n) + margin)."""

    def __init__(self, margin: float = 0.1, mining: str = "semihard") -> None:
        super().__init__()
        self.margin = float(margin)
        self.miner = TripletMiner(mining, margin)

    def compute(self, emb, labels, ids, ref, ref_labels, ref_ids) -> LossOutput:
        # one differentiable (N, M) distance matrix; triplets index into it (no (T, D) gathers,
        # which for a large memory would be millions of rows)
        dist = pairwise_distance(emb, ref)
        pos, neg = pair_masks(labels, ref_labels, ids, ref_ids)
        a, p, n = self.miner.mine(dist, pos, neg)
        if a.numel() == 0:
            return LossOutput(emb.sum() * 0.0, 0)
        per = torch.relu(dist[a, p] - dist[a, n] + self.margin)
        return LossOutput(_avg_nonzero(per, emb), int(a.numel()))


class ContrastiveLoss(BaseMetricLoss):
    """Positive pairs: max(0, d - pos_margin); negative pairs: max(0, neg_margin - d); averaged
    over the pairs with a positive loss."""

    def __init__(self, pos_margin: float = 0.0, neg_margin: float = 0.5) -> None:
        super().__init__()
        self.pos_margin, self.neg_margin = float(pos_margin), float(neg_margin)
        self.miner = PairMiner(pos_margin, neg_margin)

    def compute(self, emb, labels, ids, ref, ref_labels, ref_ids) -> LossOutput:
        dist = pairwise_distance(emb, ref)
        pos_m, neg_m = pair_masks(labels, ref_labels, ids, ref_ids)
        a1, p, a2, n = self.miner.mine(dist, pos_m, neg_m)
        if a1.numel() + a2.numel() == 0:
            return LossOutput(emb.sum() * 0.0, 0)
        pos = torch.relu(dist[a1, p] - self.pos_margin)
        neg = torch.relu(self.neg_margin - dist[a2, n])
        return LossOutput(_avg_nonzero(torch.cat([pos, neg]), emb), int(a1.numel() + a2.numel()))


def build_loss(name: str, margin: float, mining: str) -> BaseMetricLoss:
    """'triplet' (margin, mining) or 'contrastive' (margin = the negative margin; pairs mined by loss)."""
    if name == "triplet":
        return TripletLoss(margin, mining)
    if name == "contrastive":
        return ContrastiveLoss(0.0, margin)
    raise ValueError(f"unknown loss {name!r}: use 'triplet' or 'contrastive'")
