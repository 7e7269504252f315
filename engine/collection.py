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

- Files are immutable once named by a manifest; each entry carries its size and CRC-32, checked before
  numpy or nmslib reads the file. A commit writes only what changed: the new rows, and the graph when the
  thresholds of engine.index ask for a rebuild (points added since are searched exactly).
- :meth:`Collection.open` loads the last commit (no image is read; the graph is loaded at the first
  search). A reader racing a writer reads the newer manifest when a file it wanted was collected.
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
import os
import secrets
import shutil
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.atomic import atomic_write_text, fsync_file
from engine.callbacks import ProgressFn, ShouldStopFn, resolve
from engine.evaluation import evaluate
from engine.images import label_of, scan_images
from engine.index import (
    HnswIndex,
    IndexCorruptError,
    IndexSettingsError,
    VectorIndex,
    check_index_settings,
    crc32_file,
    make_index,
)
from engine.search import SearchOptions, search_vectors
from engine.vectors import l2n
from engine.vocabulary import ModelSpec, SearchHit, cache_root

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
LEGACY_CURRENT = "CURRENT"  # the pointer of format 1 (one folder per generation, rewritten whole)
#: vectors are stored as float16 (half the disk and memory; R@1 cost measured in docs/BENCHMARKS.md)
STORE_DTYPE = np.float16
#: a commit every this many extracted images, or every COMMIT_EVERY_SECONDS, whichever comes first
COMMIT_EVERY_IMAGES = 2000
COMMIT_EVERY_SECONDS = 30.0
#: removed rows are dropped from the segments (one rewrite) once they exceed this share of the rows
COMPACT_SHARE = 0.2


class CollectionError(RuntimeError):
    """A collection cache that cannot be used (damaged, incomplete, another format or another model),
    or a collection that cannot answer yet. The message says what happened and what to do."""


class ConcurrentChangeError(CollectionError):
    """Another process committed to the collection since this object read it: reopen and update again."""


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
    #: files and folders the scan could not use (dangling or looping links, unreadable folders), with reasons
    unreadable: list[tuple[str, str]] = field(default_factory=list)


# --- the collection ------------------------------------------------------------------------------
def _default_threads() -> int:
    """Graph-building threads: the machine's cores, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def _stat(p: Path) -> tuple[int, int]:
    st = p.stat()
    return int(st.st_size), int(st.st_mtime_ns)


def _from_store(v: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Stored float16 rows (n, D) -> float32 in ``out`` (or a new array), re-normalised (rounding moves
    the norm by ~1e-3); done in blocks of rows, in place, so a large segment costs one pass."""
    if out is None:
        out = np.empty(v.shape, np.float32)
    for a in range(0, v.shape[0], 8192):
        block = out[a:a + 8192]
        np.copyto(block, v[a:a + 8192], casting="unsafe")
        block /= np.maximum(np.sqrt(np.einsum("ij,ij->i", block, block)), 1e-12)[:, None]
    return out


def _check_entry(folder: Path, entry: dict[str, Any], what: str) -> Path:
    """A file a manifest names: present, of its size and CRC-32 (read before any parser sees it)."""
    p = folder / str(entry["file"])
    if "/" in str(entry["file"]) or not p.is_file():
        raise CollectionError(f"{what} {p} is missing")
    if p.stat().st_size != int(entry["bytes"]):
        raise CollectionError(f"{what} {p} is truncated or damaged")
    if crc32_file(p) != int(entry["crc32"]):
        raise CollectionError(f"{what} {p} is damaged (checksum mismatch)")
    return p


def _read_vectors(folder: Path, entry: dict[str, Any], shape: tuple[int, int], verify: bool) -> np.ndarray:
    """A segment's float16 vectors: the file is read once, its size and (``verify``) CRC-32 checked on
    those bytes, its .npy header parsed and checked, and the rows returned as a view of the bytes."""
    import io

    p = folder / str(entry["file"])
    if "/" in str(entry["file"]) or not p.is_file():
        raise CollectionError(f"the collection file {p} is missing")
    data = p.read_bytes()
    if len(data) != int(entry["bytes"]):
        raise CollectionError(f"the collection file {p} is truncated or damaged")
    if verify and zlib.crc32(data) != int(entry["crc32"]):
        raise CollectionError(f"the collection file {p} is damaged (checksum mismatch)")
    head = io.BytesIO(data[:4096])
    try:
        version = np.lib.format.read_magic(head)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        got_shape, fortran, dtype = read_header(head)
    except ValueError as exc:
        raise CollectionError(f"the collection file {p} is damaged ({exc})") from exc
    if tuple(got_shape) != shape or fortran or dtype != np.dtype(STORE_DTYPE):
        raise CollectionError(f"the collection file {p} holds {dtype} {tuple(got_shape)}, expected {shape}")
    offset = head.tell()
    if len(data) - offset != shape[0] * shape[1] * dtype.itemsize:
        raise CollectionError(f"the collection file {p} is truncated or damaged")
    return np.frombuffer(data, dtype=dtype, count=shape[0] * shape[1], offset=offset).reshape(shape)


def _write_entry(path: Path, write: Any) -> dict[str, Any]:
    """Write a new immutable file with ``write(path)``, fsync it and describe it for the manifest."""
    write(path)
    fsync_file(path)
    return {"file": path.name, "bytes": path.stat().st_size, "crc32": crc32_file(path)}


class _Rows:
    """A growable block of rows: ids (n,) int64, sizes, mtimes, relative paths, vectors (n, D) float32.
    Appending is amortised O(rows added) (capacity doubles); ``vectors`` is a view of the live part."""

    def __init__(self, dim: int | None = None) -> None:
        self.n = 0
        self.dim = dim
        self._cap = 0
        self._v = np.zeros((0, dim or 0), np.float32)
        self.ids = np.zeros(0, np.int64)
        self.sizes = np.zeros(0, np.int64)
        self.mtimes = np.zeros(0, np.int64)
        self.paths: list[str] = []

    @property
    def vectors(self) -> np.ndarray:
        return self._v[: self.n]

    def reserve(self, rows: int, dim: int) -> None:
        """Room for ``rows`` rows in all, without copying later appends."""
        if self.dim is None or self._v.shape[1] != dim:
            self.dim = int(dim)
            self._v = np.zeros((0, self.dim), np.float32)
        if rows > self._cap:
            grown = np.empty((rows, self.dim), np.float32)
            grown[: self.n] = self._v[: self.n]
            self._v, self._cap = grown, rows

    def append(self, ids: np.ndarray, vectors: np.ndarray, paths: list[str], sizes: np.ndarray,
               mtimes: np.ndarray) -> None:
        """Add rows (vectors (m, D) float32), growing the buffer by doubling when it is full."""
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
        self._reset()

    def _reset(self) -> None:
        self._rows = _Rows()
        self._skipped: dict[str, SkippedFile] = {}
        self._next_id = 0
        self._index: VectorIndex | None = None
        self._exact: VectorIndex | None = None
        self._graph_info: dict[str, Any] | None = None   # the graph file the manifest names
        self._graph_pending: dict[str, Any] | None = None  # manifest entry of a graph not yet loaded
        self._graph_saved: tuple[int, int] | None = None  # (id, rebuilds) of the index whose graph is on disk
        self._segments: list[dict[str, Any]] = []         # committed segments (manifest entries)
        self._removed: set[int] = set()                   # ids dropped but still in a segment
        self._removed_vectors: dict[int, np.ndarray] = {}  # their vectors (the graph may still hold them)
        self._unsaved = 0                                 # rows at the end of _rows not yet in a segment
        self._commit = 0
        self._settings_damaged = False                    # the manifest's index settings were replaced
        self.total_files: int | None = None               # image files of the last scan (None: unknown)
        self.generation: str | None = None

    # --- opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, folder: str | os.PathLike, *, model_spec: ModelSpec, cache_dir: str | os.PathLike | None = None,
             rebuild: bool = False, index: str = "hnsw", index_params: dict[str, Any] | None = None,
             verify: bool = True) -> Collection:
        """Open ``folder`` seen through ``model_spec``: load its last commit if there is one (no image is
        read), else an empty collection that :meth:`update` fills. ``rebuild=True`` ignores the saved
        state (replaced at the next commit). ``index``/``index_params`` are used when an index is first
        made (engine.index.make_index). ``verify``: check every file's CRC-32 (the vectors too; the
        graph is always checked before nmslib reads it). A reader racing a writer retries.
        Raises CollectionError for a damaged or mismatched cache, FileNotFoundError for a missing folder."""
        root = Path(folder).expanduser().resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {folder}")
        state_dir = collection_dir(root, model_spec, cache_dir)
        c = cls(root, model_spec, state_dir, index_kind=index, index_params=index_params)
        if (state_dir / MANIFEST).exists():
            if rebuild:
                c._base_commit = c._disk_commit()
            else:
                c._load_retrying(verify=verify)
        elif (state_dir / LEGACY_CURRENT).exists() and not rebuild:
            raise CollectionError(f"the collection cache {state_dir} was written by an older version of the "
                                  f"program (format 1); {c._fix()}")
        return c

    def _fix(self) -> str:
        return (f"delete {self.state_dir} or run `retrieval-explorer index {self.folder} --rebuild` "
                "to index the folder again")

    def _disk_commit(self) -> int:
        try:
            return int(json.loads((self.state_dir / MANIFEST).read_text(encoding="utf-8"))["commit"])
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
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
            m = json.loads((self.state_dir / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise CollectionError(f"the collection cache {self.state_dir} is damaged (unreadable {MANIFEST}: "
                                  f"{exc}); {fix}") from exc
        if not isinstance(m, dict):
            raise CollectionError(f"the collection cache {self.state_dir} is damaged (bad {MANIFEST}); {fix}")
        version = m.get("format_version")
        if version != FORMAT_VERSION:
            raise CollectionError(f"the collection cache {self.state_dir} has format version {version}, this "
                                  f"program uses {FORMAT_VERSION}; {fix}")
        if m.get("identity") != self._identity:
            raise CollectionError(f"the collection cache {self.state_dir} was made with another model or "
                                  f"descriptor ({m.get('identity')}, expected {self._identity}); {fix}")
        return m

    def _load(self, verify: bool = True) -> None:
        fix = self._fix()
        m = self._read_manifest()
        try:
            commit = int(m["commit"])
            segments = list(m["segments"])
            removed = {int(i) for i in m["removed"]}
            skipped = {str(s["path"]): SkippedFile(str(s["path"]), str(s["reason"]), int(s["size"]),
                                                   int(s["mtime_ns"])) for s in m["skipped"]}
            next_id = int(m["next_id"])
            dim = None if m["dim"] is None else int(m["dim"])
            index_kind, index_params = str(m["index_kind"]), dict(m["index_params"])
            graph = m.get("graph")
            total_files = m.get("total_files")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CollectionError(f"the collection manifest in {self.state_dir} is damaged ({exc}); {fix}") from exc
        try:
            index_params = check_index_settings(index_kind, index_params)
            settings_damaged = False
        except IndexSettingsError as exc:  # searches go on with the defaults; the next `index` saves them
            log.warning("the collection manifest in %s holds bad index settings (%s): using the defaults",
                        self.state_dir, exc)
            index_kind, index_params, settings_damaged = "hnsw", {"threads": _default_threads()}, True
        rows = _Rows(dim)
        try:
            if dim is not None:  # with room to grow: the next images added are not a copy of all
                total = sum(int(seg["rows"]) for seg in segments)
                rows.reserve(total + total // 8 + 1024, dim)
            meta: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
            for seg in segments:
                meta_path = _check_entry(self.state_dir, seg["meta"], "the collection file")
                with np.load(meta_path, allow_pickle=False) as z:
                    ids, sizes, mtimes = (z[k].astype(np.int64) for k in ("ids", "sizes", "mtimes"))
                    paths = z["paths"].tolist()
                n = len(paths)
                if not (ids.shape == sizes.shape == mtimes.shape == (n,)) or dim is None or \
                        not all(isinstance(q, str) for q in paths[:1]):
                    raise CollectionError(f"the collection segment {seg['meta']['file']} is inconsistent")
                vecs = _read_vectors(self.state_dir, seg["vectors"], (n, dim), verify)
                rows.reserve(max(rows.n + n, rows._cap), dim)
                _from_store(vecs, rows._v[rows.n: rows.n + n])  # straight into the buffer
                rows.paths.extend(paths)
                rows.n += n
                meta.append((ids, sizes, mtimes))
            if meta:  # one concatenation, not one per segment
                rows.ids, rows.sizes, rows.mtimes = (np.concatenate([m[i] for m in meta]) for i in range(3))
        except CollectionError as exc:
            raise CollectionError(f"{exc}; {fix}") from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CollectionError(f"the collection data in {self.state_dir} is damaged ({exc}); {fix}") from exc
        removed_ids = np.fromiter(removed, np.int64, len(removed))
        # ids rise along the rows (searches rely on it), which also makes them unique
        if rows.n != len(rows.paths) or (rows.n > 1 and not bool(np.all(rows.ids[1:] > rows.ids[:-1]))) \
                or not np.isin(removed_ids, rows.ids).all():
            raise CollectionError(f"the collection data in {self.state_dir} is inconsistent; {fix}")
        live = ~np.isin(rows.ids, removed_ids)
        # the removed rows are kept aside until the graph that may still hold them is rebuilt
        removed_vectors = {int(rows.ids[j]): rows.vectors[j].copy() for j in np.flatnonzero(~live)}
        rows.keep(live)
        with self._lock:
            self._rows, self._segments, self._removed = rows, segments, removed
            self._removed_vectors = removed_vectors
            self._skipped, self._next_id = skipped, next_id
            self.index_kind, self.index_params = index_kind, index_params
            self._settings_damaged = settings_damaged
            self._index, self._exact = None, None
            self._graph_info = graph if isinstance(graph, dict) else None
            self._graph_pending = self._graph_info
            self._unsaved = 0
            self._commit = self._base_commit = commit
            self.total_files = int(total_files) if isinstance(total_files, int) else None
            self.generation = f"commit-{commit:06d}"

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
        """(N, D) float32 L2-normalised descriptors ((0, 0) before the first update)."""
        return self._rows.vectors if self._rows.dim is not None else np.zeros((0, 0), np.float32)

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
            now = _stat(self.folder / relpath)
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
            return r.vectors[i].copy()

    # --- scanning ----------------------------------------------------------------------------------
    def _scan_stats(self, skipped: list[tuple[str, str]] | None = None) -> dict[str, tuple[int, int]]:
        out = {}
        for p in scan_images(self.folder, skipped=skipped):
            try:
                out[p.relative_to(self.folder).as_posix()] = _stat(p)
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
                    self._removed_vectors[int(self._rows.ids[j])] = self._rows.vectors[j].copy()
                index = self._live_index()
                if index is not None and dropped.size:
                    index.remove(dropped)
                self._removed.update(int(i) for i in dropped)
                self._rows.keep(mask)
                self._unsaved = min(self._unsaved, self._rows.n)
                for p in gone:
                    self._skipped.pop(p, None)
                self._exact = None
            self.total_files = len(current)

    def _append(self, relpaths: list[str], vectors: np.ndarray, skipped: list[SkippedFile],
                current: dict[str, tuple[int, int]]) -> None:
        """Add extracted rows (vectors (n, D), L2-normalised here, stored as float16) in memory."""
        new = np.asarray(vectors, np.float32)
        if new.shape[0]:
            new = l2n(new)
            new = _from_store(new.astype(STORE_DTYPE))  # what a reload gives, exactly
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
                index.add(new, ids, normalised=True)
                self._next_id += len(relpaths)
                self._unsaved += len(relpaths)
                self._exact = None
            for s in skipped:
                self._skipped[s.path] = s

    # --- committing ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self):
        """An exclusive lock on the state folder (POSIX flock) so that two processes committing the same
        collection do not interleave."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no cross-process lock
            yield
            return
        with open(self.state_dir / ".lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def commit(self, *, final: bool = True) -> None:
        """Write what changed since the last commit: the new rows as one segment (float16 vectors and
        their paths), a rebuilt graph when ``final`` and the thresholds ask for one, then the manifest
        (atomically, the switch), then delete files no longer named by this or the previous commit.

        The graph is built outside the collection's lock (searches meanwhile use the old graph and the
        exact part) and swapped in at the commit. Under the folder's lock, a commit refuses
        (ConcurrentChangeError) when another process committed since this object's state was read:
        that run's work would otherwise be lost. On an error (disk full...) the files of this commit
        are removed and the last commit stays as it was."""
        fresh = self._fresh_graph() if final else None
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
                if isinstance(exc, OSError):
                    raise CollectionError(
                        f"cannot save the collection of {self.folder} ({exc.strerror or exc}); the last "
                        f"commit ({self.generation or 'none'}) is kept and the next run continues from it"
                    ) from exc
                raise

    def _fresh_graph(self) -> HnswIndex | None:
        """A new HNSW index over the live rows when the current one's thresholds ask for a rebuild (or
        None). Called by the updating thread, the only one that changes rows, without the lock."""
        with self._lock:
            index = self._live_index()
            if not isinstance(index, HnswIndex) or not index.needs_rebuild():
                return None
            # the committed rows by reference, not a copy (1 GB less at 100k x 1280): rows are never
            # changed in place (appends go past them, removals make a new buffer)
            ids, vectors = self._rows.ids.copy(), self._rows.vectors
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
                    np.save(fh, rows.vectors[sl].astype(STORE_DTYPE), allow_pickle=False)

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
        previous = self._named_files()
        atomic_write_text(folder / MANIFEST, json.dumps(manifest))  # the switch
        written.clear()
        self._segments, self._graph_info, self._commit = segments, graph, number
        self._base_commit = number
        if isinstance(index, HnswIndex):
            self._graph_saved = (id(index), index.rebuilds)
        if not removed:
            self._removed_vectors = {}
        self._removed, self._unsaved = removed, 0
        self._settings_damaged = False
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
    def _live_index(self, create: bool = False) -> VectorIndex | None:
        """The vector index over the live rows (a saved graph is loaded on first use; a damaged one is
        rebuilt from the stored vectors). Call with ``self._lock`` held."""
        if self._index is None and self._graph_pending is not None and self._rows.n:
            info, self._graph_pending = self._graph_pending, None
            try:
                self._index = HnswIndex.restore(
                    self.state_dir, info, dim=self._rows.dim, metric="cosine", vectors_of=self._stored_vectors,
                    live_ids=self._rows.ids, live_vectors=self._rows.vectors, normalised=True)
                self._index.rebuild_on_query = False
                self._graph_saved = (id(self._index), self._index.rebuilds)
            except (IndexCorruptError, OSError, KeyError, ValueError) as exc:
                log.warning("%s: searching exactly until the graph is rebuilt from the stored vectors "
                            "(at the next update)", exc)
                self._index = None
        if self._index is None and (self._rows.n or create) and self._rows.dim is not None:
            # no graph (yet): every row is in the exact part; the next update's final commit builds it
            self._index = self._new_index(self._rows.dim)
            if self._rows.n:
                self._index.add(self._rows.vectors, self._rows.ids, normalised=True)
        self._graph_pending = None
        return self._index

    def _stored_vectors(self, ids: np.ndarray) -> np.ndarray:
        """Vectors of stored ids, live or removed-but-kept: (n, D); a view of the rows (no copy) when
        the ids are the first rows in order, as for a graph built before rows were added."""
        n = len(ids)
        if n <= self._rows.n and np.array_equal(self._rows.ids[:n], ids):
            return self._rows.vectors[:n]
        out = np.empty((len(ids), self._rows.dim), np.float32)
        rows = np.searchsorted(self._rows.ids, ids)
        rows = np.minimum(rows, max(self._rows.n - 1, 0))
        live = (self._rows.n > 0) & (self._rows.ids[rows] == ids) if self._rows.n else np.zeros(len(ids), bool)
        out[live] = self._rows.vectors[rows[live]]
        for j in np.flatnonzero(~live):
            v = self._removed_vectors.get(int(ids[j]))
            if v is None:
                raise IndexCorruptError(f"the graph names id {int(ids[j])}, which no segment holds")
            out[j] = v
        return out

    def _exact_index(self) -> VectorIndex:
        if self._exact is None:
            ex = make_index("exact", "cosine", dim=self.vectors.shape[1])
            ex.add(self.vectors, self._rows.ids, normalised=True)
            self._exact = ex
        return self._exact

    def vectors_for_ids(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors (n, D) of index ids (n,)."""
        rows = np.searchsorted(self._rows.ids, ids)  # ids are increasing along the rows
        return self.vectors[rows]

    # --- searching --------------------------------------------------------------------------------
    def search_many(self, queries: np.ndarray, options: SearchOptions | None = None) -> list[list[SearchHit]]:
        """Search (Q, D) query vectors; per query a ranked list of hits (from the rows indexed so far)."""
        options = options or SearchOptions()
        with self._lock:
            index = self._live_index()
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
            for ids, scores in results:
                rows = np.searchsorted(self._rows.ids, ids)
                paths = self._rows.paths
                out.append([SearchHit(str(self.folder / paths[r]), paths[r], float(s), rank + 1, label_of(paths[r]))
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
    with the absolute paths to read, yielding engine.extraction.ExtractedBatch whose ``vectors`` are
    keyed by the pair's position in ``pairs`` (the models, still given, are then not run here)."""
    if not pairs:
        return []
    collections = [c for c, _ in pairs]
    _compatible(collections)
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
    needs_commit = [bool(t) or bool(r.removed) or not c.is_saved for c, t, r in zip(collections, todos, reports,
                                                                                       strict=True)]
    if union:
        import torch

        if any(m is None for _, m in pairs):
            raise ValueError("the folder has changed: update needs a descriptor model (engine.extraction.build_model)")
        from engine.extraction import (
            _describe,
            _input_spec,
            feature_fn,
            feature_maps,
            input_sizes,
            iter_extract,
        )

        first_model = pairs[0][1]
        models = [m.to(device).eval() for _, m in pairs]
        # DescriptorModels share one backbone pass; any other model ((B, 3, S, S) -> (B, D)) runs whole
        shared = all(hasattr(m, "describe") and hasattr(m, "backbone") for m in models)
        run = feature_fn(first_model.backbone, features) if shared else None
        wanted = [np.array([p in t for p in union], bool) for t in todos]
        size, mean, std = _input_spec(first_model, collections[0].model_spec.image_size)
        sizes = input_sizes(size)  # several: a multi-scale model (ModelSpec.scales), a map per size

        def compute(x: Any) -> dict[int, torch.Tensor]:
            if run is None:
                return {i: m(x) for i, m in enumerate(models)}
            fmaps = feature_maps(run, sizes, x)
            return {i: _describe(m, fmaps) for i, m in enumerate(models)}

        last_commit = time.monotonic()
        since = [0] * len(collections)
        pos = {p: j for j, p in enumerate(union)}
        total = len(union)
        report_progress(0, total, "extracting")
        files = [collections[0].folder / p for p in union]
        batches = extract(files) if extract is not None else iter_extract(
            files, compute, image_size=size, mean=mean, std=std,
            crop_fraction=collections[0].model_spec.crop_fraction, batch_size=batch_size,
            num_workers=num_workers, decode_threads=decode_threads, device=device)
        for batch in batches:
            rel = [Path(p).relative_to(collections[0].folder).as_posix() for p in batch.paths]
            bad = [(Path(s.path).relative_to(collections[0].folder).as_posix(), s.reason) for s in batch.skipped]
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
        # the graph of the first descriptor (the one asked for) is built now; the others' are built when
        # they are asked for first (until then their rows are searched exactly: tens of ms at 100k)
        if not reports[i].cancelled and (needs_commit[i] or _has_uncommitted(c, graph=i == 0)):
            report_progress(len(union), len(union), "updating the search index and saving")
            c.commit(final=i == 0)
            reports[i].saved = True
        reports[i].total = len(c)
        reports[i].seconds = time.perf_counter() - start
    return reports


def _has_uncommitted(c: Collection, graph: bool = True) -> bool:
    """True when ``c`` holds rows or removals not yet committed, or (``graph``) its graph is due for a
    rebuild."""
    if c._unsaved or c._settings_damaged:
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
