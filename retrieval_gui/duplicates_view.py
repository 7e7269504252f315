"""The Duplicates view: groups of near-duplicate images of the open collection, a threshold slider that
regroups live (engine.duplicates: the index is searched once, regrouping is array work), and actions that
never delete silently: select all but the best of each group, move the selection to the system trash or
to a folder (each after an explicit confirmation naming what moves), export the groups as CSV."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QFileDialog,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from retrieval_gui import workers
from retrieval_gui.thumbnails import ThumbnailLoader

log = logging.getLogger(__name__)
#: groups shown at once (more with "Show more groups"): a folder with thousands of groups stays quick
PAGE = 40
THUMB = 128
#: the slider's step (cosine similarity)
STEP = 0.005
#: regrouping of more pairs than this runs in a worker instead of on the GUI thread
GUI_REGROUP_PAIRS = 20_000
#: the copies tier's slider: the verification's aligned score (engine.copycheck.PairCheck.score), in %
COPY_SCORE_RANGE = (30, 100)


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def find_job(collection_fn: Callable[[], Any], threshold: float, floor: float, *, progress=None,
             should_stop=None):
    """Worker: the collection (``collection_fn()``, opened here, off the GUI thread) searched once."""
    from engine.duplicates import find_duplicates

    return find_duplicates(collection_fn(), threshold=threshold, floor=floor, progress=progress,
                           should_stop=should_stop)


def verify_job(dup: Any, copy_rule: Any, best_rule: Any, *, progress=None, should_stop=None) -> list[Any]:
    """Worker: verify ``dup``'s candidate pairs (cached: only new pairs are checked), then the copies
    tier's groups under ``copy_rule`` and ``best_rule`` (reads pixels for the keep-best rule)."""
    dup.verify(progress=progress, should_stop=should_stop)
    return dup.copy_groups(copy_rule, best_rule)


class _Card(QFrame):
    """One image of a group: thumbnail, a selection box, resolution, size and path."""

    toggled = Signal(str, bool)

    def __init__(self, item: Any, selected: bool, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.path = item.path
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setStyleSheet("QFrame { border: 2px solid %s; border-radius: 4px; }"
                           % ("#2e7d32" if item.best else "#c7ccd1"))
        self.setFixedWidth(THUMB + 24)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        self.image = QLabel()
        self.image.setFixedSize(THUMB, THUMB)
        self.image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.image.setStyleSheet("border: none; background: #f5f7fa")
        lay.addWidget(self.image, 0, Qt.AlignmentFlag.AlignHCenter)
        f = item.facts
        score = "best" if item.best else ("" if item.score is None else f"{item.score:.3f}")
        self.check = QCheckBox(score)
        colour = "#2e7d32" if item.best else "#333"
        self.check.setStyleSheet(f"border: none; font-weight: bold; color: {colour}")
        self.check.setChecked(selected)
        self.check.toggled.connect(lambda on: self.toggled.emit(self.path, on))
        lay.addWidget(self.check)
        info = QLabel(f"{f.width}×{f.height} · {_size(f.bytes)}")
        info.setStyleSheet("border: none")
        lay.addWidget(info)
        name = QLabel(item.relpath)
        name.setStyleSheet("border: none; color: #555")
        name.setWordWrap(True)
        name.setToolTip(item.path)
        lay.addWidget(name)
        derived = getattr(item, "derived", None)
        if derived:
            why = QLabel(derived[0].split(" of ")[0].split(" (")[0])
            why.setStyleSheet("border: none; color: #a15c00")
            why.setToolTip("; ".join(derived))
            lay.addWidget(why)

    def set_image(self, img: QImage) -> None:
        if not img.isNull():
            self.image.setPixmap(QPixmap.fromImage(img).scaled(
                THUMB, THUMB, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation))


class DuplicatesView(QDialog):
    """Near-duplicate groups of one collection. ``collection_fn()`` gives the engine Collection (called on a
    worker thread); ``descriptor`` picks the measured default threshold. ``confirm(title, text) -> bool``,
    ``ask_folder() -> str``, ``ask_save() -> str`` and ``trash(path)`` default to Qt dialogs and send2trash;
    tests pass their own. ``filesMoved(list of (source, destination or ''))`` after a move."""

    filesMoved = Signal(list)

    def __init__(self, collection_fn: Callable[[], Any], *, descriptor: str | None = None,
                 loader: ThumbnailLoader | None = None, folder: str | os.PathLike | None = None,
                 confirm: Callable[[str, str], bool] | None = None,
                 ask_folder: Callable[[], str] | None = None,
                 ask_save: Callable[[], str] | None = None, trash: Callable[[str], None] | None = None,
                 verify: bool = True, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from engine.duplicates import SEARCH_MARGIN, BestRule, default_threshold

        self.setWindowTitle("Find duplicates")
        self.resize(1100, 760)
        self.collection_fn = collection_fn
        self.folder = Path(folder) if folder else None
        self.confirm = confirm or self._confirm_dialog
        self.ask_folder = ask_folder or self._ask_folder_dialog
        self.ask_save = ask_save or self._ask_save_dialog
        self.trash = trash
        if loader is None:
            from engine.vocabulary import cache_root

            loader = ThumbnailLoader(THUMB, cache_root() / "thumbnails", capacity=400, parent=self)
        self.loader = loader
        self.loader.ready.connect(self._on_thumbnail)
        self.default = default_threshold(descriptor)
        self.floor = max(-1.0, self.default - SEARCH_MARGIN)
        self.dup: Any = None
        self.groups: list[Any] = []
        self.selected: set[str] = set()
        self.gone: set[str] = set()  # moved away by this view: left out of the groups
        self.shown = 0
        self.regroups = 0
        self._cards: dict[str, _Card] = {}
        self._task: workers.TaskHandle | None = None
        #: grouping in a worker (large pair lists): one at a time, only the latest threshold's groups shown
        self._regroup = workers.LatestTask(self, "regroup")
        #: deleted when closed, after its tasks have stopped (the window's menu sets it)
        self.delete_on_close = False
        #: the copies tier: verification of the candidates in a worker (the latest request wins)
        self.verify_enabled = verify
        self.verifier = workers.LatestTask(self, "verify copies")
        self.copy_groups: list[Any] = []
        self._copy_cards: dict[str, _Card] = {}
        self.best_rule = BestRule()
        self.verified = 0
        self._build()
        self._build_copies()

    # --- layout -----------------------------------------------------------------------------------
    def _build(self) -> None:
        outer = QVBoxLayout(self)
        top = QHBoxLayout()
        top.addWidget(QLabel("Similarity threshold"))
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, round((1.0 - self.floor) / STEP))
        self.slider.setValue(round((self.default - self.floor) / STEP))
        self.slider.setToolTip("Two images are copies when their descriptors score at least this (cosine); "
                               f"the default {self.default:.2f} was measured on edited photos "
                               "(docs/BENCHMARKS.md)")
        self.slider.valueChanged.connect(self._on_slider)
        top.addWidget(self.slider, 1)
        self.threshold_label = QLabel()
        self.threshold_label.setMinimumWidth(48)
        top.addWidget(self.threshold_label)
        self.strict_box = QCheckBox("Strict groups")
        self.strict_box.setToolTip("Every two images of a group must score above the threshold (no chains "
                                   "through a third image; copies edited in different ways may split)")
        self.strict_box.toggled.connect(lambda _on: self.regroup())
        top.addWidget(self.strict_box)
        outer.addLayout(top)
        self.status = QLabel("Searching the collection for similar pairs…")
        self.status.setWordWrap(True)
        outer.addWidget(self.status)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.body = QWidget()
        self.rows = QVBoxLayout(self.body)
        self.rows.setAlignment(Qt.AlignmentFlag.AlignTop)
        self.scroll.setWidget(self.body)
        outer.addWidget(self.scroll, 1)
        self.more_button = QPushButton("Show more groups")
        self.more_button.clicked.connect(self._show_more)
        self.more_button.hide()
        outer.addWidget(self.more_button)
        actions = QHBoxLayout()
        self.select_button = QPushButton("Select all but the best")
        self.select_button.setToolTip("Tick every image except the first (best) of each group")
        self.select_button.clicked.connect(self.select_all_but_best)
        self.clear_button = QPushButton("Clear selection")
        self.clear_button.clicked.connect(self.clear_selection)
        self.trash_button = QPushButton("Move to trash…")
        self.trash_button.clicked.connect(lambda: self.move_selection_to_trash())
        self.move_button = QPushButton("Move to folder…")
        self.move_button.clicked.connect(lambda: self.move_selection_to_folder())
        self.csv_button = QPushButton("Export CSV…")
        self.csv_button.clicked.connect(lambda: self.export_csv())
        for b in (self.select_button, self.clear_button):
            actions.addWidget(b)
        actions.addStretch(1)
        self.selection_label = QLabel()
        actions.addWidget(self.selection_label)
        for b in (self.trash_button, self.move_button, self.csv_button):
            actions.addWidget(b)
        outer.addLayout(actions)
        self._update_threshold_label()
        self._update_actions()

    # --- searching and grouping -------------------------------------------------------------------
    def start(self) -> workers.TaskHandle:
        """Search the collection once (in a worker); the groups appear when it is done."""
        if self._task is not None and self._task.is_running():
            return self._task
        self.status.setText("Searching the collection for similar pairs…")
        task = workers.start_task(find_job, self.collection_fn, self.threshold(), self.floor, parent=self,
                                  name="duplicates")
        task.progress.connect(self._on_progress)
        task.result.connect(self._on_found)
        task.error.connect(lambda msg, _tb: self.status.setText(f"Cannot search for duplicates: {msg}"))
        self._task = task
        return task

    def threshold(self) -> float:
        return round(self.floor + self.slider.value() * STEP, 4)

    def set_threshold(self, value: float) -> None:
        self.slider.setValue(round((value - self.floor) / STEP))

    def rule(self) -> str:
        return "complete" if self.strict_box.isChecked() else "components"

    def _on_progress(self, done: int, total: int, message: str) -> None:
        self.status.setText(f"{message}… {done:,} of {total:,}" if total else f"{message}…")

    def _on_found(self, dup: Any) -> None:
        self.dup = dup
        self.regroup()
        if self.verify_enabled:
            self.verify()

    def _on_slider(self, _value: int) -> None:
        self._update_threshold_label()
        self.regroup()

    def _update_threshold_label(self) -> None:
        self.threshold_label.setText(f"{self.threshold():.3f}")

    def regroup(self) -> None:
        """Group the pairs at the slider's threshold: never a new search (the pairs were found down to the
        slider's lowest value); large pair lists are grouped in a worker."""
        if self.dup is None:
            return
        t, rule = self.threshold(), self.rule()
        if len(self.dup.pairs) <= GUI_REGROUP_PAIRS:
            self._regroup.cancel()  # a grouping still running for an older threshold is not shown
            self._show_groups(self.dup.groups(t, rule))
            return
        self.status.setText("Grouping…")
        self._regroup.request(self.dup.groups, t, rule, on_result=self._show_groups, with_callbacks=False,
                              on_error=lambda msg, _tb: self.status.setText(f"Cannot group the pairs: {msg}"))

    def _show_groups(self, groups: list[Any]) -> None:
        self.regroups += 1
        kept = []
        for g in groups:
            if self.gone:
                g.items = [it for it in g.items if it.path not in self.gone]
                if len(g.items) < 2:
                    continue
            kept.append(g)
        self.groups = kept
        present = {it.path for g in kept for it in g.items}
        self.selected &= present
        self._clear_rows()
        self._show_more()
        extra = sum(len(g) - 1 for g in kept)
        n = self.dup.pairs.n
        how = "exact" if self.dup.pairs.exact else "HNSW"
        notes = (" " + " ".join(self.dup.notes)) if self.dup.notes else ""
        self.status.setText(f"{len(kept):,} groups, {extra:,} images that are copies of a kept one, among "
                            f"{n:,} images ({how} search; the best of each group is first: largest "
                            "resolution, "
                            f"then largest file, then oldest).{notes}" if kept else
                            (f"No duplicates at {self.threshold():.3f} among {n:,} images." if n else
                             "No image is indexed yet: wait for indexing to finish, then open this again."))
        self._update_actions()

    def _clear_rows(self) -> None:
        self.loader.clear_queue()
        while self.rows.count():
            w = self.rows.takeAt(0).widget()
            if w is not None:
                w.deleteLater()
        self._cards.clear()
        self.shown = 0

    def _show_more(self) -> None:
        end = min(len(self.groups), self.shown + PAGE)
        for n in range(self.shown, end):
            self.rows.addWidget(self._group_row(n + 1, self.groups[n]))
        self.shown = end
        self.more_button.setVisible(self.shown < len(self.groups))
        self.more_button.setText(f"Show more groups ({len(self.groups) - self.shown:,} more)")

    def _group_row(self, number: int, group: Any) -> QWidget:
        return self._group_widget(f"<b>Group {number}</b>: {len(group)} images, similarity "
                                  f"{group.min_score:.3f}–{group.max_score:.3f}", group, self._cards)

    def _group_widget(self, title_text: str, group: Any, cards_of: dict[str, _Card]) -> QWidget:
        """One group: its title, 'Not copies' / 'Keep all', and a card per image (kept in ``cards_of``)."""
        row = QWidget()
        lay = QVBoxLayout(row)
        lay.setContentsMargins(0, 6, 0, 6)
        head = QHBoxLayout()
        title = QLabel(title_text)
        title.setWordWrap(True)
        head.addWidget(title, 1)
        self._decision_buttons(head, group)
        lay.addLayout(head)
        cards = QHBoxLayout()
        cards.setAlignment(Qt.AlignmentFlag.AlignLeft)
        for it in group.items:
            card = _Card(it, it.path in self.selected)
            card.toggled.connect(self._on_toggled)
            cards_of[it.path] = card
            img = self.loader.request(it.path)
            if img is not None:
                card.set_image(img)
            cards.addWidget(card)
        lay.addLayout(cards)
        return row

    def _on_thumbnail(self, path: str, img: QImage) -> None:
        for card in (self._cards.get(path), self._copy_cards.get(path)):
            if card is not None:
                card.set_image(img)

    # --- the copies tier (verified) ------------------------------------------------------------------
    def _build_copies(self) -> None:
        """The copies tier above the similar photos: its own slider (the verification's score), the
        keep-best rule (shown and editable), progress and cancel, and its groups."""
        from engine.copycheck import DEFAULT_RULE

        box = QGroupBox("Copies: the same picture, edited (verified pixel by pixel)")
        lay = QVBoxLayout(box)
        row = QHBoxLayout()
        row.addWidget(QLabel("Check score"))
        self.copy_slider = QSlider(Qt.Orientation.Horizontal)
        self.copy_slider.setRange(*COPY_SCORE_RANGE)
        self.copy_slider.setValue(round(DEFAULT_RULE.min_score * 100))
        self.copy_slider.setToolTip("The share of the aligned picture that must agree (captions and colour "
                                    "changes keep most of it; another photo of the scene does not); the "
                                    f"default {DEFAULT_RULE.min_score:.2f} was chosen on the benchmark's "
                                    "training species (docs/BENCHMARKS.md)")
        self.copy_slider.valueChanged.connect(lambda _v: self._on_copy_slider())
        row.addWidget(self.copy_slider, 1)
        self.copy_label = QLabel()
        self.copy_label.setMinimumWidth(40)
        row.addWidget(self.copy_label)
        self.cancel_verify_button = QPushButton("Cancel")
        self.cancel_verify_button.clicked.connect(self.cancel_verification)
        self.cancel_verify_button.setEnabled(False)
        row.addWidget(self.cancel_verify_button)
        lay.addLayout(row)
        rule = QHBoxLayout()
        rule.addWidget(QLabel("Keep best:"))
        self.best_edit = QLineEdit(",".join(self.best_rule.order))
        self.best_edit.setToolTip("Criteria in order: derived (never an upscaled, re-encoded or cropped copy), "
                                  "resolution, bytes, date, folder")
        self.best_edit.editingFinished.connect(self._on_best_rule)
        rule.addWidget(self.best_edit, 2)
        rule.addWidget(QLabel("preferred folder:"))
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("none")
        self.folder_edit.editingFinished.connect(self._on_best_rule)
        rule.addWidget(self.folder_edit, 1)
        lay.addLayout(rule)
        self.best_label = QLabel()
        self.best_label.setWordWrap(True)
        lay.addWidget(self.best_label)
        self.copy_status = QLabel("Copies are verified once the similar pairs are found." if self.verify_enabled
                                  else "Verification is off.")
        self.copy_status.setWordWrap(True)
        lay.addWidget(self.copy_status)
        self.copy_scroll = QScrollArea()
        self.copy_scroll.setWidgetResizable(True)
        body = QWidget()
        self.copy_rows = QVBoxLayout(body)
        self.copy_rows.setAlignment(Qt.AlignmentFlag.AlignTop)
        self.copy_scroll.setWidget(body)
        lay.addWidget(self.copy_scroll, 1)
        buttons = QHBoxLayout()
        self.select_copies_button = QPushButton("Select all but the best copy")
        self.select_copies_button.setToolTip("Tick every verified copy except the best of its group")
        self.select_copies_button.clicked.connect(self.select_all_but_best_copy)
        buttons.addWidget(self.select_copies_button)
        buttons.addStretch(1)
        lay.addLayout(buttons)
        outer = self.layout()
        outer.insertWidget(0, box, 1)
        outer.insertWidget(1, QLabel("<b>Similar photos</b> (not verified as copies): the slider is the "
                                     "descriptors' similarity"))
        self._update_copy_label()

    def copy_rule(self) -> Any:
        from dataclasses import replace

        from engine.copycheck import DEFAULT_RULE

        return replace(DEFAULT_RULE, min_score=self.copy_slider.value() / 100)

    def _update_copy_label(self) -> None:
        self.copy_label.setText(f"{self.copy_slider.value() / 100:.2f}")
        self.best_label.setText(f"The best of each group (kept, green) is: {self.best_rule.describe()}.")

    def _on_copy_slider(self) -> None:
        self._update_copy_label()
        if self.dup is not None and self.dup.verified_from is not None:
            self.verify()

    def _on_best_rule(self) -> None:
        from engine.duplicates import BestRule

        try:
            rule = BestRule.parse(self.best_edit.text(), self.folder_edit.text().strip() or None)
        except ValueError as exc:
            self.copy_status.setText(str(exc))
            return
        if rule == self.best_rule:
            return
        self.best_rule = rule
        self._update_copy_label()
        if self.dup is not None and self.dup.verified_from is not None:
            self.verify()

    def verify(self) -> int:
        """Verify the candidates and show the copies (in a worker; the latest request wins)."""
        if self.dup is None:
            return 0
        self.cancel_verify_button.setEnabled(True)
        return self.verifier.request(verify_job, self.dup, self.copy_rule(), self.best_rule,
                                     on_result=self._show_copies, on_progress=self._on_verify_progress,
                                     on_error=lambda msg, _tb: self._verify_failed(msg))

    def cancel_verification(self) -> None:
        self.verifier.cancel()
        self.cancel_verify_button.setEnabled(False)
        self.copy_status.setText("Verification cancelled: the pairs checked so far are kept; move the slider "
                                 "to go on.")

    def _verify_failed(self, msg: str) -> None:
        self.cancel_verify_button.setEnabled(False)
        self.copy_status.setText(f"Cannot verify the copies: {msg}")

    def _on_verify_progress(self, done: int, total: int, message: str) -> None:
        self.copy_status.setText(f"{message}… {done:,} of {total:,}" if total else f"{message}…")

    def _show_copies(self, groups: list[Any]) -> None:
        self.verified += 1
        self.cancel_verify_button.setEnabled(False)
        if self.gone:
            for g in groups:
                g.items = [it for it in g.items if it.path not in self.gone]
            groups = [g for g in groups if len(g.items) >= 2]
        self.copy_groups = groups
        self._copy_cards.clear()
        while self.copy_rows.count():
            w = self.copy_rows.takeAt(0).widget()
            if w is not None:
                w.deleteLater()
        for n, g in enumerate(groups[:PAGE], 1):
            self.copy_rows.addWidget(self._copy_row(n, g))
        extra = sum(len(g) - 1 for g in groups)
        more = f" (the first {PAGE} shown)" if len(groups) > PAGE else ""
        self.copy_status.setText(f"{len(groups):,} groups of copies, {extra:,} images that are copies of a kept "
                                 f"one; {len(self.dup.checks):,} candidate pairs checked{more}." if groups else
                                 f"No verified copies ({len(self.dup.checks):,} candidate pairs checked).")
        # the similar tier now leaves out what was verified
        if not self.dup.similar_only:
            self.dup.similar_only = True
            self.regroup()

    def _copy_row(self, number: int, group: Any) -> QWidget:
        return self._group_widget(f"<b>Copies {number}</b>: {len(group)} images; kept: {group.best_reason}",
                                  group, self._copy_cards)

    def _decision_buttons(self, layout: QHBoxLayout, group: Any) -> None:
        no = QPushButton("Not copies")
        no.setToolTip("These images are not copies of one another: never group them again (remembered "
                      "with the collection)")
        no.clicked.connect(lambda: self.mark_not_copies(group))
        keep = QPushButton("Keep all")
        keep.setToolTip("Keep every image of this group and stop showing it (remembered with the collection)")
        keep.clicked.connect(lambda: self.mark_keep_all(group))
        layout.addWidget(no)
        layout.addWidget(keep)

    def mark_not_copies(self, group: Any) -> None:
        """Remember that the images of ``group`` are not copies, and regroup both tiers."""
        self.dup.decisions.mark_not_copies([it.relpath for it in group.items])
        self._after_decision()

    def mark_keep_all(self, group: Any) -> None:
        """Remember to keep every image of ``group``, and regroup both tiers."""
        self.dup.decisions.mark_keep_all([it.relpath for it in group.items])
        self._after_decision()

    def _after_decision(self) -> None:
        self.dup.similar_only = True  # decisions apply to the similar tier too
        self.regroup()
        if self.dup.verified_from is not None or self.verifier.busy:
            self.verify()

    def select_all_but_best_copy(self) -> None:
        """Select every verified copy except the best of its group (the keep-best rule's choice)."""
        self.selected = {it.path for g in self.copy_groups for it in g.others}
        self._sync_checks()

    # --- selection --------------------------------------------------------------------------------
    def _on_toggled(self, path: str, on: bool) -> None:
        if on:
            self.selected.add(path)
        else:
            self.selected.discard(path)
        self._update_actions()

    def _sync_checks(self) -> None:
        for path, card in [*self._cards.items(), *self._copy_cards.items()]:
            card.check.blockSignals(True)
            card.check.setChecked(path in self.selected)
            card.check.blockSignals(False)
        self._update_actions()

    def select_all_but_best(self) -> None:
        """Select every image of every group except its best (the first)."""
        self.selected = {it.path for g in self.groups for it in g.others}
        self._sync_checks()

    def clear_selection(self) -> None:
        self.selected = set()
        self._sync_checks()

    def selected_paths(self) -> list[str]:
        """The selection in group order."""
        out = [it.path for g in [*self.copy_groups, *self.groups] for it in g.items if it.path in self.selected]
        return list(dict.fromkeys(out))

    def _update_actions(self) -> None:
        n = len(self.selected)
        self.selection_label.setText(f"{n:,} selected" if n else "")
        for b in (self.trash_button, self.move_button):
            b.setEnabled(n > 0)
        self.csv_button.setEnabled(bool(self.groups))
        self.select_button.setEnabled(bool(self.groups))

    # --- actions: each asks first -----------------------------------------------------------------
    def _listing(self, paths: list[str], limit: int = 8) -> str:
        shown = "\n".join(f"  {p}" for p in paths[:limit])
        more = f"\n  … and {len(paths) - limit:,} more" if len(paths) > limit else ""
        return shown + more

    def move_selection_to_trash(self) -> list[str]:
        """After a confirmation, send the selection to the system trash; returns what was sent."""
        paths = self.selected_paths()
        if not paths:
            return []
        if not self.confirm("Move to trash",
                            f"Move {len(paths):,} image(s) to the system trash?\n\n{self._listing(paths)}\n\n"
                            "They can be restored from the trash."):
            self.status.setText("Nothing was moved.")
            return []
        from engine.duplicates import trash_files

        sent: list[str] = []
        try:
            sent = trash_files(paths, trash=self._trash_one)
        except Exception as exc:  # send2trash raises its own errors besides OSError
            self.status.setText(f"Stopped after {len(sent)} file(s): {exc}")
            log.warning("trash failed: %s", exc)
        self._moved([(p, "") for p in sent])
        return sent

    def _trash_one(self, path: str) -> None:
        if self.trash is not None:
            self.trash(path)
        else:
            from send2trash import send2trash

            send2trash(path)

    def move_selection_to_folder(self, folder: str | None = None) -> list[tuple[str, str]]:
        """Ask for a folder (unless given), confirm, move the selection there; returns (source,
        destination) pairs."""
        paths = self.selected_paths()
        if not paths:
            return []
        folder = folder or self.ask_folder()
        if not folder:
            return []
        if not self.confirm("Move to folder",
                            f"Move {len(paths):,} image(s) to {folder}?\n\n{self._listing(paths)}\n\n"
                            "Their paths under the collection are kept; no file is overwritten."):
            self.status.setText("Nothing was moved.")
            return []
        from engine.duplicates import move_files

        moved: list[tuple[str, str]] = []
        try:
            moved = move_files(paths, folder, root=self._root())
        except OSError as exc:
            self.status.setText(f"Moving stopped: {exc}")
        self._moved(moved)
        return moved

    def _root(self) -> Path | None:
        if self.folder is not None:
            return self.folder
        if self.dup is not None:
            return Path(self.dup.folder)
        return None

    def _moved(self, moved: list[tuple[str, str]]) -> None:
        if not moved:
            return
        self.gone.update(src for src, _ in moved)
        self.selected -= self.gone
        self.filesMoved.emit(moved)
        self.regroup()
        self.status.setText(f"Moved {len(moved):,} image(s). " + self.status.text()
                            + " Reindex the collection to drop them from searches.")

    def export_csv(self, path: str | None = None) -> str | None:
        """Write the groups at the current threshold as CSV (engine.duplicates.CSV_FIELDS)."""
        path = path or self.ask_save()
        if not path:
            return None
        from engine.duplicates import write_csv

        try:
            write_csv(self.groups, path)
        except (ValueError, OSError) as exc:  # engine.atomic.TargetError names the fix
            self.status.setText(f"Not written: {exc}")
            return None
        self.status.setText(f"Wrote {len(self.groups):,} groups to {path}")
        return path

    # --- default dialogs --------------------------------------------------------------------------
    def _confirm_dialog(self, title: str, text: str) -> bool:
        box = QMessageBox(QMessageBox.Icon.Warning, title, text,
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel, self)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        return box.exec() == QMessageBox.StandardButton.Yes

    def _ask_folder_dialog(self) -> str:
        return QFileDialog.getExistingDirectory(self, "Move the selected images to…", str(Path.home()))

    def _ask_save_dialog(self) -> str:
        path, _ = QFileDialog.getSaveFileName(self, "Export the groups as CSV",
                                              str(Path.home() / "duplicates.csv"),
                                              "CSV (*.csv)")
        return path

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt override)
        self._regroup.cancel()
        self.verifier.cancel()
        running = [t for t in (self._task, self._regroup.handle, self.verifier.handle)
                   if t is not None and t.is_running()]
        for task in running:
            task.cancel()
        super().closeEvent(event)
        if self.delete_on_close:  # once its threads are done: a task must not outlive its parent
            if running:
                left = set(running)

                def done(task: workers.TaskHandle) -> None:
                    left.discard(task)
                    if not left:
                        self.deleteLater()

                for task in running:
                    task.finished.connect(lambda t=task: done(t))
            else:
                self.deleteLater()

    def wait_idle(self, msecs: int = 30_000) -> bool:
        """Wait for the search (tests and shutdown)."""
        ok = True
        for task in (self._task, self._regroup.handle):
            if task is not None:
                ok = task.wait(msecs) and ok
        while self.verifier.busy and ok:  # a waiting request starts when the running one ends
            handle = self.verifier.handle
            ok = handle is None or workers.wait_for_task(handle, msecs)
            if handle is None:
                break
        return ok


def open_duplicates(window: Any) -> DuplicatesView | None:
    """Open the Duplicates view on ``window``'s collection and current descriptor (the main window's menu)."""
    index, key = getattr(window, "index", None), getattr(window, "key", None)
    if index is None or key is None:
        QMessageBox.information(window, "Find duplicates", "Open an image folder first.")
        return None
    view = DuplicatesView(lambda: index.collection(key), descriptor=key.descriptor, folder=index.folder,
                          parent=window)
    view.delete_on_close = True
    view.show()
    QTimer.singleShot(0, view.start)
    return view
