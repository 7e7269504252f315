"""The run page's last part: the kept model and the best untrained descriptor evaluated alike.

:class:`AlikeChoice` is what the run settings page offers (remembered in QSettings); :class:`AlikePanel`
runs engine.training.alike.evaluate_alike in a worker when a run ends with a kept model, with progress and
Cancel, and shows its table and one plain sentence. Nothing here touches the run: whatever happens in the
evaluation, the trained model is kept.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.training.trainer import SELECT_LABELS
from retrieval_gui.workers import wait_for_task

ALIKE_KEY = "train_wizard/alike"


@dataclass
class AlikeChoice:
    """What the run page evaluates when a run ends (remembered in QSettings): the kept model and the best
    untrained descriptor alike, at the run's image size alone or at the multi-scale sizes made from it,
    with or without a learned whitening."""

    enabled: bool = True
    multi: bool = True
    whiten: bool = True

    def sizes(self, image_size: int) -> tuple[int, ...]:
        from engine.vocabulary import multi_scales

        return multi_scales(image_size) if self.multi else (int(image_size),)

    @classmethod
    def remembered(cls) -> AlikeChoice:
        raw = QSettings().value(ALIKE_KEY, "")
        try:
            d = json.loads(str(raw)) if raw else {}
            return cls(**{k: bool(d[k]) for k in ("enabled", "multi", "whiten") if k in d})
        except (ValueError, TypeError, AttributeError):
            return cls()

    def remember(self) -> None:
        QSettings().setValue(ALIKE_KEY, json.dumps(asdict(self)))


def sizes_text(sizes: tuple[int, ...]) -> str:
    """(224,) -> '224 alone'; (224, 288, 352) -> '224+288+352'."""
    return f"{sizes[0]} alone" if len(sizes) == 1 else "+".join(str(s) for s in sizes)


class AlikePanel(QGroupBox):
    """Evaluates a finished run's kept model and the untrained descriptors alike, in a worker.

    Signal ``finished()``: the evaluation ended (result, error or cancel). ``report``: the last
    engine.training.alike.AlikeReport; ``error``: the last failure in words ('' if none)."""

    finished = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Evaluated alike: the kept model and the best untrained descriptor", parent)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the evaluation; the trained model is kept whatever happens here.")
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["evaluation (sizes, whitening)", "best untrained: R@1 / mAP",
                                              "kept model: R@1 / mAP", "difference"])
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setMaximumHeight(130)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay = QVBoxLayout(self)
        row = QHBoxLayout()
        row.addWidget(self.progress, 1)
        row.addWidget(self.cancel_button)
        lay.addWidget(self.status)
        lay.addLayout(row)
        lay.addWidget(self.table)
        lay.addWidget(self.label)
        self.cancel_button.clicked.connect(lambda: self.cancel())
        self.handle = None  # the running (or last) evaluation, a workers.TaskHandle
        self.reset()

    def reset(self) -> None:
        """Hidden and empty (a new run)."""
        self.handle = None
        self.report = None
        self.error = ""
        self.hide()
        self.table.setRowCount(0)
        self.label.clear()

    @property
    def running(self) -> bool:
        return self.handle is not None and self.handle.is_running()

    def start(self, result, choice: AlikeChoice | None = None) -> bool:
        """After a run that ended with a kept model (not stopped by the user), evaluate it and the untrained
        descriptors alike (engine.training.alike.evaluate_alike) in a worker, as the run settings page
        asked (``choice``: its remembered choice by default). True when started."""
        choice = choice or AlikeChoice.remembered()
        best = Path(getattr(result, "best_checkpoint_path", "") or "")
        if not choice.enabled or getattr(result, "cancelled", False) or not best.is_file() or self.running:
            return False
        from engine.training.alike import evaluate_alike, sizes_label
        from retrieval_gui.workers import start_task

        cfg = result.config
        sizes = choice.sizes(cfg.image_size)
        try:
            from engine.vocabulary import resolve_device

            device = str(resolve_device(cfg.device))
        except RuntimeError:  # the run's GPU is gone: the CPU evaluates
            device = "cpu"
        self.report, self.error = None, ""
        self.table.setRowCount(0)
        self.table.hide()
        self.label.clear()
        self.status.setStyleSheet("")
        how = sizes_label(sizes) + (" with a learned whitening" if choice.whiten else ", no whitening")
        self.status.setText(f"Evaluating the kept model and the untrained descriptors alike ({how}): the run's "
                            "images are described again…")
        self.progress.setRange(0, 0)
        self.progress.show()
        self.cancel_button.show()
        self.cancel_button.setEnabled(True)
        self.show()
        handle = start_task(evaluate_alike, str(best.parent), parent=self, name="evaluate alike", sizes=sizes,
                            whiten=choice.whiten, whiten_first_size=False, device=device)
        self.handle = handle
        handle.progress.connect(lambda d, t, m, h=handle: h is self.handle and self.on_progress(d, t, m))
        handle.result.connect(lambda r, h=handle: h is self.handle and self.on_result(r))
        handle.error.connect(lambda m, d, h=handle: h is self.handle and self.on_error(m, d))
        handle.finished.connect(lambda h=handle: h is self.handle and self.on_finished())
        return True

    def cancel(self, wait_ms: int = 0) -> None:
        """Stop the evaluation (nothing of the run is touched); ``wait_ms`` > 0 blocks."""
        if not self.running:
            return
        self.handle.cancel()
        self.cancel_button.setEnabled(False)
        self.status.setText("Cancelling the evaluation…")
        if wait_ms > 0:
            wait_for_task(self.handle, wait_ms)

    # -- task signals ----------------------------------------------------------------------------
    def on_progress(self, done: int, total: int, message: str) -> None:
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(done)
        if message and not self.handle.worker.cancelled:
            self.status.setText(message[:1].upper() + message[1:] + "…")

    def on_result(self, report) -> None:
        from engine.training.alike import LABELS

        self.report = report
        name = LABELS.get(report.best_untrained, report.best_untrained)
        self.table.setHorizontalHeaderLabels(["evaluation (sizes, whitening)", f"best untrained ({name}): R@1 / mAP",
                                              "kept model: R@1 / mAP", "difference"])
        rows = report.table()
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            u, t, d = row["untrained"], row["trained"], row["diff"]
            ev = row["evaluation"]
            cells = (f"{sizes_text(ev.sizes)}, {'learned whitening' if ev.whitened else 'no whitening'}",
                     f"{u['recall@1']:.4f} / {u['map']:.4f}", f"{t['recall@1']:.4f} / {t['map']:.4f}",
                     f"{d['recall@1']:+.4f} / {d['map']:+.4f}")
            for c, text in enumerate(cells):
                self.table.setItem(r, c, QTableWidgetItem(text))
        self.table.show()
        self.status.setText(report.sentence())
        whitened = any(ev.whitened for ev in report.evaluations)
        self.label.setText(
            f"On the run's {report.n_val} validation images" + (
                f"; the whitening learned on its {report.n_train} training images ({report.whitening})" if whitened
                else f" (whitening {report.whitening})") +
            f". The best untrained descriptor and evaluation are chosen by validation "
            f"{SELECT_LABELS.get(report.metric, report.metric)}, as the kept model was; {report.seconds:.0f} s.")

    def on_error(self, message: str, _details: str) -> None:
        """A message, never a traceback: the trained model is kept whatever happens here."""
        if message.startswith("Cancelled"):
            self.status.setText("Evaluation alike cancelled; the trained model is kept.")
            return
        for prefix in ("ValueError: ", "FileNotFoundError: ", "WeightsUnavailableError: "):
            message = message.removeprefix(prefix)
        self.error = message
        self.status.setStyleSheet("color: #b00020")
        self.status.setText(f"The evaluation alike failed: {message}")

    def on_finished(self) -> None:
        self.progress.hide()
        self.cancel_button.hide()
        self.finished.emit()
