"""Collections: a folder of images, its descriptors and its index, kept in a cache and updated
incrementally.

A collection is one image folder (searched recursively) seen through one model: backbone, weights,
descriptor, whitening, image size and crop (a :class:`ModelSpec`). Its state — the L2-normalised
vectors, the relative paths with file size and mtime, the files that failed to load (with reasons),
and the vector index — lives in a cache folder, as append-only commits::

    <cache_root>/collections/<sha1 of the folder's absolute path>/<model key>/
        manifest.json                  the commit: format, model identity, segments, removed ids, graph,
                                       skipped files (replaced atomically: the switch)
        seg-000003-<token>.npy         vectors (n, D) float16 of the rows one commit added
        seg-000003-<token>.meta.npz    their ids, relative paths, sizes, mtimes
        graph-000005-<token>.bin       the HNSW graph (nmslib, written only when it is rebuilt)
        graph-000005-<token>.ids.npy   the ids of its points, in graph order

- Files are immutable once named by a manifest; each entry carries its size, CRC-32 and SHA-256, checked
  before numpy or nmslib reads the file (the SHA-256 for the metadata and the graph, the CRC-32 for the
  vectors: their one pass stays as fast as before).
- Nothing in a cache is trusted beyond what this installation wrote (engine.integrity): the manifest
  carries an HMAC keyed by the installation's secret over its whole content (the folder it indexes
  included: a collection copied from another folder is recognised), and every file entry its own HMAC.
  A manifest failing its MAC whose vector files pass theirs is searched exactly from the vectors (its
  graph is never loaded) and repaired by the next update; files failing theirs are refused, naming
  ``index --rebuild``. A manifest of an earlier version (no MAC) is used the same way: exact search until
  the next update rebuilds its graph. Independently, every load checks sizes before allocating, that
  vectors are finite, paths unique and inside the folder, and the graph settings sane.
- Only regular files are read (engine.atomic.read_regular: a FIFO, socket or device in the state folder is
  refused without blocking); ``rebuild=True`` moves a state folder of any other shape aside
  (``<state>.damaged-<time>``) and starts afresh. A commit writes only what changed: the new rows, and the graph when the
  thresholds of engine.index ask for a rebuild (points added since are searched exactly).
- :meth:`Collection.open` loads the last commit (no image is read; a large graph is checked and loaded
  by a background thread while searches answer exactly, a small one at the first search). The rows stay
  in memory as stored (float16, read straight from the segments): searches score them as they are, and
  :attr:`Collection.vectors` converts them to float32 only when a caller asks for the whole matrix. A
  reader racing a writer reads the newer manifest when a file it wanted was collected.
- :meth:`Collection.scan` compares the folder with the state by file size and mtime.
- :meth:`Collection.update` (and :func:`update_collections`, several descriptors from one backbone pass)
  extracts only added and changed files and commits every few thousand images or tens of seconds: a
  cancel, a crash or a kill keeps every commit made, and the next update continues from there.
  Searches from other threads answer from the rows indexed so far.
- A commit refuses when another process committed since this one read the state (no lost update).
  Files no longer named by the last two commits are deleted after a commit.
- A damaged cache (missing, truncated or altered files, bad manifest) or a mismatched one (other format
  version, other model identity) raises :class:`CollectionError`, whose message says what to do; it is
  never silently used (a damaged graph alone is rebuilt from the vectors). ``Collection.open(...,
  rebuild=True)`` ignores the old state (it is replaced at the next commit).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import mmap
import os
import re
import secrets
import shutil
import stat
import threading
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import integrity
from engine.atomic import (
    NotRegularFileError,
    atomic_write_text,
    disk_full,
    fsync_file,
    read_regular,
    read_regular_chunks,
    read_regular_into,
)
from engine.callbacks import ProgressFn, ShouldStopFn, resolve
from engine.evaluation import evaluate
from engine.halfrows import half_rows
from engine.images import file_stamp, label_of, scan_images
from engine.index import (
    ExactIndex,
    HnswIndex,
    IndexCorruptError,
    IndexSettingsError,
    VectorIndex,
    check_index_settings,
    make_index,
)
from engine.search import SearchOptions, search_vectors
from engine.vectors import STORE_DTYPE, finite_half, l2n
from engine.vocabulary import ModelSpec, SearchHit, cache_root

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
LEGACY_CURRENT = "CURRENT"  # the pointer of format 1 (one folder per generation, rewritten whole)
#: a commit every this many extracted images, or every COMMIT_EVERY_SECONDS, whichever comes first
COMMIT_EVERY_IMAGES = 2000
COMMIT_EVERY_SECONDS = 30.0
#: removed rows are dropped from the segments (one rewrite) once they exceed this share of the rows
COMPACT_SHARE = 0.2
#: the most a manifest may weigh (it names files and skipped files, never vectors)
MANIFEST_LIMIT = 256 << 20
#: the widest vectors a collection may declare (the largest descriptor is 4096-d); a manifest claiming
#: more is refused before anything is allocated
MAX_DIM = 1 << 16
#: the names of the files a manifest may name (no folder part, nothing but what commits write)
_SEGMENT_NAME = re.compile(r"seg-\d{6,}-[0-9a-f]{8}\.(?:meta\.npz|npy)")
_GRAPH_NAME = re.compile(r"graph-\d{6,}-[0-9a-f]{8}\.(?:bin|ids\.npy)")
#: a saved graph file of at least this many bytes is checked and loaded by a background thread started
#: at the open (100k x 1280: 530 MB, seconds of hashing and loading); searches meanwhile answer exactly
#: from the rows (recall 1.0, tens of ms) and the graph takes over once loaded. A smaller graph is loaded
#: at the first search, as before. docs/BENCHMARKS.md "Open in a fresh process"
BACKGROUND_GRAPH_BYTES = 64 << 20


class CollectionError(RuntimeError):
    """A collection cache that cannot be used (damaged, incomplete, another format or another model),
    or a collection that cannot answer yet. The message says what happened and what to do."""


class ConcurrentChangeError(CollectionError):
    """Another process committed to the collection since this object read it: reopen and update again."""


class CollectionBusyError(CollectionError):
    """Another process is updating the collection now (refused before any extraction)."""


def collection_dir(folder: str | os.PathLike, model_spec: ModelSpec, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the state of ``folder`` seen through ``model_spec`` lives."""
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    absolute = str(Path(folder).expanduser().resolve())
    return root / "collections" / hashlib.sha1(absolute.encode()).hexdigest()[:16] / model_spec.key()


# --- results -------------------------------------------------------------------------------------
@dataclass
class ChangeSet:
    """Relative paths (POSIX) of files added, changed (size or mtime) and removed since the saved state."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)


@dataclass
class SkippedFile:
    """A file that could not be used; retried only when its size or mtime changes."""

    path: str
    reason: str
    size: int = 0
    mtime_ns: int = 0


@dataclass
class UpdateReport:
    """What an update did. ``extracted``: images read for the model; ``skipped``: files of this update
    that failed (see Collection.skipped for all); ``total``: vectors in the collection after; ``saved``:
    at least one commit was written; ``cancelled``: stopped early (what was committed is kept)."""

    added: int = 0
    changed: int = 0
    removed: int = 0
    skipped: list[SkippedFile] = field(default_factory=list)
    extracted: int = 0
    total: int = 0
    seconds: float = 0.0
    cancelled: bool = False
    saved: bool = False
    #: images read by the shared pass of this update, for every descriptor together (``extracted`` counts
    #: the ones this collection wanted)
    read: int = 0
    #: files and folders the scan could not use (dangling or looping links, unreadable folders), with reasons
    unreadable: list[tuple[str, str]] = field(default_factory=list)


# --- the collection ------------------------------------------------------------------------------
def _default_threads() -> int:
    """Graph-building threads: the machine's cores, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def _entry_file(folder: Path, entry: dict[str, Any], what: str, pattern: re.Pattern[str]) -> Path:
    """The path of a file a manifest entry names: a plain name of the kind commits write (never a path
    that leaves the state folder)."""
    name = entry["file"]
    if not isinstance(name, str) or not pattern.fullmatch(name):
        raise CollectionError(f"{what} named {name!r} in the manifest of {folder} is not a collection file "
                              "(the manifest is damaged)")
    return folder / name


def _read_entry(folder: Path, entry: dict[str, Any], what: str, pattern: re.Pattern[str], *,
                digest: str | None) -> bytes:
    """The bytes of a file a manifest names, read once (a regular file only, never more than the entry
    says) and checked against its size and ``digest`` ("sha256", "crc32" or None: size only) before any
    parser sees them."""
    p = _entry_file(folder, entry, what, pattern)
    size = int(entry["bytes"])
    try:
        data = read_regular(p, limit=size)
    except FileNotFoundError:
        raise CollectionError(f"{what} {p} is missing") from None
    except NotRegularFileError as exc:
        raise CollectionError(f"{what} {p} is damaged ({exc.strerror})") from None
    if len(data) != size:
        raise CollectionError(f"{what} {p} is truncated or damaged")
    if digest == "sha256":
        if entry.get("sha256") is not None and integrity.sha256_bytes(data) != entry["sha256"]:
            raise CollectionError(f"{what} {p} is damaged (checksum mismatch)")
        if entry.get("sha256") is None and zlib.crc32(data) != int(entry["crc32"]):  # an earlier version's
            raise CollectionError(f"{what} {p} is damaged (checksum mismatch)")
    elif digest == "crc32" and zlib.crc32(data) != int(entry["crc32"]):
        raise CollectionError(f"{what} {p} is damaged (checksum mismatch)")
    return data


def _check_digest(folder: Path, entry: dict[str, Any], what: str, pattern: re.Pattern[str]) -> None:
    """A file a manifest names checked against its size and SHA-256 in pieces (a regular file only, never
    more than the entry says), without holding it in memory: for the graph, which nmslib then reads."""
    p = _entry_file(folder, entry, what, pattern)
    size, sha = int(entry["bytes"]), hashlib.sha256()
    got = 0
    try:
        for piece in read_regular_chunks(p, limit=size):
            sha.update(piece)
            got += len(piece)
    except FileNotFoundError:
        raise CollectionError(f"{what} {p} is missing") from None
    except NotRegularFileError as exc:
        raise CollectionError(f"{what} {p} is damaged ({exc.strerror})") from None
    if got != size:
        raise CollectionError(f"{what} {p} is truncated or damaged")
    if sha.hexdigest() != entry["sha256"]:
        raise CollectionError(f"{what} {p} is damaged (checksum mismatch)")


class _GraphLoad:
    """A saved graph checked and loaded by a background thread: ``work() -> (index or None, why it
    failed or None)``; :meth:`result` waits for it. A daemon thread: a process may end meanwhile."""

    def __init__(self, work: Any) -> None:
        self._done = threading.Event()
        self._result: tuple[HnswIndex | None, str | None] = (None, "the search graph was not loaded")
        threading.Thread(target=self._run, args=(work,), name="graph-load", daemon=True).start()

    def _run(self, work: Any) -> None:
        with contextlib.suppress(AttributeError, OSError):  # Linux: a thread has its own nice value
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + 10)
        try:
            self._result = work()
        except BaseException:  # noqa: BLE001 - reported by the thread that installs the result
            log.debug("loading the search graph failed", exc_info=True)
        finally:
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self) -> tuple[HnswIndex | None, str | None]:
        self._done.wait()
        return self._result


def _npy_offset(head: bytes, p: Path, shape: tuple[int, int]) -> int:
    """The length of a segment file's .npy header in ``head`` (its first bytes), checked to declare
    C-ordered STORE_DTYPE rows of ``shape``; raises CollectionError."""
    import io

    buf = io.BytesIO(head[:4096])
    try:
        version = np.lib.format.read_magic(buf)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        got_shape, fortran, dtype = read_header(buf)
    except ValueError as exc:
        raise CollectionError(f"the collection file {p} is damaged ({exc})") from exc
    if tuple(got_shape) != shape or fortran or dtype != np.dtype(STORE_DTYPE):
        raise CollectionError(f"the collection file {p} holds {dtype} {tuple(got_shape)}, expected {shape}")
    return buf.tell()


def _load_vectors(folder: Path, entry: dict[str, Any], shape: tuple[int, int], verify: bool,
                  out: np.ndarray) -> None:
    """A segment's rows read straight into ``out`` (n, D) float16, as stored (converted only where a
    search scores them: engine.halfrows), then its header, CRC-32 (``verify``, over the header and
    ``out``) and finiteness checked: a damaged file raises CollectionError (``out`` must not be used
    then). Holds no GIL for its reads and checks: an open runs it on a pool, several segments at once."""
    p = _entry_file(folder, entry, "the collection file", _SEGMENT_NAME)
    size = int(entry["bytes"])
    if size < out.nbytes:
        raise CollectionError(f"the collection file {p} is truncated or damaged")
    try:
        head = read_regular_into(p, size, out)
    except FileNotFoundError:
        raise CollectionError(f"the collection file {p} is missing") from None
    except NotRegularFileError as exc:
        raise CollectionError(f"the collection file {p} is damaged ({exc.strerror})") from None
    except EOFError:
        raise CollectionError(f"the collection file {p} is truncated or damaged") from None
    if verify and zlib.crc32(out, zlib.crc32(head)) != int(entry["crc32"]):
        raise CollectionError(f"the collection file {p} is damaged (checksum mismatch)")
    if _npy_offset(head, p, shape) != len(head):
        raise CollectionError(f"the collection file {p} is truncated or damaged")
    if not finite_half(out):
        raise CollectionError(f"the collection file {p} is damaged (a row holds a NaN or an infinite value)")


def _write_entry(path: Path, write: Any) -> dict[str, Any]:
    """Write a new immutable file with ``write(path)``, fsync it and describe it for the manifest (size,
    CRC-32 and SHA-256, from one read of what was written)."""
    write(path)
    fsync_file(path)
    return _describe_file(path)


def _describe_file(path: Path) -> dict[str, Any]:
    """A manifest entry of a file just written: name, size, CRC-32, SHA-256."""
    crc, sha = 0, hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            crc = zlib.crc32(chunk, crc)
            sha.update(chunk)
    return {"file": path.name, "bytes": path.stat().st_size, "crc32": crc, "sha256": sha.hexdigest()}


def _declared_rows(seg: Any, dim: int | None) -> int:
    """The rows a manifest's segment entry declares, checked against the size its vectors file has on disk
    (one lstat) before anything is allocated for them."""
    rows = int(seg["rows"])
    vec_bytes = int(seg["vectors"]["bytes"])
    if rows < 0 or (dim is not None and rows * dim * np.dtype(STORE_DTYPE).itemsize > vec_bytes):
        raise ValueError(f"segment of {rows} rows in {vec_bytes} bytes")
    return rows


def _usable_settings(kind: Any, params: Any, default_kind: str, default_params: dict[str, Any]
                     ) -> tuple[str, dict[str, Any], str | None]:
    """The index kind and settings a manifest names, when the index module knows them and they are in
    range (:func:`engine.index.check_index_settings`): ``(kind, params, None)``; else the defaults and
    what was wrong."""
    try:
        return kind, check_index_settings(kind, params), None
    except IndexSettingsError as exc:
        return default_kind, dict(default_params), f"unusable graph settings ({str(exc)[:160]})"


def _is_real_dir(path: Path) -> bool:
    """A folder, not a link to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _move_aside_damaged(state_dir: Path, root: Path) -> Path | None:
    """Make room for a fresh state folder, whatever shape the old one has: the first of
    ``<root>/collections``, ``<root>/collections/<folder hash>`` and ``state_dir`` that is not a real
    folder, or a state folder holding anything but regular files (a FIFO, socket, device, link or folder
    where a file belongs), is renamed to ``<name>.damaged-<time>`` beside it. Returns where it went (None
    when nothing was in the way). Healthy state is left in place (replaced at the next commit)."""
    chain = [root / "collections", state_dir.parent, state_dir]
    for p in chain:
        if not os.path.lexists(p):
            return None
        if not _is_real_dir(p):
            return _aside(p)
    with os.scandir(state_dir) as entries:  # closed before the folder is moved
        # the old format's gen-* folders are collected at the next commit; anything else but a file is wrong
        odd = any(not entry.is_file(follow_symlinks=False)
                  and not (entry.is_dir(follow_symlinks=False) and entry.name.startswith("gen-"))
                  for entry in entries)
    return _aside(state_dir) if odd else None


def _aside(p: Path) -> Path:
    target = p.with_name(f"{p.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    while os.path.lexists(target):
        target = p.with_name(f"{p.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}")
    os.rename(p, target)
    return target


def _distinct_texts(arrays: list[np.ndarray]) -> bool:
    """True when the strings of the unicode arrays (n_i,), all together, are distinct, shown by distinct
    64-bit polynomial hashes of their code points computed column by column in numpy (1M paths in 0.13 s,
    where a set of them took 0.2 s); False means only "not shown" (two hashes met, by chance or by
    design): the caller then checks with a set."""
    width = max((a.dtype.itemsize // 4 for a in arrays), default=0)
    hashes = []
    mul = np.uint64(0x100000001B3)
    with np.errstate(over="ignore"):  # arithmetic modulo 2**64
        for a in arrays:
            if a.size == 0:
                continue
            codes = a.view(np.uint32).reshape(a.shape[0], -1)
            h = np.zeros(a.shape[0], np.uint64)
            for j in range(width):  # shorter arrays: the zeros that pad them to the widest
                h *= mul
                if j < codes.shape[1]:
                    h += codes[:, j]
            hashes.append(h)
    h = np.sort(np.concatenate(hashes)) if hashes else np.zeros(0, np.uint64)
    return not bool(np.any(h[1:] == h[:-1]))


def _bad_path(paths: list[Any], text: bool = False, distinct: bool = False) -> str | None:
    """The first stored path a collection must not hold (a reason), or None: every path a relative POSIX
    path inside the folder, as the scan writes them (no empty, '.' or '..' part, not absolute, no NUL), and
    no hidden part (the scan leaves those out), no path twice. A few passes of compiled code over the joined
    paths (100k paths in tens of ms). Symbolic links inside the folder are the user's own: the scan follows
    them wherever they point (engine.images.scan_images), so a stored path is checked as text, not resolved.
    ``text``: every path is known to be a str (not checked one by one again); ``distinct``: known to be
    all different (:func:`_distinct_texts`)."""
    if not text and not all(isinstance(p, str) for p in paths):
        return "a path that is not text"
    if not distinct and len(set(paths)) != len(paths):
        seen: set[str] = set()
        dup = next(p for p in paths if p in seen or seen.add(p))  # type: ignore[func-returns-value]
        return f"the path {dup!r} twice"
    joined = "\0".join(paths)
    if joined.count("\0") != max(len(paths) - 1, 0):
        return "a path holding a NUL character"
    if paths and _leaves("/" + joined.replace("\0", "/") + "/"):  # one pass of C for all
        bad = next(p for p in paths if _leaves("/" + p + "/"))
        return f"the path {bad!r}, which leaves the folder or names a hidden file (never indexed)"
    return None


def _leaves(wrapped: str) -> bool:
    """True when ``"/" + path + "/"`` (or several such joined) holds an empty part or one starting with '.':
    an absolute path, a '..', a trailing '/' all show as one of these, and so does a hidden file or folder,
    which the scan never indexes (on Windows, backslashes and drive colons too)."""
    return "//" in wrapped or "/." in wrapped or (
        os.sep == "\\" and ("\\" in wrapped or ":" in wrapped))


def _row_buffer(rows: int, dim: int) -> np.ndarray:
    """An empty (rows, dim) STORE_DTYPE buffer. A large one is an anonymous memory map of ordinary pages:
    numpy asks the kernel for transparent huge pages for arrays of 4 MB or more, and where the kernel
    compacts memory to find them (``defrag`` ``madvise``, a common default) filling 256 MB of rows stalled
    an open for 0.1-0.3 s (100k x 1280, five runs each way: 0.32-0.47 s against 0.44-0.72 s)."""
    nbytes = rows * dim * np.dtype(STORE_DTYPE).itemsize
    if nbytes < 1 << 22:
        return np.empty((rows, dim), STORE_DTYPE)
    return np.frombuffer(mmap.mmap(-1, nbytes), STORE_DTYPE).reshape(rows, dim)


class _Rows:
    """A growable block of rows: ids (n,) int64, sizes, mtimes, relative paths, and the vectors (n, D) as
    stored (STORE_DTYPE: float16; :func:`engine.halfrows.half_rows` gives their float32 meaning).
    Appending is amortised O(rows added) (capacity doubles); ``stored`` is a view of the live part. Rows
    are never changed in place (appends go past them, removals make a new buffer), so an index may keep
    a view of them."""

    def __init__(self, dim: int | None = None) -> None:
        self.n = 0
        self.dim = dim
        self._cap = 0
        self._v = np.zeros((0, dim or 0), STORE_DTYPE)
        self.ids = np.zeros(0, np.int64)
        self.sizes = np.zeros(0, np.int64)
        self.mtimes = np.zeros(0, np.int64)
        self.paths: list[str] = []

    @property
    def stored(self) -> np.ndarray:
        """(n, D) float16: the live rows as stored (a view)."""
        return self._v[: self.n]

    def reserve(self, rows: int, dim: int) -> None:
        """Room for ``rows`` rows in all, without copying later appends."""
        if self.dim is None or self._v.shape[1] != dim:
            self.dim = int(dim)
            self._v = np.zeros((0, self.dim), STORE_DTYPE)
        if rows > self._cap:
            grown = _row_buffer(rows, self.dim)
            grown[: self.n] = self._v[: self.n]
            self._v, self._cap = grown, rows

    def append(self, ids: np.ndarray, vectors: np.ndarray, paths: list[str], sizes: np.ndarray,
               mtimes: np.ndarray) -> None:
        """Add rows (vectors (m, D) as stored), growing the buffer by doubling when it is full."""
        m = len(paths)
        if m == 0:
            return
        self.reserve(self.n + m if self.n + m <= self._cap else max(self.n + m, 2 * self._cap, 256),
                     int(vectors.shape[1]))
        self._v[self.n: self.n + m] = vectors
        self.ids = np.concatenate([self.ids, ids.astype(np.int64)])
        self.sizes = np.concatenate([self.sizes, sizes.astype(np.int64)])
        self.mtimes = np.concatenate([self.mtimes, mtimes.astype(np.int64)])
        self.paths.extend(paths)
        self.n += m

    def keep(self, mask: np.ndarray) -> None:
        """Keep the rows where ``mask`` (n,) is True, in order."""
        if mask.all():
            return
        v = self._v[: self.n][mask]
        self._v, self._cap = v, v.shape[0]
        self.ids, self.sizes, self.mtimes = self.ids[mask], self.sizes[mask], self.mtimes[mask]
        self.paths = [p for p, k in zip(self.paths, mask, strict=True) if k]
        self.n = int(mask.sum())


class Collection:
    """An image folder with its descriptors and index; see the module docstring.

    Attributes: ``folder`` (absolute), ``model_spec``, ``state_dir`` (the cache folder of this pair),
    ``generation`` (the commit loaded or last written, e.g. ``"commit-000007"``; None before any).
    Thread-safe: searches may run while another thread updates (they see the last committed rows).
    """

    def __init__(self, folder: Path, model_spec: ModelSpec, state_dir: Path, *, index_kind: str = "hnsw",
                 index_params: dict[str, Any] | None = None) -> None:
        self.folder = folder
        self.model_spec = model_spec
        self.state_dir = state_dir
        self.index_kind = index_kind
        self.index_params = dict(index_params or {})
        if index_kind == "hnsw":
            self.index_params.setdefault("threads", _default_threads())
        self._identity = model_spec.identity()
        self._lock = threading.RLock()
        self._base_commit = 0  # the commit on disk that this object's state continues
        self._writer: int | None = None  # the descriptor of the held .lock while this object updates
        #: what opening noticed and worked around, one line each (for the user)
        self.notes: list[str] = []
        #: why the next update must rewrite the commit (an unauthenticated manifest, a graph to rebuild)
        self.repair: str | None = None
        self._rebuild_graph = False  # a saved graph was not trusted: the next final commit builds one
        #: searches use the saved graph (loaded in the background when large); False: exact (see open)
        self.load_graph = True
        self._reset()

    def _reset(self) -> None:
        self._rows = _Rows()
        self._skipped: dict[str, SkippedFile] = {}
        self._next_id = 0
        self._index: VectorIndex | None = None
        self._exact: VectorIndex | None = None
        self._f32: np.ndarray | None = None  # ``vectors``, made on demand; dropped with _exact when rows change
        self._graph_info: dict[str, Any] | None = None   # the graph file the manifest names
        self._graph_pending: dict[str, Any] | None = None  # manifest entry of a graph not yet loaded
        self._graph_loader: _GraphLoad | None = None      # its load in the background, if started
        self._graph_saved: tuple[int, int] | None = None  # (id, rebuilds) of the index whose graph is on disk
        self._segments: list[dict[str, Any]] = []         # committed segments (manifest entries)
        self._removed: set[int] = set()                   # ids dropped but still in a segment
        self._removed_vectors: dict[int, np.ndarray] = {}  # their vectors (the graph may still hold them)
        self._unsaved = 0                                 # rows at the end of _rows not yet in a segment
        self._commit = 0
        self.total_files: int | None = None               # image files of the last scan (None: unknown)
        self.generation: str | None = None

    # --- opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, folder: str | os.PathLike, *, model_spec: ModelSpec, cache_dir: str | os.PathLike | None = None,
             rebuild: bool = False, index: str = "hnsw", index_params: dict[str, Any] | None = None,
             verify: bool = True, load_graph: bool = True) -> Collection:
        """Open ``folder`` seen through ``model_spec``: load its last commit if there is one (no image is
        read), else an empty collection that :meth:`update` fills. ``rebuild=True`` ignores the saved
        state (replaced at the next commit; a state folder of another shape, e.g. with a FIFO or a folder
        where a file belongs, is first moved aside to ``<state>.damaged-<time>``). ``index``/``index_params``
        are used when an index is first made (engine.index.make_index). ``verify``: check the vectors'
        CRC-32 too (the metadata and the graph are always checked before numpy or nmslib reads them).
        ``load_graph=False``, for a process that searches once (the `search` command): the saved graph is
        not loaded for searches, which answer exactly from the rows (0.1 s at 100k x 1280, where loading
        the graph costs a second and 530 MB); a change of the rows still loads it first. A
        reader racing a writer retries. What the load noticed and worked around (an unauthenticated
        manifest, a graph to rebuild) is in :attr:`notes`; :attr:`repair` says why the next update
        rewrites the commit. Raises CollectionError for a damaged or mismatched cache, naming the fix,
        FileNotFoundError for a missing folder."""
        root = Path(folder).expanduser().resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {folder}")
        state_dir = collection_dir(root, model_spec, cache_dir)
        c = cls(root, model_spec, state_dir, index_kind=index, index_params=index_params)
        c.load_graph = bool(load_graph)
        if rebuild:
            moved = _move_aside_damaged(state_dir, cache_root() if cache_dir is None else Path(cache_dir))
            if moved is not None:
                c._note(f"the damaged state folder of this collection was moved aside to {moved} "
                               "(delete it once you no longer need it); indexing the folder again")
        elif os.path.lexists(state_dir) and not _is_real_dir(state_dir):
            raise CollectionError(f"the collection cache {state_dir} is damaged (not a folder); {c._fix()}")
        if os.path.lexists(state_dir / MANIFEST):
            if rebuild:
                c._base_commit = c._disk_commit()
            else:
                c._load_retrying(verify=verify)
        elif os.path.lexists(state_dir / LEGACY_CURRENT) and not rebuild:
            raise CollectionError(f"the collection cache {state_dir} was written by an older version of the "
                                  f"program (format 1); {c._fix()}")
        return c

    def _fix(self) -> str:
        return (f"run `retrieval-explorer index {self.folder} --rebuild` to index the folder again (or delete "
                f"{self.state_dir})")

    def _disk_commit(self) -> int:
        """The commit number the manifest on disk names (0 when there is none or it cannot be read)."""
        try:
            m = json.loads(read_regular(self.state_dir / MANIFEST, limit=MANIFEST_LIMIT))
            return int(m["commit"])
        except (OSError, ValueError, KeyError, TypeError, RecursionError, OverflowError):
            return 0

    def _load_retrying(self, verify: bool, attempts: int = 5) -> None:
        """Load the current commit; a file that vanished because a writer committed meanwhile (and
        collected the files of an older commit) is a reason to read the newer manifest, not an error."""
        for attempt in range(attempts):
            before = self._disk_commit()
            try:
                self._load(verify=verify)
                return
            except CollectionError:
                if attempt + 1 == attempts or self._disk_commit() == before:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def _read_manifest(self) -> dict[str, Any]:
        fix = self._fix()
        try:
            m = json.loads(read_regular(self.state_dir / MANIFEST, limit=MANIFEST_LIMIT))
        except (OSError, ValueError, RecursionError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise CollectionError(f"the collection cache {self.state_dir} is damaged (unreadable {MANIFEST}: "
                                  f"{why}); {fix}") from None
        if not isinstance(m, dict):
            raise CollectionError(f"the collection cache {self.state_dir} is damaged (bad {MANIFEST}); {fix}")
        version = m.get("format_version")
        if version != FORMAT_VERSION:
            raise CollectionError(f"the collection cache {self.state_dir} has format version {version}, this "
                                  f"program uses {FORMAT_VERSION}; {fix}")
        if m.get("identity") != self._identity:
            raise CollectionError(f"the collection cache {self.state_dir} was made with another model or "
                                  f"descriptor ({m.get('identity')}, expected {self._identity}); {fix}")
        if m.get("folder") != str(self.folder):
            raise CollectionError(f"the collection cache {self.state_dir} holds the collection of another folder "
                                  f"({m.get('folder')!s:.300}), copied here: it cannot be used for {self.folder}; "
                                  f"{fix}")
        return m

    # --- authentication (engine.integrity) ------------------------------------------------------
    def _mac_context(self, what: str) -> list[str]:
        """What every MAC of this collection is bound to besides its content: the folder (resolved) and
        the model key, so that no file or manifest of another collection passes here."""
        return [what, str(self.folder), self.state_dir.name]

    def _sign_manifest(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """``manifest`` with its entries' and its own MAC (file entries first: the manifest's covers them)."""
        for seg in manifest["segments"]:
            for role in ("meta", "vectors"):
                seg[role] = self._sign_entry(role, seg[role])
        if manifest.get("graph"):
            for role in ("graph", "ids"):
                manifest["graph"][role] = self._sign_entry(role, manifest["graph"][role])
        body = {k: v for k, v in manifest.items() if k != "mac"}
        return {**body, "mac": integrity.sign([*self._mac_context("manifest"), body])}

    def _sign_entry(self, role: str, entry: dict[str, Any]) -> dict[str, Any]:
        body = {k: v for k, v in entry.items() if k != "mac"}
        if "sha256" not in body:  # an entry of an earlier version: its digest, from the file as it is
            body = _describe_file(self.state_dir / str(body["file"]))
        return {**body, "mac": integrity.sign([*self._mac_context(role), body])}

    def _entry_trusted(self, role: str, entry: Any) -> bool:
        if not isinstance(entry, dict):
            return False
        body = {k: v for k, v in entry.items() if k != "mac"}
        return integrity.verify([*self._mac_context(role), body], entry.get("mac"))

    def _manifest_trust(self, m: dict[str, Any]) -> str:
        """"signed" (this installation wrote it, as it is), "legacy" (no MAC: an earlier version wrote it)
        or "forged" (a MAC that does not match: changed outside this program, or another installation's)."""
        if "mac" not in m:
            return "legacy"
        body = {k: v for k, v in m.items() if k != "mac"}
        return "signed" if integrity.verify([*self._mac_context("manifest"), body], m["mac"]) else "forged"

    def _note(self, text: str) -> None:
        self.notes.append(text)
        log.warning("%s", text)

    def _load(self, verify: bool = True) -> None:
        fix = self._fix()
        m = self._read_manifest()
        trust = self._manifest_trust(m)
        try:
            commit = int(m["commit"])
            segments = list(m["segments"])
            removed = {int(i) for i in m["removed"]}
            skipped = {str(s["path"]): SkippedFile(str(s["path"]), str(s["reason"]), int(s["size"]),
                                                   int(s["mtime_ns"])) for s in m["skipped"]}
            next_id = int(m["next_id"])
            dim = None if m["dim"] is None else int(m["dim"])
            index_kind, index_params = m["index_kind"], m["index_params"]
            graph = m.get("graph")
            total_files = m.get("total_files")
            if dim is not None and not 0 < dim <= MAX_DIM:
                raise ValueError(f"it declares {dim}-d vectors")
            if not 0 <= next_id < 1 << 62:
                raise ValueError(f"next id {next_id}")
            declared = [_declared_rows(seg, dim) for seg in segments]  # before anything is allocated
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise CollectionError(f"the collection manifest in {self.state_dir} is damaged ({exc}); {fix}") from exc
        repair: list[str] = []
        if trust == "forged":
            for seg in segments:
                if not (self._entry_trusted("meta", seg.get("meta")) and
                        self._entry_trusted("vectors", seg.get("vectors"))):
                    raise CollectionError(f"the collection cache {self.state_dir} was changed outside this program "
                                          f"(its files fail their authentication); {fix}")
            repair.append(f"the collection manifest in {self.state_dir} fails its authentication (changed outside "
                          "this program): searching exactly from its vectors, which pass theirs")
            graph = None
        elif trust == "legacy":
            if graph:
                repair.append(f"the collection cache {self.state_dir} was written by an earlier version: "
                              "searching exactly until its search graph is rebuilt")
            else:
                repair.append(f"the collection cache {self.state_dir} was written by an earlier version")
            graph = None
        kind, params, why = _usable_settings(index_kind, index_params, self.index_kind, self.index_params)
        if why:
            repair.append(f"the collection manifest in {self.state_dir} holds {why}: searching exactly until the "
                          "graph is rebuilt with the default settings")
            graph = None
        if isinstance(graph, dict):
            gwhy = _usable_settings("hnsw", graph.get("params"), "hnsw", {})[2]
            if gwhy or kind != "hnsw":
                repair.append(f"the search graph of {self.state_dir} has {gwhy or 'another index kind'}: "
                              "searching exactly until it is rebuilt")
                graph = None
        rebuild_graph = graph is None and (isinstance(m.get("graph"), dict) or bool(why))
        rows = _Rows(dim)
        try:
            if dim is not None:  # with room to grow: the next images added are not a copy of all
                total = sum(declared)
                rows.reserve(total + total // 8 + 1024, dim)
            meta: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
            texts: list[np.ndarray] = []
            for seg in segments:  # names first: nothing is read from a manifest naming other files
                _entry_file(self.state_dir, seg["vectors"], "the collection file", _SEGMENT_NAME)
                if dim is None or seg["vectors"]["file"].removesuffix(".npy") != \
                        seg["meta"]["file"].removesuffix(".meta.npz"):
                    raise CollectionError(f"the collection segment {seg['meta']['file']} is inconsistent")
            # the files are read and checked by the pool (open, read, copy, SHA-256, CRC-32: no GIL held), each
            # segment's rows straight into their place, while this thread parses the metadata in order
            starts = np.cumsum([0, *declared]).tolist()
            with ThreadPoolExecutor(max(1, min(2, os.cpu_count() or 1)), thread_name_prefix="rows") as pool:
                jobs = []
                for seg, a, b in zip(segments, starts[:-1], starts[1:], strict=True):
                    jobs.append(pool.submit(_read_entry, self.state_dir, seg["meta"], "the collection file",
                                            _SEGMENT_NAME, digest="sha256"))
                    jobs.append(pool.submit(_load_vectors, self.state_dir, seg["vectors"], (b - a, dim), verify,
                                            rows._v[a:b]))
                try:
                    for seg, n_declared, meta_bytes in zip(segments, declared, jobs[::2], strict=True):
                        ids, sizes, mtimes, paths = self._read_meta(seg, meta_bytes.result())
                        n = len(paths)
                        if n != n_declared or not (ids.shape == sizes.shape == mtimes.shape == (n,)):
                            raise CollectionError(f"the collection segment {seg['meta']['file']} is inconsistent")
                        rows.paths.extend(paths.tolist())
                        texts.append(paths)
                        meta.append((ids, sizes, mtimes))
                except BaseException:  # what has not started is dropped; the pool waits for the rest
                    for job in jobs:
                        job.cancel()
                    raise
                for job in jobs[1::2]:  # every read and check ends before the rows are used
                    job.result()
                rows.n = starts[-1]
            if meta:  # one concatenation, not one per segment
                rows.ids, rows.sizes, rows.mtimes = (np.concatenate([m[i] for m in meta]) for i in range(3))
        except CollectionError as exc:
            raise CollectionError(f"{exc}; {fix}") from exc
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CollectionError(f"the collection data in {self.state_dir} is damaged ({exc}); {fix}") from exc
        except MemoryError:
            raise CollectionError(f"the collection data in {self.state_dir} does not fit in memory; {fix}") from None
        # text: _read_meta took them from unicode arrays, whose hashes show them distinct in one numpy pass
        bad = _bad_path(rows.paths, text=True, distinct=_distinct_texts(texts))
        if bad is not None:
            raise CollectionError(f"the collection cache {self.state_dir} holds {bad}: it is not this folder's "
                                  f"state; {fix}")
        removed_ids = np.fromiter(removed, np.int64, len(removed))
        # ids rise along the rows (searches rely on it), which also makes them unique
        if rows.n != len(rows.paths) or (rows.n > 1 and not bool(np.all(rows.ids[1:] > rows.ids[:-1]))) \
                or not np.isin(removed_ids, rows.ids).all():
            raise CollectionError(f"the collection data in {self.state_dir} is inconsistent; {fix}")
        if rows.n and next_id <= int(rows.ids[-1]):
            next_id = int(rows.ids[-1]) + 1  # never hand out an id twice
        live = ~np.isin(rows.ids, removed_ids)
        # the removed rows are kept aside until the graph that may still hold them is rebuilt
        removed_vectors = {int(rows.ids[j]): rows.stored[j].copy() for j in np.flatnonzero(~live)}
        rows.keep(live)
        with self._lock:
            self._rows, self._segments, self._removed = rows, segments, removed
            self._removed_vectors = removed_vectors
            self._skipped, self._next_id = skipped, next_id
            self.index_kind, self.index_params = kind, params
            self._index, self._exact, self._f32 = None, None, None
            self._graph_info = graph if isinstance(graph, dict) else None
            self._graph_pending = self._graph_info
            self._graph_loader = None
            self._unsaved = 0
            self._commit = self._base_commit = commit
            self.total_files = int(total_files) if isinstance(total_files, int) else None
            self.generation = f"commit-{commit:06d}"
            self.repair = "; ".join(repair) or None
            self._rebuild_graph = rebuild_graph
        for text in repair:
            self._note(f"{text}; `retrieval-explorer index {self.folder}` repairs it")
        self._start_graph_load()

    def _start_graph_load(self) -> None:
        """Check and load a large saved graph in the background (BACKGROUND_GRAPH_BYTES), over the rows
        as they are now: every change of the rows first waits for it (:meth:`_live_index`)."""
        with self._lock:
            info = self._graph_pending
            try:
                big = isinstance(info, dict) and int(info["graph"]["bytes"]) >= BACKGROUND_GRAPH_BYTES
            except (KeyError, TypeError, ValueError):
                big = False  # checked, and refused with its message, when it is loaded
            if big and self._rows.n and self._graph_loader is None and self.load_graph:
                rows, removed = self._rows, self._removed_vectors
                self._graph_loader = _GraphLoad(lambda: self._restore_graph(info, rows, removed))

    def wait_graph(self) -> None:
        """Wait until a saved graph being loaded in the background is in use (or refused, with a note);
        returns at once otherwise. Searches do not wait: they answer exactly meanwhile."""
        with self._lock:
            self._live_index()

    def _read_meta(self, seg: dict[str, Any], data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """A segment's ids, sizes, mtimes (n,) int64 and relative paths (n,) unicode, from its checked
        metadata file (``data``: its bytes, already read and checked by :func:`_read_entry`)."""
        import io

        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            ids, sizes, mtimes = (z[k].astype(np.int64) for k in ("ids", "sizes", "mtimes"))
            paths = z["paths"]
            if paths.ndim != 1 or paths.dtype.kind != "U":
                raise CollectionError(f"the collection segment {seg['meta']['file']} is inconsistent")
            return ids, sizes, mtimes, paths

    # --- properties -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._rows.n

    @property
    def paths(self) -> list[str]:
        """Absolute paths, row i for ``vectors[i]``."""
        return [str(self.folder / p) for p in self._rows.paths]

    @property
    def relpaths(self) -> list[str]:
        """Paths relative to the folder (POSIX separators)."""
        return list(self._rows.paths)

    @property
    def labels(self) -> list[str | None]:
        """The sub-folder name of each image (None for files directly in the folder)."""
        return [label_of(p) for p in self._rows.paths]

    @property
    def vectors(self) -> np.ndarray:
        """(N, D) float32 L2-normalised descriptors ((0, 0) before the first update): the stored float16
        rows converted once and kept until they change (N x D x 4 bytes, 512 MB at 100k x 1280). Searches
        never need it (they score the stored rows), so a process that only opens and searches never pays
        for it; :meth:`vectors_for_ids` and :meth:`stored_vector` convert only the rows they give."""
        with self._lock:
            r = self._rows
            if r.dim is None:
                return np.zeros((0, 0), np.float32)
            if self._f32 is None:
                self._f32 = half_rows(r.stored)
            return self._f32

    @property
    def dim(self) -> int | None:
        return self._rows.dim

    @property
    def skipped(self) -> list[SkippedFile]:
        """Files that failed to load, with reasons (retried when they change)."""
        return list(self._skipped.values())

    @property
    def index(self) -> VectorIndex | None:
        with self._lock:
            return self._live_index()

    @property
    def is_saved(self) -> bool:
        """True once a commit has been written (or loaded)."""
        return self.generation is not None

    def stored_vector(self, relpath: str) -> np.ndarray | None:
        """The stored row (D,) float32 of the image at ``relpath`` when the collection holds it as the file
        is now (same size and modification time), else None: such a query needs no network pass."""
        try:
            now = file_stamp(self.folder / relpath)
        except OSError:
            return None
        with self._lock:
            r = self._rows
            try:
                i = r.paths.index(relpath)
            except ValueError:
                return None
            if (int(r.sizes[i]), int(r.mtimes[i])) != now:
                return None
            return half_rows(r.stored[i: i + 1])[0]

    # --- scanning ----------------------------------------------------------------------------------
    def _scan_stats(self, skipped: list[tuple[str, str]] | None = None) -> dict[str, tuple[int, int]]:
        out = {}
        for p in scan_images(self.folder, skipped=skipped):
            try:
                out[p.relative_to(self.folder).as_posix()] = file_stamp(p)
            except OSError as exc:  # vanished between listing and stat, or unreadable
                if skipped is not None:
                    skipped.append((str(p), f"cannot read file information ({exc.strerror or exc})"))
        return out

    def _diff(self, current: dict[str, tuple[int, int]]) -> ChangeSet:
        r = self._rows
        known: dict[str, tuple[int, int]] = {
            p: (int(s), int(m)) for p, s, m in zip(r.paths, r.sizes, r.mtimes, strict=True)}
        known.update({p: (s.size, s.mtime_ns) for p, s in self._skipped.items()})
        cs = ChangeSet()
        for p, st in current.items():
            if p not in known:
                cs.added.append(p)
            elif known[p] != st:
                cs.changed.append(p)
        cs.removed = sorted(set(known) - set(current))
        return cs

    def scan(self) -> ChangeSet:
        """Compare the folder with the saved state by size and mtime (stats only, no image is read)."""
        return self._diff(self._scan_stats())

    # --- updating -----------------------------------------------------------------------------------
    def update(self, descriptor_model: Any, *, device: str = "cpu", batch_size: int = 32, num_workers: int = 0,
               progress: ProgressFn | None = None, should_stop: ShouldStopFn | None = None,
               features: Any = None, decode_threads: int | None = None,
               commit_every: int = COMMIT_EVERY_IMAGES, commit_seconds: float = COMMIT_EVERY_SECONDS
               ) -> UpdateReport:
        """Bring the collection up to date with its folder: extract only added and changed files with
        ``descriptor_model`` (a models.descriptors.DescriptorModel: ``describe(fmap)`` on the feature map
        of ``features(x)``, by default its backbone's ``forward_features``; see engine.runtime), drop
        removed ones, and commit every ``commit_every`` images or ``commit_seconds`` seconds.

        Work is kept as it is done: a cancel (``should_stop``), an error or a kill keeps every commit
        made; the next update continues from there. ``report.cancelled`` says it stopped early.
        Failed files go to :attr:`skipped`. See :func:`update_collections` for several descriptors
        from one backbone pass."""
        return update_collections([(self, descriptor_model)], device=device, batch_size=batch_size,
                                  num_workers=num_workers, progress=progress, should_stop=should_stop,
                                  features=features, decode_threads=decode_threads, commit_every=commit_every,
                                  commit_seconds=commit_seconds)[0]

    def _begin(self, current: dict[str, tuple[int, int]], changes: ChangeSet) -> None:
        """Drop removed and changed files from memory (committed with the first commit)."""
        gone = set(changes.removed) | set(changes.changed)
        with self._lock:
            if gone:
                mask = np.array([p not in gone for p in self._rows.paths], bool)
                dropped = self._rows.ids[~mask]
                for j in np.flatnonzero(~mask):
                    self._removed_vectors[int(self._rows.ids[j])] = self._rows.stored[j].copy()
                index = self._live_index()
                if index is not None and dropped.size:
                    index.remove(dropped)
                self._removed.update(int(i) for i in dropped)
                self._rows.keep(mask)
                self._unsaved = min(self._unsaved, self._rows.n)
                for p in gone:
                    self._skipped.pop(p, None)
                self._exact = self._f32 = None
            self.total_files = len(current)

    def _append(self, relpaths: list[str], vectors: np.ndarray, skipped: list[SkippedFile],
                current: dict[str, tuple[int, int]]) -> None:
        """Add extracted rows (vectors (n, D), L2-normalised here, stored as float16) in memory."""
        new = np.asarray(vectors, np.float32)
        if new.shape[0]:
            new = l2n(new).astype(STORE_DTYPE)  # as stored: what a reload gives, exactly
            if self._rows.dim is not None and new.shape[1] != self._rows.dim:
                raise CollectionError(f"the model gives {new.shape[1]}-d vectors but the collection holds "
                                      f"{self._rows.dim}-d ones; {self._fix()}")
        with self._lock:
            ids = np.arange(self._next_id, self._next_id + len(relpaths), dtype=np.int64)
            if len(relpaths):
                if self._rows.dim is None:
                    self._rows.dim = int(new.shape[1])
                index = self._live_index(create=True)  # before the rows grow: it indexes the rows it finds
                self._rows.append(ids, new, relpaths, np.array([current[p][0] for p in relpaths], np.int64),
                                  np.array([current[p][1] for p in relpaths], np.int64))
                # the graph's pending part: a view of the newest rows (all of a new folder's), not a copy
                tail = self._rows.n - len(relpaths) - (index.pending if isinstance(index, HnswIndex) else 0)
                if not (isinstance(index, HnswIndex) and tail >= 0
                        and index.extend_pending(self._rows.stored[tail:], self._rows.ids[tail:])):
                    index.add(new, ids, normalised=True)
                self._next_id += len(relpaths)
                self._unsaved += len(relpaths)
                self._exact = self._f32 = None
            for s in skipped:
                self._skipped[s.path] = s

    # --- committing ---------------------------------------------------------------------------------
    def _open_lock(self) -> int:
        """The descriptor of the state folder's ``.lock`` (made when missing; a regular file only: opened
        without following a link and without blocking)."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise CollectionError(f"the collection cache {self.state_dir} is damaged (not a folder); "
                                  f"{self._fix()}") from None
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | \
            getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.state_dir / ".lock", flags, 0o644)
        except OSError as exc:
            full = disk_full(exc, self.state_dir / ".lock", fix=f"run `retrieval-explorer index {self.folder}` again")
            if full is not None:
                raise full from None
            raise CollectionError(f"the collection cache {self.state_dir} is damaged (its .lock: "
                                  f"{exc.strerror or exc}); {self._fix()}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise CollectionError(f"the collection cache {self.state_dir} is damaged (its .lock is not a regular "
                                  f"file); {self._fix()}")
        return fd

    @contextlib.contextmanager
    def writing(self):
        """Hold the state folder's lock while this object updates the collection, taken at once or refused:
        a second update of the same collection (another process, or another object) raises
        CollectionBusyError naming the process that holds it, before it reads any image. Re-entrant;
        commits made meanwhile use it. When another run committed between this object's load and the
        lock, the newer commit is loaded first (nothing of its work is lost)."""
        if self._writer is not None:
            yield
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no cross-process lock
            yield
            return
        fd = self._open_lock()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = ""
            with contextlib.suppress(OSError, ValueError):
                os.lseek(fd, 0, os.SEEK_SET)
                pid = int(os.read(fd, 32).decode("ascii").split()[0])
                other = f" (process {pid})"
            os.close(fd)
            raise CollectionBusyError(
                f"another run{other} is updating the collection of {self.folder} now; wait until it ends, then "
                f"run `retrieval-explorer index {self.folder}` again (it continues from that run's work)") from None
        try:
            with contextlib.suppress(OSError):  # who holds it, for the message of the one refused
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._writer = fd
            if self.is_saved and self._disk_commit() != self._base_commit and not self.repair:
                self._load_retrying(verify=True)  # another run committed before this one held the lock
            yield
        finally:
            self._writer = None
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @contextlib.contextmanager
    def _locked(self):
        """An exclusive lock on the state folder (POSIX flock) so that two processes committing the same
        collection do not interleave (already held while this object runs :meth:`writing`)."""
        if self._writer is not None:
            yield
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no cross-process lock
            self.state_dir.mkdir(parents=True, exist_ok=True)
            yield
            return
        fd = self._open_lock()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def commit(self, *, final: bool = True) -> None:
        """Write what changed since the last commit: the new rows as one segment (float16 vectors and
        their paths), a rebuilt graph when ``final`` and the thresholds ask for one, then the manifest
        (atomically, the switch), then delete files no longer named by this or the previous commit.

        The graph is built outside the collection's lock (searches meanwhile use the old graph and the
        exact part) and swapped in at the commit. Under the folder's lock, a commit refuses
        (ConcurrentChangeError) when another process committed since this object's state was read:
        that run's work would otherwise be lost. On an error (disk full...) the files of this commit
        are removed and the last commit stays as it was."""
        fresh = self._fresh_graph(force=self._rebuild_graph) if final else None
        with self._locked(), self._lock:
            on_disk = self._disk_commit()
            if on_disk != self._base_commit:
                raise ConcurrentChangeError(
                    f"another run changed the collection of {self.folder} while this one worked (commit "
                    f"{on_disk}, this run continued commit {self._base_commit}); nothing of this run after "
                    "its last commit was saved: run `retrieval-explorer index` again, it continues from there")
            written: list[Path] = []
            try:
                if fresh is not None:
                    self._index = fresh
                self._commit_locked(fresh is not None, written)
            except BaseException as exc:
                for p in written:
                    with contextlib.suppress(OSError):
                        p.unlink()
                again = (f"run `retrieval-explorer index {self.folder}` again: the last commit "
                         f"({self.generation or 'none'}) is kept and it continues from there")
                full = disk_full(exc, self.state_dir / MANIFEST, fix=again)
                if full is not None:
                    raise CollectionError(str(full)) from exc
                if isinstance(exc, OSError):
                    raise CollectionError(
                        f"cannot save the collection of {self.folder} ({exc.strerror or exc}); the last "
                        f"commit ({self.generation or 'none'}) is kept and the next run continues from it"
                    ) from exc
                raise

    def _fresh_graph(self, force: bool = False) -> HnswIndex | None:
        """A new HNSW index over the live rows when the current one's thresholds ask for a rebuild, or
        ``force`` (a repair), or None. Called by the updating thread, the only one that changes rows,
        without the lock."""
        with self._lock:
            index = self._live_index()
            if not isinstance(index, HnswIndex) or not (force or index.needs_rebuild()) or not self._rows.n:
                return None
            # the committed rows by reference, not a copy (256 MB less at 100k x 1280): rows are never
            # changed in place (appends go past them, removals make a new buffer)
            ids, vectors = self._rows.ids.copy(), self._rows.stored
        fresh = self._new_index(vectors.shape[1])
        assert isinstance(fresh, HnswIndex)
        fresh.build(vectors, ids, normalised=True)
        return fresh

    def _new_index(self, dim: int) -> VectorIndex:
        """An empty index of the collection's kind and settings (checked when the manifest was read)."""
        index = make_index(self.index_kind, "cosine", dim=dim, **self.index_params)
        if isinstance(index, HnswIndex):
            index.rebuild_on_query = False
        return index

    def _commit_locked(self, rebuilt: bool, written: list[Path]) -> None:
        folder = self.state_dir
        meta = folder.parent / "folder.txt"
        if not meta.exists():
            atomic_write_text(meta, str(self.folder) + "\n")
        number = self._commit + 1
        token = secrets.token_hex(4)
        segments = list(self._segments)
        removed = set(self._removed)
        rows = self._rows
        index = self._live_index()
        # removed rows may leave the segments once no graph row refers to them, at a rebuild or in bulk
        droppable = not isinstance(index, HnswIndex) or index.tombstones == 0
        if removed and droppable and (rebuilt or len(removed) > COMPACT_SHARE * max(rows.n, 1)):  # one segment of the live rows; the removed rows are gone for good
            segments, removed, first = [], set(), 0
        else:
            first = rows.n - self._unsaved
        if rows.n - first > 0:
            stem = f"seg-{number:06d}-{token}"
            sl = slice(first, rows.n)

            def save_meta(path: Path, sl: slice = sl) -> None:
                with open(path, "wb") as fh:
                    np.savez(fh, ids=rows.ids[sl], sizes=rows.sizes[sl], mtimes=rows.mtimes[sl],
                             paths=np.array(rows.paths[sl], dtype=str))

            def save_vectors(path: Path, sl: slice = sl) -> None:
                with open(path, "wb") as fh:
                    np.save(fh, rows.stored[sl], allow_pickle=False)

            written += [folder / f"{stem}.meta.npz", folder / f"{stem}.npy"]
            segments.append({"rows": rows.n - first,
                             "meta": _write_entry(folder / f"{stem}.meta.npz", save_meta),
                             "vectors": _write_entry(folder / f"{stem}.npy", save_vectors)})
        graph = self._graph_info
        if isinstance(index, HnswIndex) and (id(index), index.rebuilds) != self._graph_saved \
                and self._graph_pending is None:
            written += [folder / f"graph-{number:06d}-{token}.bin", folder / f"graph-{number:06d}-{token}.ids.npy"]
            graph = index.save_graph(folder, f"graph-{number:06d}-{token}")
        elif index is None or not isinstance(index, HnswIndex):
            graph = None
        manifest = {
            "format": "retrieval-explorer-collection",
            "format_version": FORMAT_VERSION,
            "commit": number,
            "identity": self._identity,
            "model_spec": asdict(self.model_spec),
            "folder": str(self.folder),
            "count": rows.n,
            "dim": rows.dim,
            "dtype": np.dtype(STORE_DTYPE).name,
            "next_id": self._next_id,
            "index_kind": self.index_kind,
            "index_params": self.index_params,
            "segments": segments,
            "removed": sorted(removed),
            "graph": graph,
            "skipped": [asdict(s) for s in self._skipped.values()],
            "total_files": self.total_files,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        manifest = self._sign_manifest(manifest)
        previous = self._named_files()
        atomic_write_text(folder / MANIFEST, json.dumps(manifest))  # the switch
        written.clear()
        self.repair = None
        if rebuilt:
            self._rebuild_graph = False
        self._segments, self._graph_info, self._commit = segments, graph, number
        self._base_commit = number
        if isinstance(index, HnswIndex):
            self._graph_saved = (id(index), index.rebuilds)
        if not removed:
            self._removed_vectors = {}
        self._removed, self._unsaved = removed, 0
        self.generation = f"commit-{number:06d}"
        self._collect(previous | self._named_files())

    def _named_files(self) -> set[str]:
        names = set()
        for seg in self._segments:
            names.update((seg["meta"]["file"], seg["vectors"]["file"]))
        if self._graph_info:
            names.update((self._graph_info["graph"]["file"], self._graph_info["ids"]["file"]))
        return names

    def _collect(self, keep: set[str]) -> None:
        """Delete what no recent commit names: older segments and graphs, leftovers of a crash, the
        folders of the old format. The previous commit's files stay, for readers still on it."""
        keep = keep | {MANIFEST, ".lock"}
        for p in self.state_dir.iterdir():
            if p.name in keep:
                continue
            if p.is_dir() and p.name.startswith("gen-"):
                shutil.rmtree(p, ignore_errors=True)
            elif p.is_file() and (p.name.startswith(("seg-", "graph-", ".manifest.json.")) or p.name == LEGACY_CURRENT):
                with contextlib.suppress(OSError):
                    p.unlink()

    # --- the index ----------------------------------------------------------------------------------
    def _live_index(self, create: bool = False, wait: bool = True) -> VectorIndex | None:
        """The vector index over the live rows (a saved graph is loaded on first use; a damaged one is
        rebuilt from the stored vectors). ``wait=False``: None while a graph loads in the background, or
        while it is not to be loaded (``load_graph``): the caller searches exactly meanwhile. Call with
        ``self._lock`` held."""
        if self._graph_pending is None:
            self._graph_loader = None
        if self._index is None and self._graph_pending is not None and self._rows.n:
            loader = self._graph_loader
            if not wait and (not self.load_graph or (loader is not None and not loader.done())):
                return None
            info = self._graph_pending
            index, why = loader.result() if loader is not None else \
                self._restore_graph(info, self._rows, self._removed_vectors)
            self._graph_pending = self._graph_loader = None
            if index is not None:
                self._index = index
                self._graph_saved = (id(index), index.rebuilds)
            else:
                self.repair = self.repair or why
                self._rebuild_graph = True
                self._note(f"{why}: searching exactly until the graph is rebuilt from the stored vectors (at the "
                           f"next update: `retrieval-explorer index {self.folder}`)")
        if self._index is None and (self._rows.n or create) and self._rows.dim is not None:
            # no graph (yet): every row is in the exact part; the next update's final commit builds it
            self._index = self._new_index(self._rows.dim)
            if self._rows.n:
                self._index.add(self._rows.stored, self._rows.ids, normalised=True)
        self._graph_pending = None
        return self._index

    def _restore_graph(self, info: dict[str, Any], rows: _Rows, removed: dict[int, np.ndarray]
                       ) -> tuple[HnswIndex | None, str | None]:
        """The saved graph ``info`` over ``rows`` (and the ``removed`` rows it may still hold), its files
        checked first (:meth:`_check_graph_files`, then engine.index's own checks): ``(index, None)``, or
        ``(None, why)`` in one line for the user. Runs on the loading thread too: reads no mutable state."""
        try:
            self._check_graph_files(info)
            index = HnswIndex.restore(
                self.state_dir, info, dim=rows.dim, metric="cosine",
                vectors_of=lambda ids: self._stored_vectors(ids, rows, removed),
                live_ids=rows.ids, live_vectors=rows.stored, normalised=True, digests_checked=True)
            index.rebuild_on_query = False
            return index, None
        except (IndexCorruptError, CollectionError, OSError, KeyError, ValueError, TypeError, RuntimeError,
                MemoryError) as exc:  # never a library's raw words: one line, and the way out
            return None, str(exc) if isinstance(exc, (IndexCorruptError, CollectionError)) else \
                f"the search graph of {self.state_dir} cannot be loaded"

    def _check_graph_files(self, info: dict[str, Any]) -> None:
        """The graph files a signed manifest names, checked against their SHA-256 before nmslib sees them
        (a regular file, of its size and digest, read in pieces; engine.index checks its structure).
        Raises CollectionError."""
        for role in ("graph", "ids"):
            entry = info[role]
            if "sha256" not in entry:
                raise CollectionError(f"the search graph of {self.state_dir} carries no digest")
            _check_digest(self.state_dir, entry, "the search graph file", _GRAPH_NAME)

    def _stored_vectors(self, ids: np.ndarray, rows: _Rows, removed: dict[int, np.ndarray]) -> np.ndarray:
        """Vectors of stored ids in ``rows``, live or removed-but-kept (``removed``): (n, D); a view of the
        rows (no copy) when the ids are the first rows in order, as for a graph built before rows were added."""
        n = len(ids)
        if n <= rows.n and np.array_equal(rows.ids[:n], ids):
            return rows.stored[:n]
        out = np.empty((len(ids), rows.dim), STORE_DTYPE)
        at = np.searchsorted(rows.ids, ids)
        at = np.minimum(at, max(rows.n - 1, 0))
        live = (rows.n > 0) & (rows.ids[at] == ids) if rows.n else np.zeros(len(ids), bool)
        out[live] = rows.stored[at[live]]
        for j in np.flatnonzero(~live):
            v = removed.get(int(ids[j]))
            if v is None:
                raise IndexCorruptError(f"the graph names id {int(ids[j])}, which no segment holds")
            out[j] = v
        return out

    def _exact_index(self) -> VectorIndex:
        if self._exact is None:
            ex = make_index("exact", "cosine", dim=self._rows.dim)
            assert isinstance(ex, ExactIndex)
            ex.build(self._rows.stored, self._rows.ids, normalised=True)  # the rows by reference, not a copy
            self._exact = ex
        return self._exact

    def vectors_for_ids(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors (n, D) of index ids (n,)."""
        rows = np.searchsorted(self._rows.ids, ids)  # ids are increasing along the rows
        return half_rows(self._rows.stored[rows])

    # --- searching --------------------------------------------------------------------------------
    def search_many(self, queries: np.ndarray, options: SearchOptions | None = None) -> list[list[SearchHit]]:
        """Search (Q, D) query vectors; per query a ranked list of hits (from the rows indexed so far)."""
        options = options or SearchOptions()
        with self._lock:
            index = self._live_index(wait=False)
            if index is None and (self._graph_loader is not None or not self.load_graph):
                index = self._exact_index()  # the graph loads (or is not wanted): exact meanwhile
            if index is None or len(self) == 0:
                raise CollectionError(f"the collection of {self.folder} has no indexed image yet; run "
                                      f"`retrieval-explorer index {self.folder}` (or update it) first")
            q = np.asarray(queries, np.float32)
            if q.ndim == 1:
                q = q[None, :]
            if q.ndim != 2 or q.shape[1] != self.dim:
                raise ValueError(f"query vectors must have shape (Q, {self.dim}), got {tuple(np.shape(queries))}")
            results = search_vectors(q, options, index=index,
                                     exact_index=self._exact_index() if options.exact else None,
                                     fetch_vectors=self.vectors_for_ids)
            out = []
            # the stored paths are clean relative POSIX paths (_bad_path): joined as text, what str(folder / p)
            # gives, without a Path per hit (a quarter of a search's time at 1M x 128)
            base = str(self.folder)
            for ids, scores in results:
                rows = np.searchsorted(self._rows.ids, ids)
                paths = self._rows.paths
                out.append([SearchHit(os.path.join(base, paths[r] if os.sep == "/" else paths[r].replace("/", os.sep)),
                                      paths[r], float(s), rank + 1, label_of(paths[r]))
                            for rank, (r, s) in enumerate(zip(rows, scores, strict=True))])
            return out

    def search(self, query: np.ndarray, options: SearchOptions | None = None) -> list[SearchHit]:
        """Search one query vector (D,) -> ranked hits."""
        q = np.asarray(query, np.float32)
        if q.ndim != 1:
            raise ValueError(f"search takes one vector (D,); use search_many for (Q, D), got {q.shape}")
        return self.search_many(q[None, :], options)[0]

    def __repr__(self) -> str:
        return f"Collection({str(self.folder)!r}, n={len(self)}, key={self.state_dir.name!r})"


def _compatible(collections: Sequence[Collection]) -> None:
    first = collections[0].model_spec
    for c in collections[1:]:
        s = c.model_spec
        if (c.folder, s.backbone, s.weights, s.image_size, s.crop_fraction, s.scales) != \
                (collections[0].folder, first.backbone, first.weights, first.image_size, first.crop_fraction,
                 first.scales):
            raise ValueError("update_collections needs collections of one folder seen through one backbone "
                             "(same weights, image size and crop); only the descriptor may differ")


def update_collections(
    pairs: Sequence[tuple[Collection, Any]], *, device: str = "cpu", batch_size: int = 32, num_workers: int = 0,
    progress: ProgressFn | None = None, should_stop: ShouldStopFn | None = None, features: Any = None,
    decode_threads: int | None = None, commit_every: int = COMMIT_EVERY_IMAGES,
    commit_seconds: float = COMMIT_EVERY_SECONDS, extract: Any = None,
) -> list[UpdateReport]:
    """Update several collections of one folder and one backbone (one per descriptor) from ONE pass of
    the backbone per image: ``pairs`` of (collection, DescriptorModel); each model's ``describe`` runs
    on the shared feature map of ``features(x (B, 3, S, S)) -> (B, C, h, w)`` (default: the first
    model's backbone in torch; engine.runtime gives faster CPU runners). Each collection extracts only
    what it lacks; the union is read once. Commits as :meth:`Collection.update` says.

    ``extract``: another source of the batches (engine.cluster: the workers of a Ray cluster), called
    with the absolute paths to read, yielding engine.decoding.ExtractedBatch whose ``vectors`` are
    keyed by the pair's position in ``pairs`` (the models are then not run here and may be None: nothing
    imports torch)."""
    if not pairs:
        return []
    collections = [c for c, _ in pairs]
    _compatible(collections)
    with contextlib.ExitStack() as held:
        for c in collections:  # a second update of the same collection is refused here, before any image
            held.enter_context(c.writing())
        return _update_held(pairs, collections, device=device, batch_size=batch_size, num_workers=num_workers,
                            progress=progress, should_stop=should_stop, features=features,
                            decode_threads=decode_threads, commit_every=commit_every,
                            commit_seconds=commit_seconds, extract=extract)


def _update_held(
    pairs: Sequence[tuple[Collection, Any]], collections: list[Collection], *, device: str, batch_size: int,
    num_workers: int, progress: ProgressFn | None, should_stop: ShouldStopFn | None, features: Any,
    decode_threads: int | None, commit_every: int, commit_seconds: float, extract: Any,
) -> list[UpdateReport]:
    """:func:`update_collections` once every collection's lock is held."""
    report_progress, stop = resolve(progress, should_stop)
    start = time.perf_counter()
    scan_skipped: list[tuple[str, str]] = []
    current = collections[0]._scan_stats(scan_skipped)
    reports, todos = [], []
    for c in collections:
        changes = c._diff(current)
        reports.append(UpdateReport(len(changes.added), len(changes.changed), len(changes.removed),
                                    unreadable=list(scan_skipped)))
        todos.append(set(changes.added) | set(changes.changed))
        c._begin(current, changes)
    union = sorted(set().union(*todos), key=lambda p: p.split("/"))
    needs_commit = [bool(t) or bool(r.removed) or not c.is_saved or bool(c.repair)
                    for c, t, r in zip(collections, todos, reports, strict=True)]
    if union:
        wanted = [np.array([p in t for p in union], bool) for t in todos]
        last_commit = time.monotonic()
        since = [0] * len(collections)
        pos = {p: j for j, p in enumerate(union)}
        total = len(union)
        report_progress(0, total, "extracting")
        files = [collections[0].folder / p for p in union]
        # ``extract``: batches made elsewhere (a Ray cluster; the cached exports without torch, engine.fastquery)
        batches = extract(files) if extract is not None else _torch_batches(
            pairs, collections[0], files, device=device, batch_size=batch_size, num_workers=num_workers,
            decode_threads=decode_threads, features=features)
        for batch in batches:
            rel = [Path(p).relative_to(collections[0].folder).as_posix() for p in batch.paths]
            bad = [(Path(s.path).relative_to(collections[0].folder).as_posix(), s.reason) for s in batch.skipped]
            for r in reports:
                r.read += len(rel) + len(bad)
            for i, c in enumerate(collections):
                keep = [j for j, p in enumerate(rel) if wanted[i][pos[p]]]
                skipped = [SkippedFile(p, r, *current[p]) for p, r in bad if wanted[i][pos[p]]]
                vecs = batch.vectors[i][keep] if keep else np.zeros((0, 0), np.float32)
                c._append([rel[j] for j in keep], vecs, skipped, current)
                reports[i].extracted += len(keep) + len(skipped)
                reports[i].skipped.extend(skipped)
                since[i] += len(keep) + len(skipped)
            stopping = batch.done < total and stop()
            due = time.monotonic() - last_commit >= commit_seconds
            for i, c in enumerate(collections):
                if since[i] and (since[i] >= commit_every or due or stopping):
                    c.commit(final=False)
                    reports[i].saved, since[i] = True, 0
                    needs_commit[i] = False
            if due:
                last_commit = time.monotonic()
            bad_so_far = len(reports[0].skipped)
            report_progress(batch.done, total, f"{len(collections[0]):,} indexed"
                            + (f", {bad_so_far} skipped" if bad_so_far else ""))
            if stopping:
                for r in reports:
                    r.cancelled = True
                break
    for i, c in enumerate(collections):
        # the graph of the first descriptor (the one asked for, else the default: the CLI's index_descriptors
        # and the window's FolderIndex.update put it first) is built now; the others' when they are asked for
        # first (until then their rows are searched exactly: tens of ms at 100k)
        if not reports[i].cancelled and (needs_commit[i] or _has_uncommitted(c, graph=i == 0)):
            report_progress(len(union), len(union), "updating the search index and saving")
            c.commit(final=i == 0 or c._rebuild_graph)
            reports[i].saved = True
        reports[i].total = len(c)
        reports[i].seconds = time.perf_counter() - start
    return reports


def _torch_batches(pairs: Sequence[tuple[Collection, Any]], first: Collection, files: list[Path], *, device: str,
                   batch_size: int, num_workers: int, decode_threads: int | None, features: Any) -> Any:
    """engine.extraction.iter_extract of ``files`` through the pairs' models in PyTorch (the backbone pass
    shared, on ``features`` when given), vectors keyed by the pair's position."""
    if any(m is None for _, m in pairs):
        raise ValueError("the folder has changed: update needs a descriptor model (engine.extraction.build_model)")
    from engine.extraction import _describe, feature_fn, feature_maps, input_sizes, input_spec, iter_extract

    first_model = pairs[0][1]
    models = [m.to(device).eval() for _, m in pairs]
    # DescriptorModels share one backbone pass; any other model ((B, 3, S, S) -> (B, D)) runs whole
    shared = all(hasattr(m, "describe") and hasattr(m, "backbone") for m in models)
    run = feature_fn(first_model.backbone, features) if shared else None
    size, mean, std = input_spec(first_model, first.model_spec.image_size)
    sizes = input_sizes(size)  # several: a multi-scale model (ModelSpec.scales), a map per size

    def compute(x: Any) -> dict[int, Any]:
        if run is None:
            return {i: m(x) for i, m in enumerate(models)}
        fmaps = feature_maps(run, sizes, x)
        return {i: _describe(m, fmaps) for i, m in enumerate(models)}

    return iter_extract(files, compute, image_size=size, mean=mean, std=std,
                        crop_fraction=first.model_spec.crop_fraction, batch_size=batch_size,
                        num_workers=num_workers, decode_threads=decode_threads, device=device)


def _has_uncommitted(c: Collection, graph: bool = True) -> bool:
    """True when ``c`` holds rows or removals not yet committed, or (``graph``) its graph is due for a
    rebuild."""
    if c._unsaved or c._rebuild_graph:
        return True
    if not graph and c._graph_pending is not None:  # a graph not loaded now: its files checked all the same
        try:
            c._check_graph_files(c._graph_pending)
        except (CollectionError, KeyError, TypeError, ValueError) as exc:
            with c._lock:
                c._graph_pending = c._graph_info = None
                c.repair, c._rebuild_graph = str(exc), True
            return True
    index = c.index if graph else None  # loads a saved graph, or makes the index a first build needs
    return isinstance(index, HnswIndex) and index.needs_rebuild()


def evaluate_collection(collection: Collection, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, Any]:
    """Leave-one-out retrieval figures on a collection whose images sit in class sub-folders:
    ``recall@K``, ``map``, ``map_excluded``, ``n`` (from engine.evaluation.evaluate) plus ``classes`` and
    ``unlabelled`` (images directly in the folder, left out)."""
    labels = collection.labels
    rows = [i for i, lab in enumerate(labels) if lab is not None]
    if not rows:
        raise ValueError(f"no labelled image in {collection.folder}: evaluation needs class sub-folders")
    x = collection.vectors[rows]
    y = [labels[i] for i in rows]
    out: dict[str, Any] = dict(evaluate(x, y, ks=ks))
    out["classes"] = len(set(y))
    out["unlabelled"] = len(labels) - len(rows)
    return out
