"""The views beside the results that follow the query: the layer activations and the descriptor comparison,
each computed in a worker (workers.LatestTask: only the latest request's result is shown)."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QWidget

from engine.session import DESCRIPTOR_TITLES, SearchResult, ensure_and_query, list_descriptors
from retrieval_gui.activations import ActivationsPanel, activation_job
from retrieval_gui.compare import CompareDialog
from retrieval_gui.controllers import Explorer
from retrieval_gui.thumbnails import ThumbnailLoader
from retrieval_gui.workers import LatestTask


class QueryPanels(QObject):
    """The activations of the query (and of ``selected()``, the chosen result) in ``activations``, and the
    comparison dialog (made on first use); ``message(text)`` reports a failure."""

    message = Signal(str)

    def __init__(self, explorer: Explorer, activations: ActivationsPanel, loader: ThumbnailLoader,
                 selected: Callable[[], object], window: QWidget) -> None:
        super().__init__(window)
        self.explorer, self.activations, self.loader, self.window = explorer, activations, loader, window
        self.selected = selected
        self.compare_dialog: CompareDialog | None = None
        self.act_task = LatestTask(self, "activations")
        self.compare_task = LatestTask(self, "compare")

    def clear(self, text: str = "Run a query to see its activations.") -> None:
        """No query, or it failed: nothing of a previous query stays."""
        self.act_task.cancel()
        self.compare_task.cancel()
        self.activations.clear(text)

    def refresh_activations(self) -> None:
        q = self.explorer.query
        if not q.path or q.failed_query == q.path:
            return
        hit = self.selected()
        self.activations.set_busy("computing activations…")
        self.act_task.request(activation_job, self.explorer.models, self.explorer.model.key, q.path,
                              self.activations.current_layer(), hit.path if hit is not None else None,
                              with_callbacks=False,
                              on_result=lambda p: p.query == q.path and self.activations.show_payload(p),
                              on_error=lambda m, _tb: self.message.emit(f"Activations failed: {m}"))

    def open_compare(self, other: str | None = None) -> CompareDialog:
        """Open (or raise) the comparison of the current descriptor with ``other``."""
        if self.compare_dialog is None:
            self.compare_dialog = CompareDialog(self.loader, list_descriptors(), self.window)
            self.compare_dialog.descriptorChosen.connect(lambda _d: self.run_compare())
            self.compare_dialog.set_other("rmac" if self.explorer.model.key.descriptor != "rmac" else "spoc")
        if other:
            self.compare_dialog.set_other(other)
        self.compare_dialog.show()
        self.compare_dialog.raise_()
        self.run_compare()
        return self.compare_dialog

    def comparing(self) -> bool:
        return self.compare_dialog is not None and not self.compare_dialog.isHidden()

    def run_compare(self) -> None:
        dlg, ex = self.compare_dialog, self.explorer
        index, q = ex.folder.index, ex.query
        if dlg is None or index is None:
            return
        if not q.path or q.result is None:
            dlg.set_busy("Run a query first.")
            return
        other_key, left = ex.model.key.with_descriptor(dlg.other_descriptor()), q.result
        dlg.set_busy(f"searching with {DESCRIPTOR_TITLES.get(other_key.descriptor)}"
                     f"{'' if ex.folder.index_ready(other_key) else ' (indexing it if needed)'}…")
        self.compare_task.request(
            ensure_and_query, index, ex.models, other_key, q.path, q.options, cancel_running=True,
            on_progress=lambda d, t, m: dlg.set_busy(f"indexing {d}/{t}…"),
            on_result=lambda r: r is not None and self._on_compare(left, other_key, r),
            on_error=lambda m, _tb: self.message.emit(f"Comparison failed: {m}"))

    def _on_compare(self, left: SearchResult, other_key, right: SearchResult) -> None:
        if self.compare_dialog is not None:
            self.explorer.folder.ready_keys.add(other_key)  # ensure_and_query indexed it
            self.compare_dialog.set_results(left, right)

    def tasks(self) -> list[LatestTask]:
        return [self.act_task, self.compare_task]
