"""engine.index: exact and HNSW indexes against brute-force loops, removal (the graph's persistence and
damage are tested through collections: tests/test_collection.py)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.index import ExactIndex, HnswIndex, make_index


def _clustered(n: int, dim: int = 16, clusters: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, dim))
    return x.astype(np.float32)


def _brute(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int, metric: str):
    """A plain Python loop: per query, score every vector, sort, take k."""
    out_ids, out_s = [], []
    for qv in q:
        scored = []
        for xv, i in zip(x, ids, strict=True):
            if metric == "cosine":
                s = float(np.dot(qv / np.linalg.norm(qv), xv / np.linalg.norm(xv)))
            else:
                s = -float(np.linalg.norm(qv - xv))
            scored.append((-s, int(i), s))
        scored.sort()
        out_ids.append([t[1] for t in scored[:k]])
        out_s.append([t[2] for t in scored[:k]])
    return np.array(out_ids), np.array(out_s, np.float32)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_exact_matches_brute_force_loop(metric):
    x = _clustered(300, seed=1)
    ids = np.arange(1000, 1300)
    q = _clustered(7, seed=2)
    idx = make_index("exact", metric, dim=16, block_size=64)  # several blocks
    idx.add(x, ids)
    got_ids, got_s = idx.query(q, 10)
    want_ids, want_s = _brute(x, ids, q, 10, metric)
    assert got_ids.dtype == np.int64 and got_s.dtype == np.float32
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_s, want_s, atol=1e-4)
    assert np.all(np.diff(got_s, axis=1) <= 0)  # best first


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_hnsw_equals_exact_on_small_data(metric):
    x = _clustered(500, seed=3)
    ids = np.arange(500) * 3 + 7
    q = _clustered(20, seed=4)
    ex, hn = make_index("exact", metric, dim=16), make_index("hnsw", metric, dim=16, ef=200)
    ex.add(x, ids)
    hn.add(x, ids)
    e_ids, e_s = ex.query(q, 10)
    h_ids, h_s = hn.query(q, 10)
    assert hn.rebuilds == 1 and hn.pending == 0  # answered by the graph, not by the pending exact part
    np.testing.assert_array_equal(h_ids, e_ids)
    np.testing.assert_allclose(h_s, e_s, atol=1e-5)


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_empty_index_and_k_larger_than_len(kind):
    idx = make_index(kind, "cosine", dim=4)
    ids, s = idx.query(np.ones((3, 4)), 5)
    assert ids.shape == (3, 0) and s.shape == (3, 0) and len(idx) == 0
    idx.add(np.eye(4)[:2], np.array([5, 6]))
    ids, s = idx.query(np.array([1.0, 0.1, 0, 0]), 10)  # a single (D,) query works too
    assert ids.shape == (1, 2) and ids[0].tolist() == [5, 6]
    idx.remove([5, 6])
    assert len(idx) == 0 and idx.query(np.ones(4), 3)[0].shape == (1, 0)


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_remove_filters_results(kind):
    x = _clustered(200, seed=5)
    ids = np.arange(200)
    idx = make_index(kind, "cosine", dim=16, **({"ef": 200, "rebuild_share": 1.0} if kind == "hnsw" else {}))
    idx.add(x, ids)
    q = x[:5]
    first, _ = idx.query(q, 1)
    assert first[:, 0].tolist() == [0, 1, 2, 3, 4]  # each finds itself
    removed = np.arange(0, 150)  # most of the graph: forces over-fetching past the tombstones
    idx.remove(removed)
    assert len(idx) == 50
    got, _ = idx.query(q, 10)
    assert not np.isin(got, removed).any()
    keep = np.arange(150, 200)
    want, _ = _brute(x[keep], keep, q, 10, "cosine")
    np.testing.assert_array_equal(got, want)
    with pytest.raises(KeyError):
        idx.remove([3])


def test_hnsw_incremental_add_is_found_without_rebuild_and_rebuilds_past_threshold():
    x = _clustered(300, seed=6)
    idx = HnswIndex(16, "cosine", ef=200, rebuild_min=50, rebuild_share=0.2)
    idx.add(x[:200], np.arange(200))
    idx.query(x[:1], 1)
    assert idx.rebuilds == 1 and idx.pending == 0
    idx.add(x[200:240], np.arange(200, 240))  # 40 pending: below max(50, 40)
    got, _ = idx.query(x[200:240], 1)
    assert got[:, 0].tolist() == list(range(200, 240)) and idx.rebuilds == 1 and idx.pending == 40
    idx.add(x[240:300], np.arange(240, 300))  # 100 pending > 50: rebuilt lazily at the next query
    got, _ = idx.query(x[240:300], 1)
    assert got[:, 0].tolist() == list(range(240, 300)) and idx.rebuilds == 2 and idx.pending == 0
    # an id removed (tombstoned) may be added again with a new vector
    idx.remove([5])
    idx.add(x[7:8], np.array([5]))
    got, _ = idx.query(x[7:8], 2)
    assert set(got[0].tolist()) == {5, 7}


def test_bad_arguments_have_clear_messages():
    with pytest.raises(ValueError, match="valid kinds: hnsw, exact"):
        make_index("annoy", dim=4)
    with pytest.raises(ValueError, match="valid metrics: cosine, l2"):
        make_index("exact", "dot", dim=4)
    idx = ExactIndex(4)
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        idx.add(np.ones((2, 5)), [1, 2])
    with pytest.raises(ValueError, match="unique"):
        idx.add(np.ones((2, 4)), [1, 1])
    idx.add(np.ones((1, 4)), [1])
    with pytest.raises(ValueError, match="already"):
        idx.add(np.ones((1, 4)), [1])
    with pytest.raises(ValueError, match="NaN"):
        idx.query(np.full(4, np.nan), 1)
    with pytest.raises(ValueError, match="ef"):
        HnswIndex(4).ef = 0


def test_hnsw_ef_is_settable():
    idx = HnswIndex(8, ef=30)
    idx.add(_clustered(40, 8), np.arange(40))
    idx.query(np.ones(8), 3)
    idx.ef = 77
    assert idx.ef == 77 and idx.query(np.ones(8), 3)[0].shape == (1, 3)


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_many_small_additions_keep_every_row_and_still_refuse_a_known_id(kind):
    # rows added batch by batch (as a collection fed by workers adds them) grow a buffer instead of
    # copying every row each time; what is stored and found is the same as before
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1000, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = make_index(kind, "cosine", dim=8)
    for a in range(0, 1000, 7):
        index.add(x[a:a + 7], np.arange(a, min(a + 7, 1000)))
    assert len(index) == 1000 and sorted(index.ids().tolist()) == list(range(1000))
    found, _ = index.query(x[::100], 1)
    assert found[:, 0].tolist() == list(range(0, 1000, 100))
    with pytest.raises(ValueError, match="already in the index"):
        index.add(x[:1], np.array([500]))
    index.remove(np.array([500]))
    index.add(x[500:501], np.array([500]))  # an id below the highest, free again
    assert len(index) == 1000
