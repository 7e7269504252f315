"""What the window's exports write: the settings block of a gallery and the split gallery's job."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from engine.session import model_title, run_query
from retrieval_gui.controllers.explorer import Explorer
from retrieval_gui.controllers.model import sizes_title
from retrieval_gui.workers import LatestTask, TaskHandle


class Exporter(QObject):
    """The window's exports (the current query's gallery, a split's galleries), one at a time in a worker."""

    message = Signal(str, bool)  # text, info (False: an error)
    progress = Signal(int, int, str)

    def __init__(self, explorer: Explorer, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.explorer = explorer
        self.task = LatestTask(self, "export")

    def export_current(self, path: str, formats: list[str] | None = None) -> TaskHandle | None:
        """The current query's gallery as ``path`` + .html / .png / .csv; returns the task (None: nothing yet)."""
        from engine.export import export_gallery, make_gallery

        r = self.explorer.query.result
        if r is None:
            self.message.emit("Run a query first: there is nothing to export yet.", True)
            return None
        gallery = make_gallery(r.query, r.hits, r.query_label)
        return self._start(export_gallery, [gallery], path, export_settings(self.explorer),
                           formats or ["html", "png", "csv"])

    def export_split(self, split: str, out: str, limit: int | None = None) -> TaskHandle | None:
        """A gallery for every query of ``split`` (HTML + PNG + CSV), searched and written in a worker."""
        ex = self.explorer
        if ex.folder.index is None or not ex.folder.index_ready(ex.model.key):
            self.message.emit("The collection is not indexed yet; try again when indexing has finished.", True)
            return None
        return self._start(split_job(ex, split, out, limit))

    def _start(self, fn: Callable[..., Any], *args: Any) -> TaskHandle:
        self.task.request(fn, *args, on_progress=self.progress.emit,
                          on_result=lambda files: self.message.emit(
                              "Exported: " + ", ".join(str(f) for f in files), True),
                          on_error=lambda m, _tb: self.message.emit(f"Export failed: {m}", False))
        return self.task.handle


def export_settings(explorer: Explorer) -> dict:
    """The settings an export names (the contact sheet's header shows model and descriptor)."""
    key, options, r = explorer.model.key, explorer.query.options, explorer.query.result
    index = explorer.folder.index
    return {
        "collection": str(index.folder) if index is not None else "",
        "model": model_title(key.backbone),
        "weights": key.weights,
        "descriptor": explorer.model.descriptor_title(),
        "sizes": sizes_title(key),
        "whitening": Path(key.whitening).name if key.whitening else "none",
        "index": ("exact" if options.exact else "HNSW") if r is None else r.method,
        "k": options.k,
        "threshold": "off" if options.threshold is None else options.threshold,
        "query expansion": options.qe_top if options.query_expansion else "off",
    }


def split_job(explorer: Explorer, split: str, out: str, limit: int | None = None) -> Callable[..., Any]:
    """A job (``progress``, ``should_stop``) that writes a gallery for every query of ``split``; the
    worker reads the split file and searches, never the GUI thread."""
    from engine.export import export_split

    index, models, key = explorer.folder.index, explorer.models, explorer.model.key
    options = replace(explorer.query.options)
    settings = {**export_settings(explorer), "split": split}
    among: dict[frozenset, frozenset] = {}

    def search(path: str, retrieval: frozenset | None):
        if retrieval is not None and retrieval not in among:  # once: the list as the collection names it
            among[retrieval] = frozenset(p for p in map(index.collection_path, retrieval) if p)
        return run_query(index, models, key, path, options,
                         among=None if retrieval is None else among[retrieval]).hits

    def job(progress=None, should_stop=None):
        return export_split(split, str(split_root(split, index.folder)), search, out, settings,
                            label_of=index.label_of, limit=limit, progress=progress, should_stop=should_stop)

    return job


def split_root(split: str, folder: Path) -> Path:
    """Where a split's relative paths start: the split file's folder when they exist there, else the collection."""
    try:
        from engine.export import _load_split

        first = next(iter(_load_split(split).get("query", [])), None)
    except Exception:
        first = None
    if first is not None:
        for root in (Path(split).parent, folder, folder.parent):
            if (root / first).exists():
                return root.resolve()  # the collection's folder is resolved: so are the paths of the split
    return Path(split).parent.resolve()
