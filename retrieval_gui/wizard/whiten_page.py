"""The wizard's whitening path (issue 12): the first choice (train a model or learn a whitening), then a
folder of class sub-folders -> descriptor, sizes, method, shrinkage and dimension -> a run in a worker
(engine.whitening.learn_from_folder), the file saved atomically and handed to the explorer window.

The pages are routed by ``TrainWizard.nextId`` (retrieval_gui/wizard/wizard.py) and never import it: each
page receives what it needs when built. The logic (the count, the checks, learning and saving, the report)
is engine.whiten_folder's; the hand-over to the window goes through retrieval_gui.wizard.explorer.
"""

from __future__ import annotations

import html
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
    QWizard,
    QWizardPage,
)

from engine.vocabulary import (
    fmt_duration,
    multi_scales,  # noqa: F401 - re-exported for scripts and tests
)
from engine.whiten_folder import (  # noqa: F401 - count_folder, whitening_dir re-exported
    FolderCount,
    ModelBase,
    WhitenOutcome,
    command_line,
    count_folder,
    default_file_name,
    learn_and_save,
    report_rows,
    settings_problems,
    whitening_dir,
)
from retrieval_gui.wizard.explorer import DESCRIPTORS, explorer_of
from retrieval_gui.workers import LatestTask, wait_for_task

log = logging.getLogger(__name__)

SETTINGS_KEY = "whiten_wizard/last_settings"
METHODS = {"lw": "Lw: learned whitening (within-class covariance, then PCA; needs classes)",
           "pca": "PCA-whitening (ignores the classes)"}


# -- the settings ------------------------------------------------------------------------------------
@dataclass
class WhitenSettings:
    """What the whitening pages show. ``sizes``: "single" or "multi" (the window's names);
    ``auto``: shrinkage and dimension chosen on validation classes; ``dim`` 0 = all dimensions;
    ``output_dir``: the folder of the file (the name follows the settings unless typed)."""

    folder: str = ""
    descriptor: str = "gem"
    sizes: str = "multi"
    method: str = "lw"
    auto: bool = True
    shrinkage: float = 0.3
    dim: int = 512
    output_dir: str = ""

    @classmethod
    def from_settings(cls, settings: QSettings | None = None) -> WhitenSettings:
        """The last settings used (defaults where absent or unreadable)."""
        raw = (settings or QSettings()).value(SETTINGS_KEY, "")
        if not raw:
            return cls()
        try:
            d = json.loads(str(raw))
            names = {f.name for f in fields(cls)}
            out = cls(**{k: v for k, v in d.items() if k in names})
        except (TypeError, ValueError) as exc:
            log.warning("ignoring unreadable whitening settings: %s", exc)
            return cls()
        if out.descriptor not in DESCRIPTORS or out.method not in METHODS or out.sizes not in ("single", "multi"):
            return cls()
        return out

    def remember(self) -> None:
        QSettings().setValue(SETTINGS_KEY, json.dumps(asdict(self)))


def model_base(main_window: object | None) -> ModelBase:
    """The model of ``main_window`` (or an Explorer), or the defaults."""
    return explorer_of(main_window).state().model_base()


def hand_to_explorer(main_window: object | None, outcome: WhitenOutcome, sizes_choice: str) -> str:
    """Make the explorer window search with the learned whitening (explorer.WindowLink.use_whitening)."""
    return explorer_of(main_window).use_whitening(outcome, sizes_choice)


# -- pages ---------------------------------------------------------------------------------------------
class ChoicePage(QWizardPage):
    """The wizard's first choice: train a model, or learn a whitening."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle("Train a model or learn a whitening")
        self.setSubTitle("Both start from a folder with one sub-folder of images per class.")
        self.train_button = QRadioButton("Train a model (minutes to hours)")
        self.whiten_button = QRadioButton("Learn a whitening (fast: seconds to minutes on a CPU)")
        notes = {
            self.train_button: "A new embedding trained on your labelled folder (a loss with a cross-batch memory), "
                               "with a live plot; a GPU helps. It appears in the explorer's model list.",
            self.whiten_button: "No training: the explorer's network describes the folder's images once and a "
                                "linear whitening (Lw) learned from them sharpens its descriptor. Shrinkage and "
                                "dimension are chosen on classes held out of the folder. The explorer can use it "
                                "at once.",
        }
        self.group = QButtonGroup(self)
        lay = QVBoxLayout(self)
        for button, text in notes.items():
            self.group.addButton(button)
            note = QLabel(text)
            note.setWordWrap(True)
            note.setContentsMargins(22, 0, 0, 8)
            note.setStyleSheet("color: #555")
            lay.addWidget(button)
            lay.addWidget(note)
        lay.addStretch(1)
        self.train_button.setChecked(True)

    def choice(self) -> str:
        """"train" or "whiten"."""
        return "whiten" if self.whiten_button.isChecked() else "train"

    def set_choice(self, choice: str) -> None:
        (self.whiten_button if choice == "whiten" else self.train_button).setChecked(True)


class WhitenDataPage(QWizardPage):
    """The folder to learn from, counted in a worker (300 ms after the last edit; the latest folder wins)."""

    counted = Signal(object)  # the FolderCount just shown

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle("Images to learn the whitening from")
        self.setSubTitle("A folder with one sub-folder of images per class (label = sub-folder name). Use "
                         "training classes only, never the classes you evaluate on: the settings are chosen "
                         "on classes held out of this folder.")
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("folder with class sub-folders")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.folder_edit)
        row.addWidget(browse)
        self.offered = ""  # the explorer window's open folder, offered by a button
        self.offer_button = QPushButton()
        self.offer_button.hide()
        self.offer_button.clicked.connect(lambda: self.folder_edit.setText(self.offered))
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.setTextFormat(Qt.TextFormat.RichText)
        form = QFormLayout()
        form.addRow("Folder:", row)
        form.addRow("", self.offer_button)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.message)
        lay.addStretch(1)
        self.count = FolderCount(root="", error="Choose a folder with one sub-folder of images per class.")
        # the latest folder's count wins; no parent, and cancelled when the page goes: a count still running
        # then must neither call into the deleted page nor signal from a deleted LatestTask
        self._counts = counts = LatestTask(None, "data scan")
        self.destroyed.connect(lambda *_: counts.cancel())
        self._counts.busy_changed.connect(self._on_counts_busy)
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(300)
        self._debounce.timeout.connect(self.request_count)
        self.folder_edit.textChanged.connect(self._debounce.start)
        self.folder_edit.textChanged.connect(self.completeChanged)

    def folder(self) -> str:
        return self.folder_edit.text().strip()

    def offer_folder(self, folder: str) -> None:
        """Offer ``folder`` (the explorer's open folder) with a button; "" offers none."""
        self.offered = folder
        self.offer_button.setText(f"Use the explorer's open folder: {Path(folder).name or folder}")
        self.offer_button.setToolTip(folder)
        self.offer_button.setVisible(bool(folder))

    def _browse(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Folder with class sub-folders", self.folder())
        if d:
            self.folder_edit.setText(d)

    def is_current(self) -> bool:
        return self.count.root == self.folder() and not self._debounce.isActive()

    def counting(self) -> bool:
        return self._counts.busy

    def request_count(self) -> None:
        """Count the folder shown in a worker (workers.LatestTask: one count at a time, the latest folder's
        result shown)."""
        self._debounce.stop()
        self.message.setText("Counting the images…")
        self._counts.request(count_folder, self.folder(), on_result=self._on_counted, on_error=self._on_count_error,
                             with_callbacks=False)
        self.completeChanged.emit()

    def _on_counted(self, count: FolderCount) -> None:
        if count.root == self.folder():
            self.show_count(count)

    def _on_counts_busy(self, _busy: bool) -> None:
        self.completeChanged.emit()

    def _on_count_error(self, message: str, _details: str) -> None:
        self.show_count(FolderCount(root=self.folder(), error=message))

    def show_count(self, count: FolderCount) -> None:
        self.count = count
        if count.error:
            text = f"<span style='color:#b00020'><b>{html.escape(count.error)}</b></span>"
        else:
            text = f"{count.n_classes} classes, {count.n_images} images."
            warn = count.warnings()
            text += "".join(f"<br><span style='color:#a15c00'>⚠ {html.escape(w)}</span>" for w in warn)
        self.message.setText(text)
        self.completeChanged.emit()
        self.counted.emit(count)

    def wait_count(self, timeout_ms: int = 10_000) -> bool:
        """Process events until the folder shown is counted (tests, scripts); True when it is."""
        from PySide6.QtCore import QCoreApplication, QEventLoop

        deadline = time.monotonic() + timeout_ms / 1000
        while not self.is_current() or self.counting():
            if not self.counting() and not self.is_current():
                self.request_count()
            if time.monotonic() > deadline:
                return False
            QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
        return True

    def isComplete(self) -> bool:  # noqa: N802
        return self.is_current() and self.count.ok

    def initializePage(self) -> None:  # noqa: N802
        if not self.is_current() and not self.counting():
            self.request_count()

    def cleanupPage(self) -> None:  # noqa: N802 - keep the folder when going back
        pass


class WhitenSettingsPage(QWizardPage):
    """Descriptor, sizes, method, shrinkage and dimension (chosen on validation classes or given), and the
    file to write. Blocks settings the engine would refuse (too few classes to choose on)."""

    def __init__(self, data_page: WhitenDataPage | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.data_page = data_page  # whose folder and count the settings are checked against
        self.setTitle("Whitening settings")
        self.setSubTitle("The whitening belongs to one model, descriptor and set of input sizes: the explorer "
                         "uses it with exactly these.")
        self.setButtonText(QWizard.WizardButton.NextButton, "Learn the whitening")
        self.base = ModelBase()
        self.model_label = QLabel()
        self.model_label.setWordWrap(True)
        self.descriptor = QComboBox()
        for key, title in DESCRIPTORS.items():
            self.descriptor.addItem(title, key)
        self.sizes = QComboBox()
        self.sizes.setToolTip("Input sizes of the network: one, or several whose descriptors are summed "
                              "(better, about five times slower)")
        self.method_group = QButtonGroup(self)
        self.method_buttons = {key: QRadioButton(text) for key, text in METHODS.items()}
        method_box = QVBoxLayout()
        for b in self.method_buttons.values():
            self.method_group.addButton(b)
            method_box.addWidget(b)
        self.auto_button = QRadioButton("Chosen on validation classes held out of the folder (recommended)")
        self.manual_button = QRadioButton("Given:")
        self.choose_group = QButtonGroup(self)
        self.shrinkage = QDoubleSpinBox()
        self.shrinkage.setRange(0.0, 1.0)
        self.shrinkage.setSingleStep(0.05)
        self.shrinkage.setDecimals(2)
        self.shrinkage.setToolTip("Covariance shrinkage towards a multiple of the identity: 0 = none (noisy "
                                  "with few images), 1 = no whitening of the within-class variation")
        self.dim = QSpinBox()
        self.dim.setRange(0, 8192)
        self.dim.setSingleStep(64)
        self.dim.setSpecialValueText("all")
        manual_row = QHBoxLayout()
        manual_row.addWidget(self.manual_button)
        manual_row.addWidget(QLabel("shrinkage"))
        manual_row.addWidget(self.shrinkage)
        manual_row.addWidget(QLabel("dimensions"))
        manual_row.addWidget(self.dim)
        manual_row.addStretch(1)
        choose_box = QVBoxLayout()
        for b in (self.auto_button, self.manual_button):
            self.choose_group.addButton(b)
        choose_box.addWidget(self.auto_button)
        choose_box.addLayout(manual_row)
        self.output_edit = QLineEdit()
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        out_row = QHBoxLayout()
        out_row.addWidget(self.output_edit)
        out_row.addWidget(browse)
        self.note = QLabel()
        self.note.setWordWrap(True)
        self.note.setTextFormat(Qt.TextFormat.RichText)
        form = QFormLayout()
        form.addRow("Model:", self.model_label)
        form.addRow("Descriptor:", self.descriptor)
        form.addRow("Input sizes:", self.sizes)
        form.addRow("Method:", method_box)
        form.addRow("Shrinkage and dimensions:", choose_box)
        form.addRow("Save as:", out_row)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        group = QGroupBox("Before it starts")
        gl = QVBoxLayout(group)
        gl.addWidget(self.note)
        lay.addWidget(group)
        lay.addStretch(1)
        self.problems: list[str] = []
        self._output_typed = False
        self._output_dir = ""
        self.count: FolderCount | None = None
        self.folder = ""
        self.output_edit.textEdited.connect(self._typed)
        for combo in (self.descriptor, self.sizes):
            combo.currentIndexChanged.connect(self._changed)
        for grp in (self.method_group, self.choose_group):
            grp.buttonToggled.connect(self._changed)
        self.output_edit.textChanged.connect(self._check)
        self.auto_button.setChecked(True)
        self.method_buttons["lw"].setChecked(True)

    # -- values ------------------------------------------------------------------------------------
    def set_base(self, base: ModelBase) -> None:
        """The model to learn for, and its two sizes choices."""
        self.base = base
        current = self.sizes.currentData()
        self.sizes.blockSignals(True)
        self.sizes.clear()
        self.sizes.addItem(f"{base.single} (fast)", "single")
        self.sizes.addItem("+".join(map(str, base.multi)) + " (best, about 5x slower)", "multi")
        self.sizes.setCurrentIndex(max(0, self.sizes.findData(current)))
        self.sizes.blockSignals(False)
        weights = base.weights if base.weights in ("pretrained", "random") else Path(base.weights).name
        model = (f"trained model {Path(base.backbone).parent.name}" if Path(base.backbone).suffix == ".pt"
                 else f"{base.backbone} ({weights} weights)")
        whose = "the explorer's current model" if base.sizes is not None else "the default model"
        self.model_label.setText(f"{model}, {whose}")

    def load(self, s: WhitenSettings) -> None:
        self.descriptor.setCurrentIndex(max(0, self.descriptor.findData(s.descriptor)))
        self.sizes.setCurrentIndex(max(0, self.sizes.findData(s.sizes)))
        self.method_buttons.get(s.method, self.method_buttons["lw"]).setChecked(True)
        (self.auto_button if s.auto else self.manual_button).setChecked(True)
        self.shrinkage.setValue(float(s.shrinkage))
        self.dim.setValue(int(s.dim))
        self._output_dir = s.output_dir
        self._output_typed = False
        self._changed()

    def store(self, s: WhitenSettings) -> None:
        s.descriptor = str(self.descriptor.currentData())
        s.sizes = str(self.sizes.currentData())
        s.method = self.method()
        s.auto = self.auto_button.isChecked()
        s.shrinkage = float(self.shrinkage.value())
        s.dim = int(self.dim.value())
        out = self.output()
        s.output_dir = str(Path(out).parent) if out else self._output_dir

    def method(self) -> str:
        return next((k for k, b in self.method_buttons.items() if b.isChecked()), "lw")

    def output(self) -> str:
        return self.output_edit.text().strip()

    def default_output(self) -> str:
        folder = Path(self._output_dir) if self._output_dir else whitening_dir()
        sizes = self.base.sizes_of(str(self.sizes.currentData()))
        return str(folder / default_file_name(self.folder, self.base.backbone, str(self.descriptor.currentData()),
                                              sizes, self.method()))

    def set_output(self, path: str) -> None:
        """Save to ``path`` (as if typed: it no longer follows the settings)."""
        self._output_typed = True
        self.output_edit.setText(str(path))

    def _typed(self, _text: str) -> None:
        self._output_typed = True

    def _browse(self) -> None:
        f, _ = QFileDialog.getSaveFileName(self, "Save the whitening as", self.output() or self.default_output(),
                                           "Whitening (*.npz)")
        if f:
            self.set_output(f if f.endswith(".npz") else f + ".npz")

    def _changed(self, *_args) -> None:
        manual = self.manual_button.isChecked()
        self.shrinkage.setEnabled(manual)
        self.dim.setEnabled(manual)
        if not self._output_typed:
            self.output_edit.setText(self.default_output())
        self._check()

    def _check(self, *_args) -> None:
        """What stops the run (self.problems, red) and what to know (orange), shown in the note."""
        problems, notes = settings_problems(self.count, auto=self.auto_button.isChecked(), method=self.method(),
                                            output=self.output())
        self.problems = problems
        text = "".join(f"<p style='color:#b00020'><b>{html.escape(p)}</b></p>" for p in problems)
        text += "".join(f"<p>{html.escape(t)}</p>" if i == 0 and not problems else
                        f"<p style='color:#a15c00'>⚠ {html.escape(t)}</p>" for i, t in enumerate(notes))
        self.note.setText(text)
        self.completeChanged.emit()

    def initializePage(self) -> None:  # noqa: N802
        if self.data_page is not None:
            self.count, self.folder = self.data_page.count, self.data_page.folder()
        self._changed()

    def isComplete(self) -> bool:  # noqa: N802
        return not self.problems

    def cleanupPage(self) -> None:  # noqa: N802 - keep the values when going back
        pass


class WhitenRunPage(QWizardPage):
    """The run: progress with images/s and ETA, Stop; then the report (validation R@1 with and without the
    whitening, the chosen settings, images, time, the file) and "Use it in the explorer"."""

    useRequested = Signal(object)  # the WhitenOutcome the user asked to use
    learned = Signal(object)  # the WhitenOutcome of a run that saved its file

    def __init__(self, source: Callable[[], tuple[WhitenSettings, ModelBase, str]] | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.source = source  # the (settings, model, output file) a run started on this page learns
        self.setTitle("Learning the whitening")
        self.setSubTitle("The images are described once; Stop ends the run without writing anything.")
        self.phase = QLabel()
        self.phase.setWordWrap(True)
        self.progress = QProgressBar()
        self.speed_label = QLabel("—")
        self.eta_label = QLabel("—")
        stats = QHBoxLayout()
        for name, w in (("Images/s", self.speed_label), ("ETA", self.eta_label)):
            stats.addWidget(QLabel(f"<b>{name}</b>"))
            stats.addWidget(w)
            stats.addSpacing(16)
        stats.addStretch(1)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop the run; nothing is saved")
        self.stop_button.clicked.connect(lambda: self.stop())
        stats.addWidget(self.stop_button)
        self.report = QTextBrowser()
        self.report.setOpenLinks(False)
        self.use_button = QPushButton("Use it in the explorer")
        self.use_button.setToolTip("Set the explorer's descriptor and sizes to the whitening's and search with it")
        self.use_button.clicked.connect(self._use)
        self.use_label = QLabel()
        self.use_label.setWordWrap(True)
        use_row = QHBoxLayout()
        use_row.addWidget(self.use_label, 1)
        use_row.addWidget(self.use_button)
        lay = QVBoxLayout(self)
        lay.addWidget(self.phase)
        lay.addWidget(self.progress)
        lay.addLayout(stats)
        lay.addWidget(self.report, 1)
        lay.addLayout(use_row)
        self.handle = None
        self.outcome: WhitenOutcome | None = None
        self.error = ""
        self.settings: WhitenSettings | None = None
        self._clock: tuple[float, int] | None = None
        self.reset()

    def reset(self) -> None:
        self.handle = None
        self.outcome = None
        self.error = ""
        self._clock = None
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.speed_label.setText("—")
        self.eta_label.setText("—")
        self.phase.setText("")
        self.report.clear()
        self.use_label.clear()
        self.use_button.setEnabled(False)
        self.stop_button.setEnabled(False)

    @property
    def running(self) -> bool:
        return self.handle is not None and self.handle.is_running()

    def isComplete(self) -> bool:  # noqa: N802
        return not self.running

    def initializePage(self) -> None:  # noqa: N802
        if self.source is not None:
            self.start(*self.source())

    def cleanupPage(self) -> None:  # noqa: N802 - Back stops a run (nothing is saved)
        self.stop(wait_ms=30_000)
        self.reset()

    def start(self, s: WhitenSettings, base: ModelBase, output: str) -> None:
        """Remember ``s`` and learn the whitening in a worker."""
        from retrieval_gui.workers import start_task

        self.reset()
        self.settings, self.base, self.output = s, base, output
        s.remember()
        spec = base.spec(s.descriptor, s.sizes)
        shrinkage: float | str = "auto" if s.auto else float(s.shrinkage)
        dim: int | str | None = "auto" if s.auto else (int(s.dim) or None)
        handle = start_task(learn_and_save, s.folder, spec, output, method=s.method, shrinkage=shrinkage,
                            dim=dim, device=base.device, runtime=base.runtime, cache_dir=base.cache_dir or None,
                            name="whitening")  # no parent: wizard.done() stops and waits for it
        self.handle = handle
        handle.progress.connect(lambda d, t, m, h=handle: h is self.handle and self.on_progress(d, t, m))
        handle.result.connect(lambda r, h=handle: h is self.handle and self.on_result(r))
        handle.error.connect(lambda m, det, h=handle: h is self.handle and self.on_error(m, det))
        handle.finished.connect(lambda h=handle: h is self.handle and self.on_finished())
        sizes = "+".join(map(str, base.sizes_of(s.sizes)))
        self.phase.setText(f"Loading {Path(base.backbone).name} for {DESCRIPTORS[s.descriptor]} at {sizes}…")
        self.progress.setRange(0, 0)
        self.stop_button.setEnabled(True)
        self.completeChanged.emit()

    def stop(self, wait_ms: int = 0) -> None:
        """Ask the run to stop (nothing is saved); ``wait_ms`` > 0 blocks until it has."""
        if not self.running:
            return
        self.handle.cancel()
        self.stop_button.setEnabled(False)
        self.phase.setText("Stopping…")
        if wait_ms > 0:
            wait_for_task(self.handle, wait_ms)

    # -- task signals --------------------------------------------------------------------------------
    def on_progress(self, done: int, total: int, message: str) -> None:
        if self.handle is not None and self.handle.worker.cancelled:
            return
        if "extracting" in message:
            now = time.monotonic()
            if self._clock is None:
                self._clock = (now, done)
            t0, d0 = self._clock
            self.phase.setText(f"Describing the images: {done} / {total}")
            self.progress.setRange(0, max(1, total))
            self.progress.setValue(done)
            if now > t0 and done > d0:
                rate = (done - d0) / (now - t0)
                self.speed_label.setText(f"{rate:.1f}")
                self.eta_label.setText(fmt_duration((total - done) / rate))
        else:
            self.progress.setRange(0, 0)  # no count: busy
            self.eta_label.setText("—")
            self.phase.setText({"saving": "Saving…"}.get(message, "Choosing shrinkage and dimension on the "
                                "validation classes, then learning the whitening on every class…"
                                if "choosing" in message else "Learning the whitening…"))

    def on_result(self, outcome: WhitenOutcome) -> None:
        self.outcome = outcome
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.eta_label.setText("0s")
        if outcome.images_per_s:
            self.speed_label.setText(f"{outcome.images_per_s:.1f}")
        self.phase.setText(f"Done: saved {outcome.path}")
        self.report.setHtml(report_html(outcome))
        self.use_button.setEnabled(True)
        self.learned.emit(outcome)

    def on_error(self, message: str, details: str) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        if message.startswith("Cancelled"):
            self.phase.setText("Stopped: nothing was saved.")
            return
        text = re.sub(r"^[A-Za-z]*(Error|Exception): ", "", message)
        self.error = text
        hint = ""
        if "--shrinkage" in text or "validation classes" in text:
            hint = "Go back and give shrinkage and dimensions by hand, or choose a folder with more classes."
        elif "--method pca" in text:
            hint = "Go back and choose PCA-whitening, or a folder with class sub-folders."
        self.phase.setText("The whitening could not be learned; nothing was saved.")
        self.report.setHtml(f"<p style='color:#b00020'><b>{html.escape(text)}</b></p>"
                            + (f"<p>{html.escape(hint)}</p>" if hint else ""))
        log.info("whitening failed: %s\n%s", message, details)  # the traceback goes to the log, not the user

    def on_finished(self) -> None:
        self.stop_button.setEnabled(False)
        self.completeChanged.emit()

    def _use(self) -> None:
        if self.outcome is not None:
            self.useRequested.emit(self.outcome)


def report_html(outcome: WhitenOutcome) -> str:
    """The report of a finished run (engine.whiten_folder.report_rows) as HTML, with the images left out."""
    rows, warnings = report_rows(outcome, DESCRIPTORS)
    out = "<table cellspacing=4>" + "".join(
        f"<tr><td><b>{html.escape(k)}</b></td><td>{html.escape(v)}</td></tr>" for k, v in rows) + "</table>"
    n_bad = max(outcome.report.skipped, len(outcome.unreadable))
    if n_bad:
        named = "".join(f"<li>{html.escape(Path(p).name)}: {html.escape(r)}</li>" for p, r in outcome.unreadable[:10])
        more = f"<li>… and {n_bad - 10} more</li>" if n_bad > 10 else ""
        out += (f"<p style='color:#a15c00'>⚠ {n_bad} image(s) could not be read and were left out:</p>"
                f"<ul>{named}{more}</ul>")
    out += "".join(f"<p style='color:#a15c00'>⚠ {html.escape(w)}</p>" for w in warnings)
    out += f"<p>From the command line: <code>{html.escape(command_line(outcome))}</code></p>"
    return out
