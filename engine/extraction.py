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
from engine.images import DEFAULT_MAX_PIXELS, ImageLoadError, build_transform, load_image

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class SkippedImage:
    """A file left out of an extraction, with the reason in plain words."""

    path: str
    reason: str


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
    """Item i -> (i, tensor (3, S, S)) or (i, reason: str) when the file cannot be used."""

    def __init__(self, paths: Sequence[str | os.PathLike], transform: Callable[[Any], torch.Tensor],
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.paths = [str(p) for p in paths]
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | str]:
        try:
            img = load_image(self.paths[i], max_pixels=self.max_pixels)
            return i, self.transform(img)
        except ImageLoadError as exc:
            return i, exc.reason
        except Exception as exc:  # a transform failure must not take the batch down either
            return i, f"cannot prepare image ({type(exc).__name__}: {exc})"


def collate_drop_failures(items: list[tuple[int, torch.Tensor | str]]) -> tuple[list[int], torch.Tensor | None,
                                                                             list[tuple[int, str]]]:
    """Batch the good items, set the failures aside: -> (indices, (B, 3, S, S) or None, [(index, reason)])."""
    good = [(i, t) for i, t in items if isinstance(t, torch.Tensor)]
    bad = [(i, t) for i, t in items if not isinstance(t, torch.Tensor)]
    if not good:
        return [], None, bad
    return [i for i, _ in good], torch.stack([t for _, t in good]), bad


def _backbone_of(model: nn.Module) -> nn.Module:
    return getattr(model, "backbone", model)


def _input_spec(model: nn.Module, image_size: int | None) -> tuple[int, tuple, tuple]:
    bb = _backbone_of(model)
    size = image_size or getattr(bb, "default_image_size", None) or 224
    mean = tuple(getattr(bb, "mean", IMAGENET_MEAN))
    std = tuple(getattr(bb, "std", IMAGENET_STD))
    return int(size), mean, std


def _batches(
    paths: Sequence[str], transform: Callable, *, batch_size: int, num_workers: int, device: torch.device,
    max_pixels: int | None,
) -> Iterator[tuple[list[int], torch.Tensor | None, list[tuple[int, str]], int]]:
    """Yield (indices, x on device or None, failures, n_items_in_batch)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    cuda = device.type == "cuda"
    loader = DataLoader(
        ImageFileDataset(paths, transform, max_pixels=max_pixels),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_drop_failures,
        pin_memory=cuda,
    )
    for idx, x, bad in loader:
        if x is not None:
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
def _extract_loop(paths: list[str], transform, compute: Callable[[torch.Tensor], dict[str, torch.Tensor]], *,
                  batch_size: int, num_workers: int, device: torch.device, max_pixels: int | None,
                  report: ProgressFn, stop: ShouldStopFn
                  ) -> tuple[dict[str, list[np.ndarray]], list[str], list[SkippedImage], bool, float]:
    """The loop both extractors share: batches of ``paths`` through ``compute(x (B, 3, S, S)) -> {name: (B, D)}``.

    Bad files are skipped with their reason; ``report`` after every batch; ``stop`` checked between
    batches. Returns (per name the (B, D) chunks, kept paths, skipped, cancelled, seconds)."""
    chunks: dict[str, list[np.ndarray]] = {}
    kept: list[str] = []
    skipped: list[SkippedImage] = []
    cancelled = False
    done, total = 0, len(paths)
    start = time.perf_counter()
    report(0, total, "extracting")
    with torch.inference_mode():
        for idx, x, bad, n in _batches(paths, transform, batch_size=batch_size, num_workers=num_workers,
                                       device=device, max_pixels=max_pixels):
            for i, reason in bad:
                skipped.append(SkippedImage(paths[i], reason))
                log.info("skipped %s: %s", paths[i], reason)
            if x is not None:
                for name, out in compute(x).items():
                    chunks.setdefault(name, []).append(_to_numpy(out))
                kept.extend(paths[i] for i in idx)
            done += n
            report(done, total, f"{len(skipped)} skipped" if skipped else "")
            if done < total and stop():
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
) -> ExtractionResult:
    """Run ``model`` ((B, 3, S, S) -> (B, D)) over the image files ``paths`` in order.

    The input transform comes from the model's backbone (mean, std, default_image_size; ImageNet's
    when absent): shorter side to round(S / crop_fraction), centre crop S x S. The model is moved to
    ``device`` and put in eval mode. Bad files are skipped with their reason. Returns
    ``ExtractionResult(vectors (N, D) float32, paths (N), skipped, cancelled)``."""
    report, stop = resolve(progress, should_stop)
    dev = torch.device(device)
    size, mean, std = _input_spec(model, image_size)
    transform = build_transform(size, mean, std, crop_fraction)
    paths = [str(p) for p in paths]
    model = model.to(dev).eval()
    chunks, kept, skipped, cancelled, seconds = _extract_loop(
        paths, transform, lambda x: {"v": model(x)}, batch_size=batch_size, num_workers=num_workers, device=dev,
        max_pixels=max_pixels, report=report, stop=stop)
    vectors = np.concatenate(chunks["v"]) if chunks.get("v") else _empty(_model_dim(model))
    return ExtractionResult(vectors, kept, skipped, cancelled, seconds)


def extract_multi(
    backbone: nn.Module,
    heads: Mapping[str, nn.Module],
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
) -> dict[str, ExtractionResult]:
    """Several descriptors from one pass: per batch, ``fmap = backbone.forward_features(x)``
    (B, C, h, w) once, then ``head.describe(fmap) -> (B, D)`` for every head. Returns one
    ExtractionResult per head name (same paths, skipped and timing for all)."""
    if not heads:
        raise ValueError("extract_multi needs at least one descriptor head")
    report, stop = resolve(progress, should_stop)
    dev = torch.device(device)
    size, mean, std = _input_spec(backbone, image_size)
    transform = build_transform(size, mean, std, crop_fraction)
    paths = [str(p) for p in paths]
    backbone = backbone.to(dev).eval()
    for h in heads.values():
        h.to(dev).eval()

    def compute(x: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap = backbone.forward_features(x)
        return {name: head.describe(fmap) for name, head in heads.items()}

    chunks, kept, skipped, cancelled, seconds = _extract_loop(
        paths, transform, compute, batch_size=batch_size, num_workers=num_workers, device=dev,
        max_pixels=max_pixels, report=report, stop=stop)
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
    image_size: int | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    crop_fraction: float = 1.0,
    rmac_levels: int = 3,
    gem_p: float = 3.0,
    progress: ProgressFn | None = None,
    should_stop: ShouldStopFn | None = None,
) -> np.ndarray:
    """The vectors a whitening for ``descriptor_kind`` is learned on, (M, C) float32:
    for rmac the L2-normalised regional MAC vectors of every image (M = N x regions),
    for the others the L2-normalised pooled descriptors (M = N). Raises Cancelled when stopped."""
    from models import pooling
    from models.descriptors import build_descriptor

    report, stop = resolve(progress, should_stop)
    dev = torch.device(device)
    size, mean, std = _input_spec(backbone, image_size)
    transform = build_transform(size, mean, std, crop_fraction)
    paths = [str(p) for p in paths]
    backbone = backbone.to(dev).eval()
    head = None
    if descriptor_kind != "rmac":
        head = build_descriptor(descriptor_kind, backbone, rmac_levels=rmac_levels, gem_p=gem_p).to(dev).eval()
    chunks: list[np.ndarray] = []
    done, total = 0, len(paths)
    report(0, total, "learning whitening: extracting")
    with torch.inference_mode():
        for _idx, x, bad, n in _batches(paths, transform, batch_size=batch_size, num_workers=num_workers,
                                        device=dev, max_pixels=DEFAULT_MAX_PIXELS):
            for i, reason in bad:
                log.warning("whitening: skipped %s: %s", paths[i], reason)
            if x is not None:
                fmap = backbone.forward_features(x)
                if head is None:
                    regions = pooling.l2n(pooling.rmac_region_vectors(fmap, L=rmac_levels))  # (B, R, C)
                    chunks.append(_to_numpy(regions.reshape(-1, regions.shape[-1])))
                else:
                    chunks.append(_to_numpy(head.describe(fmap)))
            done += n
            report(done, total, "learning whitening: extracting")
            if done < total and stop():
                raise Cancelled("whitening cancelled")
    if not chunks:
        raise ValueError("no usable image to learn the whitening from")
    return np.concatenate(chunks)


def learn_whitening(
    descriptor_kind: str,
    backbone: nn.Module,
    paths: Sequence[str | os.PathLike],
    *,
    dim: int | None = None,
    image_size: int | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    crop_fraction: float = 1.0,
    rmac_levels: int = 3,
    gem_p: float = 3.0,
    progress: ProgressFn | None = None,
    should_stop: ShouldStopFn | None = None,
):
    """Learn a ``models.whitening.PCAWhitening`` (to ``dim`` dimensions, None = all) for descriptor
    ``descriptor_kind`` from the images ``paths``: for rmac on the L2-normalised regional vectors
    (as R-MAC applies it per region), for the other kinds on the pooled vectors."""
    from models.whitening import PCAWhitening

    X = whitening_training_vectors(  # noqa: N806
        descriptor_kind, backbone, paths, image_size=image_size, batch_size=batch_size,
        num_workers=num_workers, device=device, crop_fraction=crop_fraction, rmac_levels=rmac_levels,
        gem_p=gem_p, progress=progress, should_stop=should_stop,
    )
    if dim is not None and dim > min(X.shape):
        raise ValueError(f"whitening dim {dim} is larger than the data allows ({X.shape[0]} vectors of {X.shape[1]})")
    return PCAWhitening.fit(X, dim=dim)
