"""The session the window and the command line share: models, a folder's collections, search, comparison,
activations.

Nothing here imports Qt: every function that takes time is a plain function (the window runs it with
``retrieval_gui.workers.start_task`` on a worker thread, the CLI calls it directly). What computes a
vector is an :class:`engine.vocabulary.ModelSpec`; results are :class:`engine.vocabulary.SearchHit`;
options are :class:`engine.search.SearchOptions`.

- :class:`ModelCache` builds descriptor models once per (spec, device), shares backbones between
  descriptors, and keeps one feature-map runner (engine.runtime) per backbone (thread-safe).
- :class:`FolderIndex` is one image folder with its per-spec collections in a cache dir: ``collection``
  opens one (instant), ``update`` extracts what is missing (incrementally, cancellable), ``search_vector``
  ranks it for a vector.
- :func:`run_query` describes a query image and searches; :func:`ensure_and_query` updates first (the
  comparison's second side); :func:`overlap_at_k` compares two rankings.
- :func:`compute_activations` runs forward hooks on a chosen layer and explains an R-MAC score as a sum
  over regions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from engine.callbacks import ProgressFn, ShouldStopFn, resolve
from engine.collection import Collection, CollectionError, ConcurrentChangeError, update_collections
from engine.images import Box, label_of, load_image
from engine.search import SearchOptions
from engine.training.registry import list_trained_models
from engine.vocabulary import (
    BACKBONES,
    DESCRIPTOR_TITLES,
    DESCRIPTORS,
    ModelSpec,
    SearchHit,
    cache_root,
    default_runtime,
)

log = logging.getLogger(__name__)


def demo_collection() -> Path:
    """The demo collection shipped in resources/demo (CC0)."""
    return Path(__file__).resolve().parent.parent / "resources" / "demo"


def preload() -> None:
    """Import torch, torchvision and the model/engine modules now (on the calling thread).

    Importing them later inside a worker would hold the GIL for seconds at a time (extension
    initialisation), freezing the GUI thread; the window calls this before it is shown.
    """
    import torch  # noqa: F401
    import torchvision  # noqa: F401

    import engine.extraction  # noqa: F401
    import models.descriptors  # noqa: F401
    import models.registry  # noqa: F401


def list_backbones() -> list[str]:
    """Backbone names of the model registry (models.names.BACKBONES)."""
    return list(BACKBONES)


def list_descriptors() -> list[str]:
    """Descriptor kinds of models.descriptors (fc, spoc, rmac, mac, gem)."""
    return list(DESCRIPTORS)


def list_trained() -> list[tuple[str, str]]:
    """(display name, checkpoint path) of every trained model; [] when none or unreadable."""
    try:
        return [(f"trained: {m.title}", m.path) for m in list_trained_models()]
    except Exception as exc:  # a broken models folder must not stop the window from opening
        log.warning("cannot list trained models: %s", exc)
        return []


def model_title(backbone: str) -> str:
    """A short display name: a checkpoint path shows as its folder name."""
    p = Path(backbone)
    if p.suffix == ".pt":
        return f"trained: {p.parent.name}"
    return backbone


# ---------------------------------------------------------------------------------------------
# models

class ModelCache:
    """Descriptor models built once and shared; thread-safe. Backbones are shared across descriptors.

    ``runtime``: what runs the backbone on the CPU for :meth:`features` (engine.runtime; default
    :func:`default_runtime`); ``cache_dir``: where exported runtimes are kept (default
    :func:`cache_root`)."""

    def __init__(self, device: str = "cpu", threads: int | None = None, runtime: str | None = None,
                 cache_dir: str | os.PathLike | None = None) -> None:
        self.device = device
        self.runtime = runtime or default_runtime()
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._lock = threading.Lock()
        self._backbones: dict[tuple, Any] = {}
        self._descriptors: dict[tuple, Any] = {}
        self._runners: dict[tuple, Any] = {}  # feature-map runners (engine.runtime), one per backbone
        self._threads = int(threads) if threads else None  # applied when torch is first needed

    def _apply_threads(self) -> None:
        with self._lock:
            threads, self._threads = self._threads, None
        if threads:
            import torch

            torch.set_num_threads(threads)

    def backbone(self, spec: ModelSpec):
        """The spec's Backbone (eval mode, on the cache's device), shared by every descriptor of it."""
        k = (spec.backbone, spec.weights, self.device)
        with self._lock:
            bb = self._backbones.get(k)
        if bb is None:
            self.get(spec)  # building the descriptor model loads its backbone
            with self._lock:
                bb = self._backbones.get(k)
        if bb is None:  # a model without a separate backbone
            from models.registry import get_backbone

            with _seeded(spec):
                bb = get_backbone(spec.backbone, weights=spec.weights, device=self.device)
            with self._lock:
                bb = self._backbones.setdefault(k, bb)
        return bb

    def get(self, spec: ModelSpec):
        """The DescriptorModel for ``spec`` (eval mode, on the cache's device)."""
        k = (spec, self.device)
        with self._lock:
            model = self._descriptors.get(k)
        if model is not None:
            return model
        self._apply_threads()
        bk = (spec.backbone, spec.weights, self.device)
        with self._lock:
            bb = self._backbones.get(bk)
        model = _build(spec, self.device, bb)  # a first model loads the backbone the others share
        with self._lock:
            if bb is None and getattr(model, "backbone", None) is not None:
                self._backbones.setdefault(bk, model.backbone)
            return self._descriptors.setdefault(k, model)

    def features(self, spec: ModelSpec, runtime: str | None = None):
        """The feature-map runner of ``spec``'s backbone (engine.runtime.feature_runner: an exported CPU
        runtime when one is installed and agrees with PyTorch, the check remembered per export; else
        PyTorch), built once per backbone and runtime; ``runtime`` None: the cache's own."""
        from engine.runtime import feature_runner

        bb = self.backbone(spec)
        runtime = runtime or self.runtime
        k = (spec.backbone, spec.weights, spec.image_size, runtime, self.device)
        with self._lock:
            runner = self._runners.get(k)
        if runner is not None:
            return runner
        rt = runtime if self.device == "cpu" else "torch"
        runner = feature_runner(bb, self.image_size(spec), spec.backbone_identity(), self.cache_dir or cache_root(),
                                rt)
        with self._lock:
            return self._runners.setdefault(k, runner)

    def cached(self, spec: ModelSpec) -> bool:
        """Whether ``spec``'s model is built already (no waiting on a load)."""
        with self._lock:
            return (spec, self.device) in self._descriptors

    def image_size(self, spec: ModelSpec) -> int:
        """The network input side S for ``spec`` (its image_size, else the backbone's default)."""
        return int(spec.image_size or getattr(self.backbone(spec), "default_image_size", 224))

    def transform(self, spec: ModelSpec):
        """PIL image -> (3, S, S) tensor as indexing prepares it (engine.images.build_transform)."""
        from engine.extraction import IMAGENET_MEAN, IMAGENET_STD
        from engine.images import build_transform

        bb = self.backbone(spec)
        return build_transform(self.image_size(spec), getattr(bb, "mean", IMAGENET_MEAN),
                               getattr(bb, "std", IMAGENET_STD), spec.crop_fraction)


@contextlib.contextmanager
def _seeded(spec: ModelSpec) -> Iterator[None]:
    """For random weights, torch's generator seeded (and restored after): the same weights in every process,
    so that the identity naming them (an exported runtime and its check are kept by identity) names one set."""
    if spec.weights != "random":
        yield
        return
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def _build(spec: ModelSpec, device: str, backbone: Any):
    """engine.extraction.build_model on ``backbone`` (None: a new one, random weights drawn by :func:`_seeded`)."""
    from engine.extraction import build_model

    if backbone is not None:
        return build_model(spec, device, backbone=backbone)
    with _seeded(spec):
        return build_model(spec, device)


def embed_images(model_cache: ModelCache, spec: ModelSpec, paths: Sequence[str | os.PathLike],
                 runtime: str | None = None, boxes: Sequence[Box | None] | None = None) -> np.ndarray:
    """Descriptors (N, D) float32 (L2-normalised by the model) of image files, through the path indexing
    takes (engine.extraction.extract_multi: each file decoded at the size the network needs, the backbone on
    :meth:`ModelCache.features`, then the descriptor head). ``runtime``: what runs the backbone (None: the
    cache's own, "auto" by default); ``boxes`` (one per path, None or an engine.images.Box): describe that
    region of the file alone (a region query). Raises engine.images.ImageLoadError for a file that cannot be
    used (or whose box lies outside it)."""
    from engine.extraction import extract_descriptors, extract_multi
    from engine.images import ImageLoadError

    model = model_cache.get(spec)
    paths = [str(p) for p in paths]
    common: dict[str, Any] = dict(batch_size=max(1, len(paths)), device=model_cache.device,
                                  crop_fraction=spec.crop_fraction, boxes=boxes)
    if hasattr(model, "describe") and hasattr(model, "backbone"):
        features = (scale_features(model_cache, spec, runtime) if spec.scales
                    else model_cache.features(spec, runtime))
        res = extract_multi(model.backbone, {"v": model}, paths, features=features,
                            image_size=spec.scales or model_cache.image_size(spec), **common)["v"]
    else:  # a model without a separate head runs whole, in PyTorch
        res = extract_descriptors(model, paths, image_size=model_cache.image_size(spec), **common)
    if res.skipped:
        raise ImageLoadError(res.skipped[0].path, res.skipped[0].reason)
    return res.vectors


def scale_features(model_cache: ModelCache, spec: ModelSpec, runtime: str | None) -> dict[int, Any]:
    """The feature-map runners of a multi-scale ``spec``, one per input size (engine.extraction.feature_fn)."""
    return {s: model_cache.features(replace(spec, scales=None, image_size=s), runtime) for s in spec.scales}


# ---------------------------------------------------------------------------------------------
# a folder and its vectors
@dataclass
class SearchResult:
    """A query's ranking under ``spec``: hits best first (``rank`` from 1), the query vector (D,)."""

    spec: ModelSpec
    query: str
    query_label: str | None
    hits: list[SearchHit]
    vector: np.ndarray
    seconds: float
    method: str
    options: SearchOptions = field(default_factory=SearchOptions)
    #: images of the query's label among those searched (the query itself left out); None: unknown
    relevant: int | None = None
    #: the search alone (the index lookup, without describing the query image)
    search_seconds: float = 0.0
    #: the region of the query image searched with (pixels of the image as shown); None: the whole image
    box: Box | None = None

    def precision(self) -> float | None:
        """precision@k over the labelled hits; None when the query or hits have no label."""
        if self.query_label is None:
            return None
        known = [h.label == self.query_label for h in self.hits if h.label is not None]
        return sum(known) / len(known) if known else None

    def best_precision(self) -> float | None:
        """The highest precision@k any ranking could reach here: with fewer images of the query's label
        than labelled hits (a class of 7 images has 6 others to find), a perfect ranking scores below 1."""
        if self.query_label is None or self.relevant is None:
            return None
        n = sum(h.label is not None for h in self.hits)
        return min(self.relevant, n) / n if n else None


@dataclass
class IndexState:
    """What :meth:`FolderIndex.update` did."""

    spec: ModelSpec
    total: int
    indexed: int
    added: int
    removed: int
    skipped: list[tuple[str, str]]
    cancelled: bool
    seconds: float


def describe_options(options: SearchOptions) -> str:
    """'exact', 'HNSW', 'exact + QE5' (average QE over 5), 'HNSW + alpha-QE5'."""
    method = "exact" if options.exact else "HNSW"
    if options.query_expansion == "average":
        method += f" + QE{options.qe_top}"
    elif options.query_expansion == "alpha":
        method += f" + alpha-QE{options.qe_top}"
    return method


class FolderIndex:
    r"""An image folder and its per-:class:`ModelSpec` :class:`engine.collection.Collection`\ s.

    Collections are opened lazily (on the worker that first needs them); every method is thread-safe
    (one lock per spec: a search waits while the same spec is being written). ``rebuild_damaged``: a
    damaged cache is indexed again (a note in ``notes`` says so) instead of raising CollectionError.
    ``load_graphs=False``: a process that searches once (the `search` command) searches exactly and never
    loads a saved graph for it (Collection.open's ``load_graph``).
    """

    def __init__(self, folder: str | os.PathLike, cache_dir: str | os.PathLike | None = None, *,
                 rebuild_damaged: bool = True, load_graphs: bool = True) -> None:
        self.folder = Path(folder).expanduser().resolve()
        if not self.folder.is_dir():
            raise FileNotFoundError(f"not an image folder: {self.folder}")
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root()
        self.rebuild_damaged = rebuild_damaged
        self.load_graphs = load_graphs
        self._lock = threading.Lock()
        self._key_locks: dict[Any, threading.RLock] = {}
        self._collections: dict[ModelSpec, Any] = {}
        self._label_counts: dict[ModelSpec, tuple[tuple, dict[str | None, int]]] = {}
        self.notes: list[str] = []  # messages for the user (e.g. a damaged cache that was rebuilt)

    def _key_lock(self, key: Any) -> threading.RLock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.RLock())

    def collection(self, spec: ModelSpec):
        """The Collection of ``spec`` (opened from the cache on first use)."""
        with self._key_lock(spec):
            coll = self._collections.get(spec)
            if coll is None:
                try:
                    coll = Collection.open(self.folder, model_spec=spec, cache_dir=self.cache_dir,
                                           load_graph=self.load_graphs)
                except CollectionError as exc:
                    if not self.rebuild_damaged:
                        raise
                    self.notes.append(f"{exc} — indexing again.")
                    log.warning("rebuilding: %s", exc)
                    coll = Collection.open(self.folder, model_spec=spec, cache_dir=self.cache_dir, rebuild=True)
                self.notes.extend(coll.notes)  # what opening worked around (an unauthenticated cache...)
                self._collections[spec] = coll
            return coll

    def collection_path(self, path: str | os.PathLike) -> str | None:
        """The path under which the collection holds ``path`` (``folder / its path inside the folder``), or
        None when it lies outside the folder.

        The file is taken as given, never resolved: a symbolic link inside the folder is the collection's
        image wherever it points (the engine scans and labels links by their own path). Only the folders
        above it are resolved, so a folder opened through a link (``~/data -> /mnt/data``) still matches.
        """
        p = Path(os.path.abspath(os.fspath(path)))
        for above in p.parents:
            if above == self.folder:
                return str(p)
        for above in p.parents:  # the folder reached through a link of another name
            try:
                if above.resolve() == self.folder:
                    return str(self.folder / p.relative_to(above))
            except OSError:
                return None
        return None

    def label_of(self, path: str | os.PathLike) -> str | None:
        """The image's folder name when it lies in a sub-folder of the collection (as the engine labels),
        by the path as given inside the folder (see :meth:`collection_path`)."""
        inside = self.collection_path(path)
        if inside is None:
            return None
        return label_of(Path(inside).relative_to(self.folder))

    def label_counts(self, spec: ModelSpec) -> dict[str | None, int]:
        """How many indexed images of ``spec`` each label has (cached per commit and size)."""
        from collections import Counter

        coll = self.collection(spec)
        stamp = (coll.generation, len(coll))
        with self._lock:
            cached = self._label_counts.get(spec)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        # label_of's rule by folder: the paths grouped by the folder that holds them (one C-level split each),
        # then each folder's label (0.16 s -> 0.03 s at 100k paths: a `search` of an indexed photo counts them)
        by_folder = Counter(p.rpartition("/")[0] for p in coll.relpaths)
        counts: dict[str | None, int] = {}
        for folder, n in by_folder.items():
            label = label_of(folder + "/x") if folder else None
            counts[label] = counts.get(label, 0) + n
        with self._lock:
            self._label_counts[spec] = (stamp, counts)
        return counts

    def indexed_count(self, spec: ModelSpec) -> int | None:
        """Images of ``spec`` indexed so far (committed or being added), None when its collection is not
        open yet. Cheap and non-blocking: safe to call from the GUI thread."""
        with self._lock:
            coll = self._collections.get(spec)
        return None if coll is None else len(coll)

    def total_files(self, spec: ModelSpec) -> int | None:
        """Image files the folder held at ``spec``'s last scan (None: not known yet)."""
        with self._lock:
            coll = self._collections.get(spec)
        return None if coll is None else coll.total_files

    def vectors(self, spec: ModelSpec) -> tuple[list[str], np.ndarray] | None:
        """(absolute paths, vectors (N, D)) of ``spec`` when indexed, else None."""
        coll = self.collection(spec)
        if len(coll) == 0:
            return None
        return coll.paths, coll.vectors

    def stored_vector(self, spec: ModelSpec, path: str | os.PathLike) -> np.ndarray | None:
        """The stored row (D,) of ``spec``'s collection for the image at ``path`` (as
        :meth:`collection_path` gives it) when it is indexed and unchanged since, else None."""
        rel = Path(path).relative_to(self.folder).as_posix()
        return self.collection(spec).stored_vector(rel)

    def has_index(self, spec: ModelSpec) -> bool:
        """True when vectors for ``spec`` exist (opening the cache if needed)."""
        return self.vectors(spec) is not None

    def update(self, model_cache: ModelCache, spec: ModelSpec, *, batch_size: int = 16,
               progress: ProgressFn | None = None, should_stop: ShouldStopFn | None = None,
               progress_interval: float = 0.25, descriptors: Sequence[str] | None = None,
               runtime: str | None = None) -> IndexState:
        """Extract the vectors of new or changed images, drop removed ones (engine.collection), for
        ``spec`` and every other descriptor of its backbone (``descriptors``; default all) in ONE pass of
        the network per image, so that switching descriptor afterwards is instant. Work is committed as
        it goes: a cancel keeps it, and searches meanwhile answer from what is indexed so far.

        Progress is throttled to one call per ``progress_interval`` seconds; its message says how many
        images are indexed."""
        progress, should_stop = resolve(progress, should_stop)
        progress(0, 0, f"loading {model_title(spec.backbone)}")
        kinds = [spec.descriptor] + [d for d in (descriptors or list_descriptors()) if d != spec.descriptor]
        specs = [spec.with_descriptor(d) for d in kinds]
        with self._key_lock(("update", spec.backbone, spec.weights, spec.image_size, spec.crop_fraction)):
            try:
                return self._update(model_cache, specs, batch_size, progress, should_stop, progress_interval,
                                    runtime)
            except ConcurrentChangeError as exc:  # another program indexed this folder meanwhile: reload
                log.info("%s: reopening", exc)
                with self._lock:
                    for s in specs:
                        self._collections.pop(s, None)
                return self._update(model_cache, specs, batch_size, progress, should_stop, progress_interval,
                                    runtime)

    def _update(self, model_cache: ModelCache, specs: list[ModelSpec], batch_size: int,
                progress: ProgressFn, should_stop: ShouldStopFn, progress_interval: float,
                runtime: str | None) -> IndexState:
        colls = [self.collection(s) for s in specs]
        work = [bool(c.scan()) or not c.is_saved for c in colls]
        models, features = [None] * len(specs), None
        if any(work):
            models = [model_cache.get(s) for s in specs]
            features = (scale_features(model_cache, specs[0], runtime) if specs[0].scales
                        else model_cache.features(specs[0], runtime))
        reports = update_collections(list(zip(colls, models, strict=True)), device=model_cache.device,
                                     batch_size=batch_size, features=features,
                                     progress=make_progress_throttle(progress, progress_interval),
                                     should_stop=should_stop)
        coll, report = colls[0], reports[0]
        skipped = [(str(self.folder / s.path), s.reason) for s in coll.skipped] + list(report.unreadable)
        return IndexState(specs[0], len(coll) + len(skipped), len(coll), report.extracted, report.removed,
                          skipped, report.cancelled, report.seconds)

    def search_vector(self, spec: ModelSpec, q: np.ndarray, options: SearchOptions,
                      exclude: str | None = None) -> tuple[list[SearchHit], str]:
        """Rank the indexed images for one query vector (D,), ``exclude`` (a path as the collection holds
        it) left out and the ranks counted without it; returns (hits, method used)."""
        opts = replace(options, k=options.k + 1) if exclude else options
        with self._key_lock(spec):
            coll = self.collection(spec)
            if len(coll) == 0:
                raise RuntimeError(f"{DESCRIPTOR_TITLES.get(spec.descriptor, spec.descriptor)} is not indexed yet")
            found = coll.search(np.asarray(q, np.float32), opts)
        hits = [h for h in found if h.path != exclude][: options.k]
        return [replace(h, rank=i + 1) for i, h in enumerate(hits)], describe_options(options)


def run_query(index: FolderIndex, model_cache: ModelCache | None, spec: ModelSpec, query: str,
              options: SearchOptions, among: Iterable[str] | None = None, *, exclude_query: bool = True,
              runtime: str | None = None, box: Box | None = None,
              describe: Callable[..., np.ndarray] | None = None) -> SearchResult:
    """Describe the query image and search (the window runs it on a worker thread).

    A query inside the folder (by its path as given: a symbolic link there counts, see
    :meth:`FolderIndex.collection_path`) gets its label and, with ``exclude_query``, does not find
    itself. ``among``: search only these images (absolute paths as the collection holds them, e.g. a
    split's retrieval list): every indexed image is ranked exactly and the first ``k`` of ``among`` are
    kept. An indexed query that has not changed since is searched with its stored row (no network pass);
    any other is described by ``describe(path, box) -> (D,)`` when given (the `search` command's torch-free
    engine.fastquery), else by :func:`embed_images` on ``model_cache`` (``runtime``: see there). ``box``:
    search with that region of the query image alone (engine.images.Box; described through the same path,
    cropped; never from a stored row)."""
    t0 = time.monotonic()
    inside = index.collection_path(query)
    vec = index.stored_vector(spec, inside) if inside is not None and box is None else None
    if vec is None and describe is not None:
        vec = describe(query, box)
    elif vec is None:
        if model_cache is None:
            raise ValueError("run_query needs a model cache or a describe function for a query outside the folder")
        vec = embed_images(model_cache, spec, [query], runtime=runtime, boxes=None if box is None else [box])[0]
    exclude = inside if exclude_query else None
    label = index.label_of(query)
    t1 = time.perf_counter()
    if among is None:
        hits, method = index.search_vector(spec, vec, options, exclude=exclude)
    else:
        allowed = set(map(str, among))
        everything = replace(options, k=max(1, len(index.collection(spec))), exact=True)
        found, method = index.search_vector(spec, vec, everything, exclude=exclude)
        hits = [replace(h, rank=i + 1) for i, h in enumerate(h for h in found if h.path in allowed)][: options.k]
        method += f", among {len(allowed):,}"
    searched = time.perf_counter() - t1
    relevant = None
    if label is not None:
        if among is None:
            relevant = index.label_counts(spec).get(label, 0)
        else:
            prefix = str(index.folder) + os.sep
            relevant = sum(1 for p in allowed if p.startswith(prefix) and label_of(p[len(prefix):]) == label)
        relevant -= 1 if (exclude is not None and (among is None or inside in allowed)) else 0
        relevant = max(0, relevant)
    return SearchResult(spec, query, label, hits, vec, time.monotonic() - t0, method, options, relevant, searched,
                        None if box is None else tuple(int(v) for v in box))


def ensure_and_query(index: FolderIndex, model_cache: ModelCache, spec: ModelSpec, query: str,
                     options: SearchOptions, progress: ProgressFn | None = None,
                     should_stop: ShouldStopFn | None = None) -> SearchResult | None:
    """Bring ``spec``'s index up to date (only a scan when it is), then query (the comparison's second side)."""
    state = index.update(model_cache, spec, progress=progress, should_stop=should_stop)  # cheap when current
    if state.cancelled:
        return None
    return run_query(index, model_cache, spec, query, options)


def overlap_at_k(a: Sequence[SearchHit], b: Sequence[SearchHit], k: int | None = None) -> float:
    """|top-k(a) ∩ top-k(b)| / k (k defaults to the longer list)."""
    k = k or max(len(a), len(b))
    if k <= 0:
        return 0.0
    return len({h.path for h in a[:k]} & {h.path for h in b[:k]}) / k


def hit(path: str, score: float, rank: int, label: str | None = None, folder: str | os.PathLike | None = None
        ) -> SearchHit:
    """A SearchHit for ``path`` (its relpath against ``folder``, else its file name), e.g. for a preview."""
    rel = os.path.relpath(path, folder).replace(os.sep, "/") if folder else Path(path).name
    return SearchHit(str(path), rel, float(score), int(rank), label)


# ---------------------------------------------------------------------------------------------
# activations
@dataclass
class LayerMaps:
    """The activations of one image at one layer."""

    image_size: int
    top_channels: list[int]  # most active channels, strongest first
    channel_maps: np.ndarray  # (n, h, w) in [0, 1] for top_channels
    heatmap: np.ndarray  # (h, w) in [0, 1]: channel-mean activation
    shape: tuple[int, int, int]  # (C, h, w) of the layer's output


@dataclass
class RegionShare:
    """One R-MAC region, in input pixels, and its part of the query-result score."""

    box: tuple[int, int, int, int]  # (x, y, w, h) in the network input (image_size square)
    contribution: float  # region vector . other descriptor / |sum of region vectors|
    share: float  # contribution / score


@dataclass
class ActivationResult:
    layer: str
    query: LayerMaps
    other: LayerMaps | None = None
    score: float | None = None
    regions: list[RegionShare] = field(default_factory=list)


def activation_layers(model_cache: ModelCache, spec: ModelSpec) -> list[str]:
    """The backbone's layer names, shallow to deep."""
    bb = model_cache.backbone(spec)
    fn = getattr(bb, "activation_layers", None)
    return list(fn()) if fn else []


def network_crop(path: str, size: int, crop_fraction: float = 1.0):
    """The image as the network sees it, before normalisation (engine.images.resize_crop) -> PIL RGB image."""
    from engine.images import load_image, resize_crop, resize_side

    return resize_crop(load_image(path, min_side=resize_side(size, crop_fraction)), size, crop_fraction)


def _layer_maps(fmap, n_channels: int, size: int) -> LayerMaps:
    a = fmap[0].float()
    c = a.shape[0]
    strength = a.mean((1, 2))
    top = strength.argsort(descending=True)[:n_channels].tolist()
    maps = a[top].cpu().numpy()
    lo = maps.min(axis=(1, 2), keepdims=True)
    hi = maps.max(axis=(1, 2), keepdims=True)
    maps = (maps - lo) / np.maximum(hi - lo, 1e-6)
    heat = a.clamp_min(0).mean(0).cpu().numpy()
    heat = (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-6)
    return LayerMaps(size, top, maps.astype(np.float32), heat.astype(np.float32), (c, a.shape[1], a.shape[2]))


def compute_activations(model_cache: ModelCache, spec: ModelSpec, query: str, layer: str,
                        other: str | None = None, n_channels: int = 8, rmac_levels: int = 3) -> ActivationResult:
    """Feature maps of ``layer`` for the query (and ``other``); for R-MAC the per-region shares.

    With the query's region vectors r_i (whitened when the model whitens, L2-normalised) and the
    other image's final descriptor d: score = q . d = sum_i (r_i . d) / |sum_i r_i|, so region i
    contributes (r_i . d) / |sum_i r_i| and its share is that over the score.
    """
    import torch

    from models.pooling import l2n

    bb = model_cache.backbone(spec)
    layers = bb.activation_layers() if hasattr(bb, "activation_layers") else {}
    if layer not in layers:
        raise ValueError(f"unknown layer {layer!r}: choose one of {list(layers)}")
    tf = model_cache.transform(spec)
    size = model_cache.image_size(spec)
    images = [query] + ([other] if other else [])
    x = torch.stack([tf(load_image(p)) for p in images]).to(model_cache.device)
    me = threading.get_ident()
    captured: list[Any] = []

    def hook(_module, _inputs, output):  # other threads may share this model: record only ours
        if threading.get_ident() == me:
            captured.append(output[0] if isinstance(output, tuple) else output)

    handle = layers[layer].register_forward_hook(hook)
    try:
        with torch.inference_mode():
            fmap = bb.forward_features(x)
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"layer {layer!r} did not run in the forward pass")
    act = captured[-1]
    result = ActivationResult(layer, _layer_maps(act[0:1], n_channels, size))
    if other:
        result.other = _layer_maps(act[1:2], n_channels, size)
        model = model_cache.get(spec)
        with torch.inference_mode():
            desc = model.describe(fmap) if hasattr(model, "describe") else model(x)
            d = l2n(desc.float())
        result.score = float(d[0] @ d[1])
        if spec.descriptor == "rmac":
            result.regions = _rmac_shares(model, fmap[0:1], d[1], size, getattr(model, "rmac_levels", rmac_levels))
    return result


def _rmac_shares(model, fmap, other_desc, size: int, levels: int) -> list[RegionShare]:
    """Per region of ``fmap`` (1, C, h, w): its part of the score against ``other_desc`` (D,)."""
    import torch

    from models import pooling

    h, w = fmap.shape[-2:]
    with torch.inference_mode():
        contrib = model.region_contributions(fmap.float(), other_desc)[0]  # (R,)
    score = float(contrib.sum())
    sy, sx = size / h, size / w
    out = []
    for (y, x, rh, rw), c in zip(pooling.rmac_regions(h, w, levels), contrib.tolist(), strict=True):
        out.append(RegionShare((int(x * sx), int(y * sy), int(rw * sx), int(rh * sy)), float(c),
                               float(c / score) if abs(score) > 1e-12 else 0.0))
    return out


def make_progress_throttle(progress: ProgressFn, interval: float = 0.1) -> Callable[[int, int, str], None]:
    """A progress callback passing at most one call per ``interval`` seconds (and the last)."""
    last = [0.0]

    def call(done: int, total: int, message: str = "") -> None:
        now = time.monotonic()
        if now - last[0] >= interval or (total and done >= total):
            last[0] = now
            progress(done, total, message)

    return call



# ---------------------------------------------------------------------------------------------
# relevance feedback (issue 28): the ranking of a query and the results marked + / -
_ROW_MAPS: dict[int, tuple[tuple, dict[str, int]]] = {}
_ROW_MAPS_LOCK = threading.Lock()


def _row_map(coll: Collection) -> dict[str, int]:
    """{relative path: row} of ``coll``, kept per (collection, commit, size): a mark costs no pass over
    100,000 paths."""
    stamp = (coll.generation, len(coll))
    with _ROW_MAPS_LOCK:
        cached = _ROW_MAPS.get(id(coll))
        if cached is not None and cached[0] == stamp:
            return cached[1]
    rows = {p: i for i, p in enumerate(coll.relpaths)}
    with _ROW_MAPS_LOCK:
        if len(_ROW_MAPS) > 16:
            _ROW_MAPS.clear()
        _ROW_MAPS[id(coll)] = (stamp, rows)
    return rows


def run_feedback(index: FolderIndex, model_cache: ModelCache | None, spec: ModelSpec, queries: Sequence[str],
                 positives: Sequence[str], negatives: Sequence[str], options: SearchOptions,
                 settings: Any = None, *, exclude_query: bool = True, runtime: str | None = None,
                 box: Box | None = None, query_vector: np.ndarray | None = None,
                 describe: Callable[..., np.ndarray] | None = None) -> SearchResult:
    """The ranking of ``queries`` (image paths: the first names the result) corrected by the images marked
    relevant (``positives``) and not (``negatives``): engine.feedback.rerank on the collection's stored
    rows (every row scored exactly; ``options.k`` kept). Queries inside the folder are left out of the hits
    when ``exclude_query``; marked images stay in the ranking. The window (on a worker) and
    ``search --positive/--negative/--concept`` both call this, so they rank alike.

    The first query is the vector its plain ranking was searched with: ``query_vector`` (D,) when given (the
    window hands over its region query's; ``box`` then only names the region in the result), else that
    image's region ``box`` described (a region query, as :func:`run_query` does), else its stored row. Any image the collection does not hold (or changed since it
    was indexed) goes through the one image->vector path of :func:`run_query`: ``describe(path, box) -> (D,)``
    when given (the `search` command's torch-free engine.fastquery), else :func:`embed_images` on
    ``model_cache`` (``runtime``: see there)."""
    from engine.feedback import FeedbackSettings, rerank

    settings = settings or FeedbackSettings()
    if not queries and not positives:
        raise ValueError("relevance feedback needs a query image or at least one image marked relevant")
    if (box is not None or query_vector is not None) and not queries:
        raise ValueError("a query region (box) or query vector needs its query image")
    t0 = time.monotonic()
    coll = index.collection(spec)
    if len(coll) == 0:
        raise RuntimeError(f"{DESCRIPTOR_TITLES.get(spec.descriptor, spec.descriptor)} is not indexed yet")
    with index._key_lock(spec):
        rel_paths = coll.relpaths
        vectors = coll.vectors
        rows = _row_map(coll)
    dim = vectors.shape[1]

    def locate(paths: Sequence[str], fresh: bool = False) -> tuple[list[int], list[str]]:
        """(stored rows of the images the collection holds, the other paths); ``fresh``: only rows of files
        unchanged since they were indexed (a query; marks are results of this collection: their rows)."""
        found, other = [], []
        for p in paths:
            inside = index.collection_path(p)
            rel = Path(inside).relative_to(index.folder).as_posix() if inside is not None else None
            row = rows.get(rel) if rel is not None else None
            if row is not None and (not fresh or index.stored_vector(spec, inside) is not None):
                found.append(row)
            else:
                other.append(str(p))
        return found, other

    def embed(paths: Sequence[str], region: Box | None = None) -> np.ndarray:
        """(len(paths), D) float32 through the one image->vector path (see above)."""
        if not paths:
            return np.zeros((0, dim), np.float32)
        if describe is not None:
            return np.stack([np.asarray(describe(p, region), np.float32).reshape(dim) for p in paths])
        if model_cache is None:
            raise ValueError("run_feedback needs a model cache or a describe function for images outside the folder")
        return embed_images(model_cache, spec, paths, runtime=runtime,
                            boxes=None if region is None else [region] * len(paths))

    if query_vector is not None or box is not None:  # the first query as its plain ranking saw it
        if query_vector is not None:
            first = np.asarray(query_vector, np.float32).reshape(1, -1)
            if first.shape[1] != dim:
                raise ValueError(f"the query vector has {first.shape[1]} values; this model's rows have {dim}")
        else:
            first = embed([str(queries[0])], box)
        own_rows, _ = locate(queries[:1])  # its image's row: left out of the hits and of the background
        more_rows, more_other = locate(queries[1:], fresh=True)
        q_vecs = np.concatenate([first, vectors[more_rows], embed(more_other)])
        q_rows = own_rows + more_rows
    else:
        q_rows, q_other = locate(queries, fresh=True)
        q_vecs = np.concatenate([vectors[q_rows], embed(q_other)]) if queries else np.zeros((0, dim), np.float32)
    p_rows, p_other = locate(positives)
    n_rows, n_other = locate(negatives)
    t1 = time.perf_counter()
    exclude = q_rows if exclude_query else []
    ranked = rerank(vectors, q_vecs, p_rows, n_rows, settings, k=options.k, exclude=exclude,
                    extra_positives=embed(p_other), extra_negatives=embed(n_other), query_rows=q_rows)
    searched = time.perf_counter() - t1
    hits = []
    for rank, (r, score) in enumerate(zip(ranked.rows.tolist(), ranked.scores.tolist(), strict=True)):
        if options.threshold is not None and score < options.threshold:
            break
        rel = rel_paths[r]
        hits.append(SearchHit(str(index.folder / rel), rel, float(score), rank + 1, label_of(rel)))
    query = str(queries[0]) if queries else str(positives[0])
    label = index.label_of(query)
    relevant = None
    if label is not None:
        relevant = max(0, index.label_counts(spec).get(label, 0) - (1 if exclude_query and q_rows else 0))
    method = (f"feedback: {settings.method.upper() if settings.method == 'svm' else settings.method.title()}, "
              f"{len(positives)} +, {len(negatives)} -")
    return SearchResult(spec, query, label, hits, ranked.w, time.monotonic() - t0, method, options, relevant,
                        searched, None if box is None else tuple(int(v) for v in box))
