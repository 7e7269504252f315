"""What mining rests on: distances, positive/negative masks and the mining names the losses share.

Distances are Euclidean between L2-normalised embeddings. A loss works on an anchor set ``emb`` (N, D)
against a reference set ``ref`` (M, D) (the batch itself, or a cross-batch memory); ``ids`` / ``ref_ids``
are sample indices: a pair of one sample with itself is never used. The losses never list the tuples
(engine.training.losses); the tuple-listing miner that defines them is the tests' oracle
(tests/test_training_losses.py).
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
