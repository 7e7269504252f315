"""Query-time search options and the search itself: k, score threshold, exact or HNSW, query expansion.

Query expansion (QE) re-queries with a new vector built from the query and its first neighbours:

- ``"average"`` (average QE, Chum et al. 2007): ``q' = l2n(q + sum_i n_i)`` over the top ``qe_top``
  neighbours, i.e. the re-normalised mean of the query and its neighbours;
- ``"alpha"`` (alpha-QE, Radenović et al. 2018): ``q' = l2n(q + sum_i max(s_i, 0)^alpha n_i)`` with
  ``s_i`` the cosine similarity of neighbour i to the query (the query itself has weight 1 = 1^alpha).
  ``alpha = 0`` is average QE; a large alpha trusts only the closest neighbours.

Neighbour vectors are taken as stored (L2-normalised descriptors), the query is L2-normalised first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engine.index import HnswIndex, VectorIndex
from engine.vectors import l2n

QE_METHODS = ("average", "alpha")


@dataclass
class SearchOptions:
    """``k`` results per query; ``threshold`` drops hits scoring below it (cosine similarity, or
    -distance for l2); ``exact`` uses brute force instead of HNSW; ``ef`` overrides the HNSW search
    breadth for this search; ``query_expansion`` None, 'average' or 'alpha' over the top ``qe_top``
    neighbours with exponent ``alpha``."""

    k: int = 10
    threshold: float | None = None
    exact: bool = False
    ef: int | None = None
    query_expansion: str | None = None
    qe_top: int = 5
    alpha: float = 3.0

    def __post_init__(self) -> None:
        if not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise ValueError(f"k must be a positive integer, got {self.k!r}")
        if self.ef is not None and (not isinstance(self.ef, (int, np.integer)) or self.ef < 1):
            raise ValueError(f"ef must be a positive integer or None, got {self.ef!r}")
        if self.query_expansion is not None and self.query_expansion not in QE_METHODS:
            raise ValueError(f"unknown query expansion {self.query_expansion!r}; valid: None, "
                             f"{', '.join(QE_METHODS)}")
        if not isinstance(self.qe_top, (int, np.integer)) or self.qe_top < 1:
            raise ValueError(f"qe_top must be a positive integer, got {self.qe_top!r}")
        if not np.isfinite(self.alpha) or self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha!r}")
        if self.threshold is not None and not np.isfinite(self.threshold):
            raise ValueError(f"threshold must be a finite number or None, got {self.threshold!r}")


def expand_queries(queries: np.ndarray, neighbours: np.ndarray, valid: np.ndarray, method: str,
                   alpha: float = 3.0) -> np.ndarray:
    """New queries from ``queries`` (Q, D), their neighbours' vectors (Q, n, D) and a mask ``valid``
    (Q, n) of real neighbours (False where a query had fewer than n). -> (Q, D) L2-normalised."""
    q = l2n(np.asarray(queries, np.float32))
    nb = np.asarray(neighbours, np.float32)
    if method == "average":
        w = valid.astype(np.float32)
    elif method == "alpha":
        sims = np.einsum("qd,qnd->qn", q, l2n(nb))
        w = np.maximum(sims, 0.0) ** alpha * valid
    else:
        raise ValueError(f"unknown query expansion {method!r}; valid: {', '.join(QE_METHODS)}")
    return l2n(q + np.einsum("qn,qnd->qd", w.astype(np.float32), nb))


def search_vectors(
    queries: np.ndarray,
    options: SearchOptions,
    *,
    index: VectorIndex,
    exact_index: VectorIndex | None = None,
    fetch_vectors: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Search ``queries`` (Q, D) or (D,) with ``options``.

    ``index`` answers normally, ``exact_index`` when ``options.exact`` (required then, unless ``index``
    is already exact); ``fetch_vectors(ids (n,)) -> (n, D)`` gives stored vectors for query expansion.
    Returns per query ``(ids (k',) int64, scores (k',) float32)`` best first, threshold applied.
    """
    q = np.asarray(queries, np.float32)
    if q.ndim == 1:
        q = q[None, :]
    use = index
    if options.exact and index.kind != "exact":
        if exact_index is None:
            raise ValueError("exact search was asked for but no exact index is available")
        use = exact_index
    ef = options.ef if isinstance(use, HnswIndex) else None  # a query argument: the index is not changed
    if options.query_expansion is not None:
        if fetch_vectors is None:
            raise ValueError("query expansion needs the stored vectors (fetch_vectors)")
        ids, _ = use.query(q, options.qe_top, ef=ef)
        n = ids.shape[1]
        if n:
            nb = fetch_vectors(ids.reshape(-1)).reshape(q.shape[0], n, -1)
            q = expand_queries(q, nb, np.ones((q.shape[0], n), bool), options.query_expansion,
                               options.alpha)
    ids, scores = use.query(q, options.k, ef=ef)
    out = []
    for i in range(ids.shape[0]):
        keep = slice(None) if options.threshold is None else scores[i] >= options.threshold
        out.append((ids[i][keep], scores[i][keep]))
    return out
