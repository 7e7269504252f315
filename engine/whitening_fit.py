"""Whether a whitening file fits the vectors it is applied to (issue 26): a whitening records the descriptor,
input sizes, dimension (and backbone) it was learned for, and is refused for anything else, the message naming
both and the `whiten` command that learns the right one. Used wherever a whitening file meets a model
(engine.extraction.build_model, `eval`, the window's File > Use a whitening file)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.vocabulary import BACKBONES, DEFAULT_BACKBONE, DESCRIPTOR_SHORT, sizes_label


class WhiteningMismatch(ValueError):
    """A whitening file learned for another descriptor, other input sizes, other vectors or another backbone
    than it is applied to (or one that does not record what it was learned for)."""


def whiten_command(descriptor: str, sizes: Sequence[int], backbone: str | None = None) -> str:
    """The `whiten` command that learns a whitening for ``descriptor`` at ``sizes`` (of ``backbone``)."""
    sizes = [int(s) for s in sizes]
    size_opt = f"--scales {','.join(map(str, sizes))}" if len(sizes) > 1 else f"--image-size {sizes[0]}"
    model = f" --backbone {backbone}" if backbone and backbone != DEFAULT_BACKBONE else ""
    return f"retrieval-explorer whiten DIR -o FILE{model} --descriptor {descriptor} {size_opt}"


def _what(descriptor: Any, sizes: Any, dim: int | None, backbone: Any = None) -> str:
    text = f"{DESCRIPTOR_SHORT.get(str(descriptor), str(descriptor))} at {sizes_label(sizes)}"
    extra = [f"{dim}-d vectors"] if dim else []
    if backbone:
        extra.append(f"of {Path(str(backbone)).name}")
    return text + (f" ({' '.join(extra)})" if extra else "")


def whitening_mismatch(w: Any, path: str | os.PathLike, *, descriptor: str, sizes: Sequence[int],
                       in_dim: int | None = None, backbone: str | None = None) -> str | None:
    """Why the whitening ``w`` (models.whitening.PCAWhitening read from ``path``) cannot whiten ``descriptor``
    vectors at input ``sizes`` (``in_dim``-d, of ``backbone``, when known), naming what it was learned for,
    what it is applied to and the command that learns the right one; None when it fits. A file that does not
    record its descriptor and sizes (written before they were recorded) does not fit anything."""
    sizes = [int(s) for s in sizes]
    learned_desc, learned_sizes = w.meta.get("descriptor"), w.meta.get("sizes")
    learned_backbone = w.meta.get("backbone")
    applied = _what(descriptor, sizes, in_dim, backbone)
    cmd = whiten_command(descriptor, sizes, backbone)
    valid_sizes = (isinstance(learned_sizes, list) and learned_sizes
                   and all(type(s) is int for s in learned_sizes))
    if not isinstance(learned_desc, str) or not valid_sizes:
        return (f"{path} does not record the descriptor and input sizes it was learned for (a whitening "
                f"file of an older version): learn it again for {applied}: {cmd}")
    same_backbone = not (isinstance(learned_backbone, str) and learned_backbone in BACKBONES
                         and backbone in BACKBONES and learned_backbone != backbone)
    if (learned_desc == descriptor and list(learned_sizes) == sizes and same_backbone
            and (in_dim is None or w.in_dim == in_dim)):
        return None
    learned = _what(learned_desc, learned_sizes, w.in_dim, learned_backbone)
    return (f"{path} was learned for {learned}; it cannot whiten {applied}. Learn one for it: {cmd} "
            "(or search with the descriptor and sizes the file was learned for)")


def load_whitening_for(path: str | os.PathLike, *, descriptor: str, sizes: Sequence[int],
                       in_dim: int | None = None, backbone: str | None = None) -> Any:
    """models.whitening.PCAWhitening.load(path) (damaged, foreign, absurd or degenerate files refused with
    WhiteningFileError), then refused with :class:`WhiteningMismatch` unless it was learned for exactly
    this descriptor, these sizes (and vectors, backbone when given): see :func:`whitening_mismatch`."""
    from models.whitening import PCAWhitening

    w = PCAWhitening.load(path)
    why = whitening_mismatch(w, path, descriptor=descriptor, sizes=sizes, in_dim=in_dim, backbone=backbone)
    if why:
        raise WhiteningMismatch(why)
    return w


def model_sizes_and_dim(backbone: Any, descriptor: str, scales: Sequence[int] | None = None,
                        image_size: int | None = None) -> tuple[tuple[int, ...], int | None]:
    """(the input sizes, the dimension of the vectors a whitening receives) of ``descriptor`` on the built
    ``backbone`` (models' Backbone contract) at ``scales`` or ``image_size`` (None: the backbone's default)."""
    sizes = tuple(int(s) for s in scales) if scales else (
        int(image_size or getattr(backbone, "default_image_size", 224)),)
    dim = getattr(backbone, "fc_dim" if descriptor == "fc" else "feature_dim", None)
    return sizes, (int(dim) if dim else None)
