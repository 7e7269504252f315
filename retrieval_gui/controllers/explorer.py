"""The window's state in one place: the open folder, the model choice and the query, wired together, and
what the window says about them (the grid's mode, its header and the status line). No widget here."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QCoreApplication, QEventLoop, QObject, QSettings, Signal

from engine.session import FolderIndex, SearchResult, model_title, run_query
from engine.vocabulary import ModelSpec, sizes_label
from retrieval_gui.controllers.feedback import FeedbackController
from retrieval_gui.controllers.folder import FolderController, indexed_paths
from retrieval_gui.controllers.model import ModelChoice, descriptor_title, sizes_title, whitening_refusal
from retrieval_gui.controllers.query import QueryController
from retrieval_gui.controllers.regions import RegionController
from retrieval_gui.workers import LatestTask

MAX_RECENT = 8


class Explorer(QObject):
    """``folder`` (FolderController), ``model`` (ModelChoice) and ``query`` (QueryController), wired:
    a folder opened is indexed for the model choice; a model change indexes what it needs and searches
    again; the query follows both. ``changed`` whenever anything the window shows may have changed.

    The engine functions can be replaced (tests): ``open_index(folder, cache_dir)``, ``run`` (a search),
    ``list_images(index, spec)``, ``check_whitening(path, spec)``.
    """

    changed = Signal()

    def __init__(self, models: Any, *, weights: str = "pretrained", image_size: int | None = None,
                 settings: QSettings | None = None, cache_dir: str | os.PathLike | None = None,
                 open_index: Callable[..., Any] = FolderIndex, run: Callable[..., SearchResult] = run_query,
                 list_images: Callable[..., Any] = indexed_paths,
                 check_whitening: Callable[[str, ModelSpec], str | None] = whitening_refusal,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.models = models
        self.settings = settings
        self.model = ModelChoice(weights=weights, image_size=image_size, settings=settings,
                                 check_whitening=check_whitening, parent=self)
        self.folder = FolderController(models, cache_dir=cache_dir, open_index=open_index,
                                       list_images=list_images, parent=self)
        self.query = QueryController(self.folder, self.model, run=run, parent=self)
        self.regions = RegionController(self.query, parent=self)  # the results' best regions (region queries)
        self.feedback = FeedbackController(self.query, parent=self)  # marks + / - re-rank the query (issue 28)
        self._names: tuple[Any, Counter] | None = None  # file names of the listing, for ambiguous names
        self.model.changed.connect(self._on_model_changed)
        for signal in (self.model.changed, self.folder.changed, self.folder.listed, self.query.changed):
            signal.connect(self.changed)
        self.changed.connect(self._list_again)
        self.folder.progress.connect(lambda *_a: self._list_again())  # the collection view grows as images are indexed

    # -- actions --------------------------------------------------------------------------------------
    def open_folder(self, folder: str | os.PathLike) -> str | None:
        """Open an image folder and index it in the background; None, or why it cannot be opened."""
        why = self.folder.open(folder)
        if why is not None:
            return why
        self._remember(str(self.folder.folder))
        self.folder.start_indexing(self.model.key)
        return None

    def reindex(self) -> None:
        self.folder.start_indexing(self.model.key, again=True)

    def _on_model_changed(self, key: ModelSpec) -> None:
        if self.folder.index is None:
            return
        if self.folder.index_ready(key):
            self.folder.state = None
            self.query.search()
        self.folder.start_indexing(key)  # instant when current: only scans and checks file stamps

    def _remember(self, folder: str) -> None:
        if self.settings is None:
            return
        rec = [folder] + [r for r in self.recent() if r != folder]
        self.settings.setValue("recent", rec[:MAX_RECENT])
        self.settings.setValue("lastCollection", folder)

    def recent(self) -> list[str]:
        val = self.settings.value("recent", []) if self.settings is not None else []
        if isinstance(val, str):
            val = [val]
        return [str(v) for v in (val or [])]

    # -- what is shown --------------------------------------------------------------------------------
    def grid_mode(self) -> str:
        """What the grid shows: 'welcome' (no folder open), 'collection' (the folder's images, before a
        query or after one failed), 'results' (the current query's) or 'stale' (results that no longer
        answer the query or the model choice: drawn faded until new ones replace them)."""
        q = self.query
        if self.folder.index is None:
            return "welcome"
        if q.result is None:
            return "collection"
        if q.current():
            return "results"
        # a new query of the same model is searched in a moment: not worth a fade; another model is
        return "results" if q.busy and q.result.spec == self.model.key else "stale"

    def listing(self) -> tuple[list[str], list[str | None], dict] | None:
        """(paths, labels, rows) of the open folder's images listed so far, None before the first list."""
        lst = self.folder.listing
        if lst is None or lst[0] is not self.folder.index:
            return None
        return lst[2:]

    def _list_again(self) -> None:
        """The collection view: list the open folder's images again when enough were indexed since."""
        if self.grid_mode() != "collection" or self.folder.browse_task.busy:
            return
        lst, done = self.listing(), self.folder.searchable_count(self.model.key)
        n = -1 if lst is None else len(lst[0])
        if n < 0 or done - n >= max(16, n // 5) or (not self.folder.indexing and done != n):
            self.folder.load_listing(self.model.key)

    def result_html(self, result: SearchResult) -> str:
        """What the panel under the query says of its result: name, label, precision@k, timing."""
        lines = [f"<b>{self.query_title(result.query)}</b>"]
        if result.box is not None:  # a region query (retrieval_gui.regions): Esc searches the whole image again
            x, y, w, h = result.box
            lines.append(f"<span style='color:#e65100'>region {w}×{h} at {x},{y} (Esc: whole image)</span>")
        if result.query_label is not None:
            lines.append(f"label: {result.query_label}")
        elif not self.query.inside:
            lines.append("<span style='color:#555'>from outside this folder: no label</span>")
        p = result.precision()
        if p is not None:
            best = result.best_precision()
            note = (f" <span style='color:#555'>(best possible {best:.2f}: {result.relevant} other image"
                    f"{'s' if result.relevant != 1 else ''} of this label)</span>"
                    if best is not None and best < 1 else "")
            lines.append(f"<span style='font-size:15px'>precision@{len(result.hits)}: <b>{p:.2f}</b></span>{note}")
        lines.append(f"{len(result.hits)} results · {result.method} · {1000 * result.seconds:.0f} ms")
        f, key = self.folder, self.model.key
        if not f.index_ready(key):
            done, files = f.counts(key)
            if files:
                lines.append(f"<i>searching {done:,} of {files:,} images (indexing "
                             f"{'in progress' if f.indexing else 'stopped'})</i>")
        return "<br>".join(lines)

    def query_title(self, path: str | None = None) -> str:
        """The query's file name, with its folder's when the name alone is ambiguous (another image of
        the folder has it, e.g. every class's 01.jpg) or the query lies outside the open folder."""
        path = path or self.query.path or ""
        p = Path(path)
        lst = self.listing()
        if lst is not None and (self._names is None or self._names[0] is not lst[0]):
            self._names = (lst[0], Counter(Path(x).name for x in lst[0]))
        index = self.folder.index
        inside = index is not None and index.collection_path(path) is not None
        same = self._names[1].get(p.name, 0) if lst is not None and self._names else 0
        ambiguous = (not inside) or same > 1 or lst is None
        if ambiguous and p.parent.name and (index is None or p.parent != Path(index.folder)):
            return f"{p.parent.name}/{p.name}"
        return p.name

    def status_text(self) -> str:
        """The status line: folder, how much of it is indexed (the collection's own counts), the model."""
        f, key = self.folder, self.model.key
        parts = []
        if f.index is None:
            parts.append("No folder open (File > Open folder…)")
        else:
            parts.append(f.name())
            done, files = f.counts(key)
            state = f.state if f.state is not None and f.state.spec == key else None
            if f.indexing:
                parts.append(f"{done:,} of {files:,} images indexed so far" if files else "indexing…")
            elif state is not None:
                # the scan's count of files: a cancelled run's state counts only what it committed
                total = max(files or 0, state.total)
                parts.append(f"{done:,} of {total:,} images indexed" if state.cancelled or done < total - len(
                    state.skipped) else f"{total:,} images · {done:,} indexed")
                if state.skipped:
                    parts.append(f"{len(state.skipped)} unreadable")
            elif files is not None:
                parts.append(f"{done:,} of {files:,} images indexed")
            elif f.why_not:
                parts.append("not indexed")
        parts.append(model_title(key.backbone))
        parts.append(self.model.descriptor_title())
        if key.scales:
            parts.append("sizes " + sizes_label(key.scales))
        if key.whitening:
            parts.append(f"whitened ({Path(key.whitening).name})")
        if key.weights != "pretrained":
            parts.append(f"weights: {key.weights}")
        return "  ·  ".join(parts)

    def header_text(self) -> tuple[str, bool]:
        """The grid's header (rich text) and whether it warns (results out of date); "" on the welcome page."""
        mode, f, key = self.grid_mode(), self.folder, self.model.key
        if mode == "welcome":
            return "", False
        name = f.name()
        if mode == "collection":
            lst = self.listing()
            n = len(lst[0]) if lst is not None else 0
            done, files = f.counts(key)
            if n == 0 and f.why_not:
                return f"<b>{name}</b> · {f.why_not}", False
            if n == 0:
                return f"<b>{name}</b> · indexing: its images appear here as they are indexed.", False
            count = (f"{n:,} of {files:,} images indexed so far" if f.indexing and files
                     else f"{n:,} image{'s' if n != 1 else ''}")
            return (f"<b>{name}</b> · {count}. Click an image to search with it, drop or paste (Ctrl+V) one "
                    "from elsewhere, or open another folder (Ctrl+O)."), False
        r = self.query.result
        if mode == "results":
            outside = "" if self.query.inside else (" <i>(from outside this folder: its label is unknown, so "
                                                    "the results are not marked)</i>")
            return (f"Results for <b>{self.query_title(r.query)}</b>{outside} · Enter or double-click: search "
                    "with the selected result · Space: preview · right-click: more"), False
        if r.spec != key:
            was = descriptor_title(r.spec.descriptor, r.spec.backbone)
            if r.spec.backbone != key.backbone:
                was = f"{model_title(r.spec.backbone)} {was}"
            now = self.model.descriptor_title()
            if r.spec.scales != key.scales:
                was, now = f"{was} ({sizes_title(r.spec)})", f"{now} ({sizes_title(key)})"
            count, files = f.counts(key)
            doing = (f"is being indexed ({count:,} of {files:,})" if f.indexing and files
                     else "is being indexed" if f.indexing else f"is not indexed: {f.why_not}" if f.why_not
                     else "is not indexed yet (View > Reindex)")
            return (f"Out of date: these are the {was} results; {now} {doing}. They are replaced as soon as "
                    "it can be searched."), True
        return (f"Out of date: these are the results for {self.query_title(r.query)}; the new query waits "
                "for the index."), True

    # -- the task lifecycle ---------------------------------------------------------------------------
    def tasks(self) -> list[LatestTask]:
        return [*self.folder.tasks(), self.query.task, self.regions.task, self.feedback.task]

    def close(self) -> None:
        """The window closes: no folder open, every task cancelled (:func:`wait_idle` waits for their threads)."""
        self.folder.close()
        for t in self.tasks():
            t.cancel()


def wait_idle(tasks: list[LatestTask], msecs: int = 30_000) -> bool:
    """Wait for ``tasks`` while processing events (their queued results and progress are delivered
    meanwhile); True when none runs or waits any more."""
    deadline = time.monotonic() + msecs / 1000
    while any(t.busy for t in tasks) and time.monotonic() < deadline:
        QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
        for t in tasks:
            if t.running():
                t.handle.wait(10)
                break
    QCoreApplication.processEvents()
    return not any(t.busy for t in tasks)
