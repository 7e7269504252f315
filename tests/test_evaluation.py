"""engine.evaluation against a hand-worked example and against brute-force loops."""

from __future__ import annotations

import numpy as np
import pytest

from engine.evaluation import (
    average_precisions,
    evaluate,
    mean_average_precision,
    query_retrieval_top1,
    query_top1_torch,
    recall_at_k,
    retrieval_metrics_torch,
)

# ---------------------------------------------------------------------------------------------------
# The worked example. Six unit vectors whose dot products are exact in float32:
#   x0 = (1, 0, 0)      A
#   x1 = (.6, .8, 0)    B
#   x2 = (.8, .6, 0)    A
#   x3 = (0, 1, 0)      B
#   x4 = (0, 0, 1)      C   (alone in its class)
#   x5 = (0, 1, 0)      A   (the same vector as x3: exact ties)
# Similarities: s01=.6 s02=.8 s12=.96 s13=.8 s15=.8 s23=.6 s25=.6 s35=1, every other pair 0.
# Rankings (decreasing similarity, ties by increasing index), positives marked *:
#   q0 (A): 2* (.8), 1 (.6), 3 (0), 4 (0), 5* (0)   -> first hit at rank 1; AP = (1/1 + 2/5) / 2 = 0.7
#   q1 (B): 2 (.96), 3* (.8), 5 (.8), 0 (.6), 4     -> rank 2 (tie 3 < 5);  AP = 1/2
#   q2 (A): 1 (.96), 0* (.8), 3 (.6), 5* (.6), 4    -> rank 2;              AP = (1/2 + 2/4) / 2 = 0.5
#   q3 (B): 5 (1), 1* (.8), 2 (.6), 0 (0), 4 (0)    -> rank 2;              AP = 1/2
#   q4 (C): no other C                             -> never a hit;          AP undefined (excluded)
#   q5 (A): 3 (1), 1 (.8), 2* (.6), 0* (0), 4 (0)   -> rank 3;              AP = (1/3 + 2/4) / 2 = 5/12
# R@1 = 1/6 (q0), R@2 = 4/6 (q0-q3), R@3 = R@5 = 5/6 (+ q5; q4 never)
# mAP = (0.7 + 0.5 + 0.5 + 0.5 + 5/12) / 5 = 0.52333..., one query excluded.
X = np.array(
    [[1, 0, 0], [0.6, 0.8, 0], [0.8, 0.6, 0], [0, 1, 0], [0, 0, 1], [0, 1, 0]], dtype=np.float32
)
Y = ["A", "B", "A", "B", "C", "A"]


def test_recall_worked_example() -> None:
    r = recall_at_k(X, Y, ks=(1, 2, 3, 5))
    assert r == pytest.approx({1: 1 / 6, 2: 4 / 6, 3: 5 / 6, 5: 5 / 6})


def test_average_precision_worked_example() -> None:
    ap = average_precisions(X, Y)
    assert np.isnan(ap[4])
    assert ap[[0, 1, 2, 3, 5]] == pytest.approx([0.7, 0.5, 0.5, 0.5, 5 / 12])
    assert mean_average_precision(X, Y) == pytest.approx((0.7 + 0.5 + 0.5 + 0.5 + 5 / 12) / 5)


def test_ties_broken_by_index() -> None:
    # q1's two 0.8 neighbours are x3 (B, positive) and x5 (A): x3 has the lower index, so R@2 hits.
    # Swap the two rows: now the negative has the lower index and q1 only hits at rank 3.
    perm = [0, 1, 2, 5, 4, 3]
    Xp, Yp = X[perm], [Y[i] for i in perm]  # noqa: N806
    ap = average_precisions(Xp, Yp)
    assert ap[1] == pytest.approx(1 / 3)  # was 1/2
    assert recall_at_k(Xp, Yp, ks=(2,))[2] < recall_at_k(X, Y, ks=(2,))[2]


def test_top1_worked_example() -> None:
    # queries x0 (A), x1 (B) against retrieval x2 (A), x3 (B), x5 (A):
    # x0 -> x2 (.8) right; x1 -> x2 (.96) wrong  => 0.5
    assert query_retrieval_top1(X[[0, 1]], ["A", "B"], X[[2, 3, 5]], ["A", "B", "A"]) == 0.5
    # a tie at 1.0 between x5 (A, index 0) and x3 (B, index 1) for query x3 (B): the lower index wins
    assert query_retrieval_top1(X[[3]], ["B"], X[[5, 3]], ["A", "B"]) == 0.0
    assert query_retrieval_top1(X[[3]], ["B"], X[[3, 5]], ["B", "A"]) == 1.0


def test_evaluate_worked_example() -> None:
    out = evaluate(X, Y, ks=(1, 5), queries=[0, 1], retrieval=[2, 3, 5])
    assert out["recall@1"] == pytest.approx(1 / 6) and out["recall@5"] == pytest.approx(5 / 6)
    assert out["map"] == pytest.approx(0.5233333, abs=1e-6)
    assert out["map_excluded"] == 1 and out["n"] == 6
    assert out["top1"] == 0.5 and out["n_queries"] == 2 and out["n_retrieval"] == 3


# ---------------------------------------------------------------------------------------------------
# brute force: plain Python loops over every query, on integer vectors (exact dot products, many ties)
def _brute(x: np.ndarray, y: list, ks):
    n = len(y)
    sims = [[float(np.dot(x[i].astype(np.float64), x[j].astype(np.float64))) for j in range(n)] for i in range(n)]
    hits = {k: 0 for k in ks}
    aps = []
    for i in range(n):
        order = sorted((j for j in range(n) if j != i), key=lambda j: (-sims[i][j], j))
        rel = [y[j] == y[i] for j in order]
        for k in ks:
            hits[k] += any(rel[:k])
        if any(rel):
            found, total = 0, 0.0
            for rank, r in enumerate(rel, start=1):
                if r:
                    found += 1
                    total += found / rank
            aps.append(total / sum(rel))
    return {k: hits[k] / n for k in ks}, float(np.mean(aps)), n - len(aps)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 57
    x = rng.integers(-2, 3, size=(n, 4)).astype(np.float32)
    y = [int(v) for v in rng.integers(0, 6, size=n)]
    y[-1] = 99  # a singleton class
    ks = (1, 3, 5, 10)
    rec, mAP, excluded = _brute(x, y, ks)  # noqa: N806
    for block in (None, 1, 7):  # the block size never changes the answer
        assert recall_at_k(x, y, ks, block_rows=block) == pytest.approx(rec)
        assert mean_average_precision(x, y, block_rows=block) == pytest.approx(mAP)
    assert int(np.isnan(average_precisions(x, y)).sum()) == excluded == 1


def test_top1_against_brute_force() -> None:
    rng = np.random.default_rng(5)
    q = rng.integers(-2, 3, size=(31, 3)).astype(np.float32)
    r = rng.integers(-2, 3, size=(40, 3)).astype(np.float32)
    yq, yr = list(rng.integers(0, 4, 31)), list(rng.integers(0, 4, 40))
    correct = 0
    for i in range(31):
        s = [float(np.dot(q[i], r[j])) for j in range(40)]
        best = min(range(40), key=lambda j: (-s[j], j))
        correct += yr[best] == yq[i]
    for block in (None, 4):
        assert query_retrieval_top1(q, yq, r, yr, block_rows=block) == pytest.approx(correct / 31)


def test_larger_random_normalised_runs_in_blocks() -> None:
    # 3,000 x 64: blocks of rows; the result must match a direct full-matrix computation of R@1
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = list(rng.integers(0, 50, 3000))
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    nn1 = s.argmax(axis=1)
    expect = float(np.mean(np.asarray(y)[nn1] == np.asarray(y)))
    assert recall_at_k(x, y, ks=(1,), block_rows=333)[1] == pytest.approx(expect)


def test_bad_input_messages() -> None:
    with pytest.raises(ValueError, match="2-D"):
        recall_at_k(np.zeros(5), [0] * 5)
    with pytest.raises(ValueError, match="labels"):
        recall_at_k(X, Y[:-1])
    with pytest.raises(ValueError, match="NaN"):
        mean_average_precision(np.full((3, 2), np.nan), [0, 0, 1])
    with pytest.raises(ValueError, match="dimensions"):
        query_retrieval_top1(X, Y, np.zeros((2, 5)), [0, 1])
    with pytest.raises(ValueError, match="ks"):
        recall_at_k(X, Y, ks=(0,))
    with pytest.raises(ValueError, match="both"):
        evaluate(X, Y, queries=[0])
    assert np.isnan(mean_average_precision(X[:3], ["a", "b", "c"]))  # no query has a positive


# ---------------------------------------------------------------------------------------------------
# the torch path (what training validates with) gives the numpy path's numbers
def _codes_of(y: list):
    import torch

    names = sorted({str(v) for v in y})
    return torch.tensor([names.index(str(v)) for v in y])


def test_torch_path_worked_example() -> None:
    import torch

    m = retrieval_metrics_torch(torch.from_numpy(X), _codes_of(Y), ks=(1, 2, 3, 5))
    assert [m[f"recall@{k}"] for k in (1, 2, 3, 5)] == pytest.approx([1 / 6, 4 / 6, 5 / 6, 5 / 6])
    assert m["map"] == pytest.approx((0.7 + 0.5 + 0.5 + 0.5 + 5 / 12) / 5)
    assert m["map_excluded"] == 1 and m["n"] == 6   # q4 (alone in C): a miss for R@K, out of mAP
    # ties broken by index, as in test_ties_broken_by_index
    perm = [0, 1, 2, 5, 4, 3]
    mp = retrieval_metrics_torch(torch.from_numpy(X[perm]), _codes_of([Y[i] for i in perm]), ks=(2,))
    assert mp["recall@2"] == pytest.approx(recall_at_k(X[perm], [Y[i] for i in perm], ks=(2,))[2])
    assert mp["recall@2"] < 4 / 6
    assert mp["map"] == pytest.approx(mean_average_precision(X[perm], [Y[i] for i in perm]))
    # top-1, ties to the lowest retrieval index
    t = torch.from_numpy(X)
    assert query_top1_torch(t[[0, 1]], torch.tensor([0, 1]), t[[2, 3, 5]], torch.tensor([0, 1, 0])) == 0.5
    assert query_top1_torch(t[[3]], torch.tensor([1]), t[[5, 3]], torch.tensor([0, 1])) == 0.0
    assert query_top1_torch(t[[3]], torch.tensor([1]), t[[3, 5]], torch.tensor([1, 0])) == 1.0
    # no query with a positive: every R@K 0, mAP NaN, as mean_average_precision
    none = retrieval_metrics_torch(t[:3], torch.tensor([0, 1, 2]), ks=(1,))
    assert none["recall@1"] == 0.0 and np.isnan(none["map"]) and none["map_excluded"] == 3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_torch_path_equals_numpy_path(seed: int) -> None:
    import torch

    rng = np.random.default_rng(seed)
    n = 57
    x = rng.integers(-2, 3, size=(n, 4)).astype(np.float32)   # integer vectors: many exact ties
    y = [int(v) for v in rng.integers(0, 6, size=n)]
    y[-1] = 99
    ks = (1, 3, 5, 10)
    want = evaluate(x, y, ks=ks)
    for block in (None, 1, 7):
        got = retrieval_metrics_torch(torch.from_numpy(x), torch.tensor(y), ks=ks, block_rows=block)
        assert got == pytest.approx({k: v for k, v in want.items()})
    q, r = list(range(0, n, 3)), [i for i in range(n) if i % 3]
    t, yt = torch.from_numpy(x), torch.tensor(y)
    assert query_top1_torch(t[q], yt[q], t[r], yt[r], block_rows=4) == pytest.approx(
        query_retrieval_top1(x[q], [y[i] for i in q], x[r], [y[i] for i in r]))
