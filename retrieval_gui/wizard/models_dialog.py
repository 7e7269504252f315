"""The "Trained models" dialog: every model under the models folder, with its data and metrics."""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QLabel,
    QMessageBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

log = logging.getLogger(__name__)

COLUMNS = ("Name", "Date", "Data", "Backbone", "Val R@1", "Untrained R@1", "Val mAP")


def _fmt(v: object) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "—"


def load_into(main_window: object | None, path: str) -> str:
    """Hand a checkpoint to the explorer (retrieval_gui.wizard.explorer: ``main_window.use_model(path)``).
    Returns "" on success, or a sentence saying why it could not."""
    from retrieval_gui.wizard.explorer import explorer_of

    return explorer_of(main_window).use_model(path)


class TrainedModelsDialog(QDialog):
    """Lists :func:`engine.training.registry.list_trained_models` and lets the user pick one.

    "Use this model" calls ``main_window.use_model(checkpoint path)`` (when given) and emits
    :attr:`modelChosen` with the path.
    """

    modelChosen = Signal(str)

    def __init__(self, parent: QWidget | None = None, *, main_window: object | None = None,
                 directory: str | Path | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Trained models")
        self.resize(900, 360)
        self.main_window = main_window
        self.directory = directory
        self.models: list = []
        self.table = QTableWidget(0, len(COLUMNS), self)
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.doubleClicked.connect(lambda _=None: self.use_selected())
        self.info = QLabel(self)
        self.info.setWordWrap(True)
        self.info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, self)
        self.use_button = self.buttons.addButton("Use this model", QDialogButtonBox.ButtonRole.AcceptRole)
        self.refresh_button = self.buttons.addButton("Refresh", QDialogButtonBox.ButtonRole.ActionRole)
        self.use_button.clicked.connect(self.use_selected)
        self.refresh_button.clicked.connect(self.refresh)
        self.buttons.rejected.connect(self.reject)
        self.table.itemSelectionChanged.connect(self._on_selection)
        lay = QVBoxLayout(self)
        lay.addWidget(self.table)
        lay.addWidget(self.info)
        lay.addWidget(self.buttons)
        self.refresh()

    def refresh(self) -> None:
        """Re-read the models folder."""
        from engine.training.registry import list_trained_models, models_dir

        try:
            self.models = list_trained_models(self.directory)
        except OSError as exc:
            self.models = []
            self.info.setText(f"Cannot read the models folder: {exc}")
        self.table.setRowCount(len(self.models))
        for row, m in enumerate(self.models):
            val = m.metrics.get("val", {}) if isinstance(m.metrics.get("val"), dict) else {}
            base = m.metrics.get("baseline_val", {}) if isinstance(m.metrics.get("baseline_val"), dict) else {}
            cells = (m.title, m.date, m.data_root, str(m.config.get("backbone", "")), _fmt(val.get("recall@1")),
                     _fmt(base.get("recall@1")), _fmt(val.get("map")))
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(m.path if col == 0 else text)
                self.table.setItem(row, col, item)
        if not self.models:
            where = self.directory or models_dir()
            self.info.setText(f"No trained models in {where} yet. Train one with Training > Train XBM model…")
        elif self.table.currentRow() < 0:
            self.table.selectRow(0)
        self._on_selection()

    def selected_path(self) -> str | None:
        row = self.table.currentRow()
        return self.models[row].path if 0 <= row < len(self.models) else None

    def _on_selection(self) -> None:
        path = self.selected_path()
        self.use_button.setEnabled(path is not None)
        if path is not None:
            self.info.setText(f"Checkpoint: {path}")

    def use_selected(self) -> None:
        path = self.selected_path()
        if path is None:
            return
        problem = load_into(self.main_window, path)
        self.modelChosen.emit(path)
        from retrieval_gui.wizard.explorer import NoExplorer

        if problem and self.main_window is not None and not isinstance(self.main_window, NoExplorer):
            QMessageBox.warning(self, "Trained models", problem)
            return
        self.accept()
