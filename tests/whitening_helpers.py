"""A whitening learned from a list of image paths, for the tests that need one (the program learns its
whitenings from a folder: engine.whitening.learn_from_folder, on the same whitening_training_vectors)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from torch import nn

from engine.extraction import input_sizes, input_spec, whitening_training_vectors
from models.whitening import PCAWhitening


def learn_whitening(descriptor_kind: str, backbone: nn.Module, paths: Sequence[str | os.PathLike], *,
                    dim: int | None = None, method: str = "pca", labels: Sequence[str] | None = None,
                    shrinkage: float = 0.0, **extract: Any) -> PCAWhitening:
    """Learn a ``models.whitening.PCAWhitening`` (to ``dim`` dimensions, None = all) for descriptor
    ``descriptor_kind`` from the images ``paths`` (``extract``: the options of whitening_training_vectors,
    e.g. image_size, a sequence for multi-scale): for rmac on the L2-normalised regional vectors, for the
    other kinds on the pooled vectors. ``method``: "pca" (PCA-whitening) or "lw" (learned whitening from
    ``labels``, one per path: the class of each image); ``shrinkage`` of the covariance towards a multiple
    of the identity, in [0, 1]."""
    if method not in ("pca", "lw"):
        raise ValueError(f"unknown whitening method {method!r}: choose one of pca, lw")
    if method == "lw" and (labels is None or len(labels) != len(paths)):
        raise ValueError("learned whitening (lw) needs one class label per image")
    X, owners = whitening_training_vectors(descriptor_kind, backbone, paths, return_owners=True,  # noqa: N806
                                           **extract)
    if dim is not None and dim > min(X.shape):
        raise ValueError(f"whitening dim {dim} is larger than the data allows ({X.shape[0]} vectors of {X.shape[1]})")
    size, _, _ = input_spec(backbone, extract.get("image_size"))
    meta = {"descriptor": descriptor_kind, "sizes": list(input_sizes(size))}
    if method == "lw":
        assert labels is not None
        row_labels = [str(labels[i]) for i in owners]
        return PCAWhitening.fit_lw(X, row_labels, dim=dim, shrinkage=shrinkage, meta=meta)
    return PCAWhitening.fit(X, dim=dim, shrinkage=shrinkage, meta=meta)
