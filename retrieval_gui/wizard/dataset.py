"""What the Data page shows: the train/validation split of a data folder under the chosen target (same
categories: a share of every class's images; new categories: whole classes), with counts and warnings.
No Qt here, so it is cheap to test; the split is the trainer's own
(:func:`engine.training.trainer.validation_split`), so what the page shows is what training will use."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.training.data import read_class_list


@dataclass
class DataSummary:
    """Counts of one data folder under a split. ``error`` set = unusable (the reason, for the user)."""

    root: str
    train_classes: list[str] = field(default_factory=list)
    val_classes: list[str] = field(default_factory=list)
    train_images: int = 0
    val_images: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    error: str = ""
    target: str = "same"
    description: str = ""     # how validation is chosen, in words (the trainer's own sentence)

    @property
    def ok(self) -> bool:
        return not self.error


def summarize(root: str, train_classes: list[str] | None = None, val_share: float = 0.2, seed: int = 0,
              classes_per_batch: int = 0, target: str = "same", image_split: str = "") -> DataSummary:
    """Scan ``root/<class>/*`` and split it like the trainer will: ``target`` "same" holds back ``val_share``
    of every class's images, "new" that share of the classes; ``image_split`` (a file listing the training
    and validation images) replaces both, as in the trainer.

    Warnings: classes with fewer than 2 images (left out of training), classes too small to validate
    (target same), fewer training classes than ``classes_per_batch`` (P), no validation data. Never raises
    for bad input: ``error`` says why.
    """
    from engine.training.config import TrainConfig
    from engine.training.trainer import validation_split

    s = DataSummary(root=str(root), target=target)
    if not root:
        s.error = "Choose a folder with one sub-folder of images per class."
        return s
    cfg = TrainConfig(data_root=str(root), train_classes=train_classes, target=target, seed=seed,
                      val_image_share=val_share, val_class_share=val_share, image_split=image_split)
    try:
        split = validation_split(cfg)
    except (OSError, ValueError) as exc:
        s.error = str(exc)
        return s
    imgs = split.images
    counts = [0] * len(imgs.classes)
    train_counts = [0] * len(imgs.classes)
    for lab, v in zip(imgs.labels, split.is_val, strict=True):
        counts[lab] += 1
        train_counts[lab] += not v
    s.per_class = dict(zip(imgs.classes, counts, strict=True))
    s.train_classes, s.val_classes = split.train_classes, split.val_classes
    s.train_images, s.val_images = split.n_train, split.n_val
    s.description = split.description
    few = [c for i, c in enumerate(imgs.classes) if 0 < train_counts[i] < 2]
    if few:
        s.warnings.append(f"{len(few)} training class(es) with fewer than 2 images are left out of training: "
                          + ", ".join(few[:8]) + (" …" if len(few) > 8 else ""))
    if split.no_val_classes and s.val_images:
        s.warnings.append(f"{len(split.no_val_classes)} class(es) with fewer than 4 images are trained on but not "
                          "validated: " + ", ".join(split.no_val_classes[:8])
                          + (" …" if len(split.no_val_classes) > 8 else ""))
    usable = sum(1 for n in train_counts if n >= 2)
    if usable < 2:
        s.error = f"Training needs at least 2 classes with 2 or more images each; found {usable}."
    elif classes_per_batch and usable < classes_per_batch:
        s.warnings.append(f"Only {usable} usable training classes but P = {classes_per_batch} classes per batch: "
                          f"batches will take {usable} classes (lower P or add classes).")
    if not s.val_images:
        s.warnings.append("No validation images: the model to keep cannot be chosen on held-out data "
                          "(best.pt then follows the latest checkpoint).")
    elif s.val_images < 4:
        s.warnings.append(f"Only {s.val_images} validation images: the validation figures will be very noisy.")
    return s


@dataclass(frozen=True)
class ScanRequest:
    """What the Data page asks to count: the folder, the split file (or classes given with the settings),
    the validation share, seed, P and target, and the trainer's image split file."""

    root: str
    split_file: str = ""
    given_classes: tuple[str, ...] | None = None
    val_share: float = 0.2
    seed: int = 0
    classes_per_batch: int = 0
    target: str = "same"
    image_split: str = ""


@dataclass
class ScanResult:
    """The answer to a :class:`ScanRequest`: the summary, the training classes it was counted with (None:
    every sub-folder) and the split file's error ("" when it was read or none was given)."""

    request: ScanRequest
    summary: DataSummary
    classes: list[str] | None
    split_error: str = ""


def scan(request: ScanRequest) -> ScanResult:
    """Read the split file and count the folder as :func:`summarize` does (a worker runs it: it walks the
    whole data folder). Never raises for bad input."""
    classes: list[str] | None = None
    split_error = ""
    if request.split_file:
        try:
            classes = read_class_list(request.split_file)
        except ValueError as exc:
            split_error = str(exc)
    elif request.given_classes is not None:
        classes = list(request.given_classes)
    if split_error:
        return ScanResult(request, DataSummary(root=request.root, error=split_error), None, split_error)
    summary = summarize(request.root, classes, request.val_share, request.seed, request.classes_per_batch,
                        target=request.target, image_split=request.image_split)
    return ScanResult(request, summary, classes, "")
