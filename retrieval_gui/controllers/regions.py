"""Region queries in the window (issue 28): the query's drawn region and each result's best region.

The query's region lives in :class:`retrieval_gui.controllers.query.QueryController` (``region``, shares of
the image: any view of it draws the same rectangle); :func:`region_query` turns it into the image's pixels
in the worker and searches as ``search --box`` does (the first hits re-ordered by their best region). :class:`RegionController` then finds the best-matching
region of every shown result (engine.regions.best_regions, in a worker, the latest request winning)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from PySide6.QtCore import QObject, Signal

from engine.images import shown_size
from engine.regions import RegionMatch, best_regions, fraction_box, region_options, rerank_result
from engine.session import SearchResult
from retrieval_gui.workers import LatestTask

log = logging.getLogger(__name__)


def region_query(run: Callable[..., SearchResult], index: Any, models: Any, spec: Any, path: str, options: Any,
                 region: Sequence[float]) -> SearchResult:
    """``run(index, models, spec, path, options, box=...)`` with ``region`` (x, y, w, h shares of the image)
    as pixels of the image (engine.regions.fraction_box on its size as shown), the first hits re-ordered by
    their best region (engine.regions.rerank_result): the CLI's ``--box``."""
    result = run(index, models, spec, path, region_options(options), box=fraction_box(region, shown_size(path)))
    return rerank_result(result, models, options.k)


class RegionController(QObject):
    """The best-matching region of each result of ``query``'s region queries (``query``: the QueryController,
    which imports this module; ``matches``: path -> RegionMatch), computed for the shown results after each
    result arrives; ``matches_changed(paths)`` as they come.
    ``run(models, spec, paths, vector, on_event=..., progress=..., should_stop=...)`` finds them (default
    engine.regions.best_regions)."""

    matches_changed = Signal(list)  # paths whose best region is now known (or [] when all were cleared)

    def __init__(self, query: Any, *, run: Callable[..., list] = best_regions,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.query = query
        self._run = run
        self.matches: dict[str, RegionMatch] = {}
        self.task = LatestTask(self, "best regions")
        query.result_ready.connect(self._on_result)
        query.changed.connect(self._on_query_changed)

    def fraction_of(self, path: str) -> tuple[float, float, float, float] | None:
        """The best region of result ``path`` as shares of its width and height, when known."""
        m = self.matches.get(path)
        return None if m is None else m.fraction

    def clear(self) -> None:
        self.task.cancel()
        if self.matches:
            self.matches = {}
            self.matches_changed.emit([])

    def _on_query_changed(self) -> None:
        r = self.query.result
        if not self.query.current() or r is None or r.box is None:
            if self.matches or self.task.busy:
                self.clear()

    def _on_result(self, result: SearchResult) -> None:
        self.clear()
        if result.box is None or not result.hits:
            return
        self.task.request(self._run, self.query.folder.models, result.spec, [h.path for h in result.hits],
                          result.vector, tag=(self.query.folder.index, result.query, result.box),
                          on_event=self._on_matches,
                          on_error=lambda m, _tb: log.warning("best regions: %s", m))

    def _on_matches(self, matches: list[RegionMatch]) -> None:
        for m in matches:
            self.matches[m.path] = m
        self.matches_changed.emit([m.path for m in matches])
