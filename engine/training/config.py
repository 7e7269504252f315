"""Training settings: one dataclass, serialisable to a plain dict (stored inside every checkpoint)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import re
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from engine.vocabulary import DEFAULT_BACKBONE, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from models.names import MAX_EMBEDDING_DIM

LOSSES = ("triplet", "contrastive")
MININGS = ("semihard", "hard", "all")
MODES = ("head", "tail", "full")
POOLINGS = ("mac", "gem", "spoc")
TARGETS = ("same", "new")
SELECT_METRICS = ("map", "recall@1")


@dataclass
class TrainConfig:
    """Everything a training run depends on. Defaults are the recipe that does not forget (see docs)."""

    data_root: str                          # folder with class sub-folders (label = sub-folder name)
    train_classes: list[str] | None = None  # optional explicit class list; else all sub-folders
    target: str = "same"                    # "same": better retrieval within these categories (validation =
    #                                         a share of each class's images); "new": on unseen categories
    #                                         (validation = whole classes carved off)
    val_image_share: float = 0.2            # target "same": share of each class's images held back to validate
    val_class_share: float = 0.2            # target "new": share of the classes held back to validate
    image_split: str = ""                   # optional JSON {"train": [...], "val": [...]} of image paths relative
    #                                         to data_root (label = parent folder, or its "labels" map): replaces the carve
    backbone: str = DEFAULT_BACKBONE
    weights: str = "pretrained"
    pooling: str = "mac"
    embedding_dim: int = 0                  # 0 = the feature dim, identity-initialised
    mode: str = "head"                      # "head" (frozen backbone, cached features) | "tail" (last units
    #                                         trained on cached maps of the rest) | "full" (fine-tuning)
    loss: str = "triplet"
    margin: float = 0.1
    mining: str = "semihard"                # | "hard" (batch-hard) | "all"
    memory: bool = True
    memory_share: float = 0.5
    memory_weight: float = 1.0
    warmup_iters: int = 100
    iterations: int = 1000
    classes_per_batch: int = 32             # P
    samples_per_class: int = 4              # K
    lr_head: float = 1e-4
    lr_backbone: float = 1e-5
    weight_decay: float = 1e-4
    freeze_bn: bool = True
    image_size: int = 224
    device: str = "auto"
    seed: int = 0
    val_every: int = 100
    out_dir: str = ""                       # "" = <models dir>/<name>
    name: str = ""                          # "" = generated from date + settings
    # additions beyond the GUI contract (all optional)
    patience: int = 0                       # stop after this many validations without improvement (0 = never)
    select_metric: str = "map"              # validation metric that chooses the kept checkpoint (best.pt) and
    #                                         drives early stopping: map | recall@1
    head_views: int = 2                     # head/tail mode: cached views per image (1 = plain, 2 = + mirror, >2 = + crops)
    tail_units: int = 3                     # tail mode: feature units trained (efficientnet_lite0: 1 = head conv,
    #                                         2 = + last block, ...; 18 units in all)
    cache_dir: str = ""                     # head/tail-mode feature cache ("" = <models dir>/../cache)
    num_threads: int = 0                    # torch CPU threads (0 = leave as is)
    log_every: int = 0                      # read the loss from the device every N steps (0 = 1 on CPU, 20 on CUDA)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-able dict of every field."""
        d = dataclasses.asdict(self)
        if d["train_classes"] is not None:
            d["train_classes"] = list(d["train_classes"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Build from a dict; unknown keys are refused with their names, missing ones take defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training setting(s): {', '.join(unknown)}")
        if "data_root" not in d:
            raise ValueError("training settings lack 'data_root'")
        return cls(**d)

    def validate(self) -> list[str]:
        """Human-readable problems with these settings (empty list = fine)."""
        p: list[str] = []
        if not self.data_root:
            p.append("data_root is empty: choose a folder with one sub-folder per class")
        if self.mode not in MODES:
            p.append(f"mode must be one of {MODES}, not {self.mode!r}")
        if self.loss not in LOSSES:
            p.append(f"loss must be one of {LOSSES}, not {self.loss!r}")
        if self.mining not in MININGS:
            p.append(f"mining must be one of {MININGS}, not {self.mining!r}")
        if self.pooling not in POOLINGS:
            p.append(f"pooling must be one of {POOLINGS}, not {self.pooling!r}")
        if self.target not in TARGETS:
            p.append(f"target must be one of {TARGETS} (same or new categories), not {self.target!r}")
        if not 0.0 <= self.val_class_share < 1.0:
            p.append("val_class_share must be in [0, 1)")
        if not 0.0 <= self.val_image_share < 1.0:
            p.append("val_image_share must be in [0, 1)")
        if not 0 <= self.embedding_dim <= MAX_EMBEDDING_DIM:
            p.append(f"embedding_dim must be in 0..{MAX_EMBEDDING_DIM} (0 = the backbone's feature size)")
        if self.margin <= 0:
            p.append("margin must be > 0")
        if not 0.0 < self.memory_share <= 1.0 and self.memory:
            p.append("memory_share must be in (0, 1]")
        if self.memory_weight < 0:
            p.append("memory_weight must be >= 0")
        if self.warmup_iters < 0:
            p.append("warmup_iters must be >= 0")
        if self.iterations < 1:
            p.append("iterations must be >= 1")
        if self.classes_per_batch < 2:
            p.append("classes_per_batch (P) must be >= 2: a batch needs negatives")
        if self.samples_per_class < 2:
            p.append("samples_per_class (K) must be >= 2: a batch needs positives")
        for n in ("lr_head", "lr_backbone"):
            if getattr(self, n) < 0:
                p.append(f"{n} must be >= 0")
        if self.weight_decay < 0:
            p.append("weight_decay must be >= 0")
        if not MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE:
            p.append(f"image_size must be in {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}")
        if self.val_every < 1:
            p.append("val_every must be >= 1")
        if self.head_views < 1:
            p.append("head_views must be >= 1")
        if self.tail_units < 1:
            p.append("tail_units must be >= 1")
        if self.select_metric not in SELECT_METRICS:
            p.append("select_metric must be 'map' or 'recall@1'")
        if self.log_every < 0:
            p.append("log_every must be >= 0 (0 = automatic)")
        if self.patience < 0:
            p.append("patience must be >= 0")
        if not (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda")
                or self.device == "mps"):
            p.append(f"device must be auto, cpu, cuda or cuda:N, not {self.device!r}")
        return p

    def default_name(self) -> str:
        """A unique-looking name from the time (milliseconds), the data folder and the main settings,
        e.g. '20260123-140512-123_birds_efficientnet_lite0_same_head_triplet_xbm' (the trainer adds a
        counter when the folder exists all the same)."""
        now = _dt.datetime.now()
        stamp = now.strftime("%Y%m%d-%H%M%S-") + f"{now.microsecond // 1000:03d}"
        base = self.backbone.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
        if base.endswith(".pt"):
            base = base[:-3]
        data = _safe(PurePath(self.data_root.replace("\\", "/").rstrip("/")).name) or "data"
        return (f"{stamp}_{data}_{_safe(base)}_{self.target}_{self.mode}_{self.loss}"
                f"{'_xbm' if self.memory else ''}")


def _safe(text: str) -> str:
    """``text`` with anything but letters, digits, '.', '-' and '_' replaced by '_' (at most 40 characters)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:40]
