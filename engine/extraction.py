"""Batched descriptor extraction: image files -> L2-normalised float32 vectors.

A torch ``Dataset`` loads and transforms each file (bad files become a reason, not an exception), a
``DataLoader`` batches them with a collate that drops the failures, and the model runs under
``torch.inference_mode`` on the requested device. Progress is reported after every batch and
``should_stop`` is polled between batches (a partial result comes back with ``cancelled=True``).

The model is duck-typed on the contract of ``models/`` (docs/ARCHITECTURE.md): a ``DescriptorModel``
(``forward(x) -> (B, D)``, ``describe(fmap) -> (B, D)``, ``.backbone``) or a ``Backbone``
(``forward_features``, ``forward_head``, ``mean``, ``std``, ``default_image_size``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from engine.callbacks import Cancelled, ProgressFn, ShouldStopFn, resolve
from engine.decoding import (
    READ_AHEAD_BATCHES,
    ExtractedBatch,
    SkippedImage,
    default_decode_threads,
    prepare_file,
    threaded_items,
)
from engine.images import (
    DEFAULT_MAX_PIXELS,
    Box,
    build_transform,
    resize_side,
)
from engine.vocabulary import ModelSpec
from models.descriptors import build_descriptor
from models.registry import get_backbone

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ExtractionResult:
    """``vectors`` (N, D) float32, row i belonging to ``paths[i]``; files that could not be used are in
    ``skipped``; ``cancelled`` is True when should_stop ended the run early (the rows are then a prefix
    of the requested files). ``seconds`` is the wall time of the run (loading included)."""

    vectors: np.ndarray
    paths: list[str]
    skipped: list[SkippedImage] = field(default_factory=list)
    cancelled: bool = False
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        """Throughput over the images that were read (used or skipped)."""
        n = len(self.paths) + len(self.skipped)
        return n / self.seconds if self.seconds > 0 else 0.0


# --- the data side -------------------------------------------------------------------------------
class ImageFileDataset(Dataset):
    """Item i -> (i, tensor (3, S, S)) or (i, reason: str) when the file cannot be used.

    ``min_side``: decode at least this many pixels on the shorter side (JPEG DCT scaling, see
    engine.images.load_image); None decodes in full. ``boxes``: per file None or a Box (pixels of the
    image as shown): that region alone is the image (a region query); such a file is decoded in full."""

    def __init__(self, paths: Sequence[str | os.PathLike], transform: Callable[[Any], torch.Tensor],
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, min_side: int | None = None,
                 boxes: Sequence[Box | None] | None = None) -> None:
        self.paths = [str(p) for p in paths]
        self.transform = transform
        self.max_pixels = max_pixels
        self.min_side = min_side
        self.boxes = list(boxes) if boxes is not None else [None] * len(self.paths)
        if len(self.boxes) != len(self.paths):
            raise ValueError(f"{len(self.boxes)} boxes for {len(self.paths)} files")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        return i, prepare_file(self.paths[i], self.transform, self.max_pixels, self.min_side, self.boxes[i])


class MultiScaleTransform:
    """PIL image -> a tuple of tensors (3, S, S), one per size, each made from the image itself."""

    def __init__(self, sizes: Sequence[int], mean: Sequence[float], std: Sequence[float],
                 crop_fraction: float = 1.0) -> None:
        self.sizes = tuple(int(s) for s in sizes)
        self.transforms = [build_transform(s, mean, std, crop_fraction) for s in self.sizes]

    def __call__(self, img: Any) -> tuple[torch.Tensor, ...]:
        return tuple(t(img) for t in self.transforms)


def _is_item(t: Any) -> bool:
    return isinstance(t, torch.Tensor) or (isinstance(t, tuple) and all(isinstance(v, torch.Tensor) for v in t))


def collate_drop_failures(items: list[tuple[int, Any]]) -> tuple[list[int], Any, list[tuple[int, str]]]:
    """Batch the good items, set the failures aside: -> (indices, (B, 3, S, S) or None, [(index, reason)]);
    items that are tuples of tensors (multi-scale) batch to a tuple of (B, 3, S_s, S_s)."""
    good = [(i, t) for i, t in items if _is_item(t)]
    bad = [(i, t) for i, t in items if not _is_item(t)]
    if not good:
        return [], None, bad
    first = good[0][1]
    if isinstance(first, tuple):
        return [i for i, _ in good], tuple(torch.stack([t[k] for _, t in good]) for k in range(len(first))), bad
    return [i for i, _ in good], torch.stack([t for _, t in good]), bad


def _backbone_of(model: nn.Module) -> nn.Module:
    return getattr(model, "backbone", model)


def input_spec(model: nn.Module, image_size: int | Sequence[int] | None) -> tuple[Any, tuple, tuple]:
    """(size, mean, std) of the model's input; size is a tuple of sizes for a multi-scale model (its
    ``scales``, or ``image_size`` given as a sequence of more than one), else an int."""
    bb = _backbone_of(model)
    scales = getattr(model, "scales", None)
    if isinstance(image_size, (list, tuple)):
        scales, image_size = (tuple(image_size), None) if len(image_size) > 1 else (None, image_size[0])
    size: Any = image_size or getattr(bb, "default_image_size", None) or 224
    if scales and len(scales) > 1:
        size = tuple(int(s) for s in scales)
    elif scales:
        size = scales[0]
    mean = tuple(getattr(bb, "mean", IMAGENET_MEAN))
    std = tuple(getattr(bb, "std", IMAGENET_STD))
    return (size if isinstance(size, tuple) else int(size)), mean, std




def input_sizes(size: int | Sequence[int]) -> tuple[int, ...]:
    """An image size or a sequence of them -> a tuple of sizes."""
    return tuple(int(s) for s in size) if isinstance(size, (list, tuple)) else (int(size),)




def _batches(
    paths: Sequence[str], transform: Callable, *, batch_size: int, num_workers: int, device: torch.device,
    max_pixels: int | None, min_side: int | None = None, decode_threads: int = 0,
    boxes: Sequence[Box | None] | None = None,
) -> Iterator[tuple[list[int], torch.Tensor | None, list[tuple[int, str]], int]]:
    """Yield (indices, x on device or None, failures, n_items_in_batch).

    ``num_workers`` > 0 decodes in DataLoader processes; else ``decode_threads`` > 0 decodes in that
    many threads (engine.decoding.READ_AHEAD_BATCHES batches ahead) while the caller runs the model; 0 decodes in line."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    cuda = device.type == "cuda"
    dataset = ImageFileDataset(paths, transform, max_pixels=max_pixels, min_side=min_side, boxes=boxes)
    if num_workers > 0 or decode_threads <= 0:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            collate_fn=collate_drop_failures, pin_memory=cuda)
        batches: Iterator = iter(loader)
    else:
        def grouped() -> Iterator:
            items: list = []
            for item in threaded_items(dataset.__getitem__, len(dataset), decode_threads,
                                       READ_AHEAD_BATCHES * batch_size):
                items.append(item)
                if len(items) == batch_size:
                    yield collate_drop_failures(items)
                    items = []
            if items:
                yield collate_drop_failures(items)

        batches = grouped()
    for idx, x, bad in batches:
        if isinstance(x, tuple):
            x = tuple(t.to(device, non_blocking=cuda) for t in x)
        elif x is not None:
            x = x.to(device, non_blocking=cuda)
        yield idx, x, bad, len(idx) + len(bad)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy().astype(np.float32, copy=False)


def _empty(dim: int | None) -> np.ndarray:
    return np.zeros((0, dim or 0), dtype=np.float32)


def _model_dim(model: nn.Module) -> int | None:
    d = getattr(model, "dim", None)
    return int(d) if isinstance(d, int) else None


# --- the public functions ------------------------------------------------------------------------
def iter_extract(paths: Sequence[str | os.PathLike], compute: Callable[[Any], dict[str, torch.Tensor]], *,
                 image_size: int | Sequence[int], mean: Sequence[float], std: Sequence[float],
                 crop_fraction: float = 1.0,
                 batch_size: int = 32, num_workers: int = 0, decode_threads: int | None = None,
                 device: str | torch.device = "cpu", max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 draft: bool = True, boxes: Sequence[Box | None] | None = None) -> Iterator[ExtractedBatch]:
    """Stream ``paths`` through ``compute(x (B, 3, S, S)) -> {name: (B, D)}`` batch by batch.

    Files are decoded at the size the network needs (``draft``: JPEG DCT scaling to the resize side),
    by ``decode_threads`` threads (None: one per core) while the model runs, or by ``num_workers``
    DataLoader processes. Bad files are reported in the batch's ``skipped``. The caller decides when
    to stop: it simply stops iterating.

    ``image_size`` a sequence of sizes (multi-scale): every image is resized from the decoded file to
    each size and ``compute`` receives a tuple of (B, 3, S_s, S_s), one per size, in that order.

    ``boxes`` (one per path, None or an engine.images.Box): the file's region alone goes through the
    network (a region query: cropped from the decoded image, then resized and cropped as any image)."""
    dev = torch.device(device)
    sizes = input_sizes(image_size)
    transform: Callable = (build_transform(sizes[0], mean, std, crop_fraction) if len(sizes) == 1
                           else MultiScaleTransform(sizes, mean, std, crop_fraction))
    paths = [str(p) for p in paths]
    threads = default_decode_threads() if decode_threads is None else decode_threads
    min_side = resize_side(max(sizes), crop_fraction) if draft else None
    done, total = 0, len(paths)
    with torch.inference_mode():
        for idx, x, bad, n in _batches(paths, transform, batch_size=batch_size, num_workers=num_workers,
                                       device=dev, max_pixels=max_pixels, min_side=min_side,
                                       decode_threads=threads, boxes=boxes):
            skipped = [SkippedImage(paths[i], reason) for i, reason in bad]
            for s in skipped:
                log.info("skipped %s: %s", s.path, s.reason)
            vectors = {name: _to_numpy(out) for name, out in compute(x).items()} if x is not None else {}
            done += n
            yield ExtractedBatch([paths[i] for i in idx], vectors, skipped, done, total)


def _extract_loop(paths: list[str], transform_spec: tuple[Any, tuple, tuple, float],
                  compute: Callable[[Any], dict[str, torch.Tensor]], *,
                  batch_size: int, num_workers: int, device: torch.device, max_pixels: int | None,
                  report: ProgressFn, stop: ShouldStopFn, boxes: Sequence[Box | None] | None = None
                  ) -> tuple[dict[str, list[np.ndarray]], list[str], list[SkippedImage], bool, float]:
    """The loop both extractors share: :func:`iter_extract` collected in memory.

    ``report`` after every batch; ``stop`` checked between batches. Returns (per name the (B, D)
    chunks, kept paths, skipped, cancelled, seconds)."""
    size, mean, std, crop = transform_spec
    chunks: dict[str, list[np.ndarray]] = {}
    kept: list[str] = []
    skipped: list[SkippedImage] = []
    cancelled = False
    total = len(paths)
    start = time.perf_counter()
    report(0, total, "extracting")
    for batch in iter_extract(paths, compute, image_size=size, mean=mean, std=std, crop_fraction=crop,
                              batch_size=batch_size, num_workers=num_workers, device=device,
                              max_pixels=max_pixels, boxes=boxes):
        skipped.extend(batch.skipped)
        for name, out in batch.vectors.items():
            chunks.setdefault(name, []).append(out)
        kept.extend(batch.paths)
        report(batch.done, total, f"{len(skipped)} skipped" if skipped else "")
        if batch.done < total and stop():
            cancelled = True
            break
    return chunks, kept, skipped, cancelled, time.perf_counter() - start


def extract_descriptors(
    model: nn.Module,
    paths: Sequence[str | os.PathLike],
    *,
    image_size: int | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    crop_fraction: float = 1.0,
    progress: ProgressFn | None = None,
    should_stop: ShouldStopFn | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    boxes: Sequence[Box | None] | None = None,
) -> ExtractionResult:
    """Run ``model`` ((B, 3, S, S) -> (B, D)) over the image files ``paths`` in order.

    The input transform comes from the model's backbone (mean, std, default_image_size; ImageNet's
    when absent): shorter side to round(S / crop_fraction), centre crop S x S. The model is moved to
    ``device`` and put in eval mode. Bad files are skipped with their reason. Returns
    ``ExtractionResult(vectors (N, D) float32, paths (N), skipped, cancelled)``."""
    report, stop = resolve(progress, should_stop)
    dev = torch.device(device)
    size, mean, std = input_spec(model, image_size)
    paths = [str(p) for p in paths]
    model = model.to(dev).eval()
    chunks, kept, skipped, cancelled, seconds = _extract_loop(
        paths, (size, mean, std, crop_fraction), lambda x: {"v": model(x)}, batch_size=batch_size, num_workers=num_workers, device=dev,
        max_pixels=max_pixels, report=report, stop=stop, boxes=boxes)
    vectors = np.concatenate(chunks["v"]) if chunks.get("v") else _empty(_model_dim(model))
    return ExtractionResult(vectors, kept, skipped, cancelled, seconds)


FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def build_model(spec: ModelSpec, device: str = "cpu", backbone: nn.Module | None = None) -> nn.Module:
    """The descriptor model (models.descriptors.DescriptorModel) of ``spec`` on ``device``, in eval mode; on
    a given ``backbone`` (shared between descriptors) or a new one."""
    if backbone is None:
        backbone = get_backbone(spec.backbone, weights=spec.weights, device=device)
    whitening = None
    if spec.whitening:  # refused unless learned for this descriptor, these sizes and vectors (issue 26)
        from engine.whitening_fit import load_whitening_for, model_sizes_and_dim

        sizes, in_dim = model_sizes_and_dim(backbone, spec.descriptor, spec.scales, spec.image_size)
        whitening = load_whitening_for(spec.whitening, descriptor=spec.descriptor, sizes=sizes, in_dim=in_dim,
                                       backbone=spec.backbone)
    return build_descriptor(spec.descriptor, backbone, whitening=whitening, scales=spec.scales).to(device).eval()


def feature_fn(backbone: nn.Module, features: FeatureFn | Mapping[int, FeatureFn] | None
               ) -> Callable[[int, torch.Tensor], torch.Tensor]:
    """``run(size, x (B, 3, S, S)) -> (B, C, h, w)``: ``features`` per size (a mapping size -> runner, as
    engine.runtime makes one per input size), one callable for every size, or the backbone in torch."""
    if features is None:
        return lambda _size, x: backbone.forward_features(x)
    if isinstance(features, Mapping):
        table = features

        def run(size: int, x: torch.Tensor) -> torch.Tensor:
            if size not in table:
                raise ValueError(f"no feature runner for input size {size} (have {sorted(table)})")
            return table[size](x)
        return run
    fn = features
    return lambda _size, x: fn(x)


def feature_maps(run: Callable[[int, torch.Tensor], torch.Tensor], sizes: Sequence[int], x: Any) -> list[torch.Tensor]:
    """The batch ``x`` ((B, 3, S, S), or a tuple of them, one per size) -> its feature map at every size."""
    xs = x if isinstance(x, tuple) else (x,)
    if len(xs) != len(sizes):
        raise ValueError(f"{len(xs)} input tensors for {len(sizes)} sizes")
    return [run(s, t) for s, t in zip(sizes, xs, strict=True)]


def _describe(head: nn.Module, fmaps: list[torch.Tensor]) -> torch.Tensor:
    return head.describe(fmaps[0]) if len(fmaps) == 1 else head.describe_scales(fmaps)


def extract_multi(
    backbone: nn.Module,
    heads: Mapping[str, nn.Module],
    paths: Sequence[str | os.PathLike],
    *,
    image_size: int | Sequence[int] | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    crop_fraction: float = 1.0,
    progress: ProgressFn | None = None,
    should_stop: ShouldStopFn | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    features: FeatureFn | Mapping[int, FeatureFn] | None = None,
    boxes: Sequence[Box | None] | None = None,
) -> dict[str, ExtractionResult]:
    """Several descriptors from one pass: per batch the feature map (B, C, h, w) once per input size
    (``image_size`` a sequence: multi-scale; ``features`` what computes the maps, see :func:`feature_fn`),
    then every head's ``describe(fmap)`` (one size) or ``describe_scales(fmaps)`` -> (B, D). Returns one
    ExtractionResult per head name (same paths, skipped and timing for all). ``boxes``: see
    :func:`iter_extract`."""
    if not heads:
        raise ValueError("extract_multi needs at least one descriptor head")
    report, stop = resolve(progress, should_stop)
    dev = torch.device(device)
    size, mean, std = input_spec(backbone, image_size)
    sizes = input_sizes(size)
    paths = [str(p) for p in paths]
    backbone = backbone.to(dev).eval()
    for h in heads.values():
        h.to(dev).eval()
    run = feature_fn(backbone, features)

    def compute(x: Any) -> dict[str, torch.Tensor]:
        fmaps = feature_maps(run, sizes, x)
        return {name: _describe(head, fmaps) for name, head in heads.items()}

    chunks, kept, skipped, cancelled, seconds = _extract_loop(
        paths, (size, mean, std, crop_fraction), compute, batch_size=batch_size, num_workers=num_workers, device=dev,
        max_pixels=max_pixels, report=report, stop=stop, boxes=boxes)
    return {
        name: ExtractionResult(
            np.concatenate(chunks[name]) if chunks.get(name) else _empty(_model_dim(heads[name])),
            list(kept), list(skipped), cancelled, seconds,
        )
        for name in heads
    }


def whitening_training_vectors(
    descriptor_kind: str,
    backbone: nn.Module,
    paths: Sequence[str | os.PathLike],
    *,
    image_size: int | Sequence[int] | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    crop_fraction: float = 1.0,
    rmac_levels: int = 3,
    gem_p: float = 3.0,
    progress: ProgressFn | None = None,
    should_stop: ShouldStopFn | None = None,
    features: FeatureFn | Mapping[int, FeatureFn] | None = None,
    return_owners: bool = False,
    skipped: list[tuple[str, str]] | None = None,
) -> Any:
    """The vectors a whitening for ``descriptor_kind`` is learned on, (M, C) float32:
    for rmac the L2-normalised regional MAC vectors (whole map and grid) of every image at every size
    (M = N x regions), for the others the descriptors before whitening (M = N; multi-scale when
    ``image_size`` is a sequence of sizes: each size's vector normalised, summed, normalised).
    ``return_owners``: returns (X, owners) with the index into ``paths`` of every row's image (M,)
    (files that could not be read are left out; ``skipped``, a list, receives their (path, reason)).
    Raises Cancelled when stopped."""
    from models import pooling
    from models.descriptors import build_descriptor

    report, stop = resolve(progress, should_stop)
    dev = torch.device(device)
    size, mean, std = input_spec(backbone, image_size)
    sizes = input_sizes(size)
    paths = [str(p) for p in paths]
    backbone = backbone.to(dev).eval()
    run = feature_fn(backbone, features)
    head = None
    if descriptor_kind != "rmac":
        head = build_descriptor(descriptor_kind, backbone, rmac_levels=rmac_levels, gem_p=gem_p).to(dev).eval()

    def compute(x: Any) -> dict[str, torch.Tensor]:
        fmaps = feature_maps(run, sizes, x)
        if head is not None:
            return {"x": _describe(head, fmaps)}
        regions = [pooling.l2n(pooling.rmac_region_vectors(f.float(), L=rmac_levels)) for f in fmaps]  # (B, R, C)
        return {"x": torch.cat(regions, 1)}

    chunks: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    position = {p: i for i, p in enumerate(paths)}
    total = len(paths)
    report(0, total, "learning whitening: extracting")
    for batch in iter_extract(paths, compute, image_size=size, mean=mean, std=std, crop_fraction=crop_fraction,
                              batch_size=batch_size, num_workers=num_workers, device=dev):
        for sk in batch.skipped:
            log.warning("whitening: skipped %s: %s", sk.path, sk.reason)
            if skipped is not None:
                skipped.append((sk.path, sk.reason))
        if batch.paths:
            x = batch.vectors["x"]  # (B, D), or (B, R, C) region vectors of every size
            per_image = x.shape[1] if x.ndim == 3 else 1
            chunks.append(x.reshape(-1, x.shape[-1]))
            owners.append(np.repeat(np.asarray([position[p] for p in batch.paths], np.int64), per_image))
        report(batch.done, total, "learning whitening: extracting")
        if batch.done < total and stop():
            raise Cancelled("whitening cancelled")
    if not chunks:
        raise ValueError("no usable image to learn the whitening from")
    X = np.concatenate(chunks)  # noqa: N806
    return (X, np.concatenate(owners)) if return_owners else X

