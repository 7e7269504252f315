"""Regions: where in a result image a query matches best (issue 28's region queries).

A region QUERY is described by the one image->vector path (engine.session.embed_images with a box: the
region cropped from the decoded image, then resized as any image). This module answers the other side:
for each shown result, the part of it that matches the query best. Feature maps of results are not stored,
so they are computed on demand, on the runtime (engine.session.ModelCache.features), for the few results
shown; each candidate region of the map (the R-MAC grid of models.pooling.rmac_regions, plus square sliding
windows) is pooled by the descriptor's own head (``describe``: pooling, whitening, L2) and scored against
the query vector; the best one is mapped back to the result's pixels (engine.images.crop_geometry: the
inverse of the network input's resize and centre crop). The result's map is computed at twice the index's
input size (:data:`DETAIL_SCALE`): an object a third of a result's side is then seen at the scale the
query's region has. A region query's first :data:`RERANK_DEPTH` hits are re-ordered by that best region's
score (:func:`rerank_result`, for the window and `search --box` alike): on cub100 composites it is what
lifts a region query more than 10 mAP points above the whole-image query (docs/BENCHMARKS.md).

No Qt: the window runs :func:`best_regions` in a worker (retrieval_gui.workers.LatestTask).
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from engine.callbacks import ProgressFn, ShouldStopFn, resolve
from engine.images import Box, ImageLoadError, clip_box, crop_geometry, file_stamp, shown_size
from engine.vocabulary import MAX_IMAGE_SIZE, ModelSpec

#: (y, x, h, w) in feature-map cells, as models.pooling.Region
Cells = tuple[int, int, int, int]

#: The candidate regions, chosen on cub100's TRAINING classes by benchmarks/regions.py (the share of
#: relevant hits whose region overlaps the pasted bird, IoU >= 0.3): R-MAC grid levels (models.pooling's
#: grid; 0 = none), and the sides of the square sliding windows as shares of the map's shorter side (stride
#: one cell). Sliding windows of 0.4 and 0.6 alone won (0.862 of the regions on the bird, against 0.634 at
#: best with the L=3 grid added and 0.270 for the grid alone, whose largest region, the whole square map,
#: wins too often).
REGION_LEVELS = 0
SLIDING_SIDES: tuple[float, ...] = (0.4, 0.6)

#: Results are described for their best region at DETAIL_SCALE x the index's input size (448 for 224): an
#: object filling a third of a result is seen at about the scale it has in the query's region. Chosen on
#: cub100's TRAINING classes (benchmarks/regions.py: the 20 first hits re-ordered by their best region at
#: 224 / 320 / 448 gave mAP 0.180 / 0.225 / 0.267, the whole-image query 0.138).
DETAIL_SCALE = 2.0
#: A region query's first RERANK_DEPTH hits are re-ordered by their best region's score (whatever k is, so
#: that every k agrees on the order): the cost is one network pass at the detail size per hit (measured in
#: benchmarks/regions.py); deeper gains more (train: 0.319 at 50, 0.357 at 100) and costs more.
RERANK_DEPTH = 20
#: A hit whose whole image matches the region at least this well (cosine) is a copy of what the region shows
#: (or the object alone): it stays ahead of the re-ordered hits, by its whole-image score. The lowest level
#: that loses nothing on the TRAINING classes (K=20: 0.80 -> 0.265, 0.85 / 0.90 / 0.95 -> 0.267, the
#: regions alone); without it an image that is the region itself can lose its first place to a region of a
#: look-alike.
COPY_SCORE = 0.85


@dataclass(frozen=True)
class RegionMatch:
    """The best-matching region of one image: ``box`` in pixels of the image as shown (EXIF orientation
    applied), ``size`` that image's (width, height), ``score`` the region's descriptor . the query."""

    path: str
    box: Box
    size: tuple[int, int]
    score: float

    @property
    def fraction(self) -> tuple[float, float, float, float]:
        """``box`` as shares of the image's width and height (:func:`box_fraction`): for any view of it."""
        return box_fraction(self.box, self.size)


def box_fraction(box: Box, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """A box in pixels of a ``size`` = (width, height) image -> (x, y, w, h) as shares of width and height."""
    w, h = size
    x, y, bw, bh = box
    return x / w, y / h, bw / w, bh / h


def fraction_box(fraction: Sequence[float], size: tuple[int, int]) -> Box:
    """The inverse of :func:`box_fraction` (rounded to whole pixels, clipped to the image; ValueError when
    nothing of it lies inside): how a rectangle drawn on any view of the image becomes its pixels."""
    w, h = size
    fx, fy, fw, fh = (float(v) for v in fraction)
    x0, y0 = int(round(fx * w)), int(round(fy * h))
    x1, y1 = int(round((fx + fw) * w)), int(round((fy + fh) * h))
    return clip_box((x0, y0, max(1, x1 - x0), max(1, y1 - y0)), w, h)


def candidate_regions(h: int, w: int, levels: int = REGION_LEVELS,
                      sliding: Sequence[float] = SLIDING_SIDES) -> list[Cells]:
    """The regions (y, x, h, w) of an ``h`` x ``w`` map scored for the best match: the R-MAC grid of
    ``levels`` levels without the whole map (models.pooling.rmac_regions), then square windows of side
    round(share x min(h, w)) cells for each share of ``sliding`` at every position; duplicates dropped."""
    from models.pooling import rmac_regions

    out: list[Cells] = list(rmac_regions(h, w, levels, whole_map=False)) if levels > 0 else []
    for share in sliding:
        side = max(1, min(min(h, w), int(round(share * min(h, w)))))
        out += [(y, x, side, side) for y in range(h - side + 1) for x in range(w - side + 1)]
    seen: set[Cells] = set()
    unique = [r for r in out if not (r in seen or seen.add(r))]
    if not unique:  # a 1-cell map
        unique = [(0, 0, h, w)]
    return unique


def region_descriptors(model: Any, fmap: Any, regions: Sequence[Cells]) -> Any:
    """Each region's descriptor: ``fmap`` (B, C, h, w) torch -> (B, R, D) torch, ``model.describe`` (the
    descriptor's head: pooling, whitening, L2) of the map inside the region; regions of one size are
    described in one batch."""
    import torch

    b = fmap.shape[0]
    out: Any = None
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, (_y, _x, rh, rw) in enumerate(regions):
        by_size.setdefault((rh, rw), []).append(i)
    if getattr(model, "kind", None) in _WINDOW_POOLS and hasattr(model, "finish"):
        return _window_descriptors(model, fmap, regions, by_size)
    for (rh, rw), idx in by_size.items():
        crops = torch.cat([fmap[:, :, y:y + rh, x:x + rw] for (y, x, _h, _w) in (regions[i] for i in idx)])
        d = model.describe(crops).float()  # (n * B, D), region-major
        if out is None:
            out = torch.empty((b, len(regions), d.shape[-1]), dtype=torch.float32, device=fmap.device)
        out[:, idx] = d.reshape(len(idx), b, -1).transpose(0, 1)
    return out


#: the heads (models.descriptors.DescriptorModel.kind) whose pooling of every window of one size is one
#: pooling pass over the whole map (stride 1): the same numbers as pooling each cut-out window, without
#: copying the windows out (which took most of best_regions' time at 448 px)
_WINDOW_POOLS = ("gem", "spoc", "mac")


def _window_descriptors(model: Any, fmap: Any, regions: Sequence[Cells], by_size: dict[tuple[int, int], list[int]]
                        ) -> Any:
    """:func:`region_descriptors` for a GeM, SPoC or MAC head: each window size pooled over the whole map at
    stride 1 (models.pooling.gem's clamp and exponent), the regions' positions picked, then the head's
    L2-normalisation and ``finish`` (whitening, L2)."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    from models.pooling import l2n

    x = fmap.float()
    b, c = x.shape[:2]
    kind = model.kind
    p = getattr(model, "gem_p", 3.0)
    base = x.clamp(min=1e-6).pow(p) if kind == "gem" else x
    out: Any = None
    for (rh, rw), idx in by_size.items():
        if kind == "mac":
            pooled = F.max_pool2d(base, (rh, rw), stride=1)
        else:
            pooled = F.avg_pool2d(base, (rh, rw), stride=1)
            if kind == "gem":
                pooled = pooled.pow(1.0 / p)
        ys = torch.tensor([regions[i][0] for i in idx], device=x.device)
        xs = torch.tensor([regions[i][1] for i in idx], device=x.device)
        v = pooled[:, :, ys, xs].permute(0, 2, 1).reshape(-1, c)  # (B * n, C), image-major
        d = model.finish(l2n(v)).float()
        if out is None:
            out = torch.empty((b, len(regions), d.shape[-1]), dtype=torch.float32, device=x.device)
        out[:, idx] = d.reshape(b, len(idx), -1)
    return out


def region_scores(model: Any, fmap: Any, query: Any, regions: Sequence[Cells]) -> Any:
    """Each region's descriptor (:func:`region_descriptors`) . ``query`` (D,): -> (B, R) torch."""
    import torch

    d = region_descriptors(model, fmap, regions)
    q = torch.as_tensor(np.asarray(query, np.float32)).to(d.device)
    return d @ q


def cells_to_box(cells: Cells, map_hw: tuple[int, int], size: tuple[int, int], image_size: int,
                 crop_fraction: float = 1.0) -> Box:
    """A region of the feature map (cells) -> pixels of the ``size`` = (width, height) image it came from:
    the map spans the network input (``image_size`` square), which is the centre crop of the image
    resized (engine.images.crop_geometry)."""
    y, x, rh, rw = cells
    mh, mw = map_hw
    width, height = size
    new_w, new_h, left, top = crop_geometry(width, height, image_size, crop_fraction)
    sy, sx = image_size / mh, image_size / mw  # input pixels per cell
    kx, ky = width / new_w, height / new_h  # image pixels per resized pixel
    x0, y0 = (x * sx + left) * kx, (y * sy + top) * ky
    x1, y1 = ((x + rw) * sx + left) * kx, ((y + rh) * sy + top) * ky
    box = (int(math.floor(x0)), int(math.floor(y0)), int(math.ceil(x1) - math.floor(x0)),
           int(math.ceil(y1) - math.floor(y0)))
    return clip_box(box, width, height)


def box_to_cells(box: Box, size: tuple[int, int], map_hw: tuple[int, int], image_size: int,
                 crop_fraction: float = 1.0) -> Cells:
    """The inverse of :func:`cells_to_box`: the cells of the map nearest to ``box``'s edges (at least one
    cell, clipped to the map: a box outside the network's centre crop keeps only its part inside)."""
    x, y, bw, bh = box
    mh, mw = map_hw
    width, height = size
    new_w, new_h, left, top = crop_geometry(width, height, image_size, crop_fraction)
    sy, sx = image_size / mh, image_size / mw

    def span(a: float, b: float, offset: int, k: float, step: float, n: int) -> tuple[int, int]:
        lo = int(round((a / k - offset) / step))
        hi = int(round((b / k - offset) / step))
        lo = min(max(lo, 0), n - 1)
        return lo, max(lo + 1, min(hi, n))

    x0, x1 = span(x, x + bw, left, width / new_w, sx, mw)
    y0, y1 = span(y, y + bh, top, height / new_h, sy, mh)
    return y0, x0, y1 - y0, x1 - x0


def region_size(model_cache: Any, spec: ModelSpec, scale: float = DETAIL_SCALE) -> int:
    """The input size whose feature map gives the regions: ``scale`` x the spec's size (the largest of a
    multi-scale spec), at most models.names.MAX_IMAGE_SIZE."""
    base = int(max(spec.scales)) if spec.scales else int(model_cache.image_size(spec))
    return max(base, min(MAX_IMAGE_SIZE, int(round(scale * base))))


def best_regions(model_cache: Any, spec: ModelSpec, paths: Sequence[str | os.PathLike], query: np.ndarray, *,
                 levels: int = REGION_LEVELS, sliding: Sequence[float] = SLIDING_SIDES, batch_size: int = 8,
                 runtime: str | None = None, progress: ProgressFn | None = None,
                 should_stop: ShouldStopFn | None = None,
                 on_event: Callable[[list[RegionMatch]], Any] | None = None) -> list[RegionMatch | None]:
    """The best-matching region of each image of ``paths`` for ``query`` (D,) (a search's query vector):
    a list aligned with ``paths`` (None for a file that cannot be read, or a model without a separate
    head); ``on_event`` receives each batch's matches as they are found. Files go through
    engine.extraction.iter_extract (decoded at the network's size in threads) and the backbone on
    ``model_cache.features`` (the runtime); stops early (the rest None) when ``should_stop``."""
    from engine.extraction import IMAGENET_MEAN, IMAGENET_STD, feature_fn, iter_extract

    progress, should_stop = resolve(progress, should_stop)
    paths = [str(p) for p in paths]
    found: dict[str, RegionMatch] = {}
    model = model_cache.get(spec)
    if not paths or not (hasattr(model, "describe") and hasattr(model, "backbone")):
        return [None] * len(paths)
    size = region_size(model_cache, spec)
    keys = {p: _memo_key(spec, runtime, levels, sliding, size, query, p) for p in paths}
    with _MEMO_LOCK:
        found.update((p, _MEMO[k]) for p, k in keys.items() if k is not None and k in _MEMO)
    if found and on_event is not None:
        on_event([found[p] for p in paths if p in found])
    todo = [p for p in paths if p not in found]
    if not todo:
        progress(len(paths), len(paths), "finding the best regions")
        return [found.get(p) for p in paths]
    run = feature_fn(model.backbone, model_cache.features(replace(spec, scales=None, image_size=size), runtime))
    bb = model.backbone
    grid: dict[tuple[int, int], list[Cells]] = {}
    maps: dict[str, tuple[int, int]] = {}

    def compute(x: Any) -> dict[str, Any]:
        import torch

        fmap = run(size, x).float()
        hw = (int(fmap.shape[-2]), int(fmap.shape[-1]))
        regions = grid.setdefault(hw, candidate_regions(hw[0], hw[1], levels, sliding))
        scores = region_scores(model, fmap, query, regions)
        best = scores.argmax(1)
        maps["hw"] = hw
        return {"best": best.to(torch.float32).unsqueeze(1), "score": scores.max(1).values.unsqueeze(1)}

    progress(len(found), len(paths), "finding the best regions")
    for batch in iter_extract(todo, compute, image_size=size, mean=getattr(bb, "mean", IMAGENET_MEAN),
                              std=getattr(bb, "std", IMAGENET_STD), crop_fraction=spec.crop_fraction,
                              batch_size=max(1, batch_size), device=model_cache.device):
        matches = []
        if batch.paths:
            hw = maps["hw"]
            regions = grid[hw]
            for p, b, s in zip(batch.paths, batch.vectors["best"][:, 0], batch.vectors["score"][:, 0], strict=True):
                try:
                    shown = shown_size(p)
                except ImageLoadError:
                    continue
                m = RegionMatch(p, cells_to_box(regions[int(b)], hw, shown, size, spec.crop_fraction), shown, float(s))
                found[p] = m
                matches.append(m)
                _remember(keys[p], m)
        if matches and on_event is not None:
            on_event(matches)
        progress(len(paths) - len(todo) + batch.done, len(paths), "finding the best regions")
        if batch.done < batch.total and should_stop():
            break
    return [found.get(p) for p in paths]


#: the latest best regions found (key: :func:`_memo_key`), so that a region query's re-ranking and the
#: window's drawing of the same results describe each result once
_MEMO: OrderedDict[tuple, RegionMatch] = OrderedDict()
_MEMO_LOCK = threading.Lock()
MEMO_SIZE = 256


def _memo_key(spec: ModelSpec, runtime: str | None, levels: int, sliding: Sequence[float], size: int,
              query: np.ndarray, path: str) -> tuple | None:
    """What a best region depends on: the model, the candidate regions, the query vector and the file as it
    is now (None: the file cannot be read; it is not remembered)."""
    try:
        stamp = file_stamp(path)
    except OSError:
        return None
    digest = hashlib.sha1(np.ascontiguousarray(query, np.float32).tobytes()).hexdigest()
    return (spec, runtime, levels, tuple(sliding), size, digest, path, *stamp)


def _remember(key: tuple | None, match: RegionMatch) -> None:
    if key is None:
        return
    with _MEMO_LOCK:
        _MEMO[key] = match
        _MEMO.move_to_end(key)
        while len(_MEMO) > MEMO_SIZE:
            _MEMO.popitem(last=False)


def rerank_hits(hits: Sequence[Any], matches: Sequence[RegionMatch | None], depth: int = RERANK_DEPTH,
                copy_score: float = COPY_SCORE) -> list[Any]:
    """A region query's hits (engine.search.SearchHit, best first, ``score`` the whole image's) with the first
    ``depth`` re-ordered: those scoring at least ``copy_score`` first (by that score), then the others by their
    best region's score (``matches``, aligned with the hits), which becomes their score (no match: the whole
    image's); ties keep their order; ranks from 1. The hits after ``depth`` follow unchanged."""
    top = list(hits[:depth])
    matches = list(matches[:len(top)]) + [None] * (len(top) - len(matches))
    keys = [(1, float(h.score)) if float(h.score) >= copy_score else (0, m.score if m is not None else float(h.score))
            for h, m in zip(top, matches, strict=True)]
    order = sorted(range(len(top)), key=lambda i: (-keys[i][0], -keys[i][1]))
    out = [replace(top[i], score=keys[i][1]) for i in order] + list(hits[depth:])
    return [replace(h, rank=r + 1) for r, h in enumerate(out)]


def region_options(options: Any, depth: int = RERANK_DEPTH) -> Any:
    """The engine.search.SearchOptions a region query searches with: at least ``depth`` hits, so that
    :func:`rerank_result` re-orders the same first hits whatever ``k`` is asked."""
    return replace(options, k=max(int(options.k), depth))


def rerank_result(result: Any, model_cache: Any, k: int, depth: int = RERANK_DEPTH, **kwargs: Any) -> Any:
    """A region query's engine.session.SearchResult (searched with :func:`region_options`) with its first
    ``depth`` hits re-ordered by their best region (:func:`best_regions` at the detail size; ``kwargs`` go
    to it) and cut to ``k`` hits. Measured on cub100 composites (benchmarks/regions.py, docs/BENCHMARKS.md)."""
    hits = list(result.hits)
    matches = best_regions(model_cache, result.spec, [h.path for h in hits[:depth]], result.vector, **kwargs)
    return replace(result, hits=rerank_hits(hits, matches, depth)[:k], options=replace(result.options, k=k))


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (x, y, w, h)."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0
