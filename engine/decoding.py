"""Image files decoded for a network, without torch: the part of extraction that both runtimes share.

engine.extraction (PyTorch: its Dataset and DataLoader) and engine.fastquery (the cached exports in ONNX
Runtime: `search`, and `index` once the exports exist) read files the same way: :func:`prepare_file` opens one
at the size the network needs (a bad file becomes a reason, never an exception) and :func:`threaded_items`
decodes them in threads ahead of the consumer. :class:`ExtractedBatch` is what a streamed extraction yields,
whichever runtime made it. Nothing here imports torch (an import-linter contract keeps it).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.images import Box, ImageLoadError, crop_to_box, load_image


@dataclass
class SkippedImage:
    """A file left out of an extraction, with the reason in plain words."""

    path: str
    reason: str


@dataclass
class ExtractedBatch:
    """One batch of a streamed extraction: ``paths`` (n) with ``vectors[name]`` (n, D) float32 per head,
    the files of the batch that could not be used, and ``done`` of ``total`` files handled so far."""

    paths: list[str]
    vectors: dict[Any, np.ndarray]
    skipped: list[SkippedImage]
    done: int
    total: int


#: decoded batches kept ready ahead of the network: the decoding threads keep working while the network runs
#: a batch (at 224 px a batch of 32 is 19 MB); measured on 12 MP photos under load, 4 against 2: 0.88 / 1.17
#: of the minimal pipeline's rate against 0.78 / 1.06 in the same two rounds (benchmarks/photos12mp.py)
READ_AHEAD_BATCHES = 4


def default_decode_threads() -> int:
    """Decoding threads beside inference: one per core, at least one (PIL releases the GIL)."""
    return max(1, os.cpu_count() or 1)


def prepare_file(path: str, transform: Callable[[Any], Any], max_pixels: int | None, min_side: int | None,
                 box: Box | None = None) -> Any:
    """``transform(image)`` of the file ``path`` decoded with at least ``min_side`` pixels on its shorter side
    (engine.images.load_image; None: in full), of its region ``box`` alone when given (decoded in full, then
    cropped); or a str: why the file cannot be used."""
    try:
        img = load_image(path, max_pixels=max_pixels, min_side=None if box else min_side)
        if box is not None:
            try:
                img = crop_to_box(img, box)
            except ValueError as exc:
                return str(exc)
        return transform(img)
    except ImageLoadError as exc:
        return exc.reason
    except Exception as exc:  # a transform failure must not take the batch down either
        return f"cannot prepare image ({type(exc).__name__}: {exc})"


def threaded_items(get: Callable[[int], Any], n: int, threads: int, ahead: int) -> Iterator[Any]:
    """``get(0) ... get(n - 1)`` in order, computed by ``threads`` threads at most ``ahead`` items in advance
    (a consumer that stops early leaves the rest undone)."""
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode") as pool:
        queue: collections.deque = collections.deque()
        nxt = 0
        try:
            while nxt < n or queue:
                while nxt < n and len(queue) < ahead:
                    queue.append(pool.submit(get, nxt))
                    nxt += 1
                yield queue.popleft().result()
        finally:
            for f in queue:
                f.cancel()
