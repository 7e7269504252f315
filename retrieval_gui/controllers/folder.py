"""The open folder and its indexing: one FolderIndex at a time, indexed in a worker (workers.LatestTask)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from engine.session import FolderIndex, IndexState, list_descriptors
from engine.vocabulary import ModelSpec, fmt_clock
from retrieval_gui.widgets import browse_rows
from retrieval_gui.workers import LatestTask

#: folder names that say nothing of what a collection is: the window names the parent folder too
GENERIC_NAMES = {"images", "image", "imgs", "img", "photos", "pictures", "pics", "jpg", "jpeg", "data", "dataset",
                 "train", "test", "val", "gallery", "all", "raw", "files"}


def collection_name(folder: Path) -> str:
    """How the window names a folder: its name, with the parent's for a name that says nothing by itself
    ('birds/images', not 'images')."""
    if folder.name.lower() in GENERIC_NAMES and folder.parent.name:
        return f"{folder.parent.name}/{folder.name}"
    return folder.name or str(folder)


clock = fmt_clock  # the progress text's time left (engine.vocabulary: one clock format with the wizard's estimate)


class IndexRate:
    """The progress text of an indexing run, 'indexing 1,234 / 5,902 · 45/s · 1:43 left': the rate over the
    images of this run, timed from the first report (or from a count that went back: a new run)."""

    def __init__(self) -> None:
        self._start: tuple[float, int] | None = None  # (time, images done then)

    def reset(self) -> None:
        self._start = None

    def text(self, done: int, total: int) -> str:
        now = time.monotonic()
        if self._start is None or done < self._start[1]:
            self._start = (now, done)
        t0, d0 = self._start
        text = f"indexing {done:,} / {total:,}"
        if now - t0 > 1.0 and done > d0:
            rate = (done - d0) / (now - t0)
            text += f" · {rate:.0f}/s · {clock((total - done) / rate)} left"
        return text


def indexed_paths(index: FolderIndex, key: ModelSpec) -> tuple[list[str], list[str | None], dict]:
    """The images of ``key`` indexed so far, their labels and rows (worker: opening a collection reads its
    files, and a list of 100k paths is not made on the GUI thread)."""
    coll = index.collection(key)
    paths = coll.paths
    return paths, coll.labels, browse_rows(paths)


class FolderController(QObject):
    """The open folder (``index``), its indexing for a ModelSpec and what came of it.

    ``open_index(folder, cache_dir)`` makes the index (default FolderIndex); ``models`` goes to its
    ``update``. Only the open folder's indexing ever runs uncancelled, and only its results arrive:
    opening another folder cancels the running one and starts the new one as soon as it has stopped.
    ``why_not`` says why the open folder is not (fully) indexed for the last spec asked (None: it is,
    or it is being indexed).
    """

    opened = Signal(object)  # the new FolderIndex
    closed = Signal()
    progress = Signal(int, int, str)  # the open folder's indexing
    indexed = Signal(object)  # its IndexState (also after a cancel: what was committed)
    failed = Signal(str)  # its indexing failed: the message
    finished = Signal()  # its indexing ended (done, cancelled or failed)
    listed = Signal()  # ``listing`` holds a new list of the indexed images
    changed = Signal()  # anything the status shows

    def __init__(self, models: Any, *, cache_dir: str | os.PathLike | None = None,
                 open_index: Callable[..., Any] = FolderIndex,
                 list_images: Callable[[Any, ModelSpec], tuple] = indexed_paths,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.models = models
        self.cache_dir = cache_dir
        self._open_index = open_index
        self._list_images = list_images
        self.index: Any = None
        self.state: IndexState | None = None  # the last indexing's outcome for the open folder
        self.why_not: str | None = None
        self.ready_keys: set[ModelSpec] = set()
        self.listing: tuple | None = None  # (index, spec, paths, labels, rows)
        self.indexing_key: ModelSpec | None = None
        self.task = LatestTask(self, "index")
        self.browse_task = LatestTask(self, "browse")
        self.task.busy_changed.connect(self._on_busy)

    # -- opening ------------------------------------------------------------------------------------
    def open(self, folder: str | os.PathLike) -> str | None:
        """Open an image folder (instant; index it with :meth:`start_indexing`); None, or why it cannot."""
        try:
            index = self._open_index(folder, self.cache_dir)
        except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
            return str(exc)
        self._drop()
        self.index = index
        self.opened.emit(index)
        self.changed.emit()
        return None

    def close(self) -> None:
        """No folder open (its tasks cancelled)."""
        if self.index is None:
            return
        self._drop()
        self.closed.emit()
        self.changed.emit()

    def _drop(self) -> None:
        self.task.cancel()
        self.browse_task.cancel()
        self.index, self.state, self.why_not, self.listing, self.indexing_key = None, None, None, None, None
        self.ready_keys.clear()

    @property
    def folder(self) -> Path | None:
        return None if self.index is None else Path(self.index.folder)

    def name(self) -> str:
        return "" if self.index is None else collection_name(Path(self.index.folder))

    # -- indexing -----------------------------------------------------------------------------------
    @property
    def indexing(self) -> bool:
        """The open folder is being indexed (or waits for a cancelled task to stop first)."""
        if self.index is None:
            return False
        t, pending = self.task, self.task.pending_tag
        if pending is not None and pending[0] is self.index:
            return True
        # once its outcome has arrived the run is over for the window, though its thread may still be ending
        return (t.running() and t.running_tag is not None and t.running_tag[0] is self.index
                and not t.cancelled() and not t.settled())

    def start_indexing(self, key: ModelSpec, *, again: bool = False) -> None:
        """Bring ``key``'s vectors of the open folder up to date in a worker (only a scan when they are)."""
        if self.index is None:
            return
        if again:
            self.ready_keys.discard(key)
        tag = (self.index, key)
        if self.task.busy and not self.task.cancelled() and tag in (self.task.running_tag, self.task.pending_tag):
            return  # this very folder and spec are being indexed
        self.indexing_key = key
        self.why_not = None
        self.task.request(self.index.update, self.models, key, tag=tag, cancel_running=True,
                          on_result=self._on_indexed, on_error=self._on_failed, on_progress=self._on_progress)
        self.changed.emit()

    def cancel(self) -> None:
        """Stop the indexing; what it committed stays (the outcome arrives as ``indexed``)."""
        if not self.indexing:
            return
        if self.task.pending_tag is None:
            self.task.handle.cancel()  # not LatestTask.cancel: the cancelled run's outcome is still wanted
        else:  # the open folder's run had not started yet (an older one was stopping): drop it
            self.task.cancel()
        self.why_not = self._stopped()
        self.changed.emit()

    def _on_progress(self, done: int, total: int, message: str) -> None:
        self.progress.emit(done, total, message)

    def _on_indexed(self, state: IndexState) -> None:
        if self.index is None:
            return
        self.state = state
        if not state.cancelled:  # every descriptor of the backbone came from the same pass
            self.ready_keys.update(state.spec.with_descriptor(d) for d in list_descriptors())
        self.why_not = self._why_not(state)
        self.indexed.emit(state)
        self.changed.emit()

    def _why_not(self, state: IndexState) -> str | None:
        name = self.name()
        if state.total == 0:
            return (f"{name} holds no image files (jpg, png, bmp, gif, tif, webp), in it or its sub-folders: "
                    "open a folder of images.")
        if state.indexed == 0 and state.skipped:
            return (f"None of the {state.total:,} image files of {name} could be read "
                    f"({state.skipped[0][1]}): open a folder of readable images.")
        if state.cancelled:
            return self._stopped()
        return None

    def _stopped(self) -> str:
        done, total = self.counts(self.indexing_key) if self.indexing_key is not None else (0, None)
        if not done:
            return "Indexing was stopped before any image was indexed: use View > Reindex to index the folder."
        return f"Indexing was stopped at {done:,} of {total or done:,} images: use View > Reindex to index the rest."

    def _on_failed(self, message: str, _tb: str = "") -> None:
        if self.index is None:
            return
        self.why_not = f"Indexing failed: {message}"
        self.failed.emit(message)
        self.changed.emit()

    def _on_busy(self, busy: bool) -> None:
        if not busy and self.index is not None:
            self.finished.emit()
        self.changed.emit()

    def index_ready(self, key: ModelSpec) -> bool:
        return key in self.ready_keys

    def can_search(self, key: ModelSpec) -> bool:
        """Some images of ``key`` are indexed (or its index is complete and its collection not opened yet)."""
        count = None if self.index is None else self.index.indexed_count(key)
        return bool(count) or (count is None and self.index_ready(key))

    def searchable_count(self, key: ModelSpec) -> int:
        """Images that a query of ``key`` would search now (what the indexing has committed or added so far)."""
        return 0 if self.index is None else (self.index.indexed_count(key) or 0)

    def counts(self, key: ModelSpec) -> tuple[int, int | None]:
        """(images of ``key`` indexed, image files of the folder; None when not scanned yet)."""
        if self.index is None:
            return 0, None
        return self.index.indexed_count(key) or 0, self.index.total_files(key)

    # -- the list of indexed images (the collection view) --------------------------------------------
    def load_listing(self, key: ModelSpec) -> None:
        """Read the indexed paths of ``key`` in a worker; ``listed`` when they are in ``listing``."""
        if self.index is None:
            return
        index = self.index
        self.browse_task.request(self._list_images, index, key, tag=(index, key), with_callbacks=False,
                                 on_result=lambda found, i=index, k=key: self._on_listed(i, k, found))

    def _on_listed(self, index: Any, key: ModelSpec, found: tuple) -> None:
        if index is not self.index:
            return
        self.listing = (index, key, *found)
        self.listed.emit()

    # -- shutdown -----------------------------------------------------------------------------------
    def tasks(self) -> list[LatestTask]:
        return [self.task, self.browse_task]
