"""Miners: choose the tuples a metric loss is computed on, as index tensors, without gradients.

Distances are Euclidean between L2-normalised embeddings. Every miner works on an anchor set
``emb`` (N, D) against a reference set ``ref`` (M, D) (the batch itself, or a cross-batch memory);
``ids`` / ``ref_ids`` are sample indices: a pair of one sample with itself is never used.
"""

from __future__ import annotations

import torch

TRIPLET_MININGS = ("semihard", "hard", "all")


def pairwise_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (N, M) between rows of x (N, D) and y (M, D); differentiable (no sqrt(0))."""
    sq = (x * x).sum(1, keepdim=True) + (y * y).sum(1)[None, :] - 2.0 * (x @ y.t())
    return sq.clamp_min(1e-12).sqrt()


def pair_masks(labels: torch.Tensor, ref_labels: torch.Tensor, ids: torch.Tensor,
               ref_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive mask, negative mask), each (N, M) bool: same label and other sample / other label.

    A reference row with a negative label (an empty memory slot) is neither positive nor negative."""
    same = labels[:, None] == ref_labels[None, :]
    other_sample = ids[:, None] != ref_ids[None, :]
    valid = (ref_labels >= 0)[None, :]
    return same & other_sample & valid, ~same & valid


def check_triplet_mining(kind: str) -> str:
    """``kind`` if it is one of TRIPLET_MININGS, else a ValueError naming them."""
    if kind not in TRIPLET_MININGS:
        raise ValueError(f"triplet mining must be one of {TRIPLET_MININGS}, not {kind!r}")
    return kind


def _check(emb: torch.Tensor, labels: torch.Tensor, name: str) -> None:
    if emb.ndim != 2:
        raise ValueError(f"{name} must be (N, D), got shape {tuple(emb.shape)}")
    if labels.ndim != 1 or labels.shape[0] != emb.shape[0]:
        raise ValueError(f"{name} labels must be ({emb.shape[0]},), got shape {tuple(labels.shape)}")


def _defaults(emb, labels, ids, ref, ref_labels, ref_ids):
    if ids is None:
        ids = torch.arange(emb.shape[0], device=emb.device)
    if ref is None:
        ref, ref_labels, ref_ids = emb, labels, ids
    elif ref_ids is None:  # a separate reference set without ids: no sample is shared
        ref_ids = torch.arange(ref.shape[0], device=ref.device) + int(ids.max().item()) + 1
    _check(emb, labels, "embeddings")
    _check(ref, ref_labels, "reference embeddings")
    if emb.shape[1] != ref.shape[1]:
        raise ValueError(f"embedding sizes differ: {emb.shape[1]} vs reference {ref.shape[1]}")
    return ids, ref, ref_labels, ref_ids


class TripletMiner:
    """Returns (a, p, n): anchor rows of ``emb``; positive and negative rows of ``ref``.

    - ``semihard``: every (a, p, n) with d(a,p) < d(a,n) < d(a,p) + margin
      (i.e. 0 < d(a,p) - d(a,n) + margin < margin).
    - ``hard`` (batch-hard): per anchor, its farthest positive and nearest negative (one triplet).
    - ``all``: every triplet violating the margin, d(a,n) < d(a,p) + margin (the only ones with a
      non-zero loss; the others would add nothing).
    """

    def __init__(self, kind: str = "semihard", margin: float = 0.1) -> None:
        self.kind = check_triplet_mining(kind)
        self.margin = float(margin)

    @torch.no_grad()
    def __call__(self, emb: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor | None = None,
                 ref: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None,
                 ref_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids, ref, ref_labels, ref_ids = _defaults(emb, labels, ids, ref, ref_labels, ref_ids)
        pos, neg = pair_masks(labels, ref_labels, ids, ref_ids)
        return self.mine(pairwise_distance(emb.float(), ref.float()), pos, neg)

    @torch.no_grad()
    def mine(self, dist: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The same on a distance matrix (N, M) and positive / negative masks (N, M)."""
        dist = dist.detach()
        if self.kind == "hard":
            valid = pos.any(1) & neg.any(1)
            d_pos = dist.masked_fill(~pos, float("-inf"))
            d_neg = dist.masked_fill(~neg, float("inf"))
            a = valid.nonzero().squeeze(1)
            return a, d_pos.argmax(1)[a], d_neg.argmin(1)[a]
        a, p = pos.nonzero(as_tuple=True)                  # every (anchor, positive) pair
        d_ap = dist[a, p][:, None]                          # (pairs, 1)
        d_an = dist[a]                                      # (pairs, M)
        ok = neg[a] & (d_an < d_ap + self.margin)
        if self.kind == "semihard":
            ok &= d_an > d_ap
        pair_i, n = ok.nonzero(as_tuple=True)
        return a[pair_i], p[pair_i], n


class PairMiner:
    """Returns (a1, p, a2, n) for the contrastive loss: every positive pair farther than ``pos_margin``
    and every negative pair nearer than ``neg_margin`` (the pairs with a non-zero loss)."""

    def __init__(self, pos_margin: float = 0.0, neg_margin: float = 0.5) -> None:
        self.pos_margin = float(pos_margin)
        self.neg_margin = float(neg_margin)

    @torch.no_grad()
    def __call__(self, emb: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor | None = None,
                 ref: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None,
                 ref_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        ids, ref, ref_labels, ref_ids = _defaults(emb, labels, ids, ref, ref_labels, ref_ids)
        pos, neg = pair_masks(labels, ref_labels, ids, ref_ids)
        return self.mine(pairwise_distance(emb.float(), ref.float()), pos, neg)

    @torch.no_grad()
    def mine(self, dist: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, ...]:
        dist = dist.detach()
        a1, p = (pos & (dist > self.pos_margin)).nonzero(as_tuple=True)
        a2, n = (neg & (dist < self.neg_margin)).nonzero(as_tuple=True)
        return a1, p, a2, n
