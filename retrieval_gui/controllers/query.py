"""The query: an image, searched in the open folder with the current model choice (workers.LatestTask)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from engine.search import SearchOptions
from engine.session import SearchResult, run_query
from retrieval_gui.controllers.folder import FolderController
from retrieval_gui.controllers.model import ModelChoice
from retrieval_gui.controllers.regions import region_query
from retrieval_gui.workers import LatestTask


class QueryController(QObject):
    """The query image (``path``), its latest ``result`` and ``note`` (what to say when there is no current
    result: searching, waiting for the index, why it failed).

    It follows the folder and the model choice: a folder opened clears the query (nothing of the previous
    folder is searched or shown again); a model change or newly indexed images search again. Only the
    latest search's result arrives; ``result_folder`` is the folder it was searched in.
    ``run(index, models, spec, path, options)`` searches (default engine.session.run_query; with a
    ``region``, the shares (x, y, w, h) of the image drawn on it, ``box=`` its pixels too: see
    :func:`retrieval_gui.controllers.regions.region_query`).
    """

    changed = Signal()  # path, result or note changed
    result_ready = Signal(object)  # a new SearchResult for the current query and spec
    failed = Signal(str)  # the current query could not be searched: the message

    def __init__(self, folder: FolderController, model: ModelChoice, *,
                 run: Callable[..., SearchResult] = run_query, options: SearchOptions | None = None,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.folder, self.model = folder, model
        self._run = run
        self.options = options or SearchOptions(exact=True)
        self.path: str | None = None
        self.result: SearchResult | None = None
        self.result_folder: Path | None = None
        self.note = ""
        self.failed_query: str | None = None
        self.region: tuple[float, float, float, float] | None = None  # the part of the image searched
        self._searched_count = -1  # images indexed when the current result was searched
        self.task = LatestTask(self, "query")
        self.task.busy_changed.connect(lambda _b: self.changed.emit())
        folder.opened.connect(lambda _i: self.clear())
        folder.closed.connect(self.clear)
        folder.progress.connect(self._on_index_progress)
        folder.indexed.connect(self._on_indexed)
        folder.finished.connect(self._on_index_finished)

    # -- the query ----------------------------------------------------------------------------------
    def set_query(self, path: str, region: tuple[float, float, float, float] | None = None) -> str | None:
        """Make ``path`` the query (``region``: only that part of it, see :meth:`set_region`) and search;
        None, or why it cannot be a query."""
        if not path or not os.path.isfile(path):
            return f"Not an image file: {path}"
        # as given (absolute), not resolved: a symbolic link in the folder is the collection's image, with its label
        self.path = os.path.abspath(path)
        self.region = region
        self.failed_query = None
        self.note = "searching…"
        self.search()
        self.changed.emit()
        return None

    def clear(self) -> None:
        """No query, no result (a folder opened or closed)."""
        self.task.cancel()
        self.path, self.result, self.result_folder, self.failed_query, self.note = None, None, None, None, ""
        self.region = None
        self._searched_count = -1
        self.changed.emit()

    def set_region(self, region: tuple[float, float, float, float] | None) -> None:
        """Search with this part of the query image alone, (x, y, w, h) as shares of its width and height
        (None: the whole image)."""
        if region == self.region:
            return
        self.region = region
        if self.path:
            self.note = "searching…"
            self.search()
            self.changed.emit()

    def set_options(self, options: SearchOptions) -> None:
        self.options = options
        self.search()

    @property
    def busy(self) -> bool:
        """A search runs or waits."""
        return self.task.busy

    @property
    def inside(self) -> bool:
        """The query lies in the open folder (its label is known, it is not counted among its results)."""
        index = self.folder.index
        return self.path is not None and index is not None and index.collection_path(self.path) is not None

    def current(self) -> bool:
        """The result answers the current query with the current model choice, in the open folder."""
        r = self.result
        return (r is not None and r.query == self.path and r.spec == self.model.key
                and self.result_folder == self.folder.folder and (r.box is None) == (self.region is None))

    def may_search_again(self) -> bool:
        """False for a query that failed: indexing progress does not search with it again by itself."""
        return self.path is not None and self.path != self.failed_query

    # -- searching ----------------------------------------------------------------------------------
    def search(self) -> None:
        """Search with the current query and settings; one search at a time, the latest wins."""
        if not self.path:
            return
        index, key = self.folder.index, self.model.key
        if index is None:
            self.note = "Open a folder to search it."
            self.changed.emit()
            return
        if not self.folder.can_search(key):
            self.note = ("waiting for the first indexed images…" if self.folder.indexing else
                         self.folder.why_not or "This descriptor is not indexed yet: use View > Reindex.")
            self.changed.emit()
            return
        self._searched_count = self.folder.searchable_count(key)
        path, folder, region = self.path, self.folder.folder, self.region
        args = (index, self.folder.models, key, path, replace(self.options))
        fn, args = (self._run, args) if region is None else (region_query, (self._run, *args, region))
        self.task.request(fn, *args, tag=(index, key, path, region), with_callbacks=False,
                          on_result=lambda r, f=folder, g=region: self._on_result(r, f, g),
                          on_error=lambda m, _tb, q=path: self._on_failed(q, m))
        self.changed.emit()

    def deliver(self, result: SearchResult, folder: Path | None) -> None:
        """Show ``result`` (a ranking of the current query computed elsewhere: the feedback controller's
        re-ranking with marks) as the current result."""
        self._on_result(result, folder, self.region)

    def _on_result(self, result: SearchResult, folder: Path | None, region: Any = None) -> None:
        if (result.query != self.path or result.spec != self.model.key or folder != self.folder.folder
                or region != self.region):
            return
        self.result, self.result_folder, self.note = result, folder, ""
        self.result_ready.emit(result)
        self.changed.emit()

    def _on_failed(self, query: str, message: str) -> None:
        """The search of ``query`` failed (e.g. a .jpg that is not a JPEG): its result is taken away
        instead of leaving the previous query's under it."""
        if query != self.path:
            return
        self.failed_query = query
        self.result, self.result_folder = None, None
        self.note = "Could not search with this image (see the message above)."
        self.failed.emit(message)
        self.changed.emit()

    # -- following the indexing -----------------------------------------------------------------------
    def _on_index_progress(self, *_args: Any) -> None:
        key = self.model.key
        if self.folder.indexing_key != key or not self.may_search_again():
            return
        count = self.folder.searchable_count(key)
        # new images committed since the result was searched: search again, on what is indexed now
        if count and count != self._searched_count and (
                not self.current() or count - self._searched_count >= max(200, self._searched_count // 10)):
            self.search()

    def _on_indexed(self, state: Any) -> None:
        if state.spec == self.model.key and state.indexed > 0 and self.may_search_again():
            self.search()

    def _on_index_finished(self) -> None:
        """A query that waited for this indexing: search what it left, or say why there is nothing to search."""
        if not self.may_search_again() or self.current() or self.busy:
            return
        if self.folder.searchable_count(self.model.key) > 0:
            self.search()
        else:
            self.note = (self.folder.why_not or "Indexing failed (see the message above)")
            self.changed.emit()
