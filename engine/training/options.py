"""How each TrainConfig field is offered to a user: its label, help, choices and range, read by the CLI
(``engine train --option``) and by the GUI wizard's settings pages alike, so a field is described once.

The field's type and default come from the dataclass itself (``dataclasses.fields(TrainConfig)``); this
table adds what a user sees. Every field of TrainConfig has an entry (tests/test_training_options.py checks
it); ``page`` says which wizard page binds it ("" = the CLI only, or bound by hand on its page).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from engine.training.config import LOSSES, MININGS, MODES, POOLINGS, SELECT_METRICS, TARGETS, TrainConfig


@dataclass(frozen=True)
class Option:
    """What a user sees of one TrainConfig field.

    ``label``: the wizard's form label (a check box's text for a bool); ``help``: the CLI's help and the
    wizard's tooltip; ``choices``: the allowed values (CLI choices, combo items); ``suggestions``: values
    offered though others are allowed too (combo items only); ``titles``: the values' shown names; ``keep_unknown``: a value outside the choices is kept as it is (else the first choice is
    shown); ``lo``/``hi``/``step``/``decimals``: a number's range; ``special``: the text shown for ``lo``
    (e.g. 0 = "default"); ``placeholder``: a text field's hint; ``page``: the wizard page that binds it."""

    label: str = ""
    help: str = ""
    choices: tuple[str, ...] = ()
    suggestions: tuple[str, ...] = ()
    titles: dict[str, str] = field(default_factory=dict)
    keep_unknown: bool = True
    lo: float | None = None
    hi: float | None = None
    step: float = 1
    decimals: int = 2
    special: str = ""
    placeholder: str = ""
    page: str = ""


_LR = dict(lo=0.0, hi=1.0, step=1e-5, decimals=7)

OPTIONS: dict[str, Option] = {
    # the data page binds these by hand (a folder, a target choice that switches the share shown, a split file)
    "data_root": Option(help="folder with one sub-folder of images per class"),
    "train_classes": Option(help="the training classes (default: every sub-folder)"),
    "target": Option(help="what the model should get better at: 'same' = retrieving within these categories "
                          "(validation: a share of each class's images, never trained on; the right choice for "
                          "your own labelled folders); 'new' = categories it has never seen (validation: whole "
                          "classes held back)", choices=TARGETS),
    "val_image_share": Option(help="target same: the share of each class's images held back to validate",
                              lo=0.0, hi=0.9, step=0.05),
    "val_class_share": Option(help="target new: the share of the classes held back to validate",
                              lo=0.0, hi=0.9, step=0.05),
    "image_split": Option(help="a JSON file {\"train\": [...], \"val\": [...]} of image paths relative to --data "
                               "(label = parent folder, or the file's \"labels\" {path: class}, as the window's "
                               "Train on my concepts writes), used instead of the automatic carve"),
    "seed": Option("Seed (split and training):", "the seed of the split and of training", lo=0, hi=2**31 - 1,
                   page="data"),
    # model
    "backbone": Option("Backbone:", "the network (a registered backbone, or a trained checkpoint .pt)",
                       page="model"),
    "weights": Option("Weights:", "pretrained, random, or a weights file",
                      suggestions=("pretrained", "random"), page="model"),
    "pooling": Option("Pooling:", "the pooling of the feature maps", choices=POOLINGS, page="model"),
    "embedding_dim": Option("Embedding size:", "the embedding's size; 0 = the feature size, starting from the "
                            "identity (the untrained descriptor)", lo=0, hi=8192, step=64,
                            special="same as the features (identity start)", page="model"),
    "image_size": Option("Image size:", "the input size in pixels", lo=16, hi=1024, step=16, page="model"),
    # loss and memory
    "loss": Option("Loss:", "the loss on each P x K batch", choices=LOSSES, page="loss"),
    "margin": Option("Margin:", "the loss's margin", lo=0.001, hi=2.0, step=0.05, decimals=3, page="loss"),
    "mining": Option("Mining:", "which pairs and triplets of a batch count", choices=MININGS, page="loss"),
    "memory": Option("Use a cross-batch memory", "the cross-batch memory (XBM): pairs against embeddings of "
                     "earlier batches", page="loss"),
    "memory_share": Option("Memory size (share of the training set):", "the memory's size as a share of the "
                           "training images", lo=0.01, hi=1.0, step=0.05, page="loss"),
    "memory_weight": Option("Memory loss weight:", "the weight of the memory's loss", lo=0.0, hi=10.0, step=0.1,
                            page="loss"),
    "warmup_iters": Option("Warm-up iterations (before the memory):", "iterations before the memory is used",
                           lo=0, hi=1_000_000, step=10, page="loss"),
    # run settings (mode: radio buttons with the trained units between them, bound by hand)
    "mode": Option(help="head = frozen backbone on cached features; tail = the last units trained on cached "
                        "maps; full = fine-tuning", choices=MODES),
    "tail_units": Option("    Trained units:", "How many of the last feature units train: for efficientnet_lite0 "
                         "1 = the head conv, 2 = + the last block, 3 = + the block before it, ...", lo=1, hi=64,
                         page="run"),
    "iterations": Option("Iterations:", "training iterations (batches)", lo=1, hi=10_000_000, step=100, page="run"),
    "classes_per_batch": Option("Batch P × K:", "P: classes per batch", lo=2, hi=4096, page="run"),
    "samples_per_class": Option("", "K: images per class in a batch", lo=2, hi=1024, page="run"),
    "lr_head": Option("Learning rate, head:", "the learning rate of the embedding head", page="run", **_LR),
    "lr_backbone": Option("Learning rate, backbone:", "the learning rate of the backbone (tail and full modes)",
                          page="run", **_LR),
    "weight_decay": Option("Weight decay:", "AdamW's weight decay", lo=0.0, hi=1.0, step=1e-4, decimals=6,
                           page="run"),
    "freeze_bn": Option("Freeze BatchNorm statistics", "keep the backbone's BatchNorm statistics (tail and full "
                        "modes)", page="run"),
    "val_every": Option("Validate every (iterations):", "iterations between validations", lo=1, hi=1_000_000,
                        step=50, page="run"),
    "select_metric": Option("Keep the model with the best validation:", "the validation metric that chooses the "
                            "kept checkpoint best.pt (and early stopping)", choices=SELECT_METRICS,
                            titles={"map": "mAP (the whole ranking)", "recall@1": "R@1 (the first result)"},
                            page="run"),
    "device": Option("Device:", "auto, cpu, cuda or cuda:N", keep_unknown=False, page="run"),
    "num_threads": Option("CPU threads:", "torch CPU threads (0 = leave as is)", lo=0, hi=256, special="default",
                          page="run"),
    "name": Option("Model name:", "the run's name (default: time to the millisecond, data folder and settings; a "
                   "counter is added when that folder exists)",
                   placeholder="generated from the time, the data folder and the settings", page="run"),
    # the CLI only
    "out_dir": Option(help="the run's folder; refused when it holds another run (default: a new folder in the "
                           "models folder)"),
    "patience": Option(help="stop after this many validations without improvement (0 = never)"),
    "head_views": Option(help="head/tail mode: cached views per image (1 = plain, 2 = + mirror, >2 = + crops)"),
    "cache_dir": Option(help="the head/tail-mode feature cache (default: beside the models folder)"),
    "log_every": Option(help="read the loss from the device every N steps (0 = 1 on CPU, 20 on CUDA)"),
    "extra": Option(help="settings beyond the trainer's (e.g. the wizard's split file)"),
}


def option(name: str) -> Option:
    """The Option of TrainConfig field ``name``; ValueError naming the fields when there is none."""
    try:
        return OPTIONS[name]
    except KeyError:
        raise ValueError(f"no TrainConfig field {name!r}; the fields are: {', '.join(OPTIONS)}") from None


def defaults() -> dict[str, Any]:
    """Each field's default value (TrainConfig's, with an empty data folder)."""
    cfg = TrainConfig(data_root="")
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig)}


def page_fields(page: str) -> list[str]:
    """The fields a wizard page binds from this table, in TrainConfig's order."""
    return [f.name for f in dataclasses.fields(TrainConfig) if OPTIONS[f.name].page == page]
