"""Vector indexes: exact (a blocked matrix product) and HNSW (nmslib), behind one interface.

This is the only module of the project that imports ``nmslib`` (lazily, inside :class:`HnswIndex`), so
everything else keeps working when nmslib is missing or broken.

Conventions
-----------
- ids are caller-chosen ``int64`` values (unique); ``query`` returns them with a score, best first.
- metric ``"cosine"``: score = cosine similarity in [-1, 1] (vectors are L2-normalised on the way in).
- metric ``"l2"``: score = ``-euclidean distance`` (so that, for both metrics, *higher is better*).
- Both index kinds compute the returned scores the same way from the stored vectors, so an HNSW answer
  and an exact answer for the same neighbour carry the same score. A cosine index given a collection's
  stored float16 rows (``normalised=True``) keeps them as they are, by reference, and scores them as
  :func:`engine.halfrows.half_rows` means them; float32 rows are kept as float32.

HNSW and change
---------------
nmslib cannot delete points, and inserting into an HNSW graph that was already built is not supported
by its Python API (``addDataPointBatch`` after ``createIndex`` only takes effect at the next
``createIndex``, which rebuilds the whole graph). So :class:`HnswIndex` keeps

- a *built* part (the nmslib graph),
- a small *pending* part of points added since the last build, searched exactly and merged into every
  answer (so new points are found immediately, without a rebuild),
- a *tombstone* set of removed ids, filtered out at query time (the graph is asked for
  ``k + removed`` neighbours, and again with a larger k if too many of them were removed).

The graph is rebuilt lazily, at the next query (or explicitly, between a collection's commits), when the pending part grows beyond
``max(rebuild_min, rebuild_share * built)`` points or tombstones exceed ``rebuild_share`` of the graph.

On disk
-------
An index holds no files of its own: a collection (engine.collection) stores the vectors and keeps only
the graph of an :class:`HnswIndex`, written by :meth:`HnswIndex.save_graph` and checked by
:meth:`HnswIndex.restore` before nmslib reads it (sizes, CRC-32, the settings, and the file's structure
by :func:`check_graph_file`); a damaged graph or unknown settings raise :class:`IndexCorruptError`.
nmslib's optimised HNSW file embeds its own float32 copy of the (normalised) vectors beside the links
(``save_data=False`` only leaves out a second data file): the graph searches with that copy, so a
restored graph is loaded without adding the vectors again. A non-optimised graph
(``skip_optimized_index``) would leave the vectors out of the file, but then needs them added to
nmslib at every open (the same float32 copy in memory, and a slower generic search).
"""

from __future__ import annotations

import abc
import bisect
import logging
import math
import os
import struct
import threading
import zlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from engine.atomic import fsync_file
from engine.halfrows import half_rows, half_scores
from engine.vectors import STORE_DTYPE, finite_half, l2n

log = logging.getLogger(__name__)

INDEX_KINDS = ("hnsw", "exact")
METRICS = ("cosine", "l2")

#: defaults chosen with benchmarks/index.py (recall@10 against exact >= 0.99 on clustered data up to 100k);
#: efConstruction 100 builds in 0.6-0.7x the CPU of 200 at the same recall@10 (10k and 30k x 1280: 0.992
#: and 1.000 both; 100k x 128: 1.000), docs/BENCHMARKS.md "Graph build, open and storage at scale"
DEFAULT_M = 16
DEFAULT_EF_CONSTRUCTION = 100
#: the query-time ef of a graph of up to EF_GROWS_FROM points; larger graphs get :func:`default_ef`
DEFAULT_EF = 100
EF_GROWS_FROM = 100_000


def default_ef(n: int) -> int:
    """The query-time ef (efSearch) of a graph of ``n`` points when none was set: DEFAULT_EF up to
    EF_GROWS_FROM points (recall@10 1.000 at 100k x 1280 and 100k x 128), then growing as n**0.477, x3
    per x10 points: 300 at 1M, where 100 gave recall@10 0.968 and 300 gives 0.992 (1M x 128,
    efConstruction 100; docs/BENCHMARKS.md "Recall at 1M: the query ef by size"). A rule of the query,
    not of the build: the build time stays, and a query at 300 on one thread (knnQuery) costs what one
    at 100 cost through knnQueryBatch before."""
    if n <= EF_GROWS_FROM:
        return DEFAULT_EF
    return min(HNSW_LIMITS["ef"][1], int(round(DEFAULT_EF * (n / EF_GROWS_FROM) ** math.log10(3))))


class IndexCorruptError(RuntimeError):
    """A saved index that is damaged, incomplete or from another format; the message says what to do."""


class IndexSettingsError(IndexCorruptError, ValueError):
    """Index settings that are unknown or out of range (an unknown kind or parameter, an ef of 2**40):
    from a damaged or foreign manifest a damaged index (IndexCorruptError), from a caller a ValueError."""


#: the HNSW parameters an index accepts, with their bounds (ints; rebuild_share is a float in (0, 1])
HNSW_LIMITS: dict[str, tuple[int, int]] = {"M": (2, 512), "ef_construction": (1, 100_000), "ef": (1, 100_000),
                                            "threads": (1, 1024), "rebuild_min": (1, 2**40)}
HNSW_PARAMS = (*HNSW_LIMITS, "rebuild_share")


# --- helpers -------------------------------------------------------------------------------------
def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")
    return metric


def _as_matrix(vectors: Any, dim: int, what: str = "vectors") -> np.ndarray:
    """-> C-contiguous float32 (N, dim); a single (dim,) vector becomes (1, dim)."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{what} must have shape (N, {dim}), got {tuple(np.shape(vectors))}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what} contain NaN or infinite values")
    return np.ascontiguousarray(x)


def _is_half(x: Any) -> bool:
    return isinstance(x, np.ndarray) and x.dtype == STORE_DTYPE


def _as32(x: np.ndarray) -> np.ndarray:
    """Rows as float32 vectors: stored float16 rows through :func:`engine.halfrows.half_rows`, float32
    ones as they are."""
    return half_rows(x) if _is_half(x) else x


def _join(parts: list[np.ndarray]) -> np.ndarray:
    """Row blocks concatenated, in one dtype: float16 when all are, float32 otherwise."""
    if len(parts) == 1:
        return parts[0]
    if not all(_is_half(p) for p in parts):
        parts = [_as32(p) for p in parts]
    return np.concatenate(parts)


def _as_ids(ids: Any, n: int | None = None) -> np.ndarray:
    a = np.asarray(ids)
    if a.ndim != 1:
        raise ValueError(f"ids must be a 1-D array, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"ids must be integers, got dtype {a.dtype}")
    a = a.astype(np.int64, copy=False)
    if n is not None and a.shape[0] != n:
        raise ValueError(f"got {a.shape[0]} ids for {n} vectors")
    if a.size > 1 and not bool(np.all(a[1:] > a[:-1])) and np.unique(a).size != a.size:  # rising: unique
        raise ValueError("ids must be unique")
    return a


def _scores(q: np.ndarray, x: np.ndarray, metric: str) -> np.ndarray:
    """(Q, D) x (N, D) -> (Q, N) float32 scores, higher is better (inputs already prepared; stored
    float16 rows, cosine only, are scored as :func:`engine.halfrows.half_rows` means them)."""
    if _is_half(x):
        return half_scores(q, x)
    s = q @ x.T
    if metric == "cosine":
        return s
    d2 = (q * q).sum(1)[:, None] + (x * x).sum(1)[None, :] - 2.0 * s
    return -np.sqrt(np.maximum(d2, 0.0)).astype(np.float32)


def _topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and scores of the k best per row, best first (ties: lower index first)."""
    n = scores.shape[1]
    k = min(k, n)
    if k == 0:
        return np.zeros((scores.shape[0], 0), np.int64), np.zeros((scores.shape[0], 0), np.float32)
    if k < n:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(n), scores.shape).copy()
    s = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -s), axis=1) if part.shape[0] else np.zeros_like(part)
    idx = np.take_along_axis(part, order, axis=1)
    return idx.astype(np.int64), np.take_along_axis(s, order, axis=1).astype(np.float32)




def crc32_file(path: str | os.PathLike) -> int:
    """CRC-32 of a file's bytes (zlib; about 2 GB/s here): catches damage before a C library reads it."""
    crc = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            crc = zlib.crc32(chunk, crc)
    return crc


def check_hnsw_params(params: Any) -> dict[str, Any]:
    """``params`` (a dict of HNSW settings: some of :data:`HNSW_PARAMS`) checked -> a copy with plain
    Python numbers; an unknown name, a wrong type or a value out of :data:`HNSW_LIMITS` raises
    IndexSettingsError (never a TypeError, never a number nmslib would overflow on)."""
    if not isinstance(params, dict):
        raise IndexSettingsError(f"HNSW settings must be a mapping, got {type(params).__name__}")
    unknown = sorted(str(k) for k in params if k not in HNSW_PARAMS)
    if unknown:
        raise IndexSettingsError(f"unknown HNSW settings {', '.join(unknown)}; valid settings: "
                                 f"{', '.join(HNSW_PARAMS)}")
    out: dict[str, Any] = {}
    for name, v in params.items():
        if name == "rebuild_share":
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                    or not 0.0 < float(v) <= 1.0:
                raise IndexSettingsError(f"rebuild_share must be in (0, 1], got {v!r}")
            out[name] = float(v)
            continue
        lo, hi = HNSW_LIMITS[name]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= int(v) <= hi:
            what = "a positive integer" if lo == 1 else f"an integer of at least {lo}"
            raise IndexSettingsError(f"{name} must be {what} and at most {hi:,}, got {v!r}")
        out[name] = int(v)
    return out


# --- nmslib's HNSW file, checked before nmslib reads it ------------------------------------------------
#: the header of the optimised HNSW index file that nmslib 2.1 writes (read from its files; the
#: fields as nmslib's hnsw.cc names them): optimised-index flag (uint32, 1), element count (uint32),
#: memoryPerObject, offsetLevel0, offsetData (size_t), maxlevel, enterpointId (int32), maxM, maxM0
#: (size_t), dist_func_type (int32), searchMethod (size_t). Then ``count`` level-0 blocks of
#: memoryPerObject bytes (the object: id int32, label int32, data length size_t, the float32 vector;
#: at offsetLevel0 the level-0 links: a count and maxM0 ids, int32), then per element a uint32 byte size
#: of its upper-level links (level x (maxM + 1) int32: a count and maxM ids per level) and those links.
_HNSW_HEADER = struct.Struct("<IIQQQiiQQiQ")
_OBJECT_HEAD = 16


def _dist_func_type(space: str, dim: int) -> int:
    if space == "cosinesimil":
        return 3
    return 1 if dim % 16 == 0 else 2


def check_graph_file(path: str | os.PathLike, *, count: int, dim: int, space: str,
                     vectors: np.ndarray | None = None, sample: int = 256) -> None:
    """Check an nmslib HNSW graph file's structure before nmslib reads it, so that a damaged or
    tampered file cannot crash the process or mislead a search: the header (element count ``count``,
    sizes for ``dim``-d float32 vectors of ``space``, degrees, levels, entry point), every element's
    id, data length, level-0 link count and neighbour ids (< count), every upper-level link list
    (its size, counts, neighbour ids, and that a neighbour at level l has level >= l), the total size,
    and (``vectors`` (count, dim) float32, prepared as the graph holds them: normalised for cosine)
    that ``sample`` of the vectors embedded in the graph are finite and equal to ``vectors``'. Costs a
    read of the file through a memory map and O(count) array operations. Raises IndexCorruptError."""
    path = Path(path)

    def bad(why: str) -> IndexCorruptError:
        return IndexCorruptError(f"the HNSW graph file {path} is damaged ({why})")

    size = path.stat().st_size
    if size < _HNSW_HEADER.size:
        raise bad(f"{size} bytes, shorter than its header")
    mm = np.memmap(path, np.uint8, "r")
    try:
        (flag, n, per_object, off_level0, off_data, max_level, entry, max_m, max_m0, dist_type,
         method) = _HNSW_HEADER.unpack_from(mm[:_HNSW_HEADER.size].tobytes())
        data_section = _OBJECT_HEAD + 4 * dim
        if flag != 1:
            raise bad(f"format flag {flag}, expected 1 (an optimised index)")
        if n != count:
            raise bad(f"{n} elements, expected {count}")
        if not (1 <= max_m <= HNSW_LIMITS["M"][1] * 2 and max_m <= max_m0 <= 4 * HNSW_LIMITS["M"][1]):
            raise bad(f"degrees maxM {max_m}, maxM0 {max_m0}")
        if off_data != 0 or off_level0 != data_section or per_object != data_section + 4 * (max_m0 + 1):
            raise bad(f"object layout {per_object}/{off_level0}/{off_data} bytes, expected "
                      f"{data_section + 4 * (max_m0 + 1)}/{data_section}/0 for {dim}-d vectors")
        if dist_type != _dist_func_type(space, dim) or method not in (3, 4):
            raise bad(f"distance function {dist_type} / search method {method}, not those of {space} at {dim}-d")
        if not 0 <= max_level < 64 or not 0 <= entry < max(n, 1):
            raise bad(f"max level {max_level}, entry point {entry}")
        level0_end = _HNSW_HEADER.size + n * per_object
        if level0_end > size or (size - level0_end) % 4:
            raise bad(f"{size} bytes, which does not fit {n} elements of {per_object} bytes")
        # level 0: ids, data lengths, link counts and neighbours, in blocks of rows (bounded memory)
        ids = np.ndarray((n,), "<i4", mm, _HNSW_HEADER.size, (per_object,))
        lengths = np.ndarray((n,), "<u8", mm, _HNSW_HEADER.size + 8, (per_object,))
        links = np.ndarray((n, max_m0 + 1), "<i4", mm, _HNSW_HEADER.size + off_level0, (per_object, 4))
        slots = np.arange(max_m0)
        for a in range(0, n, 65536):
            b = min(n, a + 65536)
            if not np.array_equal(ids[a:b], np.arange(a, b, dtype=np.int32)):
                raise bad("element ids out of order")
            if np.any(lengths[a:b] != 4 * dim):
                raise bad("an element's data length is wrong")
            counts = links[a:b, 0]
            if np.any((counts < 0) | (counts > max_m0)):
                raise bad("a level-0 link count is out of range")
            nb = links[a:b, 1:]
            if np.any((slots < counts[:, None]) & ((nb < 0) | (nb >= n))):
                raise bad("a level-0 neighbour id is out of range")
        # upper levels: a uint32 size per element, then its links; walked over the non-zero sizes only
        tail = np.ndarray(((size - level0_end) // 4,), "<u4", mm, level0_end)
        per_level = max_m + 1
        nonzero = np.flatnonzero(tail)
        nz_at, nz_val = nonzero.tolist(), tail[nonzero].tolist()
        levels = np.zeros(n, np.int64)
        starts: list[int] = []
        owners: list[int] = []
        pos = element = k = 0
        while element < n:
            k = bisect.bisect_left(nz_at, pos, k)
            nxt = nz_at[k] if k < len(nz_at) else len(tail)
            if element + (nxt - pos) >= n:  # the rest have no upper levels
                pos += n - element
                element = n
                break
            if k >= len(nz_at):
                raise bad(f"its upper-level links end after {element + nxt - pos} of {n} elements")
            element += nxt - pos
            pos = nxt
            nbytes = nz_val[k]
            level, rest = divmod(nbytes, 4 * per_level)
            if rest or not 1 <= level <= max_level or pos + 1 + nbytes // 4 > len(tail):
                raise bad(f"the upper-level links of element {element} are {nbytes} bytes")
            levels[element] = level
            starts.append(pos + 1)
            owners.append(element)
            pos += 1 + nbytes // 4
            element += 1
        if pos != len(tail):
            raise bad(f"{4 * (len(tail) - pos)} bytes more than its elements hold")
        if levels[entry] != max_level:
            raise bad(f"the entry point {entry} is at level {levels[entry]}, not the max level {max_level}")
        if starts:
            st, own = np.asarray(starts, np.int64), np.asarray(owners, np.int64)
            for lev in range(1, max_level + 1):
                sel = levels[own] >= lev
                block = st[sel] + (lev - 1) * per_level
                counts = tail[block].astype(np.int64)
                if np.any(counts > max_m):
                    raise bad(f"a level-{lev} link count is out of range")
                nb = tail[block[:, None] + 1 + np.arange(max_m)].astype(np.int64)
                used = np.arange(max_m) < counts[:, None]
                if np.any(used & (nb >= n)):
                    raise bad(f"a level-{lev} neighbour id is out of range")
                if np.any(used & (levels[np.minimum(nb, n - 1)] < lev)):
                    raise bad(f"a level-{lev} neighbour is not on that level")
        # the vectors: a sample of the embedded ones, finite and equal to the stored rows
        if n:
            rows = np.unique(np.linspace(0, n - 1, min(n, sample)).astype(np.int64))
            emb = np.stack([np.frombuffer(mm, "<f4", dim, _HNSW_HEADER.size + int(r) * per_object + _OBJECT_HEAD)
                            for r in rows])
            if not np.all(np.isfinite(emb)):
                raise bad("its vectors hold NaN or infinite values")
            if vectors is not None and not np.allclose(emb, _as32(np.asarray(vectors[rows])), atol=1e-3):
                raise bad("its vectors are not the stored ones (a graph of other vectors)")
    finally:
        del mm


# --- the interface -------------------------------------------------------------------------------
class VectorIndex(abc.ABC):
    """A set of (id, vector) pairs answering k-nearest-neighbour queries.

    ``add(vectors (N, D), ids (N,) int64)``, ``remove(ids)``,
    ``query(vectors (Q, D), k) -> (ids (Q, k') int64, scores (Q, k') float32)`` best first, with
    ``k' = min(k, len(index))``. Score: cosine similarity for ``"cosine"``, ``-distance`` for ``"l2"``.
    """

    kind: ClassVar[str] = ""

    def __init__(self, dim: int, metric: str = "cosine") -> None:
        if not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self._dim = int(dim)
        self._metric = _check_metric(metric)

    @property
    def dim(self) -> int:
        """Vector dimension D."""
        return self._dim

    @property
    def metric(self) -> str:
        """'cosine' or 'l2'."""
        return self._metric

    @abc.abstractmethod
    def add(self, vectors: np.ndarray, ids: np.ndarray, *, normalised: bool = False) -> None:
        """Add vectors (N, D) under new unique ids (N,); an id already present is a ValueError.
        ``normalised``: the rows are already L2-normalised (cosine): stored as given, bit for bit."""

    @abc.abstractmethod
    def remove(self, ids: np.ndarray) -> None:
        """Remove the given ids; unknown ids are a KeyError."""

    @abc.abstractmethod
    def query(self, vectors: np.ndarray, k: int, *, ef: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(Q, D) -> (ids (Q, k'), scores (Q, k')), best first; an empty index gives k' = 0."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of live vectors."""

    @abc.abstractmethod
    def ids(self) -> np.ndarray:
        """The live ids, (N,) int64 (no particular order)."""

    def _check_k(self, k: int) -> int:
        if not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"k must be a non-negative integer, got {k!r}")
        return int(k)

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        return l2n(x) if self._metric == "cosine" else x

    def _rows_in(self, vectors: Any, normalised: bool, checked: bool = False) -> np.ndarray:
        """Rows to keep: stored float16 rows of a cosine index (``normalised``, C-contiguous) as they are,
        by reference (half the memory; scored through engine.halfrows), checked finite from their bits;
        anything else as prepared float32 (a copy when it must be converted). ``checked``: the caller's
        stored rows were checked finite when stored or loaded (a collection's), not read again."""
        if normalised and self._metric == "cosine" and _is_half(vectors) and vectors.ndim == 2 \
                and vectors.shape[1] == self._dim and vectors.flags.c_contiguous:
            if not checked and not finite_half(vectors):
                raise ValueError("vectors contain NaN or infinite values")
            return vectors
        x = _as_matrix(vectors, self._dim)
        return x if normalised and self._metric == "cosine" else self._prepare(x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self._dim}, metric={self._metric!r}, n={len(self)})"


class _GrowingRows:
    """An (n, D) array attribute that :meth:`append` grows in amortised O(rows added), where
    ``np.concatenate`` copied every row at every addition: a collection fed batch by batch (by Ray
    workers: benchmarks/scale.py) spent most of its time there, more the larger it grew. Reading gives
    a view of the live rows; assigning replaces them (the next append copies them once into a new
    buffer, never writing into an array it was given)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._buf, self._n = f"{name}_buffer", f"{name}_rows"

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return getattr(obj, self._buf)[: getattr(obj, self._n)]

    def __set__(self, obj: Any, value: np.ndarray) -> None:
        value = np.asarray(value)
        setattr(obj, self._buf, value)
        setattr(obj, self._n, int(value.shape[0]))

    def append(self, obj: Any, rows: np.ndarray) -> None:
        """Add ``rows`` (m, D) after the live rows."""
        buf, n, m = getattr(obj, self._buf), getattr(obj, self._n), int(rows.shape[0])
        if n == 0 and rows.dtype != buf.dtype:  # the first rows choose the dtype (float16 stored rows)
            buf = np.empty((0,) + rows.shape[1:], rows.dtype)
        elif rows.dtype != buf.dtype:
            rows = _as32(rows) if buf.dtype == np.float32 else rows.astype(buf.dtype)
        if n + m > buf.shape[0]:
            grown = np.empty((max(n + m, n + n // 2, 256),) + buf.shape[1:], buf.dtype)
            grown[:n] = buf[:n]
            setattr(obj, self._buf, grown)
            buf = grown
        buf[n:n + m] = rows
        setattr(obj, self._n, n + m)


def _above(ids: np.ndarray, *stored: np.ndarray) -> bool:
    """True when every id of ``ids`` is above every stored one (a collection's rising ids): no clash
    possible, checked in O(n) without sorting."""
    highs = [int(a.max()) for a in stored if a.size]
    return bool(ids.size) and (not highs or int(ids.min()) > max(highs))


# --- exact ---------------------------------------------------------------------------------------
class ExactIndex(VectorIndex):
    """Brute force: scores against every stored vector by a blocked float32 matrix product, top-k by
    ``argpartition``. The yardstick for HNSW; fast enough up to ~10^5 vectors."""

    kind = "exact"
    _x = _GrowingRows()

    def __init__(self, dim: int, metric: str = "cosine", block_size: int = 65536) -> None:
        super().__init__(dim, metric)
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = int(block_size)
        self._x = np.zeros((0, self._dim), np.float32)
        self._ids = np.zeros(0, np.int64)
        self._pos: dict[int, int] | None = None

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    def ids(self) -> np.ndarray:
        return self._ids.copy()

    def vectors(self) -> np.ndarray:
        """The stored (prepared: normalised for cosine) vectors, row i for ``ids()[i]``."""
        return self._x

    def add(self, vectors: np.ndarray, ids: np.ndarray, *, normalised: bool = False) -> None:
        x = self._rows_in(vectors, normalised)
        ids = _as_ids(ids, x.shape[0])
        if not _above(ids, self._ids) and np.isin(ids, self._ids).any():
            raise ValueError(f"ids already in the index: {ids[np.isin(ids, self._ids)][:5].tolist()}")
        type(self)._x.append(self, x)
        self._ids = np.concatenate([self._ids, ids])

    def build(self, vectors: np.ndarray, ids: np.ndarray, *, normalised: bool = False) -> None:
        """Replace the contents with ``vectors`` (N, D) under ``ids`` (N,). Rows already prepared
        (``normalised`` cosine rows, float32 or stored float16, C-contiguous) are kept by reference, not
        copied (a collection's committed rows: 256 MB of float16 at 100k x 1280), and not checked for NaN
        again (they were, when stored or loaded); the caller must not change them afterwards."""
        ready = normalised and self._metric == "cosine" and isinstance(vectors, np.ndarray) \
            and vectors.dtype == np.float32 and vectors.ndim == 2 and vectors.shape[1] == self._dim \
            and vectors.flags.c_contiguous
        x = vectors if ready else self._rows_in(vectors, normalised, checked=True)
        self._ids = _as_ids(ids, x.shape[0])
        self._x = x

    def remove(self, ids: np.ndarray) -> None:
        ids = _as_ids(ids)
        present = np.isin(ids, self._ids)
        if not present.all():
            raise KeyError(f"ids not in the index: {ids[~present][:5].tolist()}")
        keep = ~np.isin(self._ids, ids)
        self._x, self._ids = self._x[keep], self._ids[keep]

    def query(self, vectors: np.ndarray, k: int, *, ef: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        q = self._prepare(_as_matrix(vectors, self._dim, "queries"))
        k = min(self._check_k(k), len(self))
        nq = q.shape[0]
        if k == 0 or nq == 0:
            return np.zeros((nq, k), np.int64), np.zeros((nq, k), np.float32)
        best_s = np.full((nq, 0), -np.inf, np.float32)
        best_i = np.zeros((nq, 0), np.int64)
        for start in range(0, len(self), self.block_size):
            block = self._x[start:start + self.block_size]
            idx, s = _topk(_scores(q, block, self._metric), k)
            cand_s = np.concatenate([best_s, s], axis=1)
            cand_i = np.concatenate([best_i, idx + start], axis=1)
            sel, best_s = _topk(cand_s, k)
            best_i = np.take_along_axis(cand_i, sel, axis=1)
        return self._ids[best_i], best_s

# --- HNSW ----------------------------------------------------------------------------------------
def _import_quietly(name: str):
    """Import a compiled module with its start-up banner (written by C++ to the process's stderr)
    captured and logged at debug level: nmslib's wheel tells every run to rebuild it from source."""
    import importlib
    import sys
    import tempfile

    if name in sys.modules:
        return sys.modules[name]
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            module = importlib.import_module(name)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        banner = capture.read().decode("utf-8", "replace").strip()
    if banner:
        log.debug("%s at import: %s", name, banner)
    return module


def _import_nmslib():
    try:
        nmslib = _import_quietly("nmslib")
    except Exception as exc:  # ImportError, or a binary that fails to load
        raise RuntimeError(f"the HNSW index needs nmslib, which cannot be imported ({exc}); "
                           "install it (pip install nmslib) or use the exact index") from exc
    return nmslib


class HnswIndex(VectorIndex):
    """Approximate search with nmslib's HNSW graph (space ``cosinesimil`` or ``l2``).

    ``M`` (graph degree) and ``ef_construction`` are build parameters; ``ef`` (the query-time beam,
    >= k is useful) can be changed at any time. ``threads`` is used for building and batch queries.
    See the module docstring for how additions and removals work without rebuilding every time.
    """

    kind = "hnsw"
    _px = _GrowingRows()  # pending rows (not yet in the graph)

    def __init__(self, dim: int, metric: str = "cosine", M: int = DEFAULT_M,  # noqa: N803
                 ef_construction: int = DEFAULT_EF_CONSTRUCTION, ef: int | None = None, threads: int = 1,
                 rebuild_share: float = 0.2, rebuild_min: int = 2048) -> None:
        super().__init__(dim, metric)
        check_hnsw_params({"M": M, "ef_construction": ef_construction, "threads": threads,
                           "rebuild_share": rebuild_share, "rebuild_min": rebuild_min,
                           **({} if ef is None else {"ef": ef})})
        self.M, self.ef_construction, self.threads = int(M), int(ef_construction), int(threads)
        self._ef_set = None if ef is None else int(ef)  # None: default_ef of the graph's size
        self.rebuild_share, self.rebuild_min = float(rebuild_share), int(rebuild_min)
        self._graph = None                                   # nmslib index over _bx, or None
        self._graph_loaded = False                           # the graph came from loadIndex
        self._bx = np.zeros((0, self._dim), np.float32)      # vectors in the graph (position = nmslib id)
        self._bids = np.zeros(0, np.int64)                   # their ids
        self._px = np.zeros((0, self._dim), np.float32)      # pending (not yet in the graph)
        self._pids = np.zeros(0, np.int64)
        self._dead: set[int] = set()                         # removed ids still in the graph
        self._dead_mask = np.zeros(0, bool)                  # per graph position
        self.rebuilds = 0                                    # how many times the graph was (re)built
        #: rebuild at query time when the thresholds say so; a collection sets it False and rebuilds
        #: explicitly (between commits), so that a query never mutates shared state
        self.rebuild_on_query = True
        #: nmslib's efSearch is state of the whole graph: a query with its own ``ef`` sets it and
        #: restores it under this lock, so concurrent queries never see another's value
        self._query_lock = threading.Lock()

    # --- parameters ---------------------------------------------------------------------------
    @property
    def _ef(self) -> int:
        return self._ef_set if self._ef_set is not None else default_ef(int(self._bids.shape[0]))

    @property
    def ef(self) -> int:
        """Query-time search breadth (efSearch): the one set, else :func:`default_ef` of the graph's size."""
        return self._ef

    @ef.setter
    def ef(self, value: int) -> None:
        check_hnsw_params({"ef": value})
        with self._query_lock:
            self._ef_set = int(value)
            if self._graph is not None:
                self._graph.setQueryTimeParams({"efSearch": self._ef})

    def _params(self) -> dict[str, Any]:
        return {"M": self.M, "ef_construction": self.ef_construction, **({} if self._ef_set is None else
                {"ef": self._ef_set}), "threads": self.threads,
                "rebuild_share": self.rebuild_share, "rebuild_min": self.rebuild_min}

    @property
    def space(self) -> str:
        return "cosinesimil" if self._metric == "cosine" else "l2"

    # --- state ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._bids.shape[0] - len(self._dead) + self._pids.shape[0])

    def ids(self) -> np.ndarray:
        return np.concatenate([self._bids[~self._dead_mask], self._pids])

    @property
    def pending(self) -> int:
        """Points added since the last graph build (searched exactly until the next rebuild)."""
        return int(self._pids.shape[0])

    @property
    def tombstones(self) -> int:
        """Removed points still in the graph."""
        return len(self._dead)

    def _all_ids(self) -> np.ndarray:
        return np.concatenate([self._bids, self._pids])

    def add(self, vectors: np.ndarray, ids: np.ndarray, *, normalised: bool = False) -> None:
        x = self._rows_in(vectors, normalised)
        ids = _as_ids(ids, x.shape[0])
        if not _above(ids, self._bids, self._pids):  # above every id, tombstones included: no clash
            live = self.ids()
            clash = np.isin(ids, live)
            if clash.any():
                raise ValueError(f"ids already in the index: {ids[clash][:5].tolist()}")
            # an id removed earlier but still in the graph as a tombstone: compact first so ids stay unique
            if self._dead and np.isin(ids, np.fromiter(self._dead, np.int64)).any():
                self._rebuild()
        type(self)._px.append(self, x)
        self._pids = np.concatenate([self._pids, ids])

    def extend_pending(self, rows: np.ndarray, ids: np.ndarray) -> bool:
        """Add the rows past the pending ones, holding the whole pending part as ``rows`` (m, D) by
        reference: a view of the caller's stored rows whose first ones are the pending rows (``ids``
        (m,) begin with the pending ids; the rest are new, above every id). Prepared like ``add(...,
        normalised=True)``; the view is never written (a later :meth:`add` copies it into a new buffer).
        A collection that indexes a new folder has every row pending until its final commit builds the
        graph: this spares their copy (256 MB at 100k x 1280). False (nothing done) when ``ids`` do not
        begin with the pending ids."""
        ids = _as_ids(ids)
        p = int(self._pids.shape[0])
        if ids.shape[0] < p or not np.array_equal(ids[:p], self._pids) or rows.shape[:1] != ids.shape:
            return False
        shared = self._metric == "cosine" and _is_half(rows) and rows.ndim == 2 and rows.shape[1] == self._dim \
            and rows.flags.c_contiguous and (p == 0 or _is_half(self._px)) and _above(ids[p:], self._bids, self._pids)
        if not shared:  # float32 rows, or ids that need add's checks: a copy as add makes it
            self.add(rows[p:], ids[p:], normalised=True)
            return True
        if not finite_half(rows[p:]):
            raise ValueError("vectors contain NaN or infinite values")
        self._px, self._pids = rows, ids
        return True

    def remove(self, ids: np.ndarray) -> None:
        ids = _as_ids(ids)
        live = self.ids()
        present = np.isin(ids, live)
        if not present.all():
            raise KeyError(f"ids not in the index: {ids[~present][:5].tolist()}")
        in_pending = np.isin(self._pids, ids)
        if in_pending.any():
            self._px, self._pids = self._px[~in_pending], self._pids[~in_pending]
        in_graph = np.isin(self._bids, ids)
        self._dead.update(int(i) for i in self._bids[in_graph])
        self._dead_mask = self._dead_mask | in_graph

    def needs_rebuild(self) -> bool:
        """True when the pending part or the tombstones have grown past the rebuild thresholds."""
        built = self._bids.shape[0]
        if built == 0 and self.pending > 0:  # the first build
            return True
        if self.pending > max(self.rebuild_min, self.rebuild_share * built):
            return True
        return built > 0 and len(self._dead) > self.rebuild_share * built

    def rebuild(self) -> None:
        """Build the graph now from all live vectors (pending included, tombstones dropped)."""
        self._rebuild()

    def build(self, vectors: np.ndarray, ids: np.ndarray, *, normalised: bool = False) -> None:
        """Replace the contents with ``vectors`` (N, D) under ``ids`` (N,) and build the graph now.
        Rows already prepared (``normalised`` cosine rows, float32 or stored float16, C-contiguous) are
        kept by reference, not copied: the caller must not change them afterwards (a collection's
        committed rows); nmslib gets its float32 copy block by block."""
        x = self._rows_in(vectors, normalised)
        ids = _as_ids(ids, x.shape[0])
        self._bx, self._bids = x, ids
        self._px, self._pids = np.zeros((0, self._dim), np.float32), np.zeros(0, np.int64)
        self._dead, self._dead_mask = set(), np.zeros(x.shape[0], bool)
        self._graph = self._build_graph(self._bx) if x.shape[0] else None
        self._graph_loaded = False
        self.rebuilds += 1

    def _rebuild(self) -> None:
        keep = ~self._dead_mask
        parts = [a for a in (self._bx if keep.all() else self._bx[keep], self._px) if a.shape[0]]
        x = _join(parts) if parts else self._px  # no copy of one part
        ids = np.concatenate([self._bids[keep], self._pids])
        self._px, self._pids = np.zeros((0, self._dim), np.float32), np.zeros(0, np.int64)
        self._dead, self._dead_mask = set(), np.zeros(x.shape[0], bool)
        self._bx, self._bids = np.ascontiguousarray(x), ids
        self._graph = self._build_graph(self._bx) if x.shape[0] else None
        self._graph_loaded = False
        self.rebuilds += 1

    def _new_graph(self):
        nmslib = _import_nmslib()
        return nmslib.init(method="hnsw", space=self.space, data_type=nmslib.DataType.DENSE_VECTOR)

    def _build_graph(self, x: np.ndarray):
        log.debug("building HNSW graph over %d vectors (M=%d, efConstruction=%d)", x.shape[0], self.M,
                  self.ef_construction)
        g = self._new_graph()
        for a in range(0, x.shape[0], 65536):  # nmslib copies them: stored float16 rows converted by blocks
            block = np.ascontiguousarray(_as32(x[a:a + 65536]), np.float32)
            g.addDataPointBatch(block, ids=np.arange(a, a + block.shape[0], dtype=np.int32))
        g.createIndex({"M": self.M, "efConstruction": self.ef_construction, "post": 0,
                       "indexThreadQty": self.threads}, print_progress=False)
        g.setQueryTimeParams({"efSearch": self._ef})
        return g

    def _maybe_rebuild(self) -> None:
        if self.needs_rebuild():
            self._rebuild()

    def maybe_rebuild(self) -> bool:
        """Rebuild now if the thresholds say so; True when it did."""
        if self.needs_rebuild():
            self._rebuild()
            return True
        return False

    def graph_ids(self) -> np.ndarray:
        """The ids in the graph, in graph order (removed ones included until the next rebuild)."""
        return self._bids.copy()

    # --- graph-only persistence (the vectors are kept by the caller) ------------------------------
    def save_graph(self, folder: str | os.PathLike, stem: str) -> dict[str, Any] | None:
        """Write the graph alone (no vectors: the caller stores them) as ``<stem>.bin`` with its ids as
        ``<stem>.ids.npy``; returns what :meth:`restore` needs (names, sizes, CRC-32), None when there
        is no graph. The files are fsynced; the caller switches to them with its own manifest."""
        if self._graph is None:
            return None
        folder = Path(folder)
        graph, ids = f"{stem}.bin", f"{stem}.ids.npy"
        if self._graph_loaded:  # nmslib 2.1 writes a broken file for an index that came from loadIndex
            self._graph, self._graph_loaded = self._build_graph(self._bx), False
            self.rebuilds += 1
        self._graph.saveIndex(str(folder / graph), save_data=False)
        np.save(folder / ids, self._bids, allow_pickle=False)
        info: dict[str, Any] = {"params": self._params()}
        for key, name in (("graph", graph), ("ids", ids)):
            fsync_file(folder / name)
            info[key] = {"file": name, "bytes": (folder / name).stat().st_size, "crc32": crc32_file(folder / name)}
        # the built graph holds two more copies of the vectors (nmslib's objects and their nodes) beside
        # the one it searches with: the file just written, loaded without data, holds only the latter.
        # The built one is freed first (queries wait on the lock), so the two are never in memory together
        with self._query_lock:
            self._graph = None
            try:
                self._graph, self._graph_loaded = self._load_graph(folder / graph), True
            except BaseException:
                self._graph, self._graph_loaded = self._build_graph(self._bx), False
                raise
        return info

    @classmethod
    def restore(cls, folder: str | os.PathLike, info: dict[str, Any], *, dim: int, metric: str,
                vectors_of: Any, live_ids: np.ndarray, live_vectors: np.ndarray,
                normalised: bool = False, digests_checked: bool = False) -> HnswIndex:
        """An index from a graph written by :meth:`save_graph`: ``vectors_of(ids (n,)) -> (n, D)`` gives the
        stored vectors of the graph's ids (removed ones included); live ids that are not in the graph
        become the pending part. Before nmslib sees the file: its size and CRC-32, the settings
        (:func:`check_hnsw_params`) and its structure (:func:`check_graph_file`, against the stored
        vectors) are checked; anything wrong raises IndexCorruptError (the caller rebuilds the graph
        from the vectors). nmslib keeps its own copy of the vectors inside the graph, so none is added
        to it here. ``normalised``: the vectors given are already L2-normalised (used without a copy).
        ``digests_checked``: the caller has just checked both files against a stronger digest (a
        collection's SHA-256 under its MAC), so their CRC-32 is not read again (sizes still are)."""
        folder = Path(folder)
        try:
            if not isinstance(info, dict):
                raise TypeError(f"a {type(info).__name__}, not a mapping")
            paths = {}
            for key in ("graph", "ids"):
                entry = info[key]
                name = str(entry["file"])
                p = folder / name
                if "/" in name or "\\" in name or name in ("", ".", "..") or not p.is_file() \
                        or p.stat().st_size != int(entry["bytes"]):
                    raise IndexCorruptError(f"the HNSW graph file {p} is missing or truncated")
                if not digests_checked and crc32_file(p) != int(entry["crc32"]):
                    raise IndexCorruptError(f"the HNSW graph file {p} is damaged (checksum mismatch)")
                paths[key] = p
            params = check_hnsw_params(info["params"])
        except (KeyError, TypeError, ValueError, OverflowError, OSError) as exc:
            if isinstance(exc, IndexCorruptError):
                raise
            raise IndexCorruptError(f"the HNSW graph entry is damaged ({exc})") from exc
        if params.get("ef") == DEFAULT_EF:  # what every graph saved before default_ef said: follow the rule
            del params["ef"]
        index = cls(dim=dim, metric=metric, **params)
        try:
            gids = np.load(paths["ids"], allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise IndexCorruptError(f"cannot read the HNSW graph ids ({exc})") from exc
        if gids.ndim != 1 or not np.issubdtype(gids.dtype, np.integer) or np.unique(gids).size != gids.size:
            raise IndexCorruptError("the HNSW graph ids are damaged")
        gids = gids.astype(np.int64)
        bx = np.asarray(vectors_of(gids))  # stored float16 rows stay float16 (no copy)
        if bx.shape != (gids.shape[0], dim):
            raise IndexCorruptError("the HNSW graph does not match the stored vectors")
        bx = index._rows_in(np.ascontiguousarray(bx), normalised)
        live_ids = np.asarray(live_ids, np.int64)
        in_graph = np.isin(live_ids, gids)
        index._bx, index._bids = bx, gids
        index._dead_mask = ~np.isin(gids, live_ids)
        index._dead = {int(i) for i in gids[index._dead_mask]}
        rest = np.asarray(live_vectors)[~in_graph]
        index._px = index._rows_in(rest, normalised) if rest.shape[0] else np.zeros((0, dim), np.float32)
        index._pids = live_ids[~in_graph]
        if gids.shape[0]:
            check_graph_file(paths["graph"], count=gids.shape[0], dim=dim, space=index.space, vectors=bx)
            index._graph, index._graph_loaded = index._load_graph(paths["graph"]), True
        return index

    def _load_graph(self, path: Path):
        """nmslib's graph from a file checked by (or just written through) this class, without its data:
        an optimised HNSW index searches with the vectors it embeds (``len()`` of it is then 0)."""
        g = self._new_graph()
        g.loadIndex(str(path), load_data=False)
        g.setQueryTimeParams({"efSearch": self._ef})
        return g

    # --- queries --------------------------------------------------------------------------------
    def _graph_candidates(self, q: np.ndarray, k: int, ef: int | None = None) -> list[np.ndarray]:
        """Per query, up to k live graph positions (approximate nearest first); ``ef`` for these
        queries only (the index's own ``ef`` when None)."""
        if ef is not None:
            check_hnsw_params({"ef": ef})
        if ef is None or self._graph is None or int(ef) == self._ef:
            with self._query_lock:
                return self._graph_candidates_at(q, k)
        with self._query_lock:
            self._graph.setQueryTimeParams({"efSearch": int(ef)})
            try:
                return self._graph_candidates_at(q, k)
            finally:
                self._graph.setQueryTimeParams({"efSearch": self._ef})

    def _graph_candidates_at(self, q: np.ndarray, k: int) -> list[np.ndarray]:
        n_graph = self._bids.shape[0]
        n_live = n_graph - len(self._dead)
        want = min(k, n_live)
        if self._graph is None or want == 0:
            return [np.zeros(0, np.int64) for _ in range(q.shape[0])]
        fetch = min(n_graph, want + len(self._dead))
        out: list[np.ndarray | None] = [None] * q.shape[0]
        todo = np.arange(q.shape[0])
        while todo.size:
            # one query: knnQuery on this thread (knnQueryBatch starts its threads at every call, which
            # cost 3-5x nmslib's own search time at 1M x 128: docs/BENCHMARKS.md "Recall at 1M: the query ef by size")
            res = [self._graph.knnQuery(q[todo[0]], k=fetch)] if todo.size == 1 else \
                self._graph.knnQueryBatch(q[todo], k=fetch, num_threads=self.threads)
            again = []
            for qi, (pos, _d) in zip(todo, res, strict=True):
                pos = np.asarray(pos, np.int64)
                alive = pos[~self._dead_mask[pos]]
                if alive.shape[0] >= want or fetch >= n_graph:
                    out[qi] = alive[:want]
                else:
                    again.append(qi)
            todo = np.asarray(again, np.int64)
            fetch = min(n_graph, fetch * 2)
        return out  # type: ignore[return-value]

    def query(self, vectors: np.ndarray, k: int, *, ef: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        q = self._prepare(_as_matrix(vectors, self._dim, "queries"))
        k = min(self._check_k(k), len(self))
        nq = q.shape[0]
        if k == 0 or nq == 0:
            return np.zeros((nq, k), np.int64), np.zeros((nq, k), np.float32)
        if self.rebuild_on_query:
            self._maybe_rebuild()
        cands = self._graph_candidates(q, k, ef)
        out_ids = np.zeros((nq, k), np.int64)
        out_s = np.zeros((nq, k), np.float32)
        for i in range(nq):
            pos = cands[i]
            xs = [self._bx[pos]] if pos.size else []
            ids = [self._bids[pos]] if pos.size else []
            if self.pending:
                xs.append(self._px)
                ids.append(self._pids)
            x = _join(xs)
            cid = np.concatenate(ids)
            s = _scores(q[i:i + 1], x, self._metric)
            sel, ss = _topk(s, k)
            out_ids[i], out_s[i] = cid[sel[0]], ss[0]
        return out_ids, out_s


_KINDS: dict[str, type[VectorIndex]] = {"exact": ExactIndex, "hnsw": HnswIndex}


def make_index(kind: str = "hnsw", metric: str = "cosine", *, dim: int, **params: Any) -> VectorIndex:
    """A new empty index. ``kind``: 'hnsw' (params M, ef_construction, ef, threads, rebuild_share,
    rebuild_min) or 'exact' (block_size); ``metric``: 'cosine' or 'l2'. An unknown kind or setting, or
    one out of range, raises IndexSettingsError (a ValueError and an IndexCorruptError)."""
    _check_metric(metric)
    params = check_index_settings(kind, params)
    return _KINDS[kind](dim=dim, metric=metric, **params)


def check_index_settings(kind: Any, params: Any) -> dict[str, Any]:
    """An index kind and its settings (as a manifest holds them) checked -> the settings with plain
    numbers; anything unknown or out of range raises IndexSettingsError."""
    if not isinstance(kind, str) or kind not in _KINDS:
        raise IndexSettingsError(f"unknown index kind {kind!r}; valid kinds: {', '.join(INDEX_KINDS)}")
    if kind == "hnsw":
        return check_hnsw_params(params)
    if not isinstance(params, dict) or set(params) - {"block_size"}:
        raise IndexSettingsError(f"unknown exact-index settings {params!r}; valid settings: block_size")
    v = params.get("block_size", 1)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= 2**31:
        raise IndexSettingsError(f"block_size must be a positive integer, got {v!r}")
    return {k: int(v) for k, v in params.items()}
