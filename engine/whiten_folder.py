"""Learning a whitening from a folder of class sub-folders, as the GUI's whitening wizard does it: the count
of the folder, what stops a run, learning and saving (atomically), and the report's figures. Plain
functions without Qt (long ones take ``progress``/``should_stop``), so a worker thread runs them and the
tests call them directly; :func:`engine.whitening.learn_from_folder` does the learning itself.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.callbacks import ProgressFn, ShouldStopFn
from engine.vocabulary import DEFAULT_IMAGE_SIZE, default_runtime, multi_scales, sizes_label
from engine.whitening import VAL_CLASSES

DEFAULT_SIZE = DEFAULT_IMAGE_SIZE
METHODS = ("lw", "pca")


def whitening_dir() -> Path:
    """Where learned whitenings go by default: ``whitening/`` beside the trained models' folder."""
    from engine.training.registry import models_dir

    return models_dir().parent / "whitening"


def default_file_name(folder: str, backbone: str, descriptor: str, sizes: tuple[int, ...], method: str) -> str:
    """A readable file name: ``<folder>-<backbone>-<descriptor>-<sizes>-<method>.npz``."""
    name = Path(folder.rstrip("/\\")).name or "images"
    model = Path(backbone).parent.name if Path(backbone).suffix == ".pt" else backbone
    raw = f"{name}-{model}-{descriptor}-{sizes_label(sizes)}-{method}"
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", raw) + ".npz"


# -- the folder count ----------------------------------------------------------------------------------
@dataclass
class FolderCount:
    """Images per class of a folder, counted as learn_from_folder will see them. ``error`` set: unusable."""

    root: str
    classes: dict[str, int] = field(default_factory=dict)
    loose: int = 0  # images directly in the folder, not in a class sub-folder
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def n_images(self) -> int:
        return sum(self.classes.values()) + self.loose

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def n_learn_classes(self) -> int:
        """The classes the learning sees: loose images in the folder itself count as one class more."""
        return self.n_classes + (1 if self.loose else 0)

    def warnings(self) -> list[str]:
        """What to know before learning from this folder (loose images, single-image classes, too few
        classes to choose the settings on)."""
        warn = []
        if self.loose:
            warn.append(f"{self.loose} image(s) lie directly in the folder, not in a class sub-folder: "
                        "they count as one more class.")
        single = sorted(c for c, n in self.classes.items() if n < 2)
        if single:
            warn.append(f"{len(single)} class(es) with a single image tell Lw nothing about how a class "
                        "varies: " + ", ".join(single[:6]) + (" …" if len(single) > 6 else ""))
        need = VAL_CLASSES + 2
        if self.n_classes < need:
            warn.append(f"Choosing shrinkage and dimension on validation classes needs at least {need} "
                        f"classes; with {self.n_classes}, give them by hand on the next page.")
        return warn


def count_folder(root: str) -> FolderCount:
    """Count the images of ``root`` per class sub-folder (engine.images.scan_images: what the whitening
    reads; engine.images.label_of: an image's class is the folder that holds it). Never raises for bad
    input: ``error`` says why."""
    from engine.images import label_of, scan_images

    out = FolderCount(root=root)
    if not root:
        out.error = "Choose a folder with one sub-folder of images per class."
        return out
    path = Path(root).expanduser()
    if not path.is_dir():
        out.error = f"Folder not found: {root}"
        return out
    try:
        paths = scan_images(path)
    except OSError as exc:
        out.error = f"Cannot read {root}: {exc}"
        return out
    for p in paths:
        label = label_of(p.relative_to(path))
        if label is None:
            out.loose += 1
        else:
            out.classes[label] = out.classes.get(label, 0) + 1
    if not paths:
        out.error = f"No images in {root} or its sub-folders."
    return out


def settings_problems(count: FolderCount | None, *, auto: bool, method: str, output: str) -> tuple[list[str],
                                                                                                  list[str]]:
    """(problems, notes) of learning from ``count`` with these settings: problems stop the run (the engine
    would refuse it), notes are for the user to know; the first note says what the run will do."""
    problems: list[str] = []
    notes: list[str] = []
    n = 0 if count is None else count.n_learn_classes
    need = VAL_CLASSES + 2
    if count is not None and auto and n < need:
        problems.append(f"Choosing shrinkage and dimension on validation classes needs at least {need} "
                        f"classes (sub-folders); the folder has {n}. Give them by hand above, or choose a "
                        "folder with more classes.")
    if count is not None and method == "lw" and n < 2:
        problems.append(f"A learned whitening (Lw) needs images in at least 2 class sub-folders; the folder "
                        f"has {n}. Choose PCA-whitening or another folder.")
    if not output:
        problems.append("Choose where to save the whitening.")
    elif Path(output).expanduser().is_dir():
        problems.append(f"{output} is a folder: give a file name.")
    else:
        from engine.atomic import target_kind

        try:
            kind = target_kind(Path(output).expanduser())
        except ValueError as exc:  # engine.atomic.TargetError: a disk, a socket, a broken link...
            problems.append(str(exc))
        else:
            if kind in ("fifo", "device", "fd"):
                notes.append(f"{Path(output).name} is not a regular file: the whitening is written through "
                             "to it, and no file is kept.")
            elif Path(output).expanduser().exists():
                notes.append(f"{Path(output).name} exists: it will be replaced.")
    if count is not None and not problems:
        how = (f"shrinkage and dimension chosen on {VAL_CLASSES} classes held out of {n}, then learned "
               "on all" if auto else "learned on all classes")
        notes.insert(0, f"{count.n_images} images of {n} classes will be described once, {how}.")
    return problems, notes


# -- the model a whitening is learned for -----------------------------------------------------------------
@dataclass
class ModelBase:
    """The network a whitening is learned for: the explorer's model when the wizard has a window (a
    whitening only fits the backbone it was learned on), else the defaults of engine.collection.ModelSpec."""

    backbone: str = "efficientnet_lite0"
    weights: str = "pretrained"
    crop_fraction: float = 1.0
    single: int = DEFAULT_SIZE
    multi: tuple[int, ...] = field(default_factory=lambda: multi_scales(DEFAULT_SIZE))
    sizes: str | None = None  # the window's current choice, "single" or "multi" (None: no window)
    device: str = "cpu"
    runtime: str = "auto"
    cache_dir: str = ""

    def sizes_of(self, choice: str) -> tuple[int, ...]:
        return self.multi if choice == "multi" else (self.single,)

    def spec(self, descriptor: str, choice: str) -> Any:
        """The engine.collection.ModelSpec to learn for (no whitening)."""
        from engine.vocabulary import ModelSpec

        if choice == "multi":
            return ModelSpec(backbone=self.backbone, weights=self.weights, descriptor=descriptor,
                             scales=self.multi, crop_fraction=self.crop_fraction)
        return ModelSpec(backbone=self.backbone, weights=self.weights, descriptor=descriptor,
                         image_size=self.single, crop_fraction=self.crop_fraction)


def model_base_of(spec: Any | None, *, device: str = "cpu", runtime: str | None = None,
                  cache_dir: str | None = None) -> ModelBase:
    """The ModelBase of a ModelSpec ``spec`` (the explorer's model: its sizes are the current choice), or the
    defaults when None; runtime and cache folder default to the environment's."""
    from engine.vocabulary import cache_root

    base = ModelBase(runtime=runtime or default_runtime(),
                     cache_dir=str(cache_dir or cache_root()), device=device or "cpu")
    if spec is not None:
        base.backbone, base.weights = str(spec.backbone), str(spec.weights)
        base.crop_fraction = float(spec.crop_fraction)
        if spec.scales:
            base.single, base.multi, base.sizes = int(spec.scales[0]), tuple(int(s) for s in spec.scales), "multi"
        else:
            base.single = int(spec.image_size or DEFAULT_SIZE)
            base.multi, base.sizes = multi_scales(base.single), "single"
    return base


# -- the run -----------------------------------------------------------------------------------------------
@dataclass
class WhitenOutcome:
    """What :func:`learn_and_save` produced: the file, the engine's WhiteningReport and what the page shows."""

    path: str
    report: Any  # engine.whitening.WhiteningReport
    backbone: str
    descriptor: str
    sizes: tuple[int, ...]
    in_dim: int
    out_dim: int
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of images left out
    images_per_s: float = 0.0  # of the extraction


def learn_and_save(folder: str, spec: Any, output: str | os.PathLike, *, method: str = "lw",
                   shrinkage: float | str = "auto", dim: int | str | None = "auto", device: str = "cpu",
                   runtime: str = "auto", cache_dir: str | None = None, batch_size: int = 32,
                   progress: ProgressFn | None = None, should_stop: ShouldStopFn | None = None) -> WhitenOutcome:
    """engine.whitening.learn_from_folder on ``folder`` for ``spec``, then the whitening saved to ``output``
    atomically (engine.atomic: a temporary file beside it, renamed). Stopped at any moment (``should_stop``),
    it raises engine.callbacks.Cancelled and writes nothing. The images that could not be read are named."""
    from engine.atomic import target_kind
    from engine.callbacks import Cancelled, resolve
    from engine.whitening import learn_from_folder, save_whitening

    target_kind(output)  # a folder or a disk refused before any work (TargetError)
    report, stop = resolve(progress, should_stop)
    clock: dict[str, float] = {}

    def timed(done: int, total: int, message: str = "") -> None:
        now = time.perf_counter()
        if "extracting" in message:
            clock.setdefault("t0", now)
            clock["t1"], clock["n"] = now, float(done)
        report(done, total, message)

    w, rep = learn_from_folder(folder, spec, method=method, shrinkage=shrinkage, dim=dim, device=device,
                               runtime=runtime, cache_dir=cache_dir or None, batch_size=batch_size,
                               progress=timed, should_stop=stop)
    if stop():  # stopped while the whitening was chosen or learned: nothing is written
        raise Cancelled("whitening cancelled")
    report(1, 1, "saving")
    save_whitening(w, output)
    span = clock.get("t1", 0.0) - clock.get("t0", 0.0)
    rate = clock.get("n", 0.0) / span if span > 0 else 0.0
    sizes = tuple(int(s) for s in w.meta.get("sizes", ()))
    return WhitenOutcome(str(output), rep, str(spec.backbone), str(spec.descriptor), sizes, w.in_dim, w.out_dim,
                         list(rep.unreadable), rate)


def report_rows(outcome: WhitenOutcome, titles: dict[str, str] | None = None) -> tuple[list[tuple[str, str]],
                                                                                       list[str]]:
    """The report of a finished run as (rows of (name, text), warnings): validation figures, settings,
    images, time, the file; ``titles`` names the descriptors (e.g. {"gem": "GeM"})."""
    rep = outcome.report
    titles = titles or {}
    rows: list[tuple[str, str]] = []
    warnings: list[str] = []
    compared = rep.chosen and rep.val_r1 is not None and rep.val_none_r1 is not None
    if compared:
        diff = rep.val_r1 - rep.val_none_r1
        rows.append(("Validation R@1", f"{rep.val_r1:.4f} with the whitening, {rep.val_none_r1:.4f} without "
                     f"({'+' if diff >= 0 else '−'}{abs(diff):.4f}), on {VAL_CLASSES} classes held out of "
                     "the folder"))
        if rep.val_map is not None:
            rows.append(("Validation mAP", f"{rep.val_map:.4f} with the whitening"))
    how = "chosen on the validation classes" if rep.chosen else "as given"
    rows.append(("Settings", f"{'Lw' if rep.method == 'lw' else 'PCA-whitening'}, shrinkage {rep.shrinkage:g}, "
                 f"{outcome.in_dim} -> {outcome.out_dim} dimensions ({how})"))
    rows.append(("Descriptor", f"{titles.get(outcome.descriptor, outcome.descriptor)} at "
                 f"{sizes_label(outcome.sizes)} of {Path(outcome.backbone).name}"))
    rows.append(("Images", f"{rep.n_images} of {rep.n_classes} classes"))
    rate = f", describing {outcome.images_per_s:.1f} images/s" if outcome.images_per_s else ""
    rows.append(("Time", f"{rep.seconds:.1f} s{rate}"))
    rows.append(("Saved", outcome.path))
    if compared and rep.val_r1 < rep.val_none_r1:
        warnings.append("On the validation classes the whitening scores below the plain descriptor: more "
                        "images per class or more classes usually help.")
    return rows, warnings


def command_line(outcome: WhitenOutcome) -> str:
    """The explorer's and the CLI's options that use this whitening."""
    scales = (f"--scales {','.join(map(str, outcome.sizes))} " if len(outcome.sizes) > 1
              else f"--image-size {outcome.sizes[0]} " if outcome.sizes else "")
    return f"--backbone {outcome.backbone} --descriptor {outcome.descriptor} {scales}--whitening {outcome.path}"
