"""A query image described without torch: the cached exports of engine.runtime run in ONNX Runtime, the
preprocessing in PIL and numpy (engine.images), so that `search` does not pay torch's import (1-5 s).

:func:`load_describer` finds the descriptor head's export of a :class:`engine.vocabulary.ModelSpec`
(written by :func:`engine.runtime.export_head` at `index` time or after a first `search`) and the backbone
exports it names, and trusts them only when

- every file matches its sidecar (size and SHA-256; the bytes checked are the bytes loaded), the head's
  sidecar names each backbone export by SHA-256 and the spec by its key (which hashes the checkpoint,
  weights and whitening files by content: a changed file is another key);
- the backbone exports passed engine.runtime's comparison with PyTorch in ONNX Runtime of the version
  installed now (``<export>.checked.json``), and the head passed its own at export time with that version.

Otherwise it says why, and the caller describes the query in PyTorch as indexing does (which writes the
exports for the next time). Nothing here imports torch or torchvision (an import-linter contract keeps it).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.exports import head_export_path, onnxruntime_session, read_checked, read_verified, runtime_version
from engine.images import Box, ImageLoadError, crop_to_box, load_image, network_array, resize_side
from engine.vocabulary import ModelSpec


@dataclass
class QueryDescriber:
    """``describe(path) -> (D,)`` float32 L2-normalised, as engine.session.embed_images gives it (within the
    runtime's tolerance). ``sizes``: the network's input sizes; ``head_path``: the head's export."""

    spec: ModelSpec
    sizes: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_fraction: float
    head_path: Path
    _backbones: tuple  # one ONNX Runtime session per size
    _head: object

    def describe(self, path: str | os.PathLike, box: Box | None = None) -> np.ndarray:
        """The query file's descriptor (D,), of its region ``box`` alone when given (decoded in full, then
        cropped, as engine.extraction does); raises engine.images.ImageLoadError for a file that cannot be used."""
        img = load_image(path, min_side=None if box else resize_side(max(self.sizes), self.crop_fraction))
        if box is not None:
            try:
                img = crop_to_box(img, box)
            except ValueError as exc:
                raise ImageLoadError(path, str(exc)) from None
        fmaps = []
        for size, session in zip(self.sizes, self._backbones, strict=True):
            x = network_array(img, size, self.mean, self.std, self.crop_fraction)[None]
            fmaps.append(session.run(None, {session.get_inputs()[0].name: x})[0])
        head = self._head
        feeds = {inp.name: f for inp, f in zip(head.get_inputs(), fmaps, strict=True)}
        return np.asarray(head.run(None, feeds)[0][0], np.float32)


def load_describer(spec: ModelSpec, cache_dir: str | os.PathLike, threads: int | None = None
                   ) -> tuple[QueryDescriber | None, str]:
    """(the describer, "") when ``spec``'s exports are cached and trusted (see the module's text), else
    (None, why not). ``threads``: ONNX Runtime's intra-op threads (default: one per core)."""
    try:
        key = spec.key()
    except (OSError, ValueError) as exc:  # a checkpoint or whitening file that cannot be read
        return None, str(exc)
    version = runtime_version("onnxruntime")
    if version is None:
        return None, "onnxruntime is not installed"
    path = head_export_path(cache_dir, key)
    data, meta, why = read_verified(path, {"kind": "head", "identity": key, "runtime": "onnxruntime",
                                           "version": version})
    if data is None:
        return None, f"descriptor head: {why}"
    try:
        sizes = tuple(int(b["size"]) for b in meta["backbones"])
        files = [str(b["file"]) for b in meta["backbones"]]
        shas = [str(b["sha256"]) for b in meta["backbones"]]
        mean, std = tuple(map(float, meta["mean"])), tuple(map(float, meta["std"]))
        crop = float(meta["crop_fraction"])
    except (KeyError, TypeError, ValueError):
        return None, "descriptor head: sidecar without its preprocessing"
    if not sizes or crop != float(spec.crop_fraction):
        return None, "descriptor head: sidecar of another preprocessing"
    threads = int(threads) if threads else max(1, os.cpu_count() or 1)
    sessions = []
    for size, name, sha in zip(sizes, files, shas, strict=True):
        if Path(name).name != name:
            return None, "descriptor head: sidecar naming a file outside the exports' folder"
        bpath = path.parent / name
        bdata, _, why = read_verified(bpath, {"image_size": size})
        if bdata is None:
            return None, f"backbone at {size}: {why}"
        if hashlib.sha256(bdata).hexdigest() != sha:
            return None, f"backbone at {size}: another export than the head was made with"
        mark = read_checked(bpath)
        if mark.get("runtime") != "onnxruntime" or mark.get("version") != version or mark.get("sha256") != sha:
            return None, f"backbone at {size}: not checked against PyTorch with this onnxruntime"
        try:
            sessions.append(onnxruntime_session(bdata, threads))
        except Exception as exc:  # a runtime that cannot load it: the torch path
            return None, f"backbone at {size}: onnxruntime cannot load it ({type(exc).__name__})"
    try:
        head = onnxruntime_session(data, 1)
    except Exception as exc:
        return None, f"descriptor head: onnxruntime cannot load it ({type(exc).__name__})"
    return QueryDescriber(spec, sizes, mean, std, crop, path, tuple(sessions), head), ""
