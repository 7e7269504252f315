"""Images described without torch: the cached exports of engine.runtime run in ONNX Runtime, the
preprocessing in PIL and numpy (engine.images, engine.decoding), so that `search` does not pay torch's import
(1-5 s), nor `index` once a first `index` (or `search`) has exported the model: the one image->vector path of
both commands when the exports are there (:meth:`QueryDescriber.describe` for a query, :meth:`QueryDescriber.extract`
for a folder, every descriptor head on one backbone pass).

:func:`load_describer` finds the descriptor head's export of a :class:`engine.vocabulary.ModelSpec`
(written by :func:`engine.runtime.export_head` at `index` time or after a first `search`) and the backbone
exports it names, and trusts them only when

- every file matches its sidecar (size and SHA-256; the bytes checked are the bytes loaded), the head's
  sidecar names each backbone export by SHA-256 and the spec by its key (which hashes the checkpoint,
  weights and whitening files by content: a changed file is another key);
- the backbone exports passed engine.runtime's comparison with PyTorch in ONNX Runtime of the version
  installed now (``<export>.checked.json``), and the head passed its own at export time with that version.

Otherwise it says why, and the caller runs the model in PyTorch (which writes the exports for the next time). Nothing here imports torch or torchvision (an import-linter contract keeps it).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.decoding import (
    READ_AHEAD_BATCHES,
    ExtractedBatch,
    SkippedImage,
    default_decode_threads,
    prepare_file,
    threaded_items,
)
from engine.exports import head_export_path, onnxruntime_session, read_checked, read_verified, runtime_version
from engine.images import DEFAULT_MAX_PIXELS, Box, ImageLoadError, network_array, resize_side
from engine.vocabulary import ModelSpec


@dataclass
class QueryDescriber:
    """The cached exports of one backbone and of one or more descriptor heads on it (one per spec), in ONNX
    Runtime. ``describe(path) -> (D,)`` float32 L2-normalised for the first spec, as
    engine.session.embed_images gives it (within the runtime's tolerance); :meth:`extract` streams files
    through every head at once, as `index` does. ``sizes``: the network's input sizes; ``head_path``: the
    first head's export."""

    spec: ModelSpec
    sizes: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_fraction: float
    head_path: Path
    _backbones: tuple  # one ONNX Runtime session per size
    _head: object
    _more_heads: tuple = ()  # the heads of further specs sharing the backbones (load_describers)
    name: str = "onnxruntime"  # what runs the network (the `index` summary's "runtime")
    fallback_reason: str | None = None

    @property
    def heads(self) -> tuple:
        """Every head's session, in the order of the specs given to :func:`load_describers`."""
        return (self._head, *self._more_heads)

    def _transform(self, img) -> tuple[np.ndarray, ...]:
        """An RGB PIL image -> its network input (3, S, S) float32 at every size."""
        return tuple(network_array(img, s, self.mean, self.std, self.crop_fraction) for s in self.sizes)

    def vectors(self, xs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The batch at every size (``xs[i]``: (B, 3, S_i, S_i) float32) -> each head's (B, D) float32: the
        backbone runs once per size, every head on its maps."""
        fmaps = [session.run(None, {session.get_inputs()[0].name: x})[0]
                 for x, session in zip(xs, self._backbones, strict=True)]
        out = []
        for head in self.heads:
            feeds = {inp.name: f for inp, f in zip(head.get_inputs(), fmaps, strict=True)}
            out.append(np.asarray(head.run(None, feeds)[0], np.float32))
        return out

    def describe(self, path: str | os.PathLike, box: Box | None = None) -> np.ndarray:
        """The query file's descriptor (D,), of its region ``box`` alone when given (decoded in full, then
        cropped, as engine.extraction does); raises engine.images.ImageLoadError for a file that cannot be used."""
        item = prepare_file(str(path), self._transform, DEFAULT_MAX_PIXELS, self._min_side(), box)
        if isinstance(item, str):
            raise ImageLoadError(path, item)
        return self.vectors([x[None] for x in item])[0][0]

    def _min_side(self) -> int:
        return resize_side(max(self.sizes), self.crop_fraction)

    def extract(self, paths: Sequence[str | os.PathLike], *, batch_size: int = 32, decode_threads: int | None = None,
                max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Iterator[ExtractedBatch]:
        """Stream ``paths`` through the network batch by batch, as engine.extraction.iter_extract does in
        PyTorch (the same decoding: engine.decoding; files decoded by ``decode_threads`` threads, None: one
        per core, while the network runs): each batch's ``vectors[i]`` (n, D) is head i's; files that cannot
        be used are in its ``skipped``. engine.collection.update_collections takes it as ``extract``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        paths = [str(p) for p in paths]
        threads = default_decode_threads() if decode_threads is None else max(1, decode_threads)
        min_side = self._min_side()

        def get(i: int):
            return prepare_file(paths[i], self._transform, max_pixels, min_side)

        done, total, items = 0, len(paths), []
        for i, item in enumerate(threaded_items(get, total, threads, READ_AHEAD_BATCHES * batch_size)):
            items.append((i, item))
            if len(items) == batch_size or i == total - 1:
                good = [(j, x) for j, x in items if not isinstance(x, str)]
                skipped = [SkippedImage(paths[j], x) for j, x in items if isinstance(x, str)]
                vectors = {}
                if good:
                    outs = self.vectors([np.stack([x[k] for _, x in good]) for k in range(len(self.sizes))])
                    vectors = dict(enumerate(outs))
                done += len(items)
                items = []
                yield ExtractedBatch([paths[j] for j, _ in good], vectors, skipped, done, total)


def load_describer(spec: ModelSpec, cache_dir: str | os.PathLike, threads: int | None = None
                   ) -> tuple[QueryDescriber | None, str]:
    """(the describer, "") when ``spec``'s exports are cached and trusted (see the module's text), else
    (None, why not). ``threads``: ONNX Runtime's intra-op threads (default: one per core)."""
    return load_describers([spec], cache_dir, threads)


def load_describers(specs: Sequence[ModelSpec], cache_dir: str | os.PathLike, threads: int | None = None
                    ) -> tuple[QueryDescriber | None, str]:
    """One describer running every spec's head on one shared backbone (`index`: every descriptor from one
    pass), or (None, why not) unless every head is cached and trusted and all of them name the same backbone
    exports and preprocessing."""
    if not specs:
        return None, "no model"
    version = runtime_version("onnxruntime")
    if version is None:
        return None, "onnxruntime is not installed"
    heads, first = [], None
    for spec in specs:
        try:
            key = spec.key()
        except (OSError, ValueError) as exc:  # a checkpoint or whitening file that cannot be read
            return None, str(exc)
        path = head_export_path(cache_dir, key)
        data, meta, why = read_verified(path, {"kind": "head", "identity": key, "runtime": "onnxruntime",
                                               "version": version})
        if data is None:
            return None, f"descriptor head: {why}"
        try:
            setup = (tuple(int(b["size"]) for b in meta["backbones"]), tuple(str(b["file"]) for b in meta["backbones"]),
                     tuple(str(b["sha256"]) for b in meta["backbones"]), tuple(map(float, meta["mean"])),
                     tuple(map(float, meta["std"])), float(meta["crop_fraction"]))
        except (KeyError, TypeError, ValueError):
            return None, "descriptor head: sidecar without its preprocessing"
        if not setup[0] or setup[5] != float(spec.crop_fraction):
            return None, "descriptor head: sidecar of another preprocessing"
        if first is not None and setup != first:
            return None, "descriptor heads of other backbone exports or preprocessing"
        first = setup
        heads.append((path, data))
    sizes, files, shas, mean, std, crop = first
    threads = int(threads) if threads else max(1, os.cpu_count() or 1)
    folder = heads[0][0].parent
    sessions = []
    for size, name, sha in zip(sizes, files, shas, strict=True):
        if Path(name).name != name:
            return None, "descriptor head: sidecar naming a file outside the exports' folder"
        bpath = folder / name
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
    head_sessions = []
    for _, data in heads:
        try:
            head_sessions.append(onnxruntime_session(data, 1))
        except Exception as exc:
            return None, f"descriptor head: onnxruntime cannot load it ({type(exc).__name__})"
    return QueryDescriber(specs[0], sizes, mean, std, crop, heads[0][0], tuple(sessions), head_sessions[0],
                          tuple(head_sessions[1:])), ""
