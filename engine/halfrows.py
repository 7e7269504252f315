"""Scores of float32 queries against stored float16 rows, without converting the rows first (torch-free).

A collection keeps its rows as float16 (N, D), the format they are stored in; a row's float32 meaning is
the row converted to float32 and divided by max(its L2 norm, 1e-12) (:func:`half_rows`, the one definition).
Exact search needs ``q @ r.T`` over those meanings. numpy's float16 -> float32 cast is the slow part
(0.30 s for 100k x 1280 on one core; threads do not help it much), while ONNX Runtime's CPU Cast uses F16C
(~0.03 s for the same cast). So the scores run as a tiny ONNX graph (Cast; Gemm with the queries;
Mul + ReduceSum -> Sqrt -> Max(1e-12) -> Div), fed cache-sized blocks of rows so that no float32 copy of
many rows is ever made; a large call's rows are shared by two threads (halves). The graph is hand-encoded
here as protobuf bytes (importing the ``onnx`` package costs ~0.9 s, onnxruntime ~0.03 s). Without
onnxruntime (or when its session cannot be made) a blocked numpy path gives the same results.

Measured (2 shared cores, load 1.2-3.4, one float16 query, median of 4 fresh processes): 100k x 1280
warm 0.10 s (0.05 s when the second core is free) against numpy's 0.47-0.74 s; first call in a process
0.14-0.16 s including onnxruntime's import (0.03 s) and the session (0.005 s); 1M x 128 warm 0.11-0.13 s
against numpy's 0.7-1.2 s. Scores agree with the numpy reference to ~2e-7 for unit queries.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import numpy as np

from engine.exports import onnxruntime_session
from engine.vectors import EPS

log = logging.getLogger(__name__)

#: float16 elements fed to the graph per run (409 rows at D = 1280, 4096 at D = 128): the block's float32
#: copies stay in cache. Measured 2^18..2^22 at 100k x 1280 and 1M x 128: 2^19 fastest at both (0.096 s
#: and 0.127 s on one thread, medians of 3), 2^22 twice as slow.
BLOCK_ELEMENTS = 1 << 19
#: below this many float16 elements, half_scores uses numpy (no session made for a handful of rows)
_SMALL = 1 << 14
#: from this many float16 elements on, half_rows casts in ONNX Runtime
_LARGE = 1 << 20
#: from this many elements on, a call's rows are shared by two threads (not tuned: ~1 ms of work alone)
_PARALLEL = 1 << 21


# --- a minimal protobuf encoder for ONNX's ModelProto --------------------------------------------------
# Field numbers from onnx/onnx.proto (onnx/onnx repository): ModelProto ir_version=1 graph=7 opset_import=8;
# OperatorSetIdProto domain=1 version=2; GraphProto node=1 name=2 initializer=5 input=11 output=12;
# NodeProto input=1 output=2 name=3 op_type=4 attribute=5; AttributeProto name=1 i=3 ints=8 type=20
# (INT=2, INTS=7); TensorProto dims=1 data_type=2 name=8 raw_data=9 (FLOAT=1, FLOAT16=10);
# ValueInfoProto name=1 type=2; TypeProto tensor_type=1; TypeProto.Tensor elem_type=1 shape=2;
# TensorShapeProto dim=1; Dimension dim_value=1 dim_param=2.
_FLOAT, _INT64, _FLOAT16 = 1, 7, 10
_ATTR_INT, _ATTR_INTS = 2, 7
_OPSET = 13
_IR_VERSION = 7  # the IR of opset 13


def _varint(n: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int (a negative int64 as its two's complement)."""
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    """A varint field (wire type 0)."""
    return _varint(field << 3) + _varint(value)


def _bytes(field: int, value: bytes | str) -> bytes:
    """A length-delimited field (wire type 2): bytes, a string or an embedded message."""
    if isinstance(value, str):
        value = value.encode()
    return _varint(field << 3 | 2) + _varint(len(value)) + value


def _tensor_info(name: str, elem_type: int, dims: list[int | str]) -> bytes:
    """ValueInfoProto: a tensor input or output, each dim a size or a symbolic name."""
    shape = b"".join(_bytes(1, _int(1, d) if isinstance(d, int) else _bytes(2, d)) for d in dims)
    tensor = _int(1, elem_type) + _bytes(2, shape)
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor))


def _node(op: str, inputs: list[str], outputs: list[str], **attrs: int | list[int]) -> bytes:
    """NodeProto with int / ints attributes."""
    out = b"".join(_bytes(1, i) for i in inputs) + b"".join(_bytes(2, o) for o in outputs)
    out += _bytes(3, f"{op}_{outputs[0]}") + _bytes(4, op)
    for name, v in attrs.items():
        if isinstance(v, list):
            attr = _bytes(1, name) + b"".join(_int(8, x) for x in v) + _int(20, _ATTR_INTS)
        else:
            attr = _bytes(1, name) + _int(3, v) + _int(20, _ATTR_INT)
        out += _bytes(5, attr)
    return out


def _scalar(name: str, value: float) -> bytes:
    """TensorProto: a float32 scalar initializer."""
    return _int(2, _FLOAT) + _bytes(8, name) + _bytes(9, struct.pack("<f", value))


def _int64s(name: str, values: list[int]) -> bytes:
    """TensorProto: a 1-D int64 initializer."""
    return _int(1, len(values)) + _int(2, _INT64) + _bytes(8, name) + _bytes(9, struct.pack(f"<{len(values)}q", *values))


def _model(nodes: list[bytes], inputs: list[bytes], outputs: list[bytes], inits: list[bytes]) -> bytes:
    """ModelProto bytes of one graph at opset 13 (default domain)."""
    graph = (b"".join(_bytes(1, n) for n in nodes) + _bytes(2, "halfrows")
             + b"".join(_bytes(5, t) for t in inits)
             + b"".join(_bytes(11, i) for i in inputs) + b"".join(_bytes(12, o) for o in outputs))
    opset = _bytes(1, "") + _int(2, _OPSET)
    return _int(1, _IR_VERSION) + _bytes(2, "engine.halfrows") + _bytes(7, graph) + _bytes(8, opset)


def scores_model() -> bytes:
    """The scores graph: X (n, D) float16, Q (m, D) float32 -> S (n, m) float32 = X/max(|X|, 1e-12) @ Q.T.
    The squared norms are Mul + ReduceSum: ReduceSumSquare measured twice as slow (0.18 s against 0.09 s
    at 100k x 1280, one thread)."""
    nodes = [_node("Cast", ["X"], ["Xf"], to=_FLOAT),
             _node("Mul", ["Xf", "Xf"], ["X2"]),
             _node("ReduceSum", ["X2", "AXES"], ["SQ"], keepdims=1),
             _node("Sqrt", ["SQ"], ["NRM"]),
             _node("Max", ["NRM", "EPS"], ["L"]),
             _node("Gemm", ["Xf", "Q"], ["P"], transB=1),
             _node("Div", ["P", "L"], ["S"])]
    return _model(nodes, [_tensor_info("X", _FLOAT16, ["n", "d"]), _tensor_info("Q", _FLOAT, ["m", "d"])],
                  [_tensor_info("S", _FLOAT, ["n", "m"])], [_scalar("EPS", EPS), _int64s("AXES", [1])])


def cast_model() -> bytes:
    """The cast graph: X (n, D) float16 -> R (n, D) float32 (exact: every float16 is a float32)."""
    return _model([_node("Cast", ["X"], ["R"], to=_FLOAT)], [_tensor_info("X", _FLOAT16, ["n", "d"])],
                  [_tensor_info("R", _FLOAT, ["n", "d"])], [])


# --- the sessions and the helper thread ---------------------------------------------------------------
_MODELS = {"scores": scores_model, "cast": cast_model}
_lock = threading.Lock()
_sessions: dict[str, Any] = {}  # "scores" / "cast" -> InferenceSession, or None once it could not be made
_pool: ThreadPoolExecutor | None = None


_CORES = os.cpu_count() or 1  # asked once: os.cpu_count() costs ~10 us, a query's candidates ~30 us in all
#: every float16 value's float32 (256 KB): a few rows are converted by a lookup, twice as fast as numpy's
#: cast (14 against 25 us for 10 x 1280, the same bits)
_HALF_TO_FLOAT = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)


def _workers() -> int:
    """Threads that share one call's rows: the machine's cores, at most 2 (the rest belong to loading and
    indexing). ONNX Runtime's own intra-op threads gave nothing here (its ops on a cache-sized block run on
    one thread: 2 intra-op threads measured 0.105 s against 1's 0.098 s at 100k x 1280, medians); two
    callers of ``run`` on halves of the rows gave 0.05 s when the second core was free, 0.10 s when not."""
    return max(1, min(2, _CORES))


def _session(kind: str) -> Any:
    """The process's one session of ``kind`` (made on first use, under a lock; ``run`` is thread-safe), or
    None when onnxruntime is missing or refuses the graph: then the numpy path runs (logged at debug once).
    One intra-op thread, idle threads never spin (engine.exports.onnxruntime_session)."""
    s = _sessions.get(kind, False)
    if s is not False:
        return s
    with _lock:
        s = _sessions.get(kind, False)
        if s is False:
            try:
                s = onnxruntime_session(_MODELS[kind](), 1)
            except Exception as exc:  # ImportError, or the runtime refusing the graph: numpy does it
                log.debug("half rows: the numpy path for %r (%s: %s)", kind, type(exc).__name__, exc)
                s = None
            _sessions[kind] = s
    return s


def _in_parts(n: int, d: int, part: Callable[[int, int], None]) -> None:
    """``part(a, b)`` over rows [0, n): in two halves at once (the second on the helper thread) when there
    are several cores and at least :data:`_PARALLEL` elements, else in one go on the calling thread."""
    global _pool
    if _workers() < 2 or n * d < _PARALLEL:
        part(0, n)
        return
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_workers() - 1, thread_name_prefix="halfrows")
    h = n // 2
    other = _pool.submit(part, h, n)  # the pool's threads never wait on the pool: no deadlock
    try:
        part(0, h)
    except BaseException:
        wait([other])  # the helper is done with the arrays before the first half's error goes up
        raise
    other.result()


# --- the public functions -----------------------------------------------------------------------------
def _block_rows(d: int) -> int:
    """Rows per block at dimension ``d``."""
    return max(1, BLOCK_ELEMENTS // max(d, 1))


def _norms(b32: np.ndarray) -> np.ndarray:
    """(n, D) float32 -> (n,) max(L2 norm, EPS)."""
    return np.maximum(np.sqrt(np.einsum("ij,ij->i", b32, b32)), EPS)


def _check_rows(rows: np.ndarray) -> None:
    if not isinstance(rows, np.ndarray) or rows.ndim != 2 or rows.dtype != np.float16:
        raise ValueError(f"rows must be a float16 (N, D) array, got {getattr(rows, 'dtype', type(rows))} "
                         f"of shape {getattr(rows, 'shape', None)} (convert with astype(np.float16))")


def half_scores(q: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """q (Q, D) float32 prepared queries, rows (N, D) float16 stored rows -> (Q, N) float32 scores
    ``q @ r.T``, r each row in float32 divided by max(its norm, 1e-12) (a zero row scores 0).
    Rows go in blocks through ONNX Runtime when it is there, numpy otherwise."""
    _check_rows(rows)
    q = np.ascontiguousarray(q, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != rows.shape[1]:
        raise ValueError(f"queries {q.shape} and rows {rows.shape} must be (Q, D) and (N, D) with one D")
    n, d = rows.shape
    out = np.empty((q.shape[0], n), np.float32)
    if out.size == 0:
        return out
    if d == 0:
        out.fill(0.0)
        return out
    if n * d < _SMALL:  # a handful of rows (a query's candidates in the graph): no session, blocks or threads
        b32 = np.take(_HALF_TO_FLOAT, rows.view(np.uint16))
        s = q @ b32.T
        with np.errstate(invalid="ignore"):  # as the graph: an infinite row scores NaN, quietly
            s /= _norms(b32)
        return s
    sess = _session("scores")
    step = _block_rows(d)

    def part(lo: int, hi: int) -> None:
        for a in range(lo, hi, step):
            block = np.ascontiguousarray(rows[a:min(a + step, hi)])
            if sess is not None:
                s = sess.run(None, {"X": block, "Q": q})[0]  # (b, Q)
            else:
                b32 = block.astype(np.float32)
                s = b32 @ q.T
                with np.errstate(invalid="ignore"):  # as the graph: an infinite row scores NaN, quietly
                    s /= _norms(b32)[:, None]
            out[:, a:a + block.shape[0]] = s.T

    _in_parts(n, d, part)
    return out


def half_rows(rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """rows (n, D) float16 -> ``out`` (n, D) float32 (or a new array), each row divided by max(its norm,
    1e-12): the stored rows' float32 meaning. The cast runs in ONNX Runtime from ~1M elements (numpy
    below), written straight into ``out``; the norms are numpy's, so both paths give the same bits.
    Finiteness is the reader's check (engine.vectors.finite_half, on the float16 bits)."""
    _check_rows(rows)
    n, d = rows.shape
    if out is None:
        out = np.empty((n, d), np.float32)
    elif out.shape != (n, d) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {(n, d)}")
    sess = _session("cast") if n * d >= _LARGE else None
    step = _block_rows(d)

    def part(lo: int, hi: int) -> None:
        io = sess.io_binding() if sess is not None else None  # one binding per thread
        for a in range(lo, hi, step):
            block = np.ascontiguousarray(rows[a:min(a + step, hi)])
            dst = out[a:a + block.shape[0]]
            if io is not None:  # ORT writes the cast into dst itself (no intermediate copy)
                io.bind_cpu_input("X", block)
                io.bind_output("R", "cpu", 0, np.float32, dst.shape, dst.ctypes.data)
                sess.run_with_iobinding(io)
            else:
                np.copyto(dst, block, casting="unsafe")
            with np.errstate(invalid="ignore"):  # an unchecked infinite row becomes NaN, without a warning
                dst /= _norms(dst)[:, None]

    _in_parts(n, d, part)
    return out
