"""Scores of float32 queries against stored float16 rows (numpy version; the ONNX Runtime path replaces
it in the next commit)."""
from __future__ import annotations

import numpy as np

from engine.vectors import from_store


def half_scores(q: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """q (Q, D) float32 x rows (N, D) float16 -> (Q, N) float32, rows as from_store means them."""
    out = np.empty((q.shape[0], rows.shape[0]), np.float32)
    for a in range(0, rows.shape[0], 8192):
        out[:, a:a + 8192] = q @ from_store(rows[a:a + 8192]).T
    return out


def half_rows(rows: np.ndarray) -> np.ndarray:
    """(n, D) float16 -> (n, D) float32 normalised (from_store)."""
    return from_store(rows)
