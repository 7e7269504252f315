"""The window's first second: the folder's grid from the thumbnail cache, before PyTorch is imported.

Importing PyTorch and preparing the network take seconds (more on a first start) and hold the GUI thread
(retrieval_gui.app.finish_start). Before that, :func:`show_cached_grid` lists the folder that will open
(engine.thumbcache.folder_listing: no image is opened) and reads the thumbnails cached on disk by an
earlier start (engine.thumbcache.read_cached: small JPEGs, no decode of any original), so a second start
shows the folder's images at once; :func:`loading_message` tells what the wait is for and about how long
it took the last time (remembered by :func:`remember_load_time`). Neither imports torch.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: QSettings key: seconds the last start took to load PyTorch and the network
LOAD_TIME_KEY = "startup/load_seconds"


@dataclass
class EarlyGrid:
    """What :func:`show_cached_grid` put in the grid: the folder's images, their labels, how many had a
    cached thumbnail, and the seconds it took."""

    folder: str
    paths: list[str] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)
    cached: int = 0
    seconds: float = 0.0
    error: str = ""


def start_folder(args: argparse.Namespace) -> str:
    """The folder a start opens: the argument, else the last collection, else the demo."""
    from PySide6.QtCore import QSettings

    from engine.session import demo_collection

    last = QSettings().value("lastCollection")
    if getattr(args, "collection", None):
        return str(args.collection)
    if last and Path(str(last)).is_dir():
        return str(last)
    return str(demo_collection())


def show_cached_grid(model: Any, loader: Any, folder: str | Path, limit: int = 400) -> EarlyGrid:
    """List ``folder``'s images into ``model`` (a widgets.ResultsModel: ``set_collection(paths, labels)``)
    with the disk-cached thumbnails of the first ``limit`` already in ``loader``'s memory
    (ThumbnailLoader.prefill), so the grid paints them on its first paint. Never raises: a folder that
    cannot be listed leaves the grid empty and says why in ``error``."""
    from engine.thumbcache import folder_listing

    t0 = time.perf_counter()
    grid = EarlyGrid(folder=str(folder))
    try:
        grid.paths, grid.labels = folder_listing(folder)
    except OSError as exc:
        grid.error = str(exc)
        return grid
    grid.cached = loader.prefill(grid.paths, limit=limit)
    model.set_collection(grid.paths, grid.labels)
    grid.seconds = time.perf_counter() - t0
    return grid


def loading_message() -> str:
    """The status line while PyTorch and the network load: what, and about how long (the last start's
    time, when there was one)."""
    from PySide6.QtCore import QSettings

    try:
        last = float(QSettings().value(LOAD_TIME_KEY, 0.0) or 0.0)
    except (TypeError, ValueError):
        last = 0.0
    if last > 0:
        return f"Loading PyTorch and the network (about {max(1, round(last))} s)…"
    return "Loading PyTorch and the network (first start: this takes longest, up to a minute on a slow disk)…"


def remember_load_time(seconds: float) -> None:
    """Keep how long this start took to load PyTorch and the network (for the next :func:`loading_message`)."""
    from PySide6.QtCore import QSettings

    QSettings().setValue(LOAD_TIME_KEY, round(float(seconds), 1))
