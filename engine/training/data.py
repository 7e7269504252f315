"""Training data: labelled image lists, class-disjoint or image-disjoint validation split, images decoded once into
uint8 tensors, tensor-op augmentation (random resized crop + flip, batched, on any device)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine import images as _images
from engine.callbacks import Cancelled

log = logging.getLogger(__name__)

#: the extensions indexing reads (engine.images.IMAGE_EXTENSIONS), in a fixed order
IMAGE_EXTENSIONS = tuple(sorted(_images.IMAGE_EXTENSIONS))


@dataclass
class LabelledImages:
    """paths[i] has class classes[labels[i]]."""

    paths: list[str]
    labels: list[int]
    classes: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (path, reason)

    def subset(self, keep_classes: list[str]) -> LabelledImages:
        """Only the images of ``keep_classes`` (labels renumbered 0..len-1 in that order)."""
        new = {c: i for i, c in enumerate(keep_classes)}
        old = self.classes
        rows = [(p, new[old[lab]]) for p, lab in zip(self.paths, self.labels, strict=True) if old[lab] in new]
        return LabelledImages([p for p, _ in rows], [lab for _, lab in rows], list(keep_classes))


def scan_labelled(root: str | Path, classes: list[str] | None = None) -> LabelledImages:
    """Images under ``root`` (engine.images.scan_images) with their class by the one label rule of the
    program (engine.images.label_of: the name of the folder that holds the image; images directly in
    ``root`` have none and are left out), grouped by class in class-name order; only ``classes`` (in
    their order) if given. Class folders may be symbolic links to folders elsewhere; every file or folder
    left out for a problem (broken link, link loop, unreadable folder) is in the result's ``skipped``
    with its reason."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"training data folder not found: {root}")
    skipped: list[tuple[str, str]] = []
    by_class: dict[str, list[str]] = {}
    for top in sorted(root.iterdir()):  # folder by folder: no one long sort holds the GIL (a GUI thread waits)
        if top.name.startswith("."):
            continue
        if top.is_dir():
            for p in _images.scan_images(top, skipped=skipped):
                by_class.setdefault(_images.label_of(p.relative_to(root)), []).append(str(p))
        elif top.is_symlink():
            skipped.append((str(top), _images._link_problem(str(top)) or "symbolic link to something not a folder"))
    for p, why in skipped:
        log.warning("left out %s: %s", p, why)
    if classes is not None:
        missing = [c for c in classes if c not in by_class and not (root / c).is_dir()]
        if missing:
            raise ValueError(f"{len(missing)} class folder(s) not found under {root}: {', '.join(missing[:10])}")
        kept = [c for c in classes if c in by_class]  # a class folder without images is left out
    else:
        kept = sorted(by_class)
    if not kept:
        if not any(p.is_dir() for p in root.iterdir() if not p.name.startswith(".")):
            raise ValueError(f"{root} has no class sub-folders: put each class's images in its own folder")
        raise ValueError(f"no images found under {root}")
    paths = [p for c in kept for p in by_class[c]]
    labels = [i for i, c in enumerate(kept) for _ in by_class[c]]
    return LabelledImages(paths, labels, kept, skipped)


def split_classes(classes: list[str], val_share: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train classes, validation classes): a seeded, class-disjoint split; the validation part gets
    round(share * n) classes, at least 2 when share > 0 (fewer than 2 classes cannot be ranked)."""
    n = len(classes)
    if val_share <= 0:
        return list(classes), []
    n_val = max(2, int(round(val_share * n)))
    if n - n_val < 2:
        raise ValueError(f"{n} classes are too few to carve {n_val} validation classes and keep 2 for training; "
                         "lower val_class_share or add classes")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + 7919)).tolist()
    val = sorted(classes[i] for i in order[:n_val])
    val_set = set(val)
    return [c for c in classes if c not in val_set], val


def split_images(labels: list[int], val_share: float, seed: int = 0, min_val: int = 2) -> tuple[list[int], list[int]]:
    """(train indices, validation indices): a seeded, stratified, image-disjoint split of ``labels``.

    Each class gives max(min_val, round(val_share * n)) of its n images to validation, leaving at least 2
    for training; a class too small for that (fewer than min_val + 2 images) stays whole in training.
    """
    if val_share <= 0:
        return list(range(len(labels))), []
    by_class: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(int(lab), []).append(i)
    gen = torch.Generator().manual_seed(int(seed) + 7919)
    val: list[int] = []
    for c in sorted(by_class):
        idx = by_class[c]
        n_val = min(max(min_val, int(round(val_share * len(idx)))), len(idx) - 2)
        order = torch.randperm(len(idx), generator=gen).tolist()
        if n_val >= min_val:
            val += [idx[j] for j in order[:n_val]]
    val_set = set(val)
    return [i for i in range(len(labels)) if i not in val_set], sorted(val)


def decode_image(path: str, size: int) -> torch.Tensor:
    """(3, size, size) uint8: engine.images.resize_crop (shorter side resized to ``size``, antialiased,
    centre square crop), as indexing prepares an image. Read by engine.images.load_image (JPEGs decoded at
    a reduced scale that keeps the shorter side >= size); raises its ImageLoadError for a file that cannot
    be used."""
    im = _images.resize_crop(_images.load_image(path, min_side=size), size)
    arr = np.asarray(im, dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def decode_all(paths: list[str], size: int, *, threads: int = 2,
               progress: Callable[[int, int, str], None] | None = None,
               should_stop: Callable[[], bool] | None = None) -> tuple[torch.Tensor, list[int], list[tuple[str, str]]]:
    """Decode every image once: ((N_ok, 3, size, size) uint8, indices of the decoded paths, skipped)."""
    out: list[torch.Tensor | None] = [None] * len(paths)
    skipped: list[tuple[str, str]] = []

    def one(i: int) -> None:
        try:
            out[i] = decode_image(paths[i], size)
        except _images.ImageLoadError as exc:  # unreadable / corrupt image: skipped and reported
            skipped.append((paths[i], exc.reason))
        except Exception as exc:  # a resize failure must not stop the others either
            skipped.append((paths[i], f"cannot prepare image ({type(exc).__name__}: {exc})"))

    chunk = 64
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for start in range(0, len(paths), chunk):
            if should_stop is not None and should_stop():
                raise Cancelled("decoding cancelled")
            list(pool.map(one, range(start, min(len(paths), start + chunk))))
            if progress is not None:
                progress(min(len(paths), start + chunk), len(paths), "decoding images")
    ok = [i for i, t in enumerate(out) if t is not None]
    for p, why in skipped:
        log.warning("skipped %s: %s", p, why)
    if not ok:
        raise ValueError("none of the training images could be read")
    return torch.stack([out[i] for i in ok]), ok, skipped


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on ``device``; to CUDA through pinned memory without waiting for the GPU."""
    if device.type != "cuda" or t.device == device:
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def channel_stats(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) as (1, 3, 1, 1) float32 tensors on ``device`` (make once, pass to normalize)."""
    return tuple(to_device(torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1), device) for v in (mean, std))


def normalize(x: torch.Tensor, mean: tuple | torch.Tensor, std: tuple | torch.Tensor) -> torch.Tensor:
    """uint8 or [0,255] float (B, 3, H, W) -> normalised float32. ``mean``/``std``: 3 numbers, or the
    tensors of :func:`channel_stats` (no copy to the device on every call)."""
    m, s = (mean, std) if torch.is_tensor(mean) else channel_stats(mean, std, x.device)
    return (x.float() / 255.0 - m) / s


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8/float (B, 3, S, S) -> float (B, 3, size, size), antialiased when shrinking."""
    x = x.float()
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def crop_params(n: int, generator: torch.Generator, scale: tuple[float, float] = (0.35, 1.0),
                ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """(n, 2, 3) affine matrices for random resized crops with a random horizontal flip (CPU)."""
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=generator)
    logr = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    r = logr.exp()
    w = (area * r).sqrt().clamp(max=1.0)
    h = (area / r).sqrt().clamp(max=1.0)
    cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    return theta


def augment(x: torch.Tensor, out_size: int, theta: torch.Tensor) -> torch.Tensor:
    """Random resized crop + flip as one batched grid_sample: uint8 (B, 3, S, S) -> float (B, 3, o, o) in [0, 255]."""
    theta = to_device(theta, x.device)
    grid = F.affine_grid(theta, [x.shape[0], 3, out_size, out_size], align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def read_class_list(path: str | Path) -> list[str]:
    """Training class names from a split file: JSON (a list, or a dict with ``train_classes`` /
    ``train`` / ``classes``) or text (one class per line, ``#`` comments). Raises ValueError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read the split file {p}: {exc.strerror or exc}") from exc
    if p.suffix.lower() == ".json":
        try:
            d = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{p.name} is not valid JSON: {exc}") from exc
        if isinstance(d, dict):
            for key in ("train_classes", "train", "classes"):
                if key in d:
                    d = d[key]
                    break
            else:
                raise ValueError(f"{p.name}: expected a list of class names or a dict with 'train_classes'")
        if not isinstance(d, list) or not all(isinstance(c, str) for c in d):
            raise ValueError(f"{p.name}: expected a list of class names")
        classes = list(d)
    else:
        classes = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not classes:
        raise ValueError(f"{p.name} lists no classes")
    return classes
