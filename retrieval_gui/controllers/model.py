"""The model choice: backbone or trained checkpoint, descriptor, input sizes and whitening (one ModelSpec)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import QObject, QSettings, Signal

from engine.cli.common import default_descriptor
from engine.session import list_backbones, list_descriptors, model_title
from engine.vocabulary import (
    DEFAULT_BACKBONE,
    DEFAULT_DESCRIPTOR,
    DEFAULT_IMAGE_SIZE,
    DESCRIPTOR_TITLES,
    ModelSpec,
    is_checkpoint_name,
    multi_scales,
    sizes_label,
)

DEFAULT_SIZE = DEFAULT_IMAGE_SIZE  # for the Sizes labels when none is given
TRAINED = "trained: "  # how engine.session.model_title names a trained checkpoint


def descriptor_title(descriptor: str, backbone: str = "") -> str:
    """'GeM', 'R-MAC'...; a trained checkpoint's own embedding (its head, "fc") is named as the trained one."""
    title = model_title(backbone) if backbone else ""
    if descriptor == "fc" and title.startswith(TRAINED):
        return f"trained embedding ({title[len(TRAINED):]})"
    return DESCRIPTOR_TITLES.get(descriptor, descriptor)


def sizes_title(spec: ModelSpec) -> str:
    """'224+288+352' for a multi-scale spec, else its one size (ModelSpec.sizes_title)."""
    return spec.sizes_title()


def whitening_refusal(path: str, key: ModelSpec) -> str | None:
    """Why ``path`` cannot whiten ``key``'s vectors (None: it can). Reads the file without running code
    (models.whitening); its dimension is checked when the model is built."""
    from models.whitening import PCAWhitening

    try:
        w = PCAWhitening.load(path)
    except (ValueError, OSError) as exc:  # WhiteningFileError is a ValueError
        return str(exc)
    desc, sizes = w.meta.get("descriptor"), w.meta.get("sizes")
    mine = list(key.scales) if key.scales else [key.image_size or DEFAULT_SIZE]
    if desc is None or sizes is None:  # an older file: the engine's refusal, with the command that relearns it
        from engine.whitening_fit import whitening_mismatch

        return whitening_mismatch(w, path, descriptor=key.descriptor, sizes=mine)
    if desc != key.descriptor:
        return (f"{Path(path).name} was learned for the {DESCRIPTOR_TITLES.get(desc, desc)} descriptor; "
                f"choose it first (the current one is {DESCRIPTOR_TITLES.get(key.descriptor)}).")
    known = key.scales or key.image_size or key.backbone in list_backbones()  # else a checkpoint's
    if known and isinstance(sizes, list) and all(type(s) is int for s in sizes) and sizes != mine:
        return (f"{Path(path).name} was learned at sizes {sizes_label(sizes)}; the window uses "
                f"{'+'.join(map(str, mine))} (choose them under Sizes first).")
    return None


class ModelChoice(QObject):
    """The one ModelSpec the window searches with (``key``); every change emits ``changed(spec)``.

    Methods return None when the change is made, else a sentence saying why not (nothing changes).
    ``settings`` (optional) remembers model, descriptor and sizes; ``check_whitening(path, spec)``
    decides whether a whitening file fits (default :func:`whitening_refusal`).
    """

    changed = Signal(object)  # the new ModelSpec

    def __init__(self, *, weights: str = "pretrained", image_size: int | None = None,
                 settings: QSettings | None = None,
                 check_whitening: Callable[[str, ModelSpec], str | None] = whitening_refusal,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.single_size = image_size  # the one input size (None: the backbone's default)
        self._check_whitening = check_whitening
        value = (lambda k, d: settings.value(k, d)) if settings is not None else (lambda _k, d: d)
        backbone = str(value("model", DEFAULT_BACKBONE))
        descriptor = str(value("descriptor", DEFAULT_DESCRIPTOR))
        if descriptor not in list_descriptors():
            descriptor = DEFAULT_DESCRIPTOR
        multi = str(value("sizes", "single")) == "multi"
        self.key = ModelSpec(backbone=backbone, descriptor=descriptor, weights=weights,
                             image_size=None if multi else image_size,
                             scales=multi_scales(image_size or DEFAULT_SIZE) if multi else None)

    @property
    def sizes(self) -> str:
        """'single' or 'multi'."""
        return "multi" if self.key.scales else "single"

    def descriptor_title(self, descriptor: str | None = None) -> str:
        return descriptor_title(descriptor or self.key.descriptor, self.key.backbone)

    def use_model(self, backbone: str, descriptor: str | None = None) -> str | None:
        """Switch to a backbone name or a trained checkpoint path. A checkpoint is searched with its own
        trained embedding (as the CLI: engine.cli.common.default_descriptor; the wizard's "Use this
        model") unless ``descriptor`` says otherwise."""
        if not backbone:
            return "no model given"
        backbone = str(backbone)
        if descriptor is None and is_checkpoint_name(backbone):
            descriptor = default_descriptor(backbone, None)
        key = replace(self.key, backbone=backbone)
        if descriptor is not None and descriptor != key.descriptor:
            if descriptor not in list_descriptors():
                return f"unknown descriptor {descriptor!r}: choose one of {', '.join(list_descriptors())}"
            key = key.with_descriptor(descriptor)  # a whitening belongs to one descriptor: dropped
        self._set(key)
        return None

    def set_descriptor(self, descriptor: str) -> str | None:
        """Switch descriptor (a whitening, learned for one descriptor, is dropped)."""
        if descriptor not in list_descriptors():
            return f"unknown descriptor {descriptor!r}: choose one of {', '.join(list_descriptors())}"
        self._set(self.key.with_descriptor(descriptor))
        return None

    def set_sizes(self, sizes: str) -> str | None:
        """'single' (one input size) or 'multi' (multi_scales of it); a whitening is dropped."""
        if sizes not in ("single", "multi"):
            return f"unknown sizes {sizes!r}: choose 'single' or 'multi'"
        if sizes == "multi":
            key = replace(self.key, image_size=None, scales=multi_scales(self.single_size or DEFAULT_SIZE))
        else:
            key = replace(self.key, scales=None, image_size=self.single_size)
        self._set(replace(key, whitening=None))  # a whitening is learned at one set of sizes
        return None

    def use_whitening(self, path: str | os.PathLike | None) -> str | None:
        """Apply a saved whitening to the current descriptor, or none (None); refused with a reason when
        the file cannot be read or was learned for another descriptor or other sizes."""
        if path is not None:
            why = self._check_whitening(str(path), self.key)
            if why is not None:
                return why
        self._set(replace(self.key, whitening=str(path) if path is not None else None))
        return None

    def _set(self, key: ModelSpec) -> None:
        if key == self.key:
            return
        self.key = key
        if self.settings is not None:
            self.settings.setValue("model", key.backbone)
            self.settings.setValue("descriptor", key.descriptor)
            self.settings.setValue("sizes", self.sizes)
        self.changed.emit(key)
