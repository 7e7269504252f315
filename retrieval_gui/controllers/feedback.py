"""Relevance feedback in the window (issue 28): the results marked relevant (+) or not (-), the re-ranking they
give (engine.session.run_feedback on a worker, through workers.LatestTask: only the latest marks' ranking
arrives), undo, and saved concepts (engine.concepts: save under a name, reopen, export CSV, use as a query).

The controller follows the query: a new query starts with no marks (a reopened concept brings its own); a
plain search of the same query (a model change, new images indexed) is re-ranked with the marks at once.
The re-ranked result is handed to the query controller (``QueryController.deliver``), so the window shows it
like any result; ``marks`` (path -> +1 / -1) is what the cards draw as badges.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from engine.concepts import Concept, export_csv, list_concepts, load_concept, save_concept
from engine.feedback import FeedbackSettings
from engine.session import SearchResult, run_feedback
from retrieval_gui.controllers.query import QueryController
from retrieval_gui.workers import LatestTask

#: the marks a result can carry
RELEVANT, NOT_RELEVANT, NO_MARK = 1, -1, 0


class FeedbackController(QObject):
    """The marks of the current query (``marks``: path -> +1 / -1, in marking order), their undo history,
    the concept they came from (``concept_name``) and the re-ranking task. ``run`` replaces
    engine.session.run_feedback in tests."""

    changed = Signal()  # marks, note or busy state changed
    failed = Signal(str)  # the re-ranking failed: the message

    def __init__(self, query: QueryController, *, run: Callable[..., SearchResult] = run_feedback,
                 settings: FeedbackSettings | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.query = query
        self._run = run
        self.default_settings = settings or FeedbackSettings()
        self.settings = self.default_settings  # a reopened concept brings its own
        self.marks: dict[str, int] = {}
        self.extra_queries: list[str] = []  # a reopened concept's other query images
        self.concept_name: str | None = None
        self.history: list[tuple[dict[str, int], list[str]]] = []
        self._query_path: str | None = None
        self._plain: SearchResult | None = None  # the latest plain ranking of the query (a region's vector)
        self._plain_region: Any = None  # the query's region when that ranking arrived (the one it searched)
        self._opening = False
        self.task = LatestTask(self, "feedback")
        self.task.busy_changed.connect(lambda _b: self.changed.emit())
        query.changed.connect(self._on_query_changed)
        query.result_ready.connect(self._on_plain_result)

    # -- marks ---------------------------------------------------------------------------------------
    @property
    def positives(self) -> list[str]:
        return [p for p, v in self.marks.items() if v > 0]

    @property
    def negatives(self) -> list[str]:
        return [p for p, v in self.marks.items() if v < 0]

    @property
    def busy(self) -> bool:
        return self.task.busy

    def mark_of(self, path: str) -> int:
        return self.marks.get(path, NO_MARK)

    def mark(self, path: str, value: int) -> bool:
        """Mark ``path`` relevant (+1), not relevant (-1) or clear its mark (0), and re-rank; False (nothing
        done) when there is no query or the mark is already so."""
        if self.query.path is None or value not in (RELEVANT, NOT_RELEVANT, NO_MARK) or self.mark_of(path) == value:
            return False
        self._remember()
        if value == NO_MARK:
            self.marks.pop(path, None)
        else:
            self.marks.pop(path, None)  # a changed mark moves to the end (marking order)
            self.marks[path] = value
        self.rerank()
        return True

    def cycle(self, path: str) -> int:
        """A click on a card's mark badge: none -> + -> - -> none. Returns the new mark."""
        new = {NO_MARK: RELEVANT, RELEVANT: NOT_RELEVANT, NOT_RELEVANT: NO_MARK}[self.mark_of(path)]
        self.mark(path, new)
        return new

    def undo(self) -> bool:
        """Take back the last change of the marks (and re-rank); False when there is none."""
        if not self.history:
            return False
        self.marks, self.extra_queries = self.history.pop()
        self.rerank()
        return True

    def clear_marks(self) -> None:
        """Forget every mark (undoable) and show the plain ranking again."""
        if not self.marks and not self.extra_queries:
            return
        self._remember()
        self.marks, self.extra_queries = {}, []
        self.rerank()

    def _remember(self) -> None:
        self.history.append((dict(self.marks), list(self.extra_queries)))
        del self.history[:-100]

    # -- ranking -------------------------------------------------------------------------------------
    def rerank(self) -> None:
        """The ranking of the query with the current marks, on a worker (the latest marks win); without
        marks, the plain search of the query."""
        q = self.query
        self.changed.emit()
        if q.path is None:
            return
        if not self.marks and not self.extra_queries:
            self.task.cancel()
            q.search()
            return
        index, key = q.folder.index, q.model.key
        if index is None or not q.folder.can_search(key):
            return  # the query controller says why; the marks are applied when its result arrives
        folder, region = q.folder.folder, q.region
        extra: dict[str, Any] = {}
        if region is not None:  # a region query: re-rank from the region's vector, as its plain ranking was
            plain = self._plain
            if (plain is None or plain.box is None or plain.query != q.path or plain.spec != key
                    or self._plain_region != region):
                return  # its plain search is on its way: the marks are applied when it arrives
            extra = {"query_vector": plain.vector, "box": plain.box}
        queries = [q.path] + [p for p in self.extra_queries if p != q.path]
        self.task.request(self._run, index, q.folder.models, key, queries, self.positives, self.negatives,
                          replace(q.options, query_expansion=None), self.settings, **extra,
                          tag=(index, key, q.path, region), with_callbacks=False,
                          on_result=lambda r, f=folder, g=region: self._on_result(r, f, g),
                          on_error=lambda m, _tb: self.failed.emit(f"Re-ranking with the marks failed: {m}"))

    def _on_result(self, result: SearchResult, folder: Path | None, region: Any = None) -> None:
        if region != self.query.region:
            return  # the query's region changed since: its own plain search re-ranks again
        self.query.deliver(result, folder)
        self.changed.emit()

    def _on_plain_result(self, result: SearchResult) -> None:
        """A plain search of the query arrived (a model change, new images, a region): apply the marks to it."""
        if result.method.startswith("feedback"):
            return
        self._plain, self._plain_region = result, self.query.region
        if self.marks or self.extra_queries:
            self.rerank()

    def _on_query_changed(self) -> None:
        if self.query.path != self._query_path:
            self._query_path = self.query.path
            if not self._opening:
                self.task.cancel()
                self._plain = None
                self.marks, self.extra_queries, self.history, self.concept_name = {}, [], [], None
                self.settings = self.default_settings
                self.changed.emit()

    # -- concepts ------------------------------------------------------------------------------------
    def concept(self, name: str) -> Concept:
        """The current query and marks as a concept named ``name`` (ConceptError for a bad name)."""
        folder = self.query.folder.folder
        queries = [self.query.path] + self.extra_queries if self.query.path else list(self.extra_queries)
        return Concept(name, queries=queries, positives=self.positives, negatives=self.negatives,
                       folder=str(folder) if folder else None, settings=self.settings)

    def save(self, name: str, *, overwrite: bool = True, folder: str | None = None) -> Path:
        """Save the query and marks as the concept ``name``; ConceptError says why not."""
        path = save_concept(self.concept(name), folder, overwrite=overwrite)
        self.concept_name = self.concept(name).name
        self.changed.emit()
        return path

    def export(self, target: str, name: str | None = None) -> Path:
        """Write the current marks (or the saved concept ``name``) as a CSV of paths."""
        c = load_concept(name) if name else self.concept(self.concept_name or "marks")
        return export_csv(c, target)

    def open_concept(self, concept: Concept | str) -> str | None:
        """Use a saved concept as the query: its first query image (or first image marked +) becomes the
        query and its marks the current marks; None, or why it cannot be used."""
        c = load_concept(concept) if isinstance(concept, str) else concept
        images = c.queries or c.positives
        first = next((p for p in images if Path(p).is_file()), None)
        if first is None:
            return f"None of the images of the concept {c.name!r} exists any more."
        self._opening = True
        try:
            why = self.query.set_query(first)
        finally:
            self._opening = False
        if why is not None:
            return why
        self.task.cancel()
        self.history = []
        self.marks = {**{p: RELEVANT for p in c.positives}, **{p: NOT_RELEVANT for p in c.negatives}}
        self.extra_queries = [p for p in c.queries if p != first]
        self.settings = c.settings
        self.concept_name = c.name
        self.rerank()
        return None

    @staticmethod
    def saved() -> list[Concept]:
        return list_concepts()

    def close(self) -> None:
        self.task.cancel()


def describe_marks(fc: FeedbackController) -> str:
    """'3 +, 2 -' with the concept's name, for the window's header ('' without marks)."""
    if not fc.marks:
        return ""
    text = f"{len(fc.positives)} +, {len(fc.negatives)} −"
    return f"{fc.concept_name}: {text}" if fc.concept_name else text


def apply_marks(model: Any, fc: FeedbackController) -> None:
    """Hand the marks to a results model that draws them (widgets.ResultsModel.set_feedback)."""
    setter = getattr(model, "set_feedback", None)
    if setter is not None:
        setter(dict(fc.marks))
