"""Retrieval metrics on descriptor vectors.

Vectors are L2-normalised rows (N, D); similarity is the dot product (cosine). Everything is computed
in blocks of query rows, so 10k x 10k never needs the full N x N matrix in memory.

Leave-one-out: every image is a query against all the others (itself excluded).

Ties: the ranking sorts by decreasing similarity, and equal similarities are ordered by increasing
index in the database (a stable sort by index). So a tie between a positive and a negative is won by
whichever has the lower index; results are deterministic and never depend on the block size.

- R@K: share of queries with a same-label image among their K nearest others. Every query counts,
  also one whose label has no other image (it can only miss).
- mAP: mean over queries of the average precision of the leave-one-out ranking. Queries whose label
  has no other image have no defined AP: they are excluded from the mean and counted
  (``evaluate(...)["map_excluded"]``).
- top-1 (query -> retrieval): share of queries whose single nearest retrieval vector has their label.

Two paths, one definition: the numpy functions (host arrays, any labels) and ``retrieval_metrics_torch`` /
``query_top1_torch`` (tensors on any device, integer labels), which training validates with on its
device. Both give the same numbers, ties and queries without a positive included (tests compare them).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: similarity entries per block (rows x columns): ~32 MB of float32 plus the sort's indices
BLOCK_ELEMENTS = 8_000_000


def _as_matrix(vectors: Any, name: str = "vectors") -> np.ndarray:
    try:  # torch tensors too
        vectors = vectors.detach().cpu().numpy()
    except AttributeError:
        pass
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return x


def _codes(labels: Sequence[Any], n: int, name: str = "labels") -> np.ndarray:
    labels = list(labels)
    if len(labels) != n:
        raise ValueError(f"{name}: {len(labels)} labels for {n} vectors")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    _, inv = np.unique(np.array([str(v) for v in labels]), return_inverse=True)
    return inv.astype(np.int64).ravel()


def _codes_pair(a: Sequence[Any], na: int, b: Sequence[Any], nb: int) -> tuple[np.ndarray, np.ndarray]:
    both = _codes(list(a) + list(b), na + nb, "labels") if len(a) == na and len(b) == nb else None
    if both is None:
        raise ValueError(f"labels: {len(a)} query labels for {na} vectors, {len(b)} retrieval labels for {nb}")
    return both[:na], both[na:]


def _blocks(n_rows: int, n_cols: int, block_rows: int | None) -> Iterable[tuple[int, int]]:
    step = block_rows or max(1, BLOCK_ELEMENTS // max(n_cols, 1))
    for start in range(0, n_rows, step):
        yield start, min(n_rows, start + step)


def _first_positive_rank(sims: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Per row: the 0-based rank of the best-ranked positive under "decreasing similarity, ties by
    increasing column index"; -1 where a row has no positive. sims (b, N), pos (b, N) bool; columns
    to leave out must already hold -inf in sims and False in pos."""
    has = pos.any(axis=1)
    masked = np.where(pos, sims, -np.inf)
    best = masked.max(axis=1, keepdims=True)  # (b, 1) the best positive score
    # the first column (lowest index) where a positive reaches it
    p = np.argmax(pos & (sims == best), axis=1)
    cols = np.arange(sims.shape[1])[None, :]
    ahead = (sims > best) | ((sims == best) & (cols < p[:, None]))
    rank = ahead.sum(axis=1)
    return np.where(has, rank, -1)


def recall_at_k(vectors: Any, labels: Sequence[Any], ks: Iterable[int] = (1, 5, 10),
                *, block_rows: int | None = None) -> dict[int, float]:
    """Leave-one-out R@K for each K in ``ks``: vectors (N, D) L2-normalised, labels (N). -> {K: share}."""
    x = _as_matrix(vectors)
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    n = x.shape[0]
    y = _codes(labels, n)
    if n < 2:
        raise ValueError(f"leave-one-out recall needs at least 2 vectors, got {n}")
    ranks = np.empty(n, dtype=np.int64)
    for a, b in _blocks(n, n, block_rows):
        sims = x[a:b] @ x.T
        rows = np.arange(b - a)
        sims[rows, np.arange(a, b)] = -np.inf
        pos = y[a:b, None] == y[None, :]
        pos[rows, np.arange(a, b)] = False
        ranks[a:b] = _first_positive_rank(sims, pos)
    hit = ranks >= 0
    return {k: float(np.mean(hit & (ranks < k))) for k in ks}


def average_precisions(vectors: Any, labels: Sequence[Any], *, block_rows: int | None = None,
                       queries: Any | None = None, scores: Any | None = None) -> np.ndarray:
    """Leave-one-out average precision of every query, (N,) float64; NaN for a query whose label has
    no other image. AP = mean over its positives of (positives up to that rank) / rank. ``queries``
    (N, D): query i searches with this row instead of its own vector (e.g. a region of image i), image
    i still left out of its ranking; ``scores`` (N, N): query i's score of image j, instead of any dot
    product (e.g. a re-ranking)."""
    x = _as_matrix(vectors)
    n = x.shape[0]
    y = _codes(labels, n)
    qx = x if queries is None else _as_matrix(queries, "queries")
    if qx.shape != x.shape:
        raise ValueError(f"queries {qx.shape} must have the shape of the vectors {x.shape}")
    given = None if scores is None else np.asarray(scores, np.float64)
    if given is not None and given.shape != (n, n):
        raise ValueError(f"scores {given.shape} must be ({n}, {n})")
    ap = np.full(n, np.nan)
    for a, b in _blocks(n, n, block_rows):
        sims = qx[a:b] @ x.T if given is None else given[a:b].copy()
        rows = np.arange(b - a)
        sims[rows, np.arange(a, b)] = -np.inf  # self last; it is not a positive, so it changes no rank
        order = np.argsort(-sims, axis=1, kind="stable")  # decreasing, ties by increasing index
        pos = y[order] == y[a:b, None]
        pos &= order != np.arange(a, b)[:, None]
        n_pos = pos.sum(axis=1)
        hits = np.cumsum(pos, axis=1)
        prec = hits / np.arange(1, n + 1)[None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            ap[a:b] = np.where(n_pos > 0, (prec * pos).sum(axis=1) / n_pos, np.nan)
    return ap


def mean_average_precision(vectors: Any, labels: Sequence[Any], *, block_rows: int | None = None,
                           queries: Any | None = None, scores: Any | None = None) -> float:
    """Leave-one-out mAP over the queries that have at least one other image of their label (the
    others are excluded and logged; ``evaluate`` reports their number). NaN when no query qualifies.
    ``queries``, ``scores``: see :func:`average_precisions`."""
    ap = average_precisions(vectors, labels, block_rows=block_rows, queries=queries, scores=scores)
    excluded = int(np.isnan(ap).sum())
    if excluded:
        log.info("mAP: %d queries without any other image of their label are excluded", excluded)
    if excluded == ap.size:
        return float("nan")
    return float(np.nanmean(ap))


def query_retrieval_top1(q_vecs: Any, q_labels: Sequence[Any], r_vecs: Any, r_labels: Sequence[Any],
                         *, block_rows: int | None = None) -> float:
    """Share of queries (Q, D) whose nearest retrieval vector (R, D) has the query's label
    (ties: the lowest retrieval index wins)."""
    q = _as_matrix(q_vecs, "query vectors")
    r = _as_matrix(r_vecs, "retrieval vectors")
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"query vectors have {q.shape[1]} dimensions, retrieval vectors {r.shape[1]}")
    if q.shape[0] == 0 or r.shape[0] == 0:
        raise ValueError("query_retrieval_top1 needs at least one query and one retrieval vector")
    yq, yr = _codes_pair(q_labels, q.shape[0], r_labels, r.shape[0])
    correct = 0
    for a, b in _blocks(q.shape[0], r.shape[0], block_rows):
        nearest = np.argmax(q[a:b] @ r.T, axis=1)  # first maximum = lowest index
        correct += int((yr[nearest] == yq[a:b]).sum())
    return correct / q.shape[0]


def evaluate(
    vectors: Any,
    labels: Sequence[Any],
    *,
    ks: Iterable[int] = (1, 5, 10),
    queries: Sequence[int] | None = None,
    retrieval: Sequence[int] | None = None,
    block_rows: int | None = None,
) -> dict[str, float | int]:
    """All the figures at once, as a flat dict: ``recall@K`` for each K, ``map``, ``map_excluded``,
    ``n`` (leave-one-out over all rows), and with ``queries`` / ``retrieval`` (row indices into
    ``vectors``) also ``top1`` (query -> retrieval), ``n_queries``, ``n_retrieval``."""
    x = _as_matrix(vectors)
    labels = list(labels)
    out: dict[str, float | int] = {"n": int(x.shape[0])}
    for k, v in recall_at_k(x, labels, ks, block_rows=block_rows).items():
        out[f"recall@{k}"] = v
    ap = average_precisions(x, labels, block_rows=block_rows)
    excluded = int(np.isnan(ap).sum())
    out["map"] = float(np.nanmean(ap)) if excluded < ap.size else float("nan")
    out["map_excluded"] = excluded
    if (queries is None) != (retrieval is None):
        raise ValueError("give both queries and retrieval indices, or neither")
    if queries is not None and retrieval is not None:
        qi, ri = np.asarray(queries, dtype=np.int64), np.asarray(retrieval, dtype=np.int64)
        out["top1"] = query_retrieval_top1(x[qi], [labels[i] for i in qi], x[ri], [labels[i] for i in ri],
                                           block_rows=block_rows)
        out["n_queries"], out["n_retrieval"] = int(qi.size), int(ri.size)
    return out


# ---------------------------------------------------------------------------------------------------
# the torch path: the same definitions on tensors, on their own device
# ---------------------------------------------------------------------------------------------------
def _torch_blocks(x: torch.Tensor, y: torch.Tensor, block_rows: int | None):
    """Per block of query rows: (a, b, sims (b-a, N) with -inf on the diagonal, positives (b-a, N))."""
    import torch

    n = x.shape[0]
    for a, b in _blocks(n, n, block_rows):
        rows = torch.arange(b - a, device=x.device)
        sims = x[a:b] @ x.T
        sims[rows, rows + a] = float("-inf")
        pos = y[a:b, None] == y[None, :]
        pos[rows, rows + a] = False
        yield a, b, sims, pos


def retrieval_metrics_torch(vectors: torch.Tensor, labels: torch.Tensor, ks: Iterable[int] = (1, 5),
                            *, block_rows: int | None = None) -> dict[str, float | int]:
    """:func:`recall_at_k` and :func:`mean_average_precision` on tensors: vectors (N, D) L2-normalised
    on any device, labels (N,) integers. -> {"recall@K": ..., "map": ..., "map_excluded": int, "n": N}.
    Same ranking (ties by increasing index), same R@K (a query without a positive is a miss), same mAP
    (such queries excluded; NaN when none qualifies). Everything stays on the device; the figures are
    read back once at the end."""
    import torch

    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be a 2-D array (N, D), got shape {tuple(vectors.shape)}")
    x = vectors.detach().float()
    n = x.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"labels: {tuple(labels.shape)} for {n} vectors")
    if n < 2:
        raise ValueError(f"leave-one-out recall needs at least 2 vectors, got {n}")
    y = labels.to(x.device)
    acc = torch.float32 if x.device.type == "mps" else torch.float64   # MPS has no float64
    first = torch.empty(n, dtype=torch.long, device=x.device)
    ap = torch.empty(n, dtype=acc, device=x.device)
    ranks = torch.arange(1, n + 1, device=x.device, dtype=acc)[None, :]
    cols = torch.arange(n, device=x.device)[None, :]
    for a, b, sims, pos in _torch_blocks(x, y, block_rows):
        # R@K: the rank of the best-ranked positive (as _first_positive_rank)
        has = pos.any(1)
        best = torch.where(pos, sims, float("-inf")).amax(1, keepdim=True)
        p = (pos & (sims == best)).to(torch.uint8).argmax(1, keepdim=True)   # first column reaching it
        ahead = (sims > best) | ((sims == best) & (cols < p))
        first[a:b] = torch.where(has, ahead.sum(1), -1)
        # AP: the full ranking, decreasing similarity, ties by increasing index (stable sort)
        order = torch.sort(-sims, dim=1, stable=True).indices
        hit = (y[order] == y[a:b, None]) & (order != torch.arange(a, b, device=x.device)[:, None])
        n_pos = hit.sum(1)
        prec = hit.to(acc).cumsum(1) / ranks
        ap[a:b] = torch.where(n_pos > 0, (prec * hit).sum(1) / n_pos.clamp_min(1), float("nan"))
    valid = ~torch.isnan(ap)
    n_valid = valid.sum()
    figures = [((first >= 0) & (first < k)).to(acc).mean() for k in ks]
    figures += [torch.where(valid, ap, 0.0).sum() / n_valid.clamp_min(1), n_valid.to(acc)]
    vals = torch.stack(figures).cpu().tolist()                         # the one read-back
    out: dict[str, float | int] = {f"recall@{k}": v for k, v in zip(ks, vals, strict=False)}
    n_ok = int(vals[-1])
    out["map"] = vals[-2] if n_ok else float("nan")
    out["map_excluded"] = n - n_ok
    out["n"] = n
    return out


def query_top1_torch(q: torch.Tensor, q_labels: torch.Tensor, r: torch.Tensor, r_labels: torch.Tensor,
                     *, block_rows: int | None = None) -> float:
    """:func:`query_retrieval_top1` on tensors: q (Q, D), r (R, D), integer labels (Q,), (R,);
    ties: the lowest retrieval index wins."""
    import torch

    if q.shape[1] != r.shape[1]:
        raise ValueError(f"query vectors have {q.shape[1]} dimensions, retrieval vectors {r.shape[1]}")
    if q.shape[0] == 0 or r.shape[0] == 0:
        raise ValueError("query_top1_torch needs at least one query and one retrieval vector")
    qf, rf = q.detach().float(), r.detach().float().to(q.device)
    yq, yr = q_labels.to(q.device), r_labels.to(q.device)
    correct = torch.zeros((), dtype=torch.long, device=q.device)
    for a, b in _blocks(q.shape[0], r.shape[0], block_rows):
        nearest = (qf[a:b] @ rf.T).argmax(1)                            # first maximum = lowest index
        correct += (yr[nearest] == yq[a:b]).sum()
    return int(correct) / q.shape[0]
