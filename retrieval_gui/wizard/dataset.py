"""What the Data page shows: the class-disjoint train/validation split of a data folder, with counts
and warnings. No Qt here, so it is cheap to test; the split is the trainer's own
(:func:`engine.training.data.split_classes`), so what the page shows is what training will use."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.training.data import read_class_list  # noqa: F401 (the Data page reads split files with it)


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

    @property
    def ok(self) -> bool:
        return not self.error


def summarize(root: str, train_classes: list[str] | None = None, val_share: float = 0.2, seed: int = 0,
              classes_per_batch: int = 0) -> DataSummary:
    """Scan ``root/<class>/*`` and split its classes like the trainer will.

    Warnings: classes with fewer than 2 images (left out of training), fewer training classes than
    ``classes_per_batch`` (P), no validation classes. Never raises for bad input: ``error`` says why.
    """
    from engine.training.data import scan_labelled, split_classes

    s = DataSummary(root=str(root))
    if not root:
        s.error = "Choose a folder with one sub-folder of images per class."
        return s
    try:
        imgs = scan_labelled(root, train_classes)
    except (OSError, ValueError) as exc:
        s.error = str(exc)
        return s
    counts = [0] * len(imgs.classes)
    for lab in imgs.labels:
        counts[lab] += 1
    s.per_class = dict(zip(imgs.classes, counts, strict=True))
    try:
        s.train_classes, s.val_classes = split_classes(imgs.classes, val_share, seed)
    except ValueError as exc:
        s.error = str(exc)
        return s
    s.train_images = sum(s.per_class[c] for c in s.train_classes)
    s.val_images = sum(s.per_class[c] for c in s.val_classes)
    few = [c for c in s.train_classes if s.per_class[c] < 2]
    if few:
        s.warnings.append(f"{len(few)} training class(es) with fewer than 2 images are left out of training: "
                          + ", ".join(few[:8]) + (" …" if len(few) > 8 else ""))
    usable = len(s.train_classes) - len(few)
    if usable < 2:
        s.error = f"Training needs at least 2 classes with 2 or more images each; found {usable}."
    elif classes_per_batch and usable < classes_per_batch:
        s.warnings.append(f"Only {usable} usable training classes but P = {classes_per_batch} classes per batch: "
                          f"batches will take {usable} classes (lower P or add classes).")
    if not s.val_classes:
        s.warnings.append("No validation classes: the best checkpoint cannot be chosen on held-out classes.")
    elif s.val_images < 4:
        s.warnings.append(f"Only {s.val_images} validation images: the validation R@1 will be very noisy.")
    return s
