"""Learning a whitening from a folder of labelled images, its settings chosen on validation classes.

:func:`learn_from_folder` is what the `whiten` command and the window run: the images of a folder with one
sub-folder per class are described (the chosen descriptor, at one or several input sizes), then a
whitening (Lw or PCA, models.whitening) is learned. With ``shrinkage`` or ``dim`` "auto", they are chosen
by :func:`choose_whitening`: classes are carved off the folder's classes for validation, the whitening is
learned on the rest for every candidate, the best by validation R@1 (then mAP) is kept, and the
whitening is learned again on all classes with it. The folder given here must hold training classes:
choosing on the classes one reports on would be choosing on the test.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.atomic import write_target
from engine.callbacks import Cancelled, ProgressFn, ShouldStopFn, resolve
from engine.evaluation import evaluate
from engine.images import label_of, scan_images
from engine.vectors import l2n
from engine.vocabulary import ModelSpec, cache_root

log = logging.getLogger(__name__)

SHRINKAGES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
DIMS = (128, 256, 512, None)
VAL_CLASSES = 10


@dataclass
class WhiteningReport:
    """What :func:`learn_from_folder` did: the settings used and, when chosen, the validation figures."""

    method: str
    shrinkage: float
    dim: int
    n_images: int
    n_classes: int
    chosen: bool = False
    val_r1: float | None = None
    val_map: float | None = None
    val_none_r1: float | None = None
    grid: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    skipped: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of the images left out


def _per_image(w: Any, X: np.ndarray, owners: np.ndarray, n: int) -> np.ndarray:  # noqa: N803
    """Whitened rows summed per image: for a pooled descriptor one row each (l2n(W x)); for R-MAC the
    regions of an image (l2n(W r) summed, then normalised)."""
    z = l2n(w.apply(X) if w is not None else X)
    out = np.zeros((n, z.shape[1]), np.float64)
    np.add.at(out, owners, z)
    return l2n(out)


def choose_whitening(X: np.ndarray, owners: np.ndarray, labels: Sequence[str], *, method: str = "lw",  # noqa: N803
                     shrinkages: Sequence[float] = SHRINKAGES, dims: Sequence[int | None] = DIMS,
                     n_val: int = VAL_CLASSES, seed: int = 0, should_stop: ShouldStopFn | None = None) -> dict:
    """Shrinkage and output dimension chosen on ``n_val`` classes carved (with ``seed``) from ``labels``
    (one per image; ``owners`` (M,) maps each row of X (M, D) to its image): learned on the other
    classes, scored by leave-one-out R@1 (then mAP) among the validation images.
    Returns {"shrinkage", "dim" (None = all), "r1", "map", "none_r1", "none_map", "grid"}.
    Raises engine.callbacks.Cancelled when ``should_stop`` says so between two candidates."""
    from models.whitening import PCAWhitening

    labels = np.asarray([str(v) for v in labels])
    classes = np.unique(labels)
    if len(classes) < n_val + 2:
        raise ValueError(f"choosing the whitening on validation classes needs at least {n_val + 2} classes "
                         f"(sub-folders), the folder has {len(classes)}: give --shrinkage and --dim instead")
    val_classes = np.random.default_rng(seed).choice(classes, size=n_val, replace=False)
    val_img = np.isin(labels, val_classes)
    learn_rows = ~val_img[owners]
    val_idx = np.flatnonzero(val_img)
    remap = np.full(len(labels), -1)
    remap[val_idx] = np.arange(len(val_idx))
    val_rows = val_img[owners]
    Xv, ov = X[val_rows], remap[owners[val_rows]]  # noqa: N806
    lv = labels[val_idx]

    def check() -> None:
        if should_stop is not None and should_stop():
            raise Cancelled("whitening cancelled")

    check()
    if method == "lw":
        fitted = PCAWhitening.fit_lw_many(X[learn_rows], labels[owners[learn_rows]], tuple(shrinkages))
    else:
        fitted = [PCAWhitening.fit(X[learn_rows], shrinkage=a) for a in shrinkages]
    grid = []
    for w in fitted:
        check()
        for d in dims:
            if d is not None and d >= w.out_dim:
                continue
            wd = w.truncated(d) if d else w
            m = evaluate(_per_image(wd, Xv, ov, len(val_idx)), lv, ks=(1,))
            grid.append({"shrinkage": float(w.meta["shrinkage"]), "dim": d, "r1": m["recall@1"], "map": m["map"]})
    best = max(grid, key=lambda g: (round(g["r1"], 4), g["map"]))
    none = evaluate(_per_image(None, Xv, ov, len(val_idx)), lv, ks=(1,))
    return {**best, "none_r1": none["recall@1"], "none_map": none["map"], "grid": grid}


def save_whitening(whitening: Any, path: str | os.PathLike) -> None:
    """Write a models.whitening.PCAWhitening to ``path`` (.npz, read back by ``PCAWhitening.load``)
    atomically (engine.atomic.write_target: a temporary file beside it, fsynced, renamed; a failure leaves the
    old file; a FIFO or a device is written through, a folder refused)."""
    import io

    buf = io.BytesIO()
    np.savez(buf, **whitening.to_arrays())
    write_target(path, buf.getvalue())  # a FIFO or a device is written through, never replaced


def learn_from_folder(folder: str | os.PathLike, spec: ModelSpec, *, method: str = "lw",
                      shrinkage: float | str = "auto", dim: int | str | None = "auto", device: str = "cpu",
                      batch_size: int = 32, runtime: str = "auto", cache_dir: str | os.PathLike | None = None,
                      n_val: int = VAL_CLASSES, seed: int = 0, progress: ProgressFn | None = None,
                      should_stop: ShouldStopFn | None = None) -> tuple[Any, WhiteningReport]:
    """Learn a whitening for ``spec`` (backbone, weights, descriptor, sizes, crop; its own whitening is
    ignored) from the images of ``folder``, one sub-folder per class (engine.images.label_of: an image's
    class is the folder that holds it; images directly in ``folder`` have none).
    ``shrinkage`` in [0, 1] or "auto"; ``dim`` an int, None (all) or "auto". Returns (the
    models.whitening.PCAWhitening, a :class:`WhiteningReport`); save it with :func:`save_whitening`."""
    from engine.extraction import build_model, whitening_training_vectors
    from engine.runtime import feature_runners
    from models.whitening import PCAWhitening

    if method not in ("lw", "pca"):
        raise ValueError(f"unknown whitening method {method!r}: choose one of lw, pca")
    if isinstance(shrinkage, str) and shrinkage != "auto":
        raise ValueError(f"shrinkage must be a number in [0, 1] or 'auto', got {shrinkage!r}")
    if isinstance(dim, str) and dim != "auto":
        raise ValueError(f"dim must be a number, 'all' or 'auto', got {dim!r}")
    report, stop = resolve(progress, should_stop)
    start = time.perf_counter()
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    paths = scan_images(root)
    labels = [label_of(p.relative_to(root)) or "." for p in paths]
    n_classes = len({lab for lab in labels if lab != "."})
    if method == "lw" and n_classes < 2:
        raise ValueError(f"{root}: a learned whitening needs images in class sub-folders (found {n_classes} "
                         "class folder(s)); use --method pca for a folder without classes")
    bare = dataclasses.replace(spec, whitening=None)
    model = build_model(bare, device)
    backbone = model.backbone
    sizes = model.scales or (spec.image_size or getattr(backbone, "default_image_size", 224),)
    cache = Path(cache_dir) if cache_dir else cache_root()
    runners = feature_runners(backbone, sizes, bare.backbone_identity(), cache, runtime, device)
    unreadable: list[tuple[str, str]] = []
    X, owners = whitening_training_vectors(  # noqa: N806
        spec.descriptor, backbone, paths, image_size=tuple(sizes) if len(sizes) > 1 else sizes[0],
        batch_size=batch_size, device=device, crop_fraction=spec.crop_fraction, progress=report,
        should_stop=stop, features=runners, return_owners=True, skipped=unreadable)
    kept = np.unique(owners)
    out = WhiteningReport(method, 0.0, 0, len(kept), n_classes, skipped=len(paths) - len(kept),
                          unreadable=unreadable)
    auto = shrinkage == "auto" or dim == "auto"
    if auto:
        report(len(paths), len(paths), "choosing the whitening on validation classes")
        choice = choose_whitening(X, owners, labels, method=method,
                                  shrinkages=SHRINKAGES if shrinkage == "auto" else (float(shrinkage),),
                                  dims=DIMS if dim == "auto" else (None if dim in (None, "all") else int(dim),),
                                  n_val=n_val, seed=seed, should_stop=stop)
        shrinkage, dim = choice["shrinkage"], choice["dim"]
        out.chosen, out.val_r1, out.val_map, out.val_none_r1 = True, choice["r1"], choice["map"], choice["none_r1"]
        out.grid = choice["grid"]
    shrinkage = float(shrinkage)  # type: ignore[arg-type]
    dim_n = None if dim in (None, "all") else int(dim)  # type: ignore[arg-type]
    if dim_n is not None and dim_n >= X.shape[1]:
        dim_n = None
    meta = {"descriptor": spec.descriptor, "sizes": [int(s) for s in sizes], "source": str(root.resolve()),
            "backbone": spec.backbone}
    if out.chosen:
        meta.update(val_r1=out.val_r1, val_none_r1=out.val_none_r1)
    row_labels = [labels[i] for i in owners]
    if stop():
        raise Cancelled("whitening cancelled")
    w = (PCAWhitening.fit_lw(X, row_labels, dim=dim_n, shrinkage=shrinkage, meta=meta) if method == "lw"
         else PCAWhitening.fit(X, dim=dim_n, shrinkage=shrinkage, meta=meta))
    out.shrinkage, out.dim = shrinkage, w.out_dim
    out.seconds = time.perf_counter() - start
    return w, out
