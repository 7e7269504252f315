"""Collections: a folder of images, its descriptors and its index, kept in a cache and updated
incrementally.

A collection is one image folder (searched recursively) seen through one model: backbone, weights,
descriptor, whitening, image size and crop (a :class:`ModelSpec`). Its state — the L2-normalised
vectors, the relative paths with file size and mtime, the files that failed to load (with reasons),
and the vector index — lives in a cache folder::

    <cache_root>/collections/<sha1 of the folder's absolute path>/<model key>/
        CURRENT              {"generation": "gen-000007"}   (switched atomically, last)
        gen-000007/
            state.json       format version, model identity, paths, skipped files, ...
            arrays.npz       vectors (N, D) float32, ids, sizes, mtimes
            index/           the VectorIndex (its own manifest)
            manifest.json    sizes and SHA-256 of the files above (written last)

- :meth:`Collection.open` only loads the saved state (instant; no image is read).
- :meth:`Collection.scan` compares the folder with the state by file size and mtime.
- :meth:`Collection.update` extracts only added and changed files, drops removed ones, updates the
  index in place (HNSW: see engine.index) and saves a NEW generation; ``CURRENT`` is switched only when
  it is completely written, then older generations are deleted. A crash, a kill or a cancel at any
  moment leaves the previous state loadable.
- A damaged cache (missing or truncated files, bad manifest) or a mismatched one (other format version,
  other model identity) raises :class:`CollectionError`, whose message says what to do; it is never
  silently used. ``Collection.open(..., rebuild=True)`` ignores the old state (it is replaced at the
  next successful update).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.atomic import atomic_write_text, fsync_dir, fsync_file, sha256_file
from engine.callbacks import ProgressFn, ShouldStopFn
from engine.index import IndexCorruptError, VectorIndex, load_index, make_index
from engine.search import SearchOptions, search_vectors

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
APP_NAME = "retrieval-explorer"
CURRENT = "CURRENT"
_GEN_RE = re.compile(r"^gen-(\d{6,})$")


class CollectionError(RuntimeError):
    """A collection cache that cannot be used (damaged, incomplete, another format or another model),
    or a collection that cannot answer yet. The message says what happened and what to do."""


# --- model identity ------------------------------------------------------------------------------
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file (cached per path, size and mtime within the process)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        _HASH_CACHE[key] = sha256_file(p)
    return _HASH_CACHE[key]


def _file_identity(value: str, what: str) -> str:
    p = Path(value).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{what} file not found: {value}")
    return "sha256:" + file_sha256(p)


@dataclass(frozen=True)
class ModelSpec:
    """What turns an image into a vector. ``backbone``: a name from models.backbones or a trained
    checkpoint file; ``weights``: 'pretrained', 'random' or a weights file; ``descriptor``: fc, spoc,
    rmac, mac, gem; ``image_size``: None = the backbone's default; ``whitening``: a saved
    PCAWhitening file or None; ``crop_fraction``: centre-crop share (1.0 = whole image)."""

    backbone: str = "efficientnet_lite0"
    weights: str = "pretrained"
    descriptor: str = "spoc"
    image_size: int | None = None
    whitening: str | None = None
    crop_fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.image_size is not None and (not isinstance(self.image_size, int) or self.image_size < 16):
            raise ValueError(f"image_size must be an integer >= 16 or None, got {self.image_size!r}")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must be in (0, 1], got {self.crop_fraction!r}")

    def identity(self) -> dict[str, Any]:
        """What a saved state must match: names, plus content hashes of every file involved."""
        backbone = self.backbone
        if backbone.endswith(".pt") or Path(backbone).expanduser().is_file():
            backbone = "checkpoint:" + _file_identity(backbone, "backbone checkpoint")
        weights = self.weights
        if weights not in ("pretrained", "random"):
            weights = _file_identity(weights, "weights")
        whitening = _file_identity(self.whitening, "whitening") if self.whitening else None
        return {"backbone": backbone, "weights": weights, "descriptor": self.descriptor,
                "image_size": self.image_size, "whitening": whitening, "crop_fraction": float(self.crop_fraction)}

    def key(self) -> str:
        """A stable folder name: readable prefix + hash of :meth:`identity`."""
        ident = self.identity()
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
        name = Path(self.backbone).stem if ident["backbone"].startswith("checkpoint:") else self.backbone
        readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{name}-{self.descriptor}-{self.image_size or 'default'}")
        return f"{readable}-{digest}"

    def build(self, device: str = "cpu") -> Any:
        """The descriptor model (models.descriptors.DescriptorModel) on ``device``, in eval mode."""
        from models.backbones import get_backbone
        from models.descriptors import build_descriptor

        backbone = get_backbone(self.backbone, weights=self.weights, device=device)
        whitening = None
        if self.whitening:
            from models.whitening import PCAWhitening

            whitening = PCAWhitening.load(self.whitening)
        return build_descriptor(self.descriptor, backbone, whitening=whitening).to(device).eval()


def default_cache_dir() -> Path:
    """platformdirs' user cache folder for the application."""
    import platformdirs

    return Path(platformdirs.user_cache_dir(APP_NAME))


def collection_dir(folder: str | os.PathLike, model_spec: ModelSpec, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the state of ``folder`` seen through ``model_spec`` lives."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
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
    """What an update did. ``extracted``: images run through the model; ``skipped``: files of this
    update that failed (see Collection.skipped for all); ``total``: vectors in the collection after."""

    added: int = 0
    changed: int = 0
    removed: int = 0
    skipped: list[SkippedFile] = field(default_factory=list)
    extracted: int = 0
    total: int = 0
    seconds: float = 0.0
    cancelled: bool = False
    saved: bool = False


@dataclass
class SearchHit:
    """One result: ``path`` absolute, ``relpath`` relative to the collection folder, ``rank`` from 1."""

    path: str
    relpath: str
    score: float
    rank: int
    label: str | None


# --- the collection ------------------------------------------------------------------------------
def _label_of(relpath: str) -> str | None:
    parts = relpath.split("/")
    return parts[-2] if len(parts) > 1 else None


def _stat(p: Path) -> tuple[int, int]:
    st = p.stat()
    return int(st.st_size), int(st.st_mtime_ns)


def _fsync_tree(folder: Path) -> None:
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            fsync_file(p)
    fsync_dir(folder)


class Collection:
    """An image folder with its descriptors and index; see the module docstring.

    Attributes: ``folder`` (absolute), ``model_spec``, ``state_dir`` (the cache folder of this pair).
    """

    def __init__(self, folder: Path, model_spec: ModelSpec, state_dir: Path, *, index_kind: str = "hnsw",
                 index_params: dict[str, Any] | None = None) -> None:
        self.folder = folder
        self.model_spec = model_spec
        self.state_dir = state_dir
        self.index_kind = index_kind
        self.index_params = dict(index_params or {})
        if index_kind == "hnsw":
            self.index_params.setdefault("threads", max(1, min(8, os.cpu_count() or 1)))
        self._identity = model_spec.identity()
        self._reset()

    def _reset(self) -> None:
        self._paths: list[str] = []
        self._ids = np.zeros(0, np.int64)
        self._sizes = np.zeros(0, np.int64)
        self._mtimes = np.zeros(0, np.int64)
        self._vectors: np.ndarray | None = None
        self._skipped: dict[str, SkippedFile] = {}
        self._next_id = 0
        self._index: VectorIndex | None = None
        self._exact: VectorIndex | None = None
        self.generation: str | None = None

    # --- opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, folder: str | os.PathLike, *, model_spec: ModelSpec, cache_dir: str | os.PathLike | None = None,
             rebuild: bool = False, index: str = "hnsw", index_params: dict[str, Any] | None = None,
             verify: bool = True) -> Collection:
        """Open ``folder`` seen through ``model_spec``: load its saved state if there is one (no image is
        read), else an empty collection that :meth:`update` fills. ``rebuild=True`` ignores the saved
        state (replaced at the next successful update). ``index``/``index_params`` are used when an index
        is first made (engine.index.make_index). ``verify`` checks the files' checksums.
        Raises CollectionError for a damaged or mismatched cache, FileNotFoundError for a missing folder."""
        root = Path(folder).expanduser().resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {folder}")
        state_dir = collection_dir(root, model_spec, cache_dir)
        c = cls(root, model_spec, state_dir, index_kind=index, index_params=index_params)
        if not rebuild and (state_dir / CURRENT).exists():
            c._load(verify=verify)
        return c

    def _fix(self) -> str:
        return (f"delete {self.state_dir} or run `retrieval-explorer index {self.folder} --rebuild` "
                "to index the folder again")

    def _load(self, verify: bool = True) -> None:
        fix = self._fix()
        try:
            pointer = json.loads((self.state_dir / CURRENT).read_text(encoding="utf-8"))
            gen = pointer["generation"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CollectionError(f"the collection cache {self.state_dir} is damaged (unreadable {CURRENT}: "
                                  f"{exc}); {fix}") from exc
        if not isinstance(gen, str) or not _GEN_RE.match(gen):
            raise CollectionError(f"the collection cache {self.state_dir} is damaged (bad generation "
                                  f"{gen!r}); {fix}")
        gdir = self.state_dir / gen
        try:
            manifest = json.loads((gdir / "manifest.json").read_text(encoding="utf-8"))
            files = manifest["files"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CollectionError(f"the collection cache {gdir} is damaged or incomplete (manifest: {exc}); "
                                  f"{fix}") from exc
        for name, info in files.items():
            p = gdir / name
            if not p.is_file():
                raise CollectionError(f"the collection cache {gdir} is incomplete: {name} is missing; {fix}")
            if p.stat().st_size != info["size"]:
                raise CollectionError(f"the collection file {p} is truncated or damaged; {fix}")
            if verify and sha256_file(p) != info["sha256"]:
                raise CollectionError(f"the collection file {p} is damaged (checksum mismatch); {fix}")
        try:
            state = json.loads((gdir / "state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CollectionError(f"the collection state {gdir / 'state.json'} is damaged ({exc}); {fix}") from exc
        version = state.get("format_version")
        if version != FORMAT_VERSION:
            raise CollectionError(f"the collection cache {self.state_dir} has format version {version}, this "
                                  f"program uses {FORMAT_VERSION}; {fix}")
        if state.get("identity") != self._identity:
            raise CollectionError(f"the collection cache {self.state_dir} was made with another model or "
                                  f"descriptor ({state.get('identity')}, expected {self._identity}); {fix}")
        try:
            with np.load(gdir / "arrays.npz", allow_pickle=False) as z:
                vectors, ids = z["vectors"], z["ids"].astype(np.int64)
                sizes, mtimes = z["sizes"].astype(np.int64), z["mtimes"].astype(np.int64)
            paths = list(state["paths"])
            skipped = {s["path"]: SkippedFile(**s) for s in state["skipped"]}
            next_id = int(state["next_id"])
            index_kind, index_params = state["index_kind"], dict(state["index_params"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CollectionError(f"the collection data in {gdir} is damaged ({exc}); {fix}") from exc
        n = len(paths)
        if not (ids.shape == sizes.shape == mtimes.shape == (n,)) or vectors.ndim != 2 or vectors.shape[0] != n:
            raise CollectionError(f"the collection data in {gdir} is inconsistent; {fix}")
        index = None
        if (gdir / "index").exists():
            try:
                index = load_index(gdir / "index", verify=verify)
            except IndexCorruptError as exc:
                raise CollectionError(f"the index of the collection is damaged ({exc}); {fix}") from exc
            if len(index) != n or index.dim != vectors.shape[1]:
                raise CollectionError(f"the index in {gdir} does not match its vectors; {fix}")
        elif n:
            raise CollectionError(f"the collection cache {gdir} has vectors but no index; {fix}")
        self._paths, self._ids, self._sizes, self._mtimes = paths, ids, sizes, mtimes
        self._vectors = vectors.astype(np.float32, copy=False) if n or vectors.shape[1] else None
        self._skipped, self._next_id = skipped, next_id
        self.index_kind, self.index_params = index_kind, index_params
        self._index, self._exact = index, None
        self.generation = gen

    # --- properties -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._paths)

    @property
    def paths(self) -> list[str]:
        """Absolute paths, row i for ``vectors[i]``."""
        return [str(self.folder / p) for p in self._paths]

    @property
    def relpaths(self) -> list[str]:
        """Paths relative to the folder (POSIX separators)."""
        return list(self._paths)

    @property
    def labels(self) -> list[str | None]:
        """The sub-folder name of each image (None for files directly in the folder)."""
        return [_label_of(p) for p in self._paths]

    @property
    def vectors(self) -> np.ndarray:
        """(N, D) float32 L2-normalised descriptors ((0, 0) before the first update)."""
        return self._vectors if self._vectors is not None else np.zeros((0, 0), np.float32)

    @property
    def dim(self) -> int | None:
        return None if self._vectors is None else int(self._vectors.shape[1])

    @property
    def skipped(self) -> list[SkippedFile]:
        """Files that failed to load, with reasons (retried when they change)."""
        return list(self._skipped.values())

    @property
    def index(self) -> VectorIndex | None:
        return self._index

    @property
    def is_saved(self) -> bool:
        """True once a state has been saved (or loaded)."""
        return self.generation is not None

    # --- scanning and updating --------------------------------------------------------------------
    def _scan_stats(self) -> dict[str, tuple[int, int]]:
        from engine.images import scan_images

        out = {}
        for p in scan_images(self.folder):
            with contextlib.suppress(OSError):  # vanished between listing and stat
                out[p.relative_to(self.folder).as_posix()] = _stat(p)
        return out

    def _diff(self, current: dict[str, tuple[int, int]]) -> ChangeSet:
        known: dict[str, tuple[int, int]] = {
            p: (int(s), int(m)) for p, s, m in zip(self._paths, self._sizes, self._mtimes, strict=True)}
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

    def update(self, descriptor_model: Any, *, device: str = "cpu", batch_size: int = 32, num_workers: int = 0,
               progress: ProgressFn | None = None, should_stop: ShouldStopFn | None = None) -> UpdateReport:
        """Bring the collection up to date with its folder: extract only added and changed files with
        ``descriptor_model`` ((B, 3, S, S) -> (B, D), see engine.extraction), drop removed ones, update
        the index and save a new generation. Cancelled (``should_stop``) -> nothing is changed, in memory
        or on disk, and ``report.cancelled`` is True. Failed files go to :attr:`skipped`."""
        start = time.perf_counter()
        current = self._scan_stats()
        changes = self._diff(current)
        report = UpdateReport(len(changes.added), len(changes.changed), len(changes.removed))
        if not changes and self.is_saved:
            report.total, report.seconds = len(self), time.perf_counter() - start
            return report
        from engine.extraction import extract_descriptors  # torch: only when there is work

        if descriptor_model is None:
            raise ValueError("the folder has changed: update() needs a descriptor model (ModelSpec.build())")
        todo = changes.added + changes.changed
        result = extract_descriptors(
            descriptor_model, [self.folder / p for p in todo], image_size=self.model_spec.image_size,
            crop_fraction=self.model_spec.crop_fraction, batch_size=batch_size, num_workers=num_workers,
            device=device, progress=progress, should_stop=should_stop)
        report.extracted = len(result.paths) + len(result.skipped)
        if result.cancelled:
            report.cancelled, report.total = True, len(self)
            report.seconds = time.perf_counter() - start
            return report
        new = result.vectors.astype(np.float32, copy=False)
        if new.size:  # the contract says L2-normalised; make sure (search and QE rely on it)
            new = new / np.maximum(np.linalg.norm(new, axis=1, keepdims=True), 1e-12)
        if new.shape[0] and self._vectors is not None and new.shape[1] != self._vectors.shape[1]:
            raise CollectionError(f"the model gives {new.shape[1]}-d vectors but the collection holds "
                                  f"{self._vectors.shape[1]}-d ones; {self._fix()}")
        rel = {str(self.folder / p): p for p in todo}
        new_paths = [rel[str(Path(p))] for p in result.paths]
        report.skipped = [SkippedFile(rel[str(Path(s.path))], s.reason, *current[rel[str(Path(s.path))]])
                          for s in result.skipped]
        try:
            self._apply(changes, new_paths, new, report.skipped, current)
            if progress is not None:
                progress(len(todo), len(todo), "updating the search index and saving")
            self._save()
        except BaseException:
            self._recover()
            raise
        report.total, report.saved = len(self), True
        report.seconds = time.perf_counter() - start
        return report

    def _apply(self, changes: ChangeSet, new_paths: list[str], new: np.ndarray, skipped: list[SkippedFile],
               current: dict[str, tuple[int, int]]) -> None:
        """Replace the rows of removed/changed files by the new rows, in memory, index included."""
        gone = set(changes.removed) | set(changes.changed)
        keep = np.array([p not in gone for p in self._paths], bool)
        drop_ids = self._ids[~keep]
        new_ids = np.arange(self._next_id, self._next_id + len(new_paths), dtype=np.int64)
        if self._vectors is None and new.shape[0]:
            self._vectors = np.zeros((0, new.shape[1]), np.float32)
        if self._index is None and self._vectors is not None:
            self._index = make_index(self.index_kind, "cosine", dim=self._vectors.shape[1], **self.index_params)
        if self._index is not None:
            if drop_ids.size:
                self._index.remove(drop_ids)
            if new_ids.size:
                self._index.add(new, new_ids)
        self._paths = [p for p, k in zip(self._paths, keep, strict=True) if k] + new_paths
        self._ids = np.concatenate([self._ids[keep], new_ids])
        self._sizes = np.concatenate([self._sizes[keep], np.array([current[p][0] for p in new_paths], np.int64)])
        self._mtimes = np.concatenate([self._mtimes[keep], np.array([current[p][1] for p in new_paths], np.int64)])
        if self._vectors is not None:
            self._vectors = np.concatenate([self._vectors[keep], new.reshape(-1, self._vectors.shape[1])])
        self._next_id += len(new_paths)
        for p in gone:
            self._skipped.pop(p, None)
        for s in skipped:
            self._skipped[s.path] = s
        self._exact = None

    def _recover(self) -> None:
        """After a failed update: back to the saved state (or empty when there is none)."""
        identity = self._identity
        self._reset()
        self._identity = identity
        if (self.state_dir / CURRENT).exists():
            with contextlib.suppress(CollectionError):
                self._load(verify=False)

    # --- saving -----------------------------------------------------------------------------------
    def _generations(self) -> list[int]:
        if not self.state_dir.is_dir():
            return []
        out = []
        for p in self.state_dir.iterdir():
            m = _GEN_RE.match(p.name)
            if m:
                out.append(int(m.group(1)))
        return out

    @contextlib.contextmanager
    def _locked(self):
        """An exclusive lock on the state folder (POSIX flock) so that two processes saving the same
        collection do not pick the same generation or delete each other's folder mid-write."""
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

    def _save(self) -> None:
        with self._locked():
            self._save_locked()

    def _save_locked(self) -> None:
        """Write a new generation folder completely, then switch CURRENT to it, then delete the others."""
        meta = self.state_dir.parent / "folder.txt"
        if not meta.exists():
            atomic_write_text(meta, str(self.folder) + "\n")
        gen = f"gen-{max(self._generations(), default=0) + 1:06d}"
        gdir = self.state_dir / gen
        if gdir.exists():
            shutil.rmtree(gdir)
        gdir.mkdir()
        vectors = self._vectors if self._vectors is not None else np.zeros((0, 0), np.float32)
        with open(gdir / "arrays.npz", "wb") as fh:
            np.savez(fh, vectors=vectors, ids=self._ids, sizes=self._sizes, mtimes=self._mtimes)
        state = {
            "format": "retrieval-explorer-collection",
            "format_version": FORMAT_VERSION,
            "identity": self._identity,
            "model_spec": asdict(self.model_spec),
            "folder": str(self.folder),
            "count": len(self),
            "dim": self.dim,
            "next_id": self._next_id,
            "index_kind": self.index_kind,
            "index_params": self.index_params,
            "paths": self._paths,
            "skipped": [asdict(s) for s in self._skipped.values()],
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (gdir / "state.json").write_text(json.dumps(state), encoding="utf-8")
        files = ["arrays.npz", "state.json"]
        if self._index is not None:
            self._index.save(gdir / "index")
        _fsync_tree(gdir)
        manifest = {"files": {n: {"size": (gdir / n).stat().st_size, "sha256": sha256_file(gdir / n)} for n in files}}
        atomic_write_text(gdir / "manifest.json", json.dumps(manifest, indent=1))
        atomic_write_text(self.state_dir / CURRENT, json.dumps({"generation": gen}))  # the switch
        self.generation = gen
        for p in self.state_dir.iterdir():  # older generations and leftovers of crashed saves
            if p.name != gen and p.is_dir() and p.name.startswith("gen-"):
                shutil.rmtree(p, ignore_errors=True)

    # --- searching --------------------------------------------------------------------------------
    def _exact_index(self) -> VectorIndex:
        if self._exact is None:
            ex = make_index("exact", "cosine", dim=self.vectors.shape[1])
            ex.add(self.vectors, self._ids)
            self._exact = ex
        return self._exact

    def vectors_for_ids(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors (n, D) of index ids (n,)."""
        rows = np.searchsorted(self._ids, ids)  # ids are increasing along the rows
        return self.vectors[rows]

    def search_many(self, queries: np.ndarray, options: SearchOptions | None = None) -> list[list[SearchHit]]:
        """Search (Q, D) query vectors; per query a ranked list of hits."""
        options = options or SearchOptions()
        if self._index is None or len(self) == 0:
            raise CollectionError(f"the collection of {self.folder} has no indexed image yet; run "
                                  f"`retrieval-explorer index {self.folder}` (or update it) first")
        q = np.asarray(queries, np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query vectors must have shape (Q, {self.dim}), got {tuple(np.shape(queries))}")
        results = search_vectors(q, options, index=self._index,
                                 exact_index=self._exact_index() if options.exact else None,
                                 fetch_vectors=self.vectors_for_ids)
        out = []
        for ids, scores in results:
            rows = np.searchsorted(self._ids, ids)
            out.append([SearchHit(str(self.folder / self._paths[r]), self._paths[r], float(s), rank + 1,
                                  _label_of(self._paths[r]))
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


def evaluate_collection(collection: Collection, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, Any]:
    """Leave-one-out retrieval figures on a collection whose images sit in class sub-folders:
    ``recall@K``, ``map``, ``map_excluded``, ``n`` (from engine.evaluation.evaluate) plus ``classes`` and
    ``unlabelled`` (images directly in the folder, left out)."""
    from engine.evaluation import evaluate

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
