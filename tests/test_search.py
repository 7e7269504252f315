"""engine.search: options, threshold, exact vs HNSW, query expansion on hand-worked examples."""

from __future__ import annotations

import numpy as np
import pytest

from engine.index import make_index
from engine.search import SearchOptions, expand_queries, search_vectors


def _unit(v) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


# a hand-made set around the query q = e_x:  cos(q, a) = 0.9, cos(q, b) = 0.85, cos(q, c) = 0.8
A = _unit([0.9, np.sqrt(1 - 0.81), 0.0])
B = _unit([0.85, 0.0, np.sqrt(1 - 0.85**2)])
C = _unit([0.8, 0.6, 0.0])
X = np.stack([A, B, C])
IDS = np.array([10, 20, 30])
Q = np.array([1.0, 0.0, 0.0], np.float32)


def _fetch(ids: np.ndarray) -> np.ndarray:
    return X[np.searchsorted(IDS, ids)]


@pytest.fixture(params=["exact", "hnsw"])
def index(request):
    idx = make_index(request.param, "cosine", dim=3)
    idx.add(X, IDS)
    return idx


def test_plain_ranking(index):
    [(ids, scores)] = search_vectors(Q, SearchOptions(k=3), index=index)
    assert ids.tolist() == [10, 20, 30]
    np.testing.assert_allclose(scores, [0.9, 0.85, 0.8], atol=1e-6)


def test_average_qe_reranks_as_worked_by_hand(index):
    # q' = l2n(q + a) = (1.9, 0.43589, 0) / 1.94936 = (0.97468, 0.22361, 0)
    # scores: a 0.97468*0.9 + 0.22361*0.43589 = 0.97468; c 0.97468*0.8 + 0.22361*0.6 = 0.91391;
    #         b 0.97468*0.85 = 0.82848  -> c overtakes b
    [(ids, scores)] = search_vectors(Q, SearchOptions(k=3, query_expansion="average", qe_top=1), index=index,
                                     fetch_vectors=_fetch)
    assert ids.tolist() == [10, 30, 20]
    np.testing.assert_allclose(scores, [0.97468, 0.91391, 0.82848], atol=1e-4)


def test_alpha_qe_weights_by_similarity_power():
    q = Q[None]
    nb = np.stack([A, B])[None]  # (1, 2, 3)
    got = expand_queries(q, nb, np.ones((1, 2), bool), "alpha", alpha=3.0)
    want = _unit(Q + 0.9**3 * A + 0.85**3 * B)
    np.testing.assert_allclose(got[0], want, atol=1e-6)
    # alpha = 0 is average QE; masked neighbours do not count
    np.testing.assert_allclose(expand_queries(q, nb, np.ones((1, 2), bool), "alpha", alpha=0.0),
                               expand_queries(q, nb, np.ones((1, 2), bool), "average"), atol=1e-6)
    np.testing.assert_allclose(expand_queries(q, nb, np.array([[True, False]]), "average")[0], _unit(Q + A),
                               atol=1e-6)
    # negative similarities get weight 0 in alpha-QE
    anti = np.stack([-A])[None]
    np.testing.assert_allclose(expand_queries(q, anti, np.ones((1, 1), bool), "alpha")[0], Q, atol=1e-6)


def test_alpha_qe_search(index):
    [(ids, _)] = search_vectors(Q, SearchOptions(k=3, query_expansion="alpha", qe_top=2, alpha=3.0),
                                index=index, fetch_vectors=_fetch)
    q2 = _unit(Q + 0.9**3 * A + 0.85**3 * B)
    assert ids.tolist() == (IDS[np.argsort(-(X @ q2), kind="stable")]).tolist()


def test_threshold_drops_low_scores(index):
    [(ids, scores)] = search_vectors(Q, SearchOptions(k=3, threshold=0.84), index=index)
    assert ids.tolist() == [10, 20] and (scores >= 0.84).all()
    [(ids, _)] = search_vectors(Q, SearchOptions(k=3, threshold=0.95), index=index)
    assert ids.size == 0


def test_exact_option_and_ef_override():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 12)).astype(np.float32)
    ids = np.arange(400)
    hn = make_index("hnsw", "cosine", dim=12, ef=10)
    ex = make_index("exact", "cosine", dim=12)
    hn.add(x, ids)
    ex.add(x, ids)
    q = rng.normal(size=(15, 12)).astype(np.float32)
    want = [r[0].tolist() for r in search_vectors(q, SearchOptions(k=10), index=ex)]
    exact = [r[0].tolist() for r in search_vectors(q, SearchOptions(k=10, exact=True), index=hn, exact_index=ex)]
    assert exact == want
    wide = [r[0].tolist() for r in search_vectors(q, SearchOptions(k=10, ef=400), index=hn)]
    assert wide == want  # ef >= n: HNSW visits everything on 400 points
    assert hn.ef == 10  # the override was for that search only
    with pytest.raises(ValueError, match="no exact index"):
        search_vectors(q, SearchOptions(exact=True), index=hn)


def test_options_validation():
    with pytest.raises(ValueError, match="k must"):
        SearchOptions(k=0)
    with pytest.raises(ValueError, match="valid: None, average, alpha"):
        SearchOptions(query_expansion="dba")
    with pytest.raises(ValueError, match="alpha"):
        SearchOptions(alpha=-1)
    with pytest.raises(ValueError, match="ef"):
        SearchOptions(ef=0)


def test_ef_is_a_query_argument_safe_under_concurrent_queries():
    """ef=400 on 400 points visits everything (the exact answer); ef=10 with k=10 misses some. Two threads
    querying with each at the same time each get their own answer, and the index's ef is never touched."""
    import threading

    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 12)).astype(np.float32)
    hn = make_index("hnsw", "cosine", dim=12, ef=10)
    ex = make_index("exact", "cosine", dim=12)
    hn.add(x, np.arange(400))
    ex.add(x, np.arange(400))
    q = rng.normal(size=(30, 12)).astype(np.float32)
    want_wide = ex.query(q, 10)[0]
    want_narrow = hn.query(q, 10)[0]
    assert not np.array_equal(want_wide, want_narrow)  # the two settings really differ here
    assert np.array_equal(hn.query(q, 10, ef=400)[0], want_wide)
    bad: list[str] = []

    def run(ef: int | None, want: np.ndarray) -> None:
        for _ in range(40):
            if not np.array_equal(hn.query(q, 10, ef=ef)[0], want):
                bad.append(f"ef={ef}")

    threads = [threading.Thread(target=run, args=(400, want_wide)), threading.Thread(target=run, args=(None, want_narrow))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == []
    assert hn.ef == 10
