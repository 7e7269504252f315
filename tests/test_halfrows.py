"""engine.halfrows: scores and rows from stored float16 rows equal numpy's float32 reference, on the ONNX
Runtime path and on the numpy fallback, from several threads at once; the module imports neither onnx nor
torch."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import engine.halfrows as hr

ROOT = Path(__file__).resolve().parents[1]


def _reference_rows(rows: np.ndarray) -> np.ndarray:
    """The stored rows' float32 meaning: each row over max(its norm, 1e-12)."""
    r32 = rows.astype(np.float32)
    return r32 / np.maximum(np.linalg.norm(r32, axis=1, keepdims=True), 1e-12)


def _reference(q: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return q @ _reference_rows(rows).T


def _data(nq: int, n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit-length float32 queries (as search prepares them) and float16 rows of near-unit norm."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((nq, d)).astype(np.float32)
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    rows = rng.standard_normal((n, d)).astype(np.float32)
    rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    return q, rows.astype(np.float16)


@pytest.fixture
def numpy_only(monkeypatch):
    """Both sessions marked unavailable: the numpy path runs."""
    monkeypatch.setattr(hr, "_sessions", {"scores": None, "cast": None})


def test_the_fast_path_is_there():
    """onnxruntime is installed here, so the other tests exercise its graphs (not only numpy)."""
    pytest.importorskip("onnxruntime")
    assert hr._session("scores") is not None and hr._session("cast") is not None


# (Q, N, D): empty sides, one row, tiny D, multi-block N on the runtime (N * D >= _SMALL), D = 1280, and
# rows shared by two threads (N * D >= _PARALLEL)
SHAPES = [(1, 0, 5), (0, 5, 5), (0, 0, 4), (1, 1, 3), (7, 50, 3), (1, 2500, 64), (7, 2500, 64), (1, 1, 1280),
          (3, 1500, 1280), (1, 1700, 1280)]


@pytest.mark.parametrize("path", ["auto", "numpy", "one thread"])
@pytest.mark.parametrize("nq,n,d", SHAPES)
def test_scores_equal_the_reference(nq, n, d, path, monkeypatch):
    if path == "numpy":
        monkeypatch.setattr(hr, "_sessions", {"scores": None, "cast": None})
    if path == "one thread":
        monkeypatch.setattr(hr, "_workers", lambda: 1)
    q, rows = _data(nq, n, d, seed=nq * 1000 + n + d)
    got = hr.half_scores(q, rows)
    assert got.shape == (nq, n) and got.dtype == np.float32
    np.testing.assert_allclose(got, _reference(q, rows), rtol=0, atol=1e-6)


@pytest.mark.parametrize("path", ["auto", "numpy"])
def test_rows_that_are_views_of_a_bigger_buffer(path, monkeypatch):
    if path == "numpy":
        monkeypatch.setattr(hr, "_sessions", {"scores": None, "cast": None})
    q, big = _data(2, 3000, 300, seed=1)
    for rows in (big[700:2900], big[5:2005, 10:266], big[::2]):  # a row slice, a column slice, strided rows
        qd = np.ascontiguousarray(q[:, :rows.shape[1]])
        np.testing.assert_allclose(hr.half_scores(qd, rows), _reference(qd, rows), rtol=0, atol=1e-6)
        np.testing.assert_allclose(hr.half_rows(rows), _reference_rows(rows), rtol=0, atol=1e-7)


@pytest.mark.parametrize("path", ["auto", "numpy"])
def test_a_zero_row_scores_zero(path, monkeypatch):
    if path == "numpy":
        monkeypatch.setattr(hr, "_sessions", {"scores": None, "cast": None})
    q, rows = _data(2, 2000, 64, seed=2)
    rows[[0, 1234]] = 0
    got = hr.half_scores(q, rows)
    assert np.isfinite(got).all() and not got[:, [0, 1234]].any()
    np.testing.assert_allclose(got, _reference(q, rows), rtol=0, atol=1e-6)
    r = hr.half_rows(rows)
    assert np.isfinite(r).all() and not r[[0, 1234]].any()


def test_a_row_scores_one_against_itself():
    """A stored row taken as the query (normalised in float32) scores 1 to float32 precision."""
    _, rows = _data(1, 2000, 1280, seed=3)
    q = _reference_rows(rows[:4])
    got = hr.half_scores(q, rows)
    np.testing.assert_allclose(np.diag(got[:, :4]), 1.0, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n,d", [(0, 8), (1, 3), (37, 1280), (1000, 1280), (2500, 512), (1700, 1280)])
def test_half_rows_equal_the_reference(n, d, numpy_only):
    """half_rows on the runtime (n * D >= _LARGE) gives numpy's bits; both equal the reference to 1e-7."""
    _, rows = _data(1, n, d, seed=n + d)
    want = hr.half_rows(rows)  # numpy_only: the numpy path
    np.testing.assert_allclose(want, _reference_rows(rows), rtol=0, atol=1e-7)
    hr._sessions.clear()  # the fixture's dict: the runtime's sessions are made again
    out = np.full((n, d), np.nan, np.float32)
    got = hr.half_rows(rows, out)
    assert got is out
    np.testing.assert_array_equal(got, want)


def test_a_session_that_cannot_be_made_falls_back_to_numpy(monkeypatch):
    monkeypatch.setattr(hr, "_sessions", {})
    monkeypatch.setitem(hr._MODELS, "scores", lambda: b"not an onnx model")
    q, rows = _data(3, 3000, 64, seed=4)
    np.testing.assert_allclose(hr.half_scores(q, rows), _reference(q, rows), rtol=0, atol=1e-6)
    assert hr._sessions["scores"] is None  # tried once, remembered


def test_several_threads_at_once(monkeypatch):
    """Threads racing for the session's creation and calling run together each get their own scores."""
    monkeypatch.setattr(hr, "_sessions", {})
    q, rows = _data(8, 8200, 256, seed=5)  # two halves each (_PARALLEL)
    want = _reference(q, rows)
    got: dict[int, np.ndarray] = {}
    start = threading.Barrier(8)

    def work(i: int) -> None:
        start.wait()
        for _ in range(3):
            got[i] = hr.half_scores(q[i:i + 1], rows)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(8):
        np.testing.assert_allclose(got[i], want[i:i + 1], rtol=0, atol=1e-6)


def test_bad_input_is_refused():
    """Rows that are not float16 are refused (a silent cast would change the scores)."""
    with pytest.raises(ValueError, match="one D"):
        hr.half_scores(np.zeros((1, 4), np.float32), np.zeros((3, 5), np.float16))
    with pytest.raises(ValueError, match=r"float16 \(N, D\)"):
        hr.half_rows(np.zeros(5, np.float16))
    with pytest.raises(ValueError, match="float16"):
        hr.half_scores(np.zeros((1, 4), np.float32), np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="C-contiguous float32"):
        hr.half_rows(np.zeros((3, 5), np.float16), np.zeros((3, 5), np.float64))


def test_the_hand_encoded_graphs_are_valid_onnx():
    """The bytes parse as ONNX, pass the full checker (with shape inference) and mean what the numpy
    reference computes (ONNX's own reference evaluator)."""
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    q, rows = _data(3, 40, 16, seed=6)
    rows[5] = 0
    for make, feeds, want in ((hr.scores_model, {"X": rows, "Q": q}, _reference(q, rows).T),
                              (hr.cast_model, {"X": rows}, rows.astype(np.float32))):
        model = onnx.load_from_string(make())
        onnx.checker.check_model(model, full_check=True)
        assert model.opset_import[0].version == hr._OPSET and model.ir_version == hr._IR_VERSION
        np.testing.assert_allclose(ReferenceEvaluator(model).run(None, feeds)[0], want, rtol=0, atol=1e-6)


def test_importing_it_imports_neither_onnx_nor_torch():
    code = ("import sys, numpy as np, engine.halfrows as h\n"
            "h.half_scores(np.ones((1, 64), np.float32), np.ones((4096, 64), np.float16))\n"
            "h.half_rows(np.ones((20000, 64), np.float16))\n"
            "print('onnx' in sys.modules, 'torch' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]
