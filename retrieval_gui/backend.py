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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.atomic import atomic_open, atomic_write_text
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


def list_backbones() -> list[str]:
    """Backbone names of models.backbones (just the default while that module is absent)."""
    try:
        from models.backbones import list_backbones as lb
    except ImportError:
        return [DEFAULT_BACKBONE]
    return list(lb())


def list_descriptors() -> list[str]:
    try:
        from models.descriptors import list_descriptors as ld
    except ImportError:
        return list(DESCRIPTOR_TITLES)
    return list(ld())


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
    if name.endswith(".pt") or os.path.isfile(name):
        try:
            from models.backbones import get_backbone
        except ImportError:
            from models.embedding import load_trained_backbone

            return load_trained_backbone(name, device)
        return get_backbone(name, weights=weights, device=device)
    try:
        from models.backbones import get_backbone
    except ImportError:  # models.backbones not in this build yet: the training package's stand-in
        from models.embedding import build_backbone

        if name != DEFAULT_BACKBONE:
            raise ValueError(f"backbone {name!r} is not available in this build") from None
        return build_backbone(name, weights, device)
    return get_backbone(name, weights=weights, device=device)


class _FallbackDescriptor:
    """Pooling heads on a backbone (used only while models.descriptors is absent)."""

    def __init__(self, backbone, kind: str) -> None:
        import torch

        self.backbone = backbone
        self.kind = kind
        self._torch = torch
        self.dim = int(backbone.fc_dim if kind == "fc" else backbone.feature_dim)

    def describe(self, fmap):
        t = self._torch
        if self.kind == "fc":
            v = self.backbone.forward_head(fmap)
        elif self.kind == "spoc":
            v = fmap.mean((2, 3))
        elif self.kind == "mac":
            v = fmap.amax((2, 3))
        elif self.kind == "gem":
            v = fmap.clamp_min(1e-6).pow(3).mean((2, 3)).pow(1 / 3)
        elif self.kind == "rmac":
            r = _l2n(region_vectors(fmap))
            v = r.sum(1)
        else:
            raise ValueError(f"unknown descriptor {self.kind!r}")
        return t.nn.functional.normalize(v.float(), dim=-1)

    def __call__(self, x):
        return self.describe(self.backbone.forward_features(x))

    def eval(self):
        return self

    def to(self, device):
        return self


def _l2n(x):
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def rmac_regions(h: int, w: int, levels: int = 3) -> list[tuple[int, int, int, int]]:
    """(y, x, h, w) of the R-MAC regions of an h x w map (models.pooling's when present)."""
    try:
        from models.pooling import rmac_regions as rr

        return list(rr(h, w, L=levels))
    except ImportError:
        pass
    regions = []
    for lvl in range(1, levels + 1):
        side = max(1, int(round(2 * min(h, w) / (lvl + 1))))
        ny = 1 if lvl == 1 else lvl
        nx = ny
        ys = np.linspace(0, h - side, ny).round().astype(int) if ny > 1 else [max(0, (h - side) // 2)]
        xs = np.linspace(0, w - side, nx).round().astype(int) if nx > 1 else [max(0, (w - side) // 2)]
        regions += [(int(y), int(x), min(side, h), min(side, w)) for y in ys for x in xs]
    return regions


def region_vectors(fmap, levels: int = 3):
    """(B, C, h, w) -> (B, R, C): the MAC of every R-MAC region (not normalised)."""
    try:
        from models.pooling import rmac_region_vectors

        return rmac_region_vectors(fmap, L=levels)
    except ImportError:
        pass
    import torch

    h, w = fmap.shape[-2:]
    return torch.stack([fmap[:, :, y:y + rh, x:x + rw].amax((2, 3)) for y, x, rh, rw in rmac_regions(h, w, levels)], 1)


class ModelCache:
    """Descriptor models built once and shared; thread-safe. Backbones are shared across descriptors."""

    def __init__(self, device: str = "cpu", threads: int | None = None) -> None:
        self.device = device
        self._lock = threading.Lock()
        self._backbones: dict[tuple, Any] = {}
        self._descriptors: dict[tuple, Any] = {}
        if threads:
            import torch

            torch.set_num_threads(int(threads))

    def backbone(self, key: ModelKey):
        k = (key.backbone, key.weights, self.device)
        with self._lock:
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
        bb = self.backbone(key)
        try:
            from models.descriptors import build_descriptor
        except ImportError:
            model = _FallbackDescriptor(bb, key.descriptor)
        else:
            model = build_descriptor(key.descriptor, bb).to(self.device).eval()
        with self._lock:
            return self._descriptors.setdefault(k, model)

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
        return model(batch).float().cpu().numpy().astype(np.float32)


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

    def precision(self) -> float | None:
        """precision@k over the labelled hits; None when the query or hits have no label."""
        if self.query_label is None:
            return None
        known = [h.label == self.query_label for h in self.hits if h.label is not None]
        return sum(known) / len(known) if known else None


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


class FolderIndex:
    """An image folder and its per-model vectors under ``cache_dir``; every method is thread-safe."""

    def __init__(self, folder: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> None:
        self.folder = Path(folder).resolve()
        if not self.folder.is_dir():
            raise FileNotFoundError(f"not an image folder: {self.folder}")
        digest = hashlib.sha1(str(self.folder).encode()).hexdigest()[:12]
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root() / "collections" / f"{self.folder.name}-{digest}"
        self._lock = threading.RLock()
        self._paths: list[str] | None = None
        self._store: dict[ModelKey, tuple[list[str], np.ndarray]] = {}
        self._hnsw: dict[ModelKey, Any] = {}

    # -- files -------------------------------------------------------------------------------
    def scan(self) -> list[str]:
        """Image paths (absolute, sorted) under the folder; cached until rescanned."""
        from engine.images import scan_images

        paths = [str(p) for p in scan_images(self.folder)]
        with self._lock:
            self._paths = paths
        return paths

    @property
    def paths(self) -> list[str]:
        with self._lock:
            if self._paths is not None:
                return list(self._paths)
        return self.scan()

    def label_of(self, path: str | os.PathLike) -> str | None:
        """The first sub-folder under the collection root (None outside it or at its top level)."""
        try:
            parts = Path(path).resolve().relative_to(self.folder).parts
        except ValueError:
            return None
        return parts[0] if len(parts) > 1 else None

    def _dir(self, key: ModelKey) -> Path:
        return self.cache_dir / key.slug()

    # -- stored vectors ------------------------------------------------------------------------
    def _load(self, key: ModelKey) -> tuple[list[str], list[tuple[float, int]], np.ndarray] | None:
        d = self._dir(key)
        try:
            items = json.loads((d / "items.json").read_text(encoding="utf-8"))
            vecs = np.load(d / "vectors.npy", allow_pickle=False)
        except (OSError, ValueError) as exc:
            if (d / "items.json").exists():
                log.warning("ignoring a damaged index in %s: %s", d, exc)
            return None
        if len(items) != len(vecs):
            log.warning("ignoring %s: %d items but %d vectors", d, len(items), len(vecs))
            return None
        paths = [str(self.folder / it["path"]) for it in items]
        return paths, [(it["mtime"], it["size"]) for it in items], vecs.astype(np.float32, copy=False)

    def _save(self, key: ModelKey, paths: list[str], stats: list[tuple[float, int]], vecs: np.ndarray) -> None:
        d = self._dir(key)
        items = [{"path": str(Path(p).relative_to(self.folder)), "mtime": s[0], "size": s[1]}
                 for p, s in zip(paths, stats, strict=True)]
        with atomic_open(d / "vectors.npy", "wb") as fh:
            np.save(fh, vecs.astype(np.float32))
        atomic_write_text(d / "items.json", json.dumps(items))
        atomic_write_text(d / "meta.json", json.dumps({**asdict(key), "dim": int(vecs.shape[1]) if vecs.ndim == 2 else 0,
                                                      "count": len(paths), "folder": str(self.folder)}))

    def vectors(self, key: ModelKey) -> tuple[list[str], np.ndarray] | None:
        """(paths, vectors (N, D)) of ``key`` when indexed (from memory or the cache dir), else None."""
        with self._lock:
            if key in self._store:
                return self._store[key]
        loaded = self._load(key)
        if loaded is None:
            return None
        paths, _, vecs = loaded
        with self._lock:
            self._store[key] = (paths, vecs)
        return paths, vecs

    def has_index(self, key: ModelKey) -> bool:
        """True when vectors for ``key`` exist (possibly missing new files: see :meth:`is_current`)."""
        return self.vectors(key) is not None

    def is_current(self, key: ModelKey) -> bool:
        """True when every image now in the folder is indexed with unchanged mtime and size."""
        loaded = self._load(key)
        if loaded is None:
            return False
        have = dict(zip(loaded[0], loaded[1], strict=True))
        now = self.paths
        if len(now) != len(have):
            return False
        return all(have.get(p) == _stat(p) for p in now)

    def update(self, model_cache: ModelCache, key: ModelKey, *, batch_size: int = 16,
               progress: ProgressFn | None = None, should_stop: ShouldStopFn | None = None,
               progress_interval: float = 0.25) -> IndexState:
        """Extract the vectors of new or changed images, drop removed ones, save; cancellable.

        A cancelled update keeps (and saves) what it extracted, so the next one resumes.
        """
        import torch

        from engine.images import ImageLoadError, load_image

        progress, should_stop = resolve(progress, should_stop)
        t0 = time.monotonic()
        paths = self.scan()
        stats = {p: _stat(p) for p in paths}
        loaded = self._load(key)
        keep_paths, keep_stats, keep_vecs = [], [], []
        if loaded is not None:
            for p, s, v in zip(loaded[0], loaded[1], loaded[2], strict=True):
                if stats.get(p) == tuple(s):
                    keep_paths.append(p)
                    keep_stats.append(tuple(s))
                    keep_vecs.append(v)
        removed = (len(loaded[0]) - len(keep_paths)) if loaded else 0
        have = set(keep_paths)
        todo = [p for p in paths if p not in have]
        progress(0, len(todo), f"loading {model_title(key.backbone)}")
        model = model_cache.get(key)
        tf = _transform(model_cache, key)
        new_paths, new_vecs, skipped = [], [], []
        cancelled = False
        last = 0.0
        for start in range(0, len(todo), batch_size):
            if should_stop():
                cancelled = True
                break
            tensors, ok = [], []
            for p in todo[start:start + batch_size]:
                try:
                    tensors.append(tf(load_image(p)))
                    ok.append(p)
                except ImageLoadError as exc:
                    skipped.append((p, exc.reason))
            if tensors:
                with torch.inference_mode():
                    out = model(torch.stack(tensors).to(model_cache.device)).float().cpu().numpy()
                new_paths += ok
                new_vecs += list(out.astype(np.float32))
            done = min(start + batch_size, len(todo))
            now = time.monotonic()
            if now - last >= progress_interval or done == len(todo):
                last = now
                progress(done, len(todo), f"indexing {done}/{len(todo)}")
        all_paths = keep_paths + new_paths
        all_stats = keep_stats + [stats[p] for p in new_paths]
        vec_list = keep_vecs + new_vecs
        dim = int(getattr(model, "dim", 0) or (len(vec_list[0]) if vec_list else 0))
        vecs = np.stack(vec_list).astype(np.float32) if vec_list else np.zeros((0, dim), np.float32)
        order = np.argsort(np.array(all_paths, dtype=object), kind="stable") if all_paths else np.array([], int)
        all_paths = [all_paths[i] for i in order]
        all_stats = [all_stats[i] for i in order]
        vecs = vecs[order] if len(order) else vecs
        if new_paths or removed or loaded is None:
            self._save(key, all_paths, all_stats, vecs)
        with self._lock:
            self._store[key] = (all_paths, vecs)
            self._hnsw.pop(key, None)
        return IndexState(key, len(paths), len(all_paths), len(new_paths), removed, skipped, cancelled,
                          time.monotonic() - t0)

    # -- search --------------------------------------------------------------------------------
    def _hnsw_index(self, key: ModelKey, vecs: np.ndarray):
        with self._lock:
            idx = self._hnsw.get(key)
        if idx is not None:
            return idx
        try:
            from engine.index import make_index
        except ImportError:
            return None
        idx = make_index("hnsw", metric="cosine", dim=int(vecs.shape[1]))
        idx.add(vecs, np.arange(len(vecs)))
        with self._lock:
            self._hnsw[key] = idx
        return idx

    def search_vector(self, key: ModelKey, q: np.ndarray, options: SearchOptions,
                      exclude: str | None = None) -> tuple[list[Hit], str]:
        """Rank the indexed images for one query vector (D,); returns (hits, method used)."""
        stored = self.vectors(key)
        if stored is None:
            raise RuntimeError(f"{DESCRIPTOR_TITLES.get(key.descriptor, key.descriptor)} is not indexed yet")
        paths, vecs = stored
        if len(paths) == 0:
            return [], "empty"
        k = max(1, int(options.k))
        extra = 1 if exclude else 0

        def rank(qv: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, str]:
            n = min(n, len(paths))
            if not options.exact:
                idx = self._hnsw_index(key, vecs)
                if idx is not None:
                    ids, scores = idx.query(qv[None, :].astype(np.float32), n)
                    return np.asarray(ids).reshape(-1), np.asarray(scores).reshape(-1), "HNSW"
            s = vecs @ qv
            top = np.argpartition(-s, n - 1)[:n] if n < len(s) else np.arange(len(s))
            top = top[np.argsort(-s[top], kind="stable")]
            return top, s[top], "exact"

        q = q.astype(np.float32)
        ids, scores, method = rank(q, k + extra)
        if options.query_expansion > 0:  # average query expansion over the top n
            top = [i for i in ids if paths[i] != exclude][: options.query_expansion]
            q2 = q + vecs[top].sum(0)
            q = q2 / max(float(np.linalg.norm(q2)), 1e-12)
            ids, scores, method = rank(q, k + extra)
            method += f" + QE{options.query_expansion}"
        hits = []
        for i, s in zip(ids, scores, strict=True):
            if i < 0 or paths[i] == exclude:
                continue
            if options.threshold is not None and s < options.threshold:
                continue
            hits.append(Hit(paths[i], float(s), len(hits) + 1, self.label_of(paths[i])))
            if len(hits) >= k:
                break
        return hits, method


def _stat(p: str) -> tuple[float, int]:
    st = os.stat(p)
    return (st.st_mtime, st.st_size)


def run_query(index: FolderIndex, model_cache: ModelCache, key: ModelKey, query: str,
              options: SearchOptions) -> SearchResult:
    """Describe the query image and search (runs on a worker thread)."""
    t0 = time.monotonic()
    vec = embed_images(model_cache, key, [query])[0]
    inside = index.label_of(query) is not None or Path(query).resolve().parent == index.folder
    exclude = str(Path(query).resolve()) if (options.exclude_query and inside) else None
    hits, method = index.search_vector(key, vec, options, exclude=exclude)
    return SearchResult(key, query, index.label_of(query), hits, vec, time.monotonic() - t0, method, options)


def ensure_and_query(index: FolderIndex, model_cache: ModelCache, key: ModelKey, query: str,
                     options: SearchOptions, progress: ProgressFn | None = None,
                     should_stop: ShouldStopFn | None = None) -> SearchResult | None:
    """Index ``key`` when needed, then query (the comparison view's second descriptor)."""
    if not index.has_index(key):
        state = index.update(model_cache, key, progress=progress, should_stop=should_stop)
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
        d = desc.float()
        result.score = float(d[0] @ d[1])
        if key.descriptor == "rmac":
            result.regions = _rmac_shares(model, fmap[0:1], d[1], size, rmac_levels)
    return result


def _rmac_shares(model, fmap, other_desc, size: int, levels: int) -> list[RegionShare]:
    import torch

    h, w = fmap.shape[-2:]
    with torch.inference_mode():
        r = _l2n(region_vectors(fmap.float(), levels)[0])  # (R, C)
        whitening = getattr(model, "whitening", None)
        if whitening is not None:
            r = _l2n(torch.as_tensor(whitening.apply(r), dtype=torch.float32))
        total = r.sum(0)
        contrib = (r @ other_desc.float()) / total.norm().clamp_min(1e-12)
    score = float(contrib.sum())
    sy, sx = size / h, size / w
    out = []
    for (y, x, rh, rw), c in zip(rmac_regions(h, w, levels), contrib.tolist(), strict=True):
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
