"""Relevance feedback: a ranking recomputed from the query and the results a user marked right or wrong.

A pure function of (query vector(s), positive rows, negative rows, the stored vectors, settings): a linear
model is fitted on the stored vectors of the marked images (the query counts as a positive), and the new
score of every stored row is one dot product with the model's weight vector ``w`` (D,), so re-ranking
costs one fit on a few hundred rows plus one pass over the stored rows (:func:`linear_scores`, float16 or
float32 rows, scored in blocks in float32). No Qt, no torch: the window runs it on a worker thread
(retrieval_gui.controllers.feedback) and ``search --positive/--negative/--concept`` calls it directly, so
both rank the same.

Methods (:data:`METHODS`), chosen by benchmarks/feedback.py on cub100's TRAINING classes:

- ``"rocchio"``: ``w = l2n(mean q) + beta * mean(+) - gamma * mean(-)`` (Rocchio 1971);
- ``"svm"``: a linear SVM (squared hinge, L2 regularisation, Newton steps in the primal, in numpy):
  the query and the marked positives against the marked negatives and ``background`` random unmarked rows
  (taken as negatives: any one class is a small share of a collection), classes weighted to balance;
  ``w = l2n(w_svm) + query_weight * l2n(mean q)``.

Then the linear scores are smoothed over the stored rows' neighbourhoods (:func:`smooth_scores`, after
graph-based re-ranking / label propagation, e.g. Zhou et al. 2004, and database-side augmentation): among
the ``smooth_top`` best rows, each one's score is averaged with the mean score of its ``smooth_k`` nearest
candidates (weight ``smooth_weight``; ``smooth_steps`` times), so an image whose close look-alikes score
high (a marked + among them) rises, and one next to marked - images sinks. One (M, D) x (D, M) product on the candidates: a few
milliseconds, whatever the size of the collection.

Scores are cosine-like numbers (rows are L2-normalised, ``w`` has a norm near 1 + query_weight); only their
order is meaningful.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.vectors import l2n

#: the re-ranking methods (see the module docstring)
METHODS = ("svm", "rocchio")
#: rows scored per block by :func:`linear_scores` (float16 rows are converted to float32 one block at a time)
SCORE_BLOCK = 16384


@dataclass(frozen=True)
class FeedbackSettings:
    """How marks re-rank. ``method``: one of :data:`METHODS`; ``c``: the SVM's cost (larger: fits the marks
    more closely); ``background``: random unmarked rows taken as negatives (drawn with ``seed``: the same
    rows for the same collection, so the window and the CLI agree); ``query_weight``: weight of the query
    direction added to the SVM's unit weight vector; ``beta`` / ``gamma``: Rocchio's weights of the mean
    positive and the mean negative; ``smooth_weight`` (0: off), ``smooth_k``, ``smooth_top``, ``smooth_steps``:
    the neighbourhood smoothing of the scores (:func:`smooth_scores`). Defaults: chosen on cub100's training
    classes (benchmarks/feedback.py)."""

    method: str = "svm"
    c: float = 1.0
    background: int = 500
    query_weight: float = 0.0
    beta: float = 2.0
    gamma: float = 1.0
    center: bool = True
    seed: int = 0
    smooth_weight: float = 0.5
    smooth_k: int = 10
    smooth_top: int = 500
    smooth_steps: int = 3

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown feedback method {self.method!r}; valid: {', '.join(METHODS)}")
        if not (np.isfinite(self.c) and self.c > 0):
            raise ValueError(f"c must be a positive number, got {self.c!r}")
        if not isinstance(self.background, (int, np.integer)) or self.background < 0:
            raise ValueError(f"background must be a non-negative integer, got {self.background!r}")
        for name in ("query_weight", "beta", "gamma", "smooth_weight"):
            v = getattr(self, name)
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        for name in ("smooth_k", "smooth_top", "smooth_steps"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {v!r}")


def _rows(vectors: np.ndarray, rows: Sequence[int]) -> np.ndarray:
    idx = np.asarray(list(rows), np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= len(vectors)):
        raise IndexError(f"marked row out of range 0..{len(vectors) - 1}")
    return np.asarray(vectors[idx], np.float32).reshape(len(idx), vectors.shape[1])


def background_rows(n: int, marked: Sequence[int], count: int, seed: int = 0) -> np.ndarray:
    """``count`` rows of ``range(n)`` drawn with ``seed``, none of ``marked`` (fewer when too few are left):
    the same rows for the same (n, marks, seed). -> (m,) int64, increasing."""
    if count <= 0 or n <= 0:
        return np.zeros(0, np.int64)
    marked_set = set(int(r) for r in marked)
    take = min(n, count + len(marked_set))
    drawn = np.random.default_rng(seed).choice(n, size=take, replace=False)
    keep = np.array([r for r in drawn.tolist() if r not in marked_set][:count], np.int64)
    return np.sort(keep)


def linear_svm(x: np.ndarray, y: np.ndarray, c: float = 0.1, *, balanced: bool = True,
               iterations: int = 50) -> np.ndarray:
    """A linear L2-regularised squared-hinge SVM without bias (the rows are L2-normalised):
    min_w 0.5 |w|^2 + sum_i c_i max(0, 1 - y_i w.x_i)^2, by Newton steps in the primal (Chapelle 2007):
    w = X^T beta, and each step solves (K_sv + diag(1 / 2c)) beta_sv = y_sv on the rows that violate the
    margin, until that set stops changing. x (n, D), y (n,) in {-1, +1} -> w (D,) float64. ``balanced``:
    each class's cost scaled by n / (2 * its count)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    n = len(y)
    if balanced:
        npos = max(1, int((y > 0).sum()))
        nneg = max(1, n - int((y > 0).sum()))
        cost = np.where(y > 0, c * n / (2 * npos), c * n / (2 * nneg))
    else:
        cost = np.full(n, float(c))
    gram = x @ x.T  # n is a few hundred: every Newton step is one n x n solve
    beta = np.zeros(n)
    active = np.ones(n, bool)
    for _ in range(iterations):
        idx = np.flatnonzero(active)
        beta = np.zeros(n)
        if idx.size:
            a = gram[np.ix_(idx, idx)] + np.diag(0.5 / cost[idx])
            beta[idx] = np.linalg.solve(a, y[idx])
        now = y * (gram @ beta) < 1.0
        if np.array_equal(now, active):
            break
        active = now
    return beta @ x


def feedback_weights(queries: np.ndarray, positives: np.ndarray, negatives: np.ndarray,
                     background: np.ndarray | None = None,
                     settings: FeedbackSettings | None = None) -> np.ndarray:
    """The weight vector w (D,) float32 whose dot product with a stored row is its new score.

    ``queries`` (Q, D) or (D,): the query vector(s), counted as positives; ``positives`` (P, D) and
    ``negatives`` (N, D): the stored rows of the marked images; ``background`` (M, D): unmarked rows taken
    as negatives by the SVM (see :func:`background_rows`)."""
    s = settings or FeedbackSettings()
    q = np.atleast_2d(np.asarray(queries, np.float32))
    dim = q.shape[1]
    pos = np.asarray(positives, np.float32).reshape(-1, dim)
    neg = np.asarray(negatives, np.float32).reshape(-1, dim)
    bg = np.zeros((0, dim), np.float32) if background is None else np.asarray(background, np.float32).reshape(-1, dim)
    q_dir = l2n(q.sum(0)) if len(q) else np.zeros(dim, np.float32)
    if s.method == "rocchio" or not (len(neg) + len(bg)) or not (len(q) + len(pos)):
        w = q_dir.copy()
        if len(pos):
            w += s.beta * pos.mean(0)
        if len(neg):
            w -= s.gamma * neg.mean(0)
        return w.astype(np.float32)
    x = np.concatenate([q, pos, neg, bg])
    y = np.concatenate([np.ones(len(q) + len(pos)), -np.ones(len(neg) + len(bg))])
    if s.center and len(bg):
        # centred on the background's mean (an estimate of the collection's): the SVM has no bias term, and
        # descriptors of ReLU maps all lie in one cone; shifting every row by one vector shifts every score
        # by one constant, so scoring still needs no centring
        mu = bg.mean(0)
        x = x - mu
        q_dir = l2n((q - mu).sum(0))
    w = l2n(linear_svm(x, y, s.c).astype(np.float32))
    return (w + s.query_weight * q_dir).astype(np.float32)


def linear_scores(vectors: np.ndarray, w: np.ndarray, block: int = SCORE_BLOCK) -> np.ndarray:
    """vectors (N, D) float16 or float32 @ w (D,) -> (N,) float32, in blocks of ``block`` rows (float16
    rows are converted one block at a time: no float32 copy of the whole matrix)."""
    w = np.asarray(w, np.float32)
    n = len(vectors)
    if vectors.dtype == np.float32:
        return vectors @ w
    out = np.empty(n, np.float32)
    for a in range(0, n, block):
        out[a:a + block] = vectors[a:a + block].astype(np.float32) @ w
    return out


def smooth_scores(vectors: np.ndarray, scores: np.ndarray, top: int = 500, k: int = 10,
                  weight: float = 1.0, steps: int = 1) -> np.ndarray:
    """Scores (N,) smoothed over the neighbourhoods of the best rows: the ``top`` rows of highest score are
    the candidates; each one's new score is ``(s_i + weight * mean of s over its k nearest other candidates
    (cosine of the rows)) / (1 + weight)``, ``steps`` times over (a few steps of diffusion on the candidates'
    kNN graph); the other rows keep theirs (never above a candidate's: every term of a candidate is at least
    the ``top``-th score). vectors (N, D) float16 / float32 rows, scores (N,) -> (N,) float32 (a copy;
    ``scores`` itself when ``weight`` or ``steps`` is 0 or there are too few rows)."""
    s = np.asarray(scores, np.float32)
    n = len(s)
    m = min(int(top), n)
    k = min(int(k), m - 1)
    if weight <= 0 or k < 1 or steps < 1:
        return s
    cand = np.sort(np.argpartition(-s, m - 1)[:m]) if m < n else np.arange(n)
    x = np.asarray(vectors[cand], np.float32)  # sorted: a gather in row order (cache-friendly)
    g = x @ x.T
    np.fill_diagonal(g, -np.inf)
    nn = np.argpartition(-g, k - 1, axis=1)[:, :k]
    sc = s[cand]
    for _ in range(int(steps)):
        sc = (sc + weight * sc[nn].mean(1)) / (1.0 + weight)
    out = s.copy()
    out[cand] = sc
    return out


def top_rows(scores: np.ndarray, k: int, exclude: Sequence[int] = ()) -> np.ndarray:
    """The ``k`` rows of highest score, best first (ties: lower row first), ``exclude`` left out -> (k',) int64."""
    s = np.asarray(scores, np.float32)
    if len(exclude):
        s = s.copy()
        s[np.asarray(list(exclude), np.int64)] = -np.inf
    avail = int(np.isfinite(s).sum())
    k = max(0, min(int(k), avail))
    if k == 0:
        return np.zeros(0, np.int64)
    part = np.argpartition(-s, k - 1)[:k] if k < len(s) else np.arange(len(s))
    order = np.lexsort((part, -s[part]))
    return part[order].astype(np.int64)


@dataclass
class Reranked:
    """A re-ranking: ``rows`` best first, their ``scores``, and the weight vector ``w`` (D,) of the linear
    scores (before :func:`smooth_scores`)."""

    rows: np.ndarray
    scores: np.ndarray
    w: np.ndarray


def rerank(vectors: np.ndarray, queries: np.ndarray, positive_rows: Sequence[int], negative_rows: Sequence[int],
           settings: FeedbackSettings | None = None, *, k: int | None = None, exclude: Sequence[int] = (),
           extra_positives: np.ndarray | None = None, extra_negatives: np.ndarray | None = None,
           query_rows: Sequence[int] = ()) -> Reranked:
    """Re-rank the stored ``vectors`` (N, D) for ``queries`` (Q, D) or (D,) and the marked rows: fit
    :func:`feedback_weights` (the background drawn by :func:`background_rows` from the unmarked rows),
    score every row (:func:`linear_scores`, then :func:`smooth_scores`) and keep the best ``k`` (None: all),
    ``exclude`` left out (e.g. the query's own row). Marked rows are ranked like the others. ``extra_positives`` /
    ``extra_negatives`` (n, D): marked images that are not stored rows (described apart); ``query_rows``: the
    queries' own rows, never drawn as background (whether or not they are excluded from the ranking)."""
    s = settings or FeedbackSettings()
    pos = sorted(set(int(r) for r in positive_rows))
    neg = sorted(set(int(r) for r in negative_rows) - set(pos))
    n, dim = vectors.shape
    bg_rows = background_rows(n, pos + neg + sorted({int(r) for r in [*exclude, *query_rows]}), s.background,
                              s.seed) \
        if s.method == "svm" else np.zeros(0, np.int64)
    p_vec, n_vec = _rows(vectors, pos), _rows(vectors, neg)
    if extra_positives is not None and len(extra_positives):
        p_vec = np.concatenate([p_vec, np.asarray(extra_positives, np.float32).reshape(-1, dim)])
    if extra_negatives is not None and len(extra_negatives):
        n_vec = np.concatenate([n_vec, np.asarray(extra_negatives, np.float32).reshape(-1, dim)])
    w = feedback_weights(queries, p_vec, n_vec, _rows(vectors, bg_rows.tolist()), s)
    scores = smooth_scores(vectors, linear_scores(vectors, w), s.smooth_top, s.smooth_k, s.smooth_weight,
                           s.smooth_steps)
    rows = top_rows(scores, n if k is None else k, exclude)
    return Reranked(rows, scores[rows], w)
