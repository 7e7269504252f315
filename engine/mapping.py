"""A map of a collection: 2-D coordinates of its descriptors where similar images sit together.

:func:`compute_map` reduces (N, D) L2-normalised vectors to (N, 2): a PCA to ``PCA_DIMS`` dimensions
first (it keeps the neighbourhoods and makes the neighbour search cheap), then t-SNE (openTSNE, the
default) or UMAP (umap-learn, when installed), as benchmarks/map.py measured them (speed, and the share
of each point's 10 nearest neighbours in 2-D that are among its 10 nearest in the descriptor space).
Collections too small for a neighbour graph (fewer than ``MIN_EMBED`` images) are laid out by PCA alone.

:func:`collection_map` caches the result beside the collection: ``<state_dir>/map-<method>.npz``
(written atomically, read back with ``allow_pickle=False``) for one commit of the collection; a new
commit (images added, changed, removed) computes it again. With ``isolate=True`` the computation runs
in a child process, so that a window's thread never waits for numba or LLVM holding the interpreter,
and a cancel ends it at once.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.atomic import atomic_open
from engine.callbacks import Cancelled, ProgressFn, ShouldStopFn, resolve

log = logging.getLogger(__name__)

METHODS = ("umap", "tsne", "pca")
#: chosen by benchmarks/map.py (docs/BENCHMARKS.md, "Map of the collection"): on cub100 openTSNE was faster
#: than UMAP (85 s against 104-131 s on 2 loaded cores) and kept more of each image's 10 nearest neighbours
#: (0.44 against 0.32); UMAP (umap-learn, not a dependency) stays available as method "umap"
DEFAULT_METHOD = "tsne"
PCA_DIMS = 50
#: below this many images the map is the PCA plane (a neighbour graph needs more points)
MIN_EMBED = 16
MAP_FORMAT = 1


@dataclass
class CollectionMap:
    """Row i: ``coords[i]`` (x, y) in [-1, 1] (N, 2) float32 for ``relpaths[i]`` / ``paths[i]`` with
    ``labels[i]`` (sub-folder name or None). ``generation``: the collection commit it belongs to;
    ``cached``: read from the cache file; ``seconds``: the time the computation took."""

    coords: np.ndarray
    relpaths: list[str]
    paths: list[str]
    labels: list[str | None]
    method: str
    generation: str | None
    seconds: float
    cached: bool = False

    def __len__(self) -> int:
        return int(self.coords.shape[0])


def _pca(x: np.ndarray, dims: int) -> np.ndarray:
    """(N, D) -> (N, min(dims, N, D)) projections on the principal axes, largest variance first."""
    x = np.asarray(x, np.float32)
    x = x - x.mean(0, keepdims=True)
    k = int(min(dims, x.shape[0], x.shape[1]))
    # the covariance route: (D, D) is small next to (N, D) for the collections we map
    cov = (x.T @ x).astype(np.float64)
    vals, vecs = np.linalg.eigh(cov)
    top = vecs[:, np.argsort(vals)[::-1][:k]].astype(np.float32)
    return x @ top


def _normalise(xy: np.ndarray) -> np.ndarray:
    """Centre and scale (N, 2) into [-1, 1] (aspect kept)."""
    xy = np.asarray(xy, np.float32)
    if xy.shape[0] == 0:
        return xy.reshape(0, 2)
    xy = xy - (xy.max(0) + xy.min(0)) / 2
    span = float(np.abs(xy).max())
    return (xy / span if span > 0 else xy).astype(np.float32)


def compute_map(vectors: np.ndarray, method: str = DEFAULT_METHOD, *, seed: int = 0, pca_dims: int = PCA_DIMS,
                threads: int | None = None, progress: ProgressFn | None = None,
                should_stop: ShouldStopFn | None = None) -> np.ndarray:
    """2-D coordinates (N, 2) float32 in [-1, 1] of ``vectors`` (N, D) by ``method`` ('umap', 'tsne' or
    'pca'). Raises Cancelled when ``should_stop()`` says so (checked between phases; t-SNE also every 50
    iterations)."""
    if method not in METHODS:
        raise ValueError(f"unknown map method {method!r}; valid: {', '.join(METHODS)}")
    report, stop = resolve(progress, should_stop)
    x = np.asarray(vectors, np.float32)
    n = x.shape[0]
    if n == 0:
        return np.zeros((0, 2), np.float32)
    if n == 1:
        return np.zeros((1, 2), np.float32)
    threads = threads or max(1, os.cpu_count() or 1)
    report(0, 0, "reducing to principal components")
    reduced = _pca(x, pca_dims)
    if stop():
        raise Cancelled("map stopped")
    if method == "pca" or n < MIN_EMBED:
        xy = reduced[:, :2] if reduced.shape[1] >= 2 else np.pad(reduced, ((0, 0), (0, 2 - reduced.shape[1])))
        return _normalise(xy)
    if method == "umap":
        report(0, 0, "UMAP: neighbour graph and layout")
        try:
            import umap
        except ModuleNotFoundError as exc:
            raise RuntimeError("the map method 'umap' needs the umap-learn package (pip install umap-learn); "
                               "the default method, t-SNE, does not") from exc

        model = umap.UMAP(n_neighbors=min(15, n - 1), min_dist=0.1, metric="euclidean", random_state=seed,
                          n_jobs=1, low_memory=True, init="spectral" if n > 4 * 15 else "random")
        xy = model.fit_transform(reduced)
    else:
        import openTSNE

        report(0, 0, "t-SNE: neighbour graph")
        iters = [0]

        def callback(iteration: int, error: float, embedding: Any) -> bool:
            iters[0] += 50
            report(iters[0], 750, "t-SNE: layout")
            return bool(stop())

        tsne = openTSNE.TSNE(perplexity=min(30.0, max(2.0, (n - 1) / 3.0)), n_jobs=threads, random_state=seed,
                             callbacks=callback, callbacks_every_iters=50, verbose=False)
        xy = np.asarray(tsne.fit(reduced))
        if stop():
            raise Cancelled("map stopped")
    return _normalise(xy)


# --- in a child process --------------------------------------------------------------------------
def _child(in_path: str, out_path: str, method: str, seed: int, threads: int) -> None:
    """Child process entry: vectors from ``in_path`` (.npy) -> coordinates into ``out_path`` (.npy)."""
    x = np.load(in_path, allow_pickle=False)
    np.save(out_path, compute_map(x, method, seed=seed, threads=threads), allow_pickle=False)


def compute_map_isolated(vectors: np.ndarray, method: str = DEFAULT_METHOD, *, seed: int = 0,
                         threads: int | None = None, progress: ProgressFn | None = None,
                         should_stop: ShouldStopFn | None = None, poll_s: float = 0.1) -> np.ndarray:
    """:func:`compute_map` in a child process (spawned): the calling thread only waits, polling
    ``should_stop`` every ``poll_s`` seconds (a stop ends the child and raises Cancelled)."""
    report, stop = resolve(progress, should_stop)
    x = np.asarray(vectors, np.float32)
    if x.shape[0] < MIN_EMBED or method == "pca":  # numpy only: no need for a process
        return compute_map(x, method, seed=seed, progress=report, should_stop=stop)
    with tempfile.TemporaryDirectory(prefix="retrieval-explorer-map-") as tmp:
        src, dst = Path(tmp) / "vectors.npy", Path(tmp) / "coords.npy"
        np.save(src, x, allow_pickle=False)
        ctx = multiprocessing.get_context("spawn")
        args = (str(src), str(dst), method, seed, threads or os.cpu_count() or 1)
        proc = ctx.Process(target=_child, args=args, daemon=True, name="retrieval-explorer-map")
        proc.start()
        start = time.monotonic()
        try:
            while proc.is_alive():
                proc.join(poll_s)
                if stop():
                    raise Cancelled("map stopped")
                report(0, 0, f"computing the map ({method.upper() if method != 'tsne' else 't-SNE'}, "
                             f"{time.monotonic() - start:.0f} s)")
        finally:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        if proc.exitcode != 0 or not dst.is_file():
            raise RuntimeError(f"computing the map failed (child process exit code {proc.exitcode}); run "
                               "`retrieval-explorer map` in a terminal to see why")
        return np.load(dst, allow_pickle=False).astype(np.float32)


# --- the cache -----------------------------------------------------------------------------------
def map_path(collection: Any, method: str = DEFAULT_METHOD) -> Path:
    """The cache file of ``collection``'s map by ``method``: ``<state_dir>/map-<method>.npz``."""
    return Path(collection.state_dir) / f"map-{method}.npz"


def load_cached_map(collection: Any, method: str = DEFAULT_METHOD) -> CollectionMap | None:
    """The cached map of the collection's current commit, or None (missing, stale, damaged)."""
    path = map_path(collection, method)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            fmt = int(z["format"])
            generation = str(z["generation"])
            coords = np.asarray(z["coords"], np.float32)
            relpaths = [str(p) for p in z["relpaths"].tolist()]
            seconds = float(z["seconds"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.info("map cache %s unusable (%s): computed again", path, exc)
        return None
    if fmt != MAP_FORMAT or generation != str(collection.generation) or relpaths != collection.relpaths \
            or coords.shape != (len(relpaths), 2):
        return None
    return CollectionMap(coords, relpaths, collection.paths, collection.labels, method, generation, seconds,
                         cached=True)


def save_map(collection: Any, m: CollectionMap) -> Path:
    """Write ``m`` as the collection's cached map (atomically); returns the file."""
    path = map_path(collection, m.method)
    rel = np.array(m.relpaths, dtype=str) if m.relpaths else np.zeros(0, dtype="<U1")
    with atomic_open(path, "wb") as fh:
        np.savez(fh, format=np.int64(MAP_FORMAT), generation=np.array(str(m.generation)), coords=m.coords,
                 relpaths=rel, seconds=np.float64(m.seconds), method=np.array(m.method))
    return path


def collection_map(collection: Any, method: str = DEFAULT_METHOD, *, recompute: bool = False,
                   isolate: bool = False, seed: int = 0, save: bool = True,
                   progress: ProgressFn | None = None,
                   should_stop: ShouldStopFn | None = None) -> CollectionMap:
    """The map of ``collection`` (engine.collection.Collection): from the cache when it belongs to the
    current commit, else computed (in a child process when ``isolate``) and cached (when ``save`` and the
    collection has a commit). Raises Cancelled when stopped."""
    report, stop = resolve(progress, should_stop)
    if method not in METHODS:
        raise ValueError(f"unknown map method {method!r}; valid: {', '.join(METHODS)}")
    if not recompute and collection.is_saved:
        cached = load_cached_map(collection, method)
        if cached is not None:
            return cached
    relpaths, paths, labels = collection.relpaths, collection.paths, collection.labels
    vectors = collection.vectors
    generation = collection.generation
    start = time.perf_counter()
    run = compute_map_isolated if isolate else compute_map
    coords = run(vectors, method, seed=seed, progress=report, should_stop=stop)
    m = CollectionMap(coords, relpaths, paths, labels, method, generation, time.perf_counter() - start)
    if save and collection.is_saved and len(relpaths):
        try:
            save_map(collection, m)
        except OSError as exc:  # a read-only cache: the map is still shown, computed again next time
            log.warning("cannot cache the map in %s: %s", collection.state_dir, exc)
    return m


# --- measures ------------------------------------------------------------------------------------
def knn_preservation(vectors: np.ndarray, coords: np.ndarray, k: int = 10, sample: int | None = 2000,
                     seed: int = 0) -> float:
    """The mean share of each point's ``k`` nearest neighbours in 2-D (``coords`` (N, 2), Euclidean) that
    are among its ``k`` nearest in the descriptor space (``vectors`` (N, D) L2-normalised, cosine), over
    ``sample`` random points (all when None); exact neighbours, the point itself left out."""
    x = np.asarray(vectors, np.float32)
    xy = np.asarray(coords, np.float32)
    n = x.shape[0]
    if n <= k:
        return float("nan")
    if sample is None or sample >= n:
        rows = np.arange(n)
    else:
        rows = np.random.default_rng(seed).choice(n, sample, replace=False)
    shares = []
    chunk = max(8, min(512, 4_000_000 // n))  # (chunk, N) blocks of a few tens of MB
    for start in range(0, rows.size, chunk):
        r = rows[start:start + chunk]
        s = x[r] @ x.T
        s[np.arange(r.size), r] = -np.inf
        hi = np.argpartition(-s, k, axis=1)[:, :k]
        d = ((xy[r, None, :] - xy[None, :, :]) ** 2).sum(-1)
        d[np.arange(r.size), r] = np.inf
        lo = np.argpartition(d, k, axis=1)[:, :k]
        shares.extend(len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(hi, lo, strict=True))
    return float(np.mean(shares))


def label_colours(labels: list[str | None]) -> np.ndarray:
    """(N, 3) uint8 RGB: one colour per distinct label (hues spread by the golden ratio over the sorted
    labels), grey for None."""
    import colorsys

    n = len(labels)
    if n == 0:
        return np.zeros((0, 3), np.uint8)
    names, inverse = np.unique(np.array(["" if lab is None else "\x00" + lab for lab in labels]),
                               return_inverse=True)
    table = np.zeros((len(names), 3), np.uint8)
    for k, name in enumerate(names.tolist()):
        if name == "":
            table[k] = (150, 150, 150)
            continue
        h = (k * 0.618033988749895) % 1.0
        s, v = (0.75, 0.85) if k % 2 == 0 else (0.55, 0.7)
        table[k] = [int(round(255 * c)) for c in colorsys.hsv_to_rgb(h, s, v)]
    return table[inverse.reshape(-1)]
