"""A whitening learned from a list of image paths, for the tests that need one (the program learns its
whitenings from a folder: engine.whitening.learn_from_folder, on the same whitening_training_vectors)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from engine.callbacks import ProgressFn, ShouldStopFn
from engine.extraction import FeatureFn, _input_spec, input_sizes, whitening_training_vectors
from models.whitening import PCAWhitening


def learn_whitening(
    descriptor_kind: str,
    backbone: nn.Module,
    paths: Sequence[str | os.PathLike],
    *,
    dim: int | None = None,
    image_size: int | Sequence[int] | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    crop_fraction: float = 1.0,
    rmac_levels: int = 3,
    gem_p: float = 3.0,
    progress: ProgressFn | None = None,
    should_stop: ShouldStopFn | None = None,
    method: str = "pca",
    labels: Sequence[str] | None = None,
    shrinkage: float = 0.0,
    features: FeatureFn | Mapping[int, FeatureFn] | None = None,
):
    """Learn a ``models.whitening.PCAWhitening`` (to ``dim`` dimensions, None = all) for descriptor
    ``descriptor_kind`` from the images ``paths``: for rmac on the L2-normalised regional vectors
    (as R-MAC applies it per region), for the other kinds on the pooled (multi-scale when
    ``image_size`` is a sequence) vectors. ``method``: "pca" (PCA-whitening) or "lw" (learned
    whitening from ``labels``, one per path: the class of each image); ``shrinkage`` of the
    covariance towards a multiple of the identity, in [0, 1]."""
    if method not in ("pca", "lw"):
        raise ValueError(f"unknown whitening method {method!r}: choose one of pca, lw")
    if method == "lw" and (labels is None or len(labels) != len(paths)):
        raise ValueError("learned whitening (lw) needs one class label per image")
    X, owners = whitening_training_vectors(  # noqa: N806
        descriptor_kind, backbone, paths, image_size=image_size, batch_size=batch_size,
        num_workers=num_workers, device=device, crop_fraction=crop_fraction, rmac_levels=rmac_levels,
        gem_p=gem_p, progress=progress, should_stop=should_stop, features=features, return_owners=True,
    )
    if dim is not None and dim > min(X.shape):
        raise ValueError(f"whitening dim {dim} is larger than the data allows ({X.shape[0]} vectors of {X.shape[1]})")
    size, _, _ = _input_spec(backbone, image_size)
    meta = {"descriptor": descriptor_kind, "sizes": list(input_sizes(size))}
    if method == "lw":
        assert labels is not None
        row_labels = [str(labels[i]) for i in owners]
        return PCAWhitening.fit_lw(X, row_labels, dim=dim, shrinkage=shrinkage, meta=meta)
    return PCAWhitening.fit(X, dim=dim, shrinkage=shrinkage, meta=meta)
