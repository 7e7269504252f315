"""The window's side of relevance feedback and concepts (issue 28): the marks from the keyboard (+ / - / 0),
the cards' menu and a click on a card's badge go to ``explorer.feedback`` (controllers.feedback); the cards
draw the marks; the Concepts menu saves, reopens, exports and trains on concepts. The main window calls
:func:`install_feedback` once; the state lives in the controller."""

from __future__ import annotations

import importlib
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QInputDialog,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QVBoxLayout,
)

from engine.concepts import ConceptError, list_concepts, training_split, write_training_split
from retrieval_gui.controllers.feedback import FeedbackController, apply_marks, describe_marks


class FeedbackUI:
    """Wires ``win`` (the main window) to its explorer's feedback controller and adds the Concepts menu."""

    def __init__(self, win: Any) -> None:
        self.win = win
        self.fc: FeedbackController = win.explorer.feedback
        win.results_view.markRequested.connect(self._on_mark_key)
        win.cards.markRequested.connect(lambda path, value: self.fc.mark(path, value))
        self.fc.changed.connect(self._on_changed)
        self.fc.failed.connect(win.show_error)
        bar = win.menuBar()
        menus = [a for a in bar.actions() if a.menu() is not None]
        menu = QMenu("&Concepts", win)  # before Help (the last menu)
        if menus:
            bar.insertMenu(menus[-1], menu)
        else:
            bar.addMenu(menu)
        self.undo_action = menu.addAction("&Undo mark", self.fc.undo)
        self.undo_action.setShortcut(QKeySequence.StandardKey.Undo)
        self.clear_action = menu.addAction("&Clear marks", self.fc.clear_marks)
        menu.addSeparator()
        self.save_action = menu.addAction("&Save as concept…", self.save)
        self.save_action.setShortcut(QKeySequence("Ctrl+Shift+S"))
        self.open_action = menu.addAction("&Open concept…", self.open)
        self.export_action = menu.addAction("&Export concept as CSV…", self.export)
        menu.addSeparator()
        self.train_action = menu.addAction("&Train on my concepts…", self.train)
        self.menu = menu
        self._on_changed()

    # -- marks ---------------------------------------------------------------------------------------
    def _on_mark_key(self, hit: Any, value: int | None) -> None:
        if hit is None:
            return
        if value is None:
            self.fc.cycle(hit.path)
        else:
            self.fc.mark(hit.path, value)

    def _on_changed(self) -> None:
        apply_marks(self.win.results_model, self.fc)
        has_query = self.fc.query.path is not None
        self.undo_action.setEnabled(bool(self.fc.history))
        self.clear_action.setEnabled(bool(self.fc.marks or self.fc.extra_queries))
        self.save_action.setEnabled(has_query and bool(self.fc.marks))
        text = describe_marks(self.fc)
        self.menu.setTitle("&Concepts" + (f" ({text})" if text else ""))

    # -- concepts ------------------------------------------------------------------------------------
    def save(self, name: str | None = None) -> bool:
        """Ask a name and save the query and marks as a concept (a name in use is replaced after asking)."""
        if name is None:
            name, ok = QInputDialog.getText(self.win, "Save as concept", "Name of the concept (letters, digits, "
                                            "spaces, . _ - + ( ) ,):", text=self.fc.concept_name or "")
            if not ok:
                return False
        try:
            path = self.fc.save(name)
        except (ConceptError, OSError) as exc:
            self.win.show_error(f"The concept was not saved: {exc}")
            return False
        self.win.show_error(f"Saved the concept {self.fc.concept_name!r} ({path}).", info=True)
        return True

    def _choose(self, title: str) -> str | None:
        names = [c.name for c in list_concepts()]
        if not names:
            self.win.show_error("No concept is saved yet: mark results with + / − and use Concepts > Save.",
                                info=True)
            return None
        name, ok = QInputDialog.getItem(self.win, title, "Concept:", names, 0, False)
        return name if ok else None

    def open(self, name: str | None = None) -> bool:
        """Use a saved concept as the query (its query image and marks)."""
        name = name or self._choose("Open concept")
        if not name:
            return False
        try:
            why = self.fc.open_concept(name)
        except (ConceptError, OSError) as exc:
            why = str(exc)
        if why:
            self.win.show_error(f"The concept cannot be used: {why}")
            return False
        return True

    def export(self, name: str | None = None, target: str | None = None) -> bool:
        """Write a saved concept's paths (or the current marks) as CSV."""
        if name is None and not self.fc.marks:
            name = self._choose("Export concept")
            if not name:
                return False
        if target is None:
            target, _ = QFileDialog.getSaveFileName(self.win, "Export concept as CSV",
                                                    f"{name or self.fc.concept_name or 'marks'}.csv", "CSV (*.csv)")
            if not target:
                return False
        try:
            path = self.fc.export(target, name)
        except (ConceptError, OSError) as exc:
            self.win.show_error(f"The concept was not exported: {exc}")
            return False
        self.win.show_error(f"Wrote {path}.", info=True)
        return True

    def train(self, names: list[str] | None = None) -> Any:
        """Train on saved concepts (one class each): the trainer's split file is written (no image copied)
        and the training wizard opens on its data page with it. Returns the wizard (None when not opened)."""
        concepts = {c.name: c for c in list_concepts()}
        if names is None:
            names = choose_concepts(self.win, sorted(concepts))
            if not names:
                return None
        try:
            split = training_split([concepts[n] for n in names])
            path = write_training_split(split)
        except (ConceptError, OSError, KeyError) as exc:
            self.win.show_error(f"Cannot train on these concepts: {exc}")
            return None
        try:
            wizard_mod = importlib.import_module("retrieval_gui.wizard.wizard")
            cfg = wizard_mod.config_from_settings()
            cfg.data_root, cfg.image_split, cfg.train_classes, cfg.target = split.root, str(path), None, "same"
            cfg.extra = {k: v for k, v in (cfg.extra or {}).items() if k != "split_file"}
            wizard = wizard_mod.TrainWizard(self.win, self.win, config=cfg)
        except Exception as exc:  # the wizard is optional in a build: say so, never a traceback
            self.win.show_error(f"The training wizard cannot open: {exc}")
            return None
        wizard.show()
        if split.left_out:
            self.win.show_error(f"{len(split.left_out)} image(s) were left out of the training set (missing, or "
                                "in two concepts).", info=True)
        return wizard


def choose_concepts(parent: Any, names: list[str]) -> list[str]:
    """A dialog listing the saved concepts with check boxes; the names ticked (none when cancelled)."""
    if not names:
        parent.show_error("No concept is saved yet: mark results with + / − and use Concepts > Save.", info=True)
        return []
    dialog = QDialog(parent)
    dialog.setWindowTitle("Train on my concepts")
    layout = QVBoxLayout(dialog)
    layout.addWidget(QLabel("Each concept ticked becomes one class (its query and its images marked +). With one "
                            "concept, its images marked − are a second class. No image is copied."))
    box = QListWidget()
    for n in names:
        item = QListWidgetItem(n)
        item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
        item.setCheckState(Qt.CheckState.Checked)
        box.addItem(item)
    layout.addWidget(box)
    buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
    buttons.accepted.connect(dialog.accept)
    buttons.rejected.connect(dialog.reject)
    layout.addWidget(buttons)
    if dialog.exec() != QDialog.DialogCode.Accepted:
        return []
    return [box.item(i).text() for i in range(box.count()) if box.item(i).checkState() == Qt.CheckState.Checked]


def install_feedback(win: Any) -> FeedbackUI:
    """Wire the window's feedback (see the module docstring); the window keeps the returned object."""
    return FeedbackUI(win)
