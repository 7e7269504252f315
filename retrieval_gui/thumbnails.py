"""Lazy thumbnails: decoded on a QThreadPool, cached in memory (LRU) and on disk (path+mtime+size).

:meth:`ThumbnailLoader.request` returns a cached QImage at once or None and schedules the decode;
``ready(path, image)`` fires on the GUI thread when it is done. Signals are batched (at most one
flush every ``flush_ms``) so a grid of hundreds of thumbnails never floods the event loop.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

from PySide6.QtCore import QObject, QRunnable, QThreadPool, QTimer, Signal, Slot
from PySide6.QtGui import QImage

log = logging.getLogger(__name__)


def make_thumbnail(path: str, size: int, cache_dir: Path | None) -> QImage:
    """Decode (or read from the disk cache, engine.thumbcache) a thumbnail fitted into size x size; null
    QImage on failure.

    All decoding and encoding is done by PIL, which releases the GIL while it works, so the pool's
    threads never hold up the GUI thread; only the final copy into a QImage is a Qt call.
    """
    from engine.images import ImageLoadError
    from engine.thumbcache import make_thumbnail as thumbnail

    try:
        im, _cached = thumbnail(path, size, cache_dir)
    except ImageLoadError as exc:  # unreadable file: the grid shows a placeholder
        log.debug("thumbnail of %s failed: %s", path, exc.reason)
        return QImage()
    except Exception as exc:  # a resize failure must not take the worker down either
        log.debug("thumbnail of %s failed: %s", path, exc)
        return QImage()
    return to_qimage(im)


def to_qimage(im) -> QImage:
    """An RGB PIL image as a QImage (a copy: it owns its pixels)."""
    data = im.tobytes()
    return QImage(data, im.width, im.height, 3 * im.width, QImage.Format.Format_RGB888).copy()


class _Job(QRunnable):
    def __init__(self, loader: ThumbnailLoader, path: str) -> None:
        super().__init__()
        self.loader, self.path = loader, path
        self.setAutoDelete(True)

    def run(self) -> None:
        img = make_thumbnail(self.path, self.loader.size, self.loader.cache_dir)
        self.loader._deliver(self.path, img)


class ThumbnailLoader(QObject):
    """Asynchronous thumbnail source with a memory LRU and a disk cache."""

    ready = Signal(str, QImage)
    _wake = Signal()

    def __init__(self, size: int = 160, cache_dir: str | os.PathLike | None = None, capacity: int = 600,
                 threads: int = 1, flush_ms: int = 40, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.size = size
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.capacity = capacity
        self._memory: OrderedDict[str, QImage] = OrderedDict()
        self._pending: set[str] = set()
        self._done: list[tuple[str, QImage]] = []
        self._lock = threading.Lock()
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(max(1, threads))
        self._flush = QTimer(self)
        self._flush.setInterval(flush_ms)
        self._flush.setSingleShot(True)
        self._flush.timeout.connect(self._emit_done)
        self._wake.connect(self._schedule_flush)

    def request(self, path: str) -> QImage | None:
        """The thumbnail if cached in memory (refreshing its LRU slot); otherwise schedule it, None."""
        img = self._memory.get(path)
        if img is not None:
            self._memory.move_to_end(path)
            return img
        if path not in self._pending:
            self._pending.add(path)
            self.pool.start(_Job(self, path))
        return None

    def cached(self, path: str) -> QImage | None:
        return self._memory.get(path)

    def prefill(self, paths: list[str], limit: int | None = None, budget_s: float = 1.0) -> int:
        """Put the disk-cached thumbnails of (the first ``limit`` of) ``paths`` into memory now, on the
        calling thread, without decoding any original (engine.thumbcache.read_cached: small JPEGs, about
        0.3 ms each); stops after ``budget_s`` seconds. For the start, before PyTorch is imported, so the
        folder's grid appears with its images at once; the others come through :meth:`request`. Returns
        how many were found."""
        from engine.thumbcache import read_cached

        if self.cache_dir is None:
            return 0
        found = 0
        deadline = time.perf_counter() + budget_s
        for path in paths[: self.capacity if limit is None else min(limit, self.capacity)]:
            if path in self._memory:
                found += 1
                continue
            im = read_cached(self.cache_dir, path, self.size)
            if im is not None:
                self._memory[path] = to_qimage(im)
                self._memory.move_to_end(path)
                found += 1
            if time.perf_counter() > deadline:
                break
        while len(self._memory) > self.capacity:
            self._memory.popitem(last=False)
        return found

    def clear_queue(self) -> None:
        """Drop requests not started yet (e.g. when a new query replaces the grid)."""
        self.pool.clear()
        with self._lock:
            done = {p for p, _ in self._done}
        self._pending &= done

    def wait(self, msecs: int = 10_000) -> bool:
        """Block until the pool is idle (shutdown and tests); then deliver what is done."""
        ok = self.pool.waitForDone(msecs)
        self._emit_done()
        return ok

    # worker threads
    def _deliver(self, path: str, img: QImage) -> None:
        with self._lock:
            self._done.append((path, img))
            first = len(self._done) == 1
        if first:
            self._wake.emit()  # queued to the GUI thread

    @Slot()
    def _schedule_flush(self) -> None:
        if not self._flush.isActive():
            self._flush.start()

    @Slot()
    def _emit_done(self) -> None:
        with self._lock:
            done, self._done = self._done, []
        for path, img in done:
            self._pending.discard(path)
            self._memory[path] = img
            self._memory.move_to_end(path)
            while len(self._memory) > self.capacity:
                self._memory.popitem(last=False)
        for path, img in done:
            self.ready.emit(path, img)
