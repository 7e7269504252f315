"""The model registry: every backbone by its name, a registered network (models.backbones) or a trained
model's checkpoint file (models.embedding). It sits above both, so neither imports the other back."""

from __future__ import annotations

import os

import torch

import models.embedding as embedding
from models.backbones import Backbone, build_named_backbone, pretrained_weights_cached, unknown_backbone
from models.names import BACKBONES, CHECKPOINT_SUFFIXES, DEFAULT_BACKBONE


def list_backbones() -> list[str]:
    """The registered backbone names, the default first."""
    return list(BACKBONES)


def _is_checkpoint_path(name: str) -> bool:
    return name.lower().endswith(CHECKPOINT_SUFFIXES) and os.path.isfile(name)


def weights_available(name: str | os.PathLike) -> bool:
    """Whether ``get_backbone(name)`` would find pretrained weights without downloading."""
    name = os.fspath(name)
    if name in BACKBONES:
        return pretrained_weights_cached(name)
    if _is_checkpoint_path(name):
        return True
    raise ValueError(unknown_backbone(name))


def get_backbone(name: str | os.PathLike = DEFAULT_BACKBONE, weights: str | os.PathLike = "pretrained",
                 device: str | torch.device = "cpu", allow_download: bool | None = None) -> Backbone:
    """Build a backbone in eval mode on ``device``.

    ``weights``: "pretrained" (ImageNet), "random", or the path of a state-dict file.
    ``allow_download``: None = allowed unless ``$RETRIEVAL_EXPLORER_OFFLINE`` is 1.
    ``name`` may also be the path of a trained model checkpoint (see ``models.embedding``).
    Raises ValueError for an unknown name or unreadable file, WeightsUnavailableError when
    pretrained weights cannot be had.
    """
    name = os.fspath(name)
    if _is_checkpoint_path(name):
        return embedding.load_trained_backbone(name, device=device)
    return build_named_backbone(name, weights=weights, device=device, allow_download=allow_download)
