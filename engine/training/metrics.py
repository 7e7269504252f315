"""Small retrieval metrics for validation during training (torch, leave-one-out, unit rows)."""

from __future__ import annotations

import torch


@torch.no_grad()
def retrieval_metrics(vectors: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict:
    """{'recall@k': ..., 'map': ...} over vectors (N, D) (L2-normalised) and labels (N,), leave-one-out.

    Queries without any other same-class item are left out.
    """
    v = vectors.float()
    labels = labels.to(v.device)
    n = v.shape[0]
    sim = v @ v.t()
    sim.fill_diagonal_(float("-inf"))
    order = sim.argsort(dim=1, descending=True)[:, : n - 1]          # (N, N-1), self last -> dropped
    match = labels[order] == labels[:, None]                          # (N, N-1)
    n_pos = match.sum(1)
    valid = n_pos > 0
    out: dict[str, float] = {}
    if not bool(valid.any()):
        return {f"recall@{k}": 0.0 for k in ks} | {"map": 0.0}
    for k in ks:
        out[f"recall@{k}"] = float(match[:, :k].any(1)[valid].float().mean())
    hits = match.float().cumsum(1)
    ranks = torch.arange(1, n, device=v.device, dtype=torch.float32)[None, :]
    ap = ((hits / ranks) * match.float()).sum(1) / n_pos.clamp_min(1)
    out["map"] = float(ap[valid].mean())
    return out


@torch.no_grad()
def query_top1(q: torch.Tensor, q_labels: torch.Tensor, r: torch.Tensor, r_labels: torch.Tensor) -> float:
    """Share of queries whose nearest retrieval item has the query's label."""
    nn_idx = (q.float() @ r.float().t()).argmax(1)
    return float((r_labels.to(q.device)[nn_idx] == q_labels.to(q.device)).float().mean())
