"""The explorer's bridge to the engine: models, a folder's vectors and index, search, activations.

Nothing here imports Qt: every function that takes time is a plain function (run by
``retrieval_gui.workers.start_task`` on a worker thread); the window only reacts to results.

- :class:`ModelCache` builds descriptor models once per (backbone, weights, descriptor, device) and
  shares backbones between descriptors (thread-safe).
- :class:`FolderIndex` is one image folder with its per (model, descriptor) vectors in a cache dir:
  ``open`` is instant, ``update`` extracts what is missing (incrementally, cancellable), ``search``
  runs exact (brute-force dot products) or HNSW search with optional query expansion.
- :func:`compute_activations` runs forward hooks on a chosen layer and explains an R-MAC score
  as a sum over regions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from engine.callbacks import ProgressFn, ShouldStopFn, resolve

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "efficientnet_lite0"
DEFAULT_DESCRIPTOR = "spoc"
DESCRIPTOR_TITLES = {
    "fc": "FC",
    "spoc": "conv-average (SPoC)",
    "rmac": "R-MAC",
    "mac": "MAC (global max)",
    "gem": "GeM",
}


def cache_root() -> Path:
    """$RETRIEVAL_EXPLORER_CACHE, else the platform's user cache folder for retrieval-explorer."""
    env = os.environ.get("RETRIEVAL_EXPLORER_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("retrieval-explorer"))


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

    import engine.collection  # noqa: F401
    import engine.extraction  # noqa: F401
    import models.backbones  # noqa: F401
    import models.descriptors  # noqa: F401


#: the registries of models/ as the window lists them, known without importing torch (so the window can
#: appear before torch is loaded); tests/gui/test_startup.py checks them against the registries
BACKBONES = ("efficientnet_lite0", "resnet18", "resnet50", "vgg16", "mobilenet_v2")
DESCRIPTORS = ("fc", "spoc", "rmac", "mac", "gem")


def list_backbones() -> list[str]:
    """Backbone names of models.backbones."""
    return list(BACKBONES)


def list_descriptors() -> list[str]:
    """Descriptor kinds of models.descriptors (fc, spoc, rmac, mac, gem)."""
    return list(DESCRIPTORS)


def list_trained() -> list[tuple[str, str]]:
    """(display name, checkpoint path) of every trained model; [] when none or unreadable."""
    try:
        from engine.training.registry import list_trained_models

        return [(f"trained: {m.name}", m.path) for m in list_trained_models()]
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
@dataclass(frozen=True)
class ModelKey:
    """What a set of vectors was computed with."""

    backbone: str = DEFAULT_BACKBONE
    descriptor: str = DEFAULT_DESCRIPTOR
    weights: str = "pretrained"
    image_size: int | None = None

    def slug(self) -> str:
        """A file-system-safe, unique folder name for these settings."""
        raw = json.dumps(asdict(self), sort_keys=True)
        name = Path(self.backbone).parent.name if self.backbone.endswith(".pt") else self.backbone
        short = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40]
        return f"{short}-{self.descriptor}-{hashlib.sha1(raw.encode()).hexdigest()[:10]}"

    def with_descriptor(self, descriptor: str) -> ModelKey:
        return ModelKey(self.backbone, descriptor, self.weights, self.image_size)


def _load_backbone(name: str, weights: str, device: str):
    from models.backbones import get_backbone

    return get_backbone(name, weights=weights, device=device)


def _l2n(x):
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class ModelCache:
    """Descriptor models built once and shared; thread-safe. Backbones are shared across descriptors."""

    def __init__(self, device: str = "cpu", threads: int | None = None, runtime: str | None = None) -> None:
        self.device = device
        #: what runs the backbone for indexing on the CPU (engine.runtime); $RETRIEVAL_EXPLORER_RUNTIME
        self.runtime = runtime or os.environ.get("RETRIEVAL_EXPLORER_RUNTIME", "auto")
        self._lock = threading.Lock()
        self._backbones: dict[tuple, Any] = {}
        self._descriptors: dict[tuple, Any] = {}
        self._runners: dict[tuple, Any] = {}  # feature-map runners (engine.runtime), one per backbone
        self._threads = int(threads) if threads else None  # applied when torch is first needed

    def backbone(self, key: ModelKey):
        k = (key.backbone, key.weights, self.device)
        with self._lock:
            if self._threads:
                import torch

                torch.set_num_threads(self._threads)
                self._threads = None
            if k not in self._backbones:
                self._backbones[k] = _load_backbone(key.backbone, key.weights, self.device)
            return self._backbones[k]

    def get(self, key: ModelKey):
        """The DescriptorModel for ``key`` (eval mode, on the cache's device)."""
        k = (key.backbone, key.weights, key.descriptor, self.device)
        with self._lock:
            model = self._descriptors.get(k)
        if model is not None:
            return model
        from models.descriptors import build_descriptor

        model = build_descriptor(key.descriptor, self.backbone(key)).to(self.device).eval()
        with self._lock:
            return self._descriptors.setdefault(k, model)

    def features(self, key: ModelKey, runtime: str | None = None):
        """The feature-map runner of ``key``'s backbone (engine.runtime: an exported CPU runtime when one
        is installed and agrees with PyTorch, else PyTorch), built once per backbone and runtime."""
        from engine.runtime import feature_runner

        bb = self.backbone(key)
        runtime = runtime or self.runtime
        k = (key.backbone, key.weights, key.image_size, runtime, self.device)
        with self._lock:
            runner = self._runners.get(k)
        if runner is None:
            ident = model_spec(key).backbone_identity()
            runner = feature_runner(bb, self.image_size(key), ident, cache_root(),
                                    runtime if self.device == "cpu" else "torch")
            with self._lock:
                runner = self._runners.setdefault(k, runner)
        return runner

    def cached(self, key: ModelKey) -> bool:
        with self._lock:
            return (key.backbone, key.weights, key.descriptor, self.device) in self._descriptors

    def image_size(self, key: ModelKey) -> int:
        return int(key.image_size or getattr(self.backbone(key), "default_image_size", 224))


def _transform(model_cache: ModelCache, key: ModelKey):
    from engine.images import build_transform

    bb = model_cache.backbone(key)
    return build_transform(model_cache.image_size(key), bb.mean, bb.std)


def embed_images(model_cache: ModelCache, key: ModelKey, images: Sequence[Any]) -> np.ndarray:
    """Descriptors (N, D) float32 of PIL images or paths (loaded safely)."""
    import torch

    from engine.images import load_image

    tf = _transform(model_cache, key)
    model = model_cache.get(key)
    batch = torch.stack([tf(load_image(im) if isinstance(im, str | os.PathLike) else im.convert("RGB"))
                         for im in images]).to(model_cache.device)
    with torch.inference_mode():
        return _l2n(model(batch).float()).cpu().numpy().astype(np.float32)


# ---------------------------------------------------------------------------------------------
# a folder and its vectors
@dataclass
class Hit:
    """One search result; ``rank`` from 1, ``score`` = cosine similarity."""

    path: str
    score: float
    rank: int
    label: str | None = None


@dataclass
class SearchOptions:
    k: int = 20
    threshold: float | None = None  # drop hits scoring below
    exact: bool = True  # brute force; False = HNSW (engine.index)
    query_expansion: int = 0  # average QE over the top n (0 = off)
    exclude_query: bool = True  # a query from the collection does not find itself


@dataclass
class SearchResult:
    key: ModelKey
    query: str
    query_label: str | None
    hits: list[Hit]
    vector: np.ndarray
    seconds: float
    method: str
    options: SearchOptions = field(default_factory=SearchOptions)
    #: images of the query's label among those searched (the query itself left out); None: unknown
    relevant: int | None = None

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

    key: ModelKey
    total: int
    indexed: int
    added: int
    removed: int
    skipped: list[tuple[str, str]]
    cancelled: bool
    seconds: float


def model_spec(key: ModelKey):
    """The engine's ModelSpec for ``key``."""
    from engine.collection import ModelSpec

    return ModelSpec(backbone=key.backbone, weights=key.weights, descriptor=key.descriptor,
                     image_size=key.image_size)


class FolderIndex:
    r"""An image folder and its per-(model, descriptor) :class:`engine.collection.Collection`\ s.

    Collections are opened lazily (on the worker that first needs them); every method is
    thread-safe (one lock per model key: a search waits while the same key is being written).
    """

    def __init__(self, folder: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> None:
        self.folder = Path(folder).expanduser().resolve()
        if not self.folder.is_dir():
            raise FileNotFoundError(f"not an image folder: {self.folder}")
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root()
        self._lock = threading.Lock()
        self._key_locks: dict[ModelKey, threading.RLock] = {}
        self._collections: dict[ModelKey, Any] = {}
        self._label_counts: dict[ModelKey, tuple[tuple, dict[str | None, int]]] = {}
        self.notes: list[str] = []  # messages for the user (e.g. a damaged cache that was rebuilt)

    def _key_lock(self, key: ModelKey) -> threading.RLock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.RLock())

    def collection(self, key: ModelKey):
        """The Collection of ``key`` (opened from the cache on first use; a damaged cache is rebuilt)."""
        from engine.collection import Collection, CollectionError

        with self._key_lock(key):
            coll = self._collections.get(key)
            if coll is None:
                try:
                    coll = Collection.open(self.folder, model_spec=model_spec(key), cache_dir=self.cache_dir)
                except CollectionError as exc:
                    self.notes.append(f"{exc} — indexing again.")
                    log.warning("rebuilding: %s", exc)
                    coll = Collection.open(self.folder, model_spec=model_spec(key), cache_dir=self.cache_dir,
                                           rebuild=True)
                self._collections[key] = coll
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
        parts = Path(inside).relative_to(self.folder).parts
        return parts[-2] if len(parts) > 1 else None

    def label_counts(self, key: ModelKey) -> dict[str | None, int]:
        """How many indexed images of ``key`` each label has (cached per commit and size)."""
        from collections import Counter

        coll = self.collection(key)
        stamp = (coll.generation, len(coll))
        with self._lock:
            cached = self._label_counts.get(key)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        counts = dict(Counter(coll.labels))
        with self._lock:
            self._label_counts[key] = (stamp, counts)
        return counts

    def indexed_count(self, key: ModelKey) -> int | None:
        """Images of ``key`` indexed so far (committed or being added), None when its collection is not
        open yet. Cheap and non-blocking: safe to call from the GUI thread."""
        with self._lock:
            coll = self._collections.get(key)
        return None if coll is None else len(coll)

    def total_files(self, key: ModelKey) -> int | None:
        """Image files the folder held at ``key``'s last scan (None: not known yet)."""
        with self._lock:
            coll = self._collections.get(key)
        return None if coll is None else coll.total_files

    def vectors(self, key: ModelKey) -> tuple[list[str], np.ndarray] | None:
        """(absolute paths, vectors (N, D)) of ``key`` when indexed, else None."""
        coll = self.collection(key)
        if len(coll) == 0:
            return None
        return coll.paths, coll.vectors

    def has_index(self, key: ModelKey) -> bool:
        """True when vectors for ``key`` exist (opening the cache if needed)."""
        return self.vectors(key) is not None

    def update(self, model_cache: ModelCache, key: ModelKey, *, batch_size: int = 16,
               progress: ProgressFn | None = None, should_stop: ShouldStopFn | None = None,
               progress_interval: float = 0.25, descriptors: Sequence[str] | None = None,
               runtime: str | None = None) -> IndexState:
        """Extract the vectors of new or changed images, drop removed ones (engine.collection), for
        ``key`` and every other descriptor of its backbone (``descriptors``; default all) in ONE pass of
        the network per image, so that switching descriptor afterwards is instant. Work is committed as
        it goes: a cancel keeps it, and searches meanwhile answer from what is indexed so far.

        Progress is throttled to one call per ``progress_interval`` seconds; its message says how many
        images are indexed."""
        from engine.collection import ConcurrentChangeError

        progress, should_stop = resolve(progress, should_stop)
        progress(0, 0, f"loading {model_title(key.backbone)}")
        kinds = [key.descriptor] + [d for d in (descriptors or list_descriptors()) if d != key.descriptor]
        keys = [key.with_descriptor(d) for d in kinds]
        with self._key_lock(("update", key.backbone, key.weights, key.image_size)):
            try:
                return self._update(model_cache, key, keys, batch_size, progress, should_stop, progress_interval,
                                    runtime)
            except ConcurrentChangeError as exc:  # another program indexed this folder meanwhile: reload
                log.info("%s: reopening", exc)
                with self._lock:
                    for k in keys:
                        self._collections.pop(k, None)
                return self._update(model_cache, key, keys, batch_size, progress, should_stop, progress_interval,
                                    runtime)

    def _update(self, model_cache: ModelCache, key: ModelKey, keys: list[ModelKey], batch_size: int,
                progress: ProgressFn, should_stop: ShouldStopFn, progress_interval: float,
                runtime: str | None) -> IndexState:
        from engine.collection import update_collections

        colls = [self.collection(k) for k in keys]
        work = [bool(c.scan()) or not c.is_saved for c in colls]
        models, features = [None] * len(keys), None
        if any(work):
            models = [model_cache.get(k) for k in keys]
            features = model_cache.features(key, runtime)
        reports = update_collections(list(zip(colls, models, strict=True)), device=model_cache.device,
                                     batch_size=batch_size, features=features,
                                     progress=make_progress_throttle(progress, progress_interval),
                                     should_stop=should_stop)
        coll, report = colls[0], reports[0]
        skipped = [(str(self.folder / s.path), s.reason) for s in coll.skipped] + list(report.unreadable)
        return IndexState(key, len(coll) + len(skipped), len(coll), report.extracted, report.removed,
                          skipped, report.cancelled, report.seconds)

    def search_vector(self, key: ModelKey, q: np.ndarray, options: SearchOptions,
                      exclude: str | None = None) -> tuple[list[Hit], str]:
        """Rank the indexed images for one query vector (D,); returns (hits, method used)."""
        from engine.search import SearchOptions as EngineOptions

        extra = 1 if exclude else 0
        qe = int(options.query_expansion)
        opts = EngineOptions(k=max(1, int(options.k)) + extra, threshold=options.threshold, exact=options.exact,
                             query_expansion="average" if qe > 0 else None, qe_top=max(1, qe))
        with self._key_lock(key):
            coll = self.collection(key)
            if len(coll) == 0:
                raise RuntimeError(f"{DESCRIPTOR_TITLES.get(key.descriptor, key.descriptor)} is not indexed yet")
            found = coll.search(np.asarray(q, np.float32), opts)
        hits = []
        for h in found:
            if h.path == exclude:
                continue
            hits.append(Hit(h.path, float(h.score), len(hits) + 1, h.label))
        method = "exact" if options.exact else "HNSW"
        if qe:
            method += f" + QE{qe}"
        return hits[: options.k], method


def run_query(index: FolderIndex, model_cache: ModelCache, key: ModelKey, query: str,
              options: SearchOptions, among: Iterable[str] | None = None) -> SearchResult:
    """Describe the query image and search (runs on a worker thread).

    A query inside the folder (by its path as given: a symbolic link there counts, see
    :meth:`FolderIndex.collection_path`) gets its label and does not find itself. ``among``: search only
    these images (absolute paths as the collection holds them, e.g. a split's retrieval list): every
    indexed image is ranked exactly and the first ``k`` of ``among`` are kept."""
    t0 = time.monotonic()
    vec = embed_images(model_cache, key, [query])[0]
    inside = index.collection_path(query)
    exclude = inside if options.exclude_query else None
    label = index.label_of(query)
    if among is None:
        hits, method = index.search_vector(key, vec, options, exclude=exclude)
    else:
        allowed = set(map(str, among))
        everything = replace(options, k=max(1, len(index.collection(key))), exact=True)
        found, method = index.search_vector(key, vec, everything, exclude=exclude)
        hits = [Hit(h.path, h.score, i + 1, h.label)
                for i, h in enumerate(h for h in found if h.path in allowed)][: options.k]
        method += f", among {len(allowed):,}"
    relevant = None
    if label is not None:
        if among is None:
            relevant = index.label_counts(key).get(label, 0)
        else:
            prefix = str(index.folder) + os.sep
            relevant = sum(1 for p in allowed if p.startswith(prefix) and _label_of_relpath(p[len(prefix):]) == label)
        relevant -= 1 if (inside is not None and (among is None or inside in allowed)) else 0
        relevant = max(0, relevant)
    return SearchResult(key, query, label, hits, vec, time.monotonic() - t0, method, options, relevant)


def _label_of_relpath(rel: str) -> str | None:
    parts = rel.replace(os.sep, "/").split("/")
    return parts[-2] if len(parts) > 1 else None


def ensure_and_query(index: FolderIndex, model_cache: ModelCache, key: ModelKey, query: str,
                     options: SearchOptions, progress: ProgressFn | None = None,
                     should_stop: ShouldStopFn | None = None) -> SearchResult | None:
    """Bring ``key``'s index up to date (only a scan when it is), then query (the comparison's second side)."""
    state = index.update(model_cache, key, progress=progress, should_stop=should_stop)  # cheap when current
    if state.cancelled:
        return None
    return run_query(index, model_cache, key, query, options)


def overlap_at_k(a: Sequence[Hit], b: Sequence[Hit], k: int | None = None) -> float:
    """|top-k(a) ∩ top-k(b)| / k (k defaults to the longer list)."""
    k = k or max(len(a), len(b))
    if k <= 0:
        return 0.0
    return len({h.path for h in a[:k]} & {h.path for h in b[:k]}) / k


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


def activation_layers(model_cache: ModelCache, key: ModelKey) -> list[str]:
    """The backbone's layer names, shallow to deep."""
    bb = model_cache.backbone(key)
    fn = getattr(bb, "activation_layers", None)
    return list(fn()) if fn else []


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


def compute_activations(model_cache: ModelCache, key: ModelKey, query: str, layer: str,
                        other: str | None = None, n_channels: int = 8, rmac_levels: int = 3) -> ActivationResult:
    """Feature maps of ``layer`` for the query (and ``other``); for R-MAC the per-region shares.

    With the query's region vectors r_i (whitened when the model whitens, L2-normalised) and the
    other image's final descriptor d: score = q . d = sum_i (r_i . d) / |sum_i r_i|, so region i
    contributes (r_i . d) / |sum_i r_i| and its share is that over the score.
    """
    import torch

    from engine.images import load_image

    bb = model_cache.backbone(key)
    layers = bb.activation_layers() if hasattr(bb, "activation_layers") else {}
    if layer not in layers:
        raise ValueError(f"unknown layer {layer!r}: choose one of {list(layers)}")
    tf = _transform(model_cache, key)
    size = model_cache.image_size(key)
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
        model = model_cache.get(key)
        with torch.inference_mode():
            desc = model.describe(fmap) if hasattr(model, "describe") else model(x)
        d = _l2n(desc.float())
        result.score = float(d[0] @ d[1])
        if key.descriptor == "rmac":
            result.regions = _rmac_shares(model, fmap[0:1], d[1], size, getattr(model, "rmac_levels", rmac_levels))
    return result


def _rmac_shares(model, fmap, other_desc, size: int, levels: int) -> list[RegionShare]:
    """Per region of ``fmap`` (1, C, h, w): its part of the score against ``other_desc`` (D,)."""
    from models import pooling

    h, w = fmap.shape[-2:]
    with torch_inference():
        contrib = model.region_contributions(fmap.float(), other_desc)[0]  # (R,)
    score = float(contrib.sum())
    sy, sx = size / h, size / w
    out = []
    for (y, x, rh, rw), c in zip(pooling.rmac_regions(h, w, levels), contrib.tolist(), strict=True):
        out.append(RegionShare((int(x * sx), int(y * sy), int(rw * sx), int(rh * sy)), float(c),
                               float(c / score) if abs(score) > 1e-12 else 0.0))
    return out


def torch_inference():
    import torch

    return torch.inference_mode()


def make_progress_throttle(progress: ProgressFn, interval: float = 0.1) -> Callable[[int, int, str], None]:
    """A progress callback passing at most one call per ``interval`` seconds (and the last)."""
    last = [0.0]

    def call(done: int, total: int, message: str = "") -> None:
        now = time.monotonic()
        if now - last[0] >= interval or (total and done >= total):
            last[0] = now
            progress(done, total, message)

    return call
