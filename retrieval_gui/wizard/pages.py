"""The pages of the Train XBM wizard. Each settings page reads its part of a TrainConfig
(:meth:`load`) and writes it back (:meth:`store`); the wizard owns the config."""

from __future__ import annotations

import html
import re
import time
from typing import TYPE_CHECKING

from PySide6.QtCore import QCoreApplication, QEventLoop, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
    QWizard,
    QWizardPage,
)

from engine.training.config import LOSSES, MININGS, POOLINGS, TrainConfig
from retrieval_gui.wizard.dataset import DataSummary, read_class_list, summarize
from retrieval_gui.wizard.plot import LiveTrainingPlot

if TYPE_CHECKING:
    from retrieval_gui.wizard.wizard import TrainWizard


def _spin(lo: int, hi: int, step: int = 1, special: str = "") -> QSpinBox:
    s = QSpinBox()
    s.setRange(lo, hi)
    s.setSingleStep(step)
    if special:
        s.setSpecialValueText(special)
    return s


def _dspin(lo: float, hi: float, step: float, decimals: int) -> QDoubleSpinBox:
    s = QDoubleSpinBox()
    s.setDecimals(decimals)
    s.setRange(lo, hi)
    s.setSingleStep(step)
    return s


def _lr_spin() -> QDoubleSpinBox:
    s = _dspin(0.0, 1.0, 1e-5, 7)
    return s


def fmt_duration(seconds: float) -> str:
    """'1h 02m', '3m 05s', '12s'."""
    s = max(0, int(round(seconds)))
    if s >= 3600:
        return f"{s // 3600}h {(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


class _SettingsPage(QWizardPage):
    def wiz(self) -> TrainWizard:
        return self.wizard()  # type: ignore[return-value]

    def load(self, cfg: TrainConfig) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def store(self, cfg: TrainConfig) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def cleanupPage(self) -> None:  # noqa: N802 - keep the user's values when going back
        pass


# --------------------------------------------------------------------------------------------------
class DataPage(_SettingsPage):
    """A folder of class sub-folders, optionally restricted by a split file; the class-disjoint split."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle("Training data")
        self.setSubTitle("A folder with one sub-folder of images per class (label = sub-folder name). "
                         "Validation classes are carved from the training classes, never shared with them.")
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("folder with class sub-folders")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse_folder)
        self.split_edit = QLineEdit()
        self.split_edit.setPlaceholderText("optional: JSON or text file listing the training classes")
        browse_split = QPushButton("Browse…")
        browse_split.clicked.connect(self._browse_split)
        self.val_share = _dspin(0.0, 0.9, 0.05, 2)
        self.seed = _spin(0, 2**31 - 1)
        form = QFormLayout()
        row = QHBoxLayout()
        row.addWidget(self.folder_edit)
        row.addWidget(browse)
        form.addRow("Data folder:", row)
        row2 = QHBoxLayout()
        row2.addWidget(self.split_edit)
        row2.addWidget(browse_split)
        form.addRow("Split file:", row2)
        form.addRow("Validation share of classes:", self.val_share)
        form.addRow("Seed (split and training):", self.seed)
        self.counts = QTableWidget(2, 2)
        self.counts.setHorizontalHeaderLabels(["classes", "images"])
        self.counts.setVerticalHeaderLabels(["training", "validation"])
        self.counts.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.counts.setMaximumHeight(90)
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.setTextFormat(Qt.TextFormat.RichText)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.counts)
        lay.addWidget(self.message)
        lay.addStretch(1)
        self.summary = DataSummary(root="", error="Choose a folder with one sub-folder of images per class.")
        self.split_error = ""
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(300)
        self._debounce.timeout.connect(self.rescan)
        self._given_classes: list[str] | None = None
        for w in (self.folder_edit, self.split_edit):
            w.textEdited.connect(self._forget_given_classes)
            w.textChanged.connect(self._debounce.start)
        for s in (self.val_share, self.seed):
            s.valueChanged.connect(self._debounce.start)

    def _browse_folder(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Training data folder", self.folder_edit.text())
        if d:
            self._forget_given_classes()
            self.folder_edit.setText(d)

    def _forget_given_classes(self, *_args) -> None:
        self._given_classes = None

    def _browse_split(self) -> None:
        f, _ = QFileDialog.getOpenFileName(self, "Split file", self.folder_edit.text(),
                                           "Split files (*.json *.txt);;All files (*)")
        if f:
            self._forget_given_classes()
            self.split_edit.setText(f)

    def train_classes(self) -> list[str] | None:
        """The classes of the split file (None = every sub-folder); sets split_error on a bad file."""
        self.split_error = ""
        path = self.split_edit.text().strip()
        if not path and self._given_classes is not None:
            return list(self._given_classes)
        if not path:
            return None
        try:
            return read_class_list(path)
        except ValueError as exc:
            self.split_error = str(exc)
            return None

    def rescan(self) -> DataSummary:
        """Recount the folder under the current split (the Data page's table and warnings)."""
        self._debounce.stop()
        classes = self.train_classes()
        p = self.wiz().run_settings_page.p.value() if self.wizard() is not None else 0
        if self.split_error:
            s = DataSummary(root=self.folder_edit.text().strip(), error=self.split_error)
        else:
            s = summarize(self.folder_edit.text().strip(), classes, self.val_share.value(), self.seed.value(), p)
        self.summary = s
        rows = ((len(s.train_classes), s.train_images), (len(s.val_classes), s.val_images))
        for r, (nc, ni) in enumerate(rows):
            self.counts.setItem(r, 0, QTableWidgetItem(str(nc)))
            self.counts.setItem(r, 1, QTableWidgetItem(str(ni)))
        parts = []
        if s.error:
            parts.append(f"<span style='color:#b00020'><b>{html.escape(s.error)}</b></span>")
        else:
            restricted = ""
            if classes is not None:
                from_file = bool(self.split_edit.text().strip())
                restricted = " (classes from the split file)" if from_file else " (classes given with the settings)"
            parts.append(f"{len(s.per_class)} classes, {sum(s.per_class.values())} images{restricted}.")
        parts += [f"<span style='color:#a15c00'>⚠ {html.escape(w)}</span>" for w in s.warnings]
        self.message.setText("<br>".join(parts))
        self.completeChanged.emit()
        return s

    def isComplete(self) -> bool:  # noqa: N802
        return self.summary.ok and not self._debounce.isActive()

    def validatePage(self) -> bool:  # noqa: N802
        return self.rescan().ok

    def load(self, cfg: TrainConfig) -> None:
        self.folder_edit.setText(cfg.data_root)
        self.val_share.setValue(cfg.val_class_share)
        self.seed.setValue(cfg.seed)
        split = cfg.extra.get("split_file", "") if isinstance(cfg.extra, dict) else ""
        self.split_edit.setText(str(split))
        # classes given with the settings but no split file (a script, the CLI's --classes): kept until
        # the user edits the folder or the split field, never silently widened to every sub-folder
        self._given_classes = list(cfg.train_classes) if cfg.train_classes and not split else None

    def store(self, cfg: TrainConfig) -> None:
        cfg.data_root = self.folder_edit.text().strip()
        cfg.train_classes = self.train_classes()
        cfg.val_class_share = self.val_share.value()
        cfg.seed = self.seed.value()
        split = self.split_edit.text().strip()
        if split:
            cfg.extra["split_file"] = split
        else:
            cfg.extra.pop("split_file", None)


# --------------------------------------------------------------------------------------------------
def available_backbones() -> list[str]:
    try:
        from models.backbones import list_backbones
    except ImportError:  # models.backbones not in this build: the trainer's stand-in EfficientNet-Lite0
        return ["efficientnet_lite0"]
    return list(list_backbones())


class ModelPage(_SettingsPage):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle("Model")
        self.setSubTitle("Backbone -> pooling -> linear embedding head. Embedding size 0 keeps the feature "
                         "size and starts from the identity, i.e. from the untrained descriptor.")
        self.backbone = QComboBox()
        self.backbone.addItems(available_backbones())
        self.weights = QComboBox()
        self.weights.addItems(["pretrained", "random"])
        self.pooling = QComboBox()
        self.pooling.addItems(list(POOLINGS))
        self.embedding_dim = _spin(0, 8192, 64, "same as the features (identity start)")
        self.image_size = _spin(16, 1024, 16)
        self.note = QLabel()
        self.note.setWordWrap(True)
        form = QFormLayout(self)
        form.addRow("Backbone:", self.backbone)
        form.addRow("Weights:", self.weights)
        form.addRow("Pooling:", self.pooling)
        form.addRow("Embedding size:", self.embedding_dim)
        form.addRow("Image size:", self.image_size)
        form.addRow(self.note)
        self.backbone.currentTextChanged.connect(self._update_note)
        self.weights.currentTextChanged.connect(self._update_note)

    def _update_note(self) -> None:
        text = ""
        if self.weights.currentText() == "pretrained":
            try:
                from models.backbones import weights_available
            except ImportError:
                weights_available = None
            if weights_available is not None and not weights_available(self.backbone.currentText()):
                text = ("⚠ The pretrained weights of this backbone are not on this computer, and nothing is "
                        "downloaded while training: choose another backbone or random weights.")
        self.note.setText(text)

    def load(self, cfg: TrainConfig) -> None:
        if self.backbone.findText(cfg.backbone) < 0:
            self.backbone.addItem(cfg.backbone)
        self.backbone.setCurrentText(cfg.backbone)
        self.weights.setCurrentText(cfg.weights)
        self.pooling.setCurrentText(cfg.pooling)
        self.embedding_dim.setValue(cfg.embedding_dim)
        self.image_size.setValue(cfg.image_size)
        self._update_note()

    def store(self, cfg: TrainConfig) -> None:
        cfg.backbone = self.backbone.currentText()
        cfg.weights = self.weights.currentText()
        cfg.pooling = self.pooling.currentText()
        cfg.embedding_dim = self.embedding_dim.value()
        cfg.image_size = self.image_size.value()


# --------------------------------------------------------------------------------------------------
class LossPage(_SettingsPage):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle("Loss and cross-batch memory")
        self.setSubTitle("Triplet (or contrastive) loss on each P x K batch; the cross-batch memory (XBM) "
                         "adds pairs against embeddings of earlier batches once the warm-up is over.")
        self.loss = QComboBox()
        self.loss.addItems(list(LOSSES))
        self.margin = _dspin(0.001, 2.0, 0.05, 3)
        self.mining = QComboBox()
        self.mining.addItems(list(MININGS))
        self.memory = QCheckBox("Use a cross-batch memory")
        self.memory_share = _dspin(0.01, 1.0, 0.05, 2)
        self.memory_weight = _dspin(0.0, 10.0, 0.1, 2)
        self.warmup = _spin(0, 1_000_000, 10)
        form = QFormLayout(self)
        form.addRow("Loss:", self.loss)
        form.addRow("Margin:", self.margin)
        form.addRow("Mining:", self.mining)
        form.addRow(self.memory)
        form.addRow("Memory size (share of the training set):", self.memory_share)
        form.addRow("Memory loss weight:", self.memory_weight)
        form.addRow("Warm-up iterations (before the memory):", self.warmup)
        self.memory.toggled.connect(self._sync)

    def _sync(self) -> None:
        on = self.memory.isChecked()
        for w in (self.memory_share, self.memory_weight, self.warmup):
            w.setEnabled(on)

    def load(self, cfg: TrainConfig) -> None:
        self.loss.setCurrentText(cfg.loss)
        self.margin.setValue(cfg.margin)
        self.mining.setCurrentText(cfg.mining)
        self.memory.setChecked(cfg.memory)
        self.memory_share.setValue(cfg.memory_share)
        self.memory_weight.setValue(cfg.memory_weight)
        self.warmup.setValue(cfg.warmup_iters)
        self._sync()

    def store(self, cfg: TrainConfig) -> None:
        cfg.loss = self.loss.currentText()
        cfg.margin = self.margin.value()
        cfg.mining = self.mining.currentText()
        cfg.memory = self.memory.isChecked()
        cfg.memory_share = self.memory_share.value()
        cfg.memory_weight = self.memory_weight.value()
        cfg.warmup_iters = self.warmup.value()


# --------------------------------------------------------------------------------------------------
def available_devices() -> list[tuple[str, str]]:
    """(config value, label) pairs: every CUDA device when there is one, and the CPU."""
    out: list[tuple[str, str]] = []
    try:
        import torch

        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                out.append((f"cuda:{i}", f"cuda:{i} — {torch.cuda.get_device_name(i)}"))
    except Exception:  # pragma: no cover - a broken CUDA set-up: CPU only
        out = []
    out.append(("cpu", "cpu"))
    return out


class RunSettingsPage(_SettingsPage):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle("Run settings")
        self.setSubTitle("Head only: the backbone stays frozen, its features are computed once and only the "
                         "embedding head learns (fast, also on a CPU). Last layers: the maps entering the last "
                         "units are computed once, those units and the head learn (minutes on a CPU). "
                         "Full: the whole network is fine-tuned (a GPU's work).")
        self.mode_head = QRadioButton("Head only (frozen backbone, cached features)")
        self.mode_tail = QRadioButton("Last layers (cached maps of the rest; BatchNorm statistics frozen)")
        self.mode_full = QRadioButton("Full fine-tuning (backbone too; BatchNorm statistics frozen)")
        self.mode_group = QButtonGroup(self)
        for b in (self.mode_head, self.mode_tail, self.mode_full):
            self.mode_group.addButton(b)
        self.tail_units = _spin(1, 64)
        self.tail_units.setToolTip("How many of the last feature units train: for efficientnet_lite0 1 = the "
                                   "head conv, 2 = + the last block, 3 = + the block before it, ...")
        self.iterations = _spin(1, 10_000_000, 100)
        self.p = _spin(2, 4096)
        self.k = _spin(2, 1024)
        self.batch_label = QLabel()
        self.lr_head = _lr_spin()
        self.lr_backbone = _lr_spin()
        self.weight_decay = _dspin(0.0, 1.0, 1e-4, 6)
        self.freeze_bn = QCheckBox("Freeze BatchNorm statistics")
        self.val_every = _spin(1, 1_000_000, 50)
        self.device = QComboBox()
        for value, label in available_devices():
            self.device.addItem(label, value)
        self.threads = _spin(0, 256, 1, "default")
        self.name = QLineEdit()
        self.name.setPlaceholderText("generated from the date and settings")
        form = QFormLayout(self)
        form.addRow(self.mode_head)
        form.addRow(self.mode_tail)
        form.addRow("    Trained units:", self.tail_units)
        form.addRow(self.mode_full)
        form.addRow("Iterations:", self.iterations)
        pk = QHBoxLayout()
        pk.addWidget(self.p)
        pk.addWidget(QLabel("classes ×"))
        pk.addWidget(self.k)
        pk.addWidget(QLabel("images"))
        pk.addWidget(self.batch_label)
        form.addRow("Batch P × K:", pk)
        form.addRow("Learning rate, head:", self.lr_head)
        form.addRow("Learning rate, backbone:", self.lr_backbone)
        form.addRow("Weight decay:", self.weight_decay)
        form.addRow(self.freeze_bn)
        form.addRow("Validate every (iterations):", self.val_every)
        form.addRow("Device:", self.device)
        form.addRow("CPU threads:", self.threads)
        form.addRow("Model name:", self.name)
        self.mode_group.buttonToggled.connect(lambda *_: self._sync())
        self.p.valueChanged.connect(self._sync)
        self.k.valueChanged.connect(self._sync)

    def _sync(self) -> None:
        trains_backbone = not self.mode_head.isChecked()
        self.lr_backbone.setEnabled(trains_backbone)
        self.freeze_bn.setEnabled(trains_backbone)
        self.tail_units.setEnabled(self.mode_tail.isChecked())
        self.batch_label.setText(f"= {self.p.value() * self.k.value()} per batch")

    def load(self, cfg: TrainConfig) -> None:
        {"full": self.mode_full, "tail": self.mode_tail}.get(cfg.mode, self.mode_head).setChecked(True)
        self.tail_units.setValue(cfg.tail_units)
        self.iterations.setValue(cfg.iterations)
        self.p.setValue(cfg.classes_per_batch)
        self.k.setValue(cfg.samples_per_class)
        self.lr_head.setValue(cfg.lr_head)
        self.lr_backbone.setValue(cfg.lr_backbone)
        self.weight_decay.setValue(cfg.weight_decay)
        self.freeze_bn.setChecked(cfg.freeze_bn)
        self.val_every.setValue(cfg.val_every)
        i = self.device.findData(cfg.device)
        if i < 0 and cfg.device == "auto" or cfg.device.startswith("cuda") and i < 0:
            i = 0  # auto / an absent CUDA device: the first offered (CUDA when present, else CPU)
        self.device.setCurrentIndex(max(0, i))
        self.threads.setValue(cfg.num_threads)
        self.name.setText(cfg.name)
        self._sync()

    def store(self, cfg: TrainConfig) -> None:
        cfg.mode = "full" if self.mode_full.isChecked() else "tail" if self.mode_tail.isChecked() else "head"
        cfg.tail_units = self.tail_units.value()
        cfg.iterations = self.iterations.value()
        cfg.classes_per_batch = self.p.value()
        cfg.samples_per_class = self.k.value()
        cfg.lr_head = self.lr_head.value()
        cfg.lr_backbone = self.lr_backbone.value()
        cfg.weight_decay = self.weight_decay.value()
        cfg.freeze_bn = self.freeze_bn.isChecked()
        cfg.val_every = self.val_every.value()
        cfg.device = str(self.device.currentData())
        cfg.num_threads = self.threads.value()
        cfg.name = self.name.text().strip()

    def initializePage(self) -> None:  # noqa: N802
        self._sync()


# --------------------------------------------------------------------------------------------------
class SummaryPage(QWizardPage):
    """Every setting at a glance, the data counts, and what TrainConfig.validate() objects to."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle("Summary")
        self.setSubTitle("Check the settings; training starts with the button below.")
        self.setCommitPage(True)
        self.setButtonText(QWizard.WizardButton.CommitButton, "Start training")
        self.text = QTextBrowser()
        lay = QVBoxLayout(self)
        lay.addWidget(self.text)
        self.problems: list[str] = []

    def initializePage(self) -> None:  # noqa: N802
        wiz: TrainWizard = self.wizard()  # type: ignore[assignment]
        cfg = wiz.config()
        data = wiz.data_page.rescan()
        self.problems = list(cfg.validate())
        if not data.ok:
            self.problems.insert(0, data.error)
        rows = [("Data", cfg.data_root),
                ("Training classes", f"{len(data.train_classes)} ({data.train_images} images)"),
                ("Validation classes", f"{len(data.val_classes)} ({data.val_images} images)"),
                ("Backbone", f"{cfg.backbone} ({cfg.weights} weights), {cfg.pooling.upper()} pooling, "
                             f"image {cfg.image_size}px"),
                ("Embedding", "same size as the features (identity start)" if cfg.embedding_dim == 0
                 else f"{cfg.embedding_dim}-d"),
                ("Loss", f"{cfg.loss}, margin {cfg.margin:g}, {cfg.mining} mining"),
                ("Memory", f"{cfg.memory_share:.0%} of the training set, weight {cfg.memory_weight:g}, "
                           f"after {cfg.warmup_iters} warm-up iterations" if cfg.memory else "off"),
                ("Mode", {"head": "head only (frozen backbone)", "full": "full fine-tuning",
                          "tail": f"last {cfg.tail_units} unit(s) on cached maps"}.get(cfg.mode, cfg.mode)),
                ("Iterations", f"{cfg.iterations}, validation every {cfg.val_every}"),
                ("Batch", f"P {cfg.classes_per_batch} × K {cfg.samples_per_class} = "
                          f"{cfg.classes_per_batch * cfg.samples_per_class}"),
                ("Learning rates", f"head {cfg.lr_head:g}" + (f", backbone {cfg.lr_backbone:g}"
                                                              if cfg.mode != "head" else "")
                 + f", weight decay {cfg.weight_decay:g}"),
                ("Device", cfg.device),
                ("Name", cfg.name or "(generated)")]
        body = "".join(f"<tr><td><b>{html.escape(k)}</b></td><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
        out = f"<table cellspacing=4>{body}</table>"
        if data.warnings:
            out += "".join(f"<p style='color:#a15c00'>⚠ {html.escape(w)}</p>" for w in data.warnings)
        if self.problems:
            out += "<p style='color:#b00020'><b>Cannot start:</b></p><ul>" + "".join(
                f"<li style='color:#b00020'>{html.escape(p)}</li>" for p in self.problems) + "</ul>"
        self.text.setHtml(out)
        self.completeChanged.emit()

    def isComplete(self) -> bool:  # noqa: N802
        return not self.problems


# --------------------------------------------------------------------------------------------------
_BASELINE_RE = re.compile(r"untrained descriptor.*R@1 ([0-9.]+)")


class RunPage(QWizardPage):
    """The live view of a run: loss and validation plots, memory fill, speed, ETA, pause/resume/stop,
    then the final metrics beside the untrained descriptor's and "Use this model"."""

    useModelRequested = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle("Training")
        self.phase = QLabel("Not started")
        self.phase.setWordWrap(True)
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m")
        self.iteration_label = QLabel("—")
        self.loss_label = QLabel("—")
        self.speed_label = QLabel("—")
        self.eta_label = QLabel("—")
        self.val_label = QLabel("—")
        self.memory_bar = QProgressBar()
        self.memory_bar.setFormat("%v / %m embeddings")
        self.memory_bar.setRange(0, 1)
        self.memory_bar.setValue(0)
        self.plot = LiveTrainingPlot(self)
        self.plot.setMinimumHeight(320)
        self.pause_button = QPushButton("Pause")
        self.resume_button = QPushButton("Resume")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop after the current step; the checkpoints written so far are kept.")
        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_label.setStyleSheet("color: #b00020; font-weight: bold")
        self.error_details = QPlainTextEdit()
        self.error_details.setReadOnly(True)
        self.error_details.setMaximumHeight(120)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumHeight(80)
        self.log.setMaximumBlockCount(500)

        stats = QGridLayout()
        for col, (name, w) in enumerate((("Iteration", self.iteration_label), ("Loss", self.loss_label),
                                         ("Images/s", self.speed_label), ("ETA", self.eta_label),
                                         ("Val R@1", self.val_label))):
            stats.addWidget(QLabel(f"<b>{name}</b>"), 0, col)
            stats.addWidget(w, 1, col)
        buttons = QHBoxLayout()
        buttons.addWidget(QLabel("Memory:"))
        buttons.addWidget(self.memory_bar, 1)
        buttons.addWidget(self.pause_button)
        buttons.addWidget(self.resume_button)
        buttons.addWidget(self.stop_button)

        self.results = QGroupBox("Result on the validation classes")
        self.metrics_table = QTableWidget(0, 3)
        self.metrics_table.setHorizontalHeaderLabels(["metric", "untrained descriptor", "trained"])
        self.metrics_table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.metrics_table.setMaximumHeight(130)
        self.metrics_table.verticalHeader().setVisible(False)
        self.metrics_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.result_label = QLabel()
        self.result_label.setWordWrap(True)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.use_button = QPushButton("Use this model")
        self.use_label = QLabel()
        self.use_label.setWordWrap(True)
        self.models_button = QPushButton("Trained models…")
        rl = QVBoxLayout(self.results)
        rl.addWidget(self.metrics_table)
        rl.addWidget(self.result_label)
        rl.addWidget(self.use_label)
        rb = QHBoxLayout()
        rb.addStretch(1)
        rb.addWidget(self.models_button)
        rb.addWidget(self.use_button)
        rl.addLayout(rb)

        lay = QVBoxLayout(self)
        lay.addWidget(self.phase)
        lay.addWidget(self.progress)
        lay.addLayout(stats)
        lay.addLayout(buttons)
        lay.addWidget(self.plot, 1)
        lay.addWidget(self.error_label)
        lay.addWidget(self.error_details)
        lay.addWidget(self.results)
        lay.addWidget(self.log)

        self.pause_button.clicked.connect(self.pause)
        self.resume_button.clicked.connect(self.resume)
        self.stop_button.clicked.connect(self.stop)
        self.use_button.clicked.connect(self._use)
        self._latest = None  # the last iteration event, shown by the label timer
        self._labels_timer = QTimer(self)
        self._labels_timer.setInterval(100)
        self._labels_timer.timeout.connect(self._update_labels)
        self.reset()

    # -- state -----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Back to 'not started' (also when the wizard is restarted)."""
        self.handle = None
        self.result = None
        self.error: tuple[str, str] | None = None
        self.events: dict[str, int] = {}
        self.last_checkpoint = ""
        self._latest = None
        self.plot.clear()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.memory_bar.setRange(0, 1)
        self.memory_bar.setValue(0)
        self.memory_bar.setFormat("%v / %m embeddings")
        for w in (self.iteration_label, self.loss_label, self.speed_label, self.eta_label, self.val_label):
            w.setText("—")
        self.error_label.hide()
        self.error_details.hide()
        self.results.hide()
        self.use_label.clear()
        self.log.clear()
        self._set_buttons()

    @property
    def running(self) -> bool:
        return self.handle is not None and self.handle.is_running()

    @property
    def paused(self) -> bool:
        return self.running and self.handle.paused

    def _set_buttons(self) -> None:
        running = self.running
        paused = running and self.handle.paused
        stopping = running and self.handle.worker.cancelled
        self.pause_button.setEnabled(running and not paused and not stopping)
        self.resume_button.setEnabled(paused and not stopping)
        self.stop_button.setEnabled(running and not stopping)

    def isComplete(self) -> bool:  # noqa: N802
        return not self.running

    def cleanupPage(self) -> None:  # noqa: N802
        self.stop(wait_ms=30_000)
        self.reset()

    # -- control ---------------------------------------------------------------------------------
    def attach(self, handle, config: TrainConfig) -> None:
        """Follow a started training task (a workers.TaskHandle with event_kwarg='on_event')."""
        self.reset()
        self.config = config
        self.handle = handle
        # signals of an earlier run (still arriving after a restart) are dropped
        handle.event.connect(lambda e, h=handle: h is self.handle and self.on_event(e))
        handle.progress.connect(lambda d, t, m, h=handle: h is self.handle and self.on_progress(d, t, m))
        handle.result.connect(lambda r, h=handle: h is self.handle and self.on_result(r))
        handle.error.connect(lambda m, d, h=handle: h is self.handle and self.on_error(m, d))
        handle.finished.connect(lambda h=handle: h is self.handle and self.on_finished())
        self.progress.setRange(0, max(1, config.iterations))
        self.phase.setText("Starting: reading the data and building the model…")
        self._labels_timer.start()
        self._set_buttons()
        self.completeChanged.emit()

    def pause(self) -> None:
        if self.running:
            self.handle.pause()
            self.phase.setText("Paused (the run waits at the next step; Resume continues it exactly).")
            self._set_buttons()

    def resume(self) -> None:
        if self.running:
            self.handle.resume()
            self.phase.setText("Training…")
            self._set_buttons()

    def stop(self, wait_ms: int = 0) -> None:
        """Ask the run to stop after the current step (the checkpoints are kept); ``wait_ms`` > 0 blocks."""
        if not self.running:
            return
        self.handle.cancel()
        self.phase.setText("Stopping: saving the checkpoint…")
        self._set_buttons()
        if wait_ms > 0:
            wait_for_task(self.handle, wait_ms)

    # -- task signals ----------------------------------------------------------------------------
    def on_event(self, e) -> None:
        kind = getattr(e, "kind", "")
        self.events[kind] = self.events.get(kind, 0) + 1
        if kind == "iteration":
            self.plot.add_iteration(e.iteration, e.loss, e.loss_batch, e.loss_memory)
            self._latest = e
        elif kind == "validation":
            self.plot.add_validation(e.iteration, e.val_recall1)
            if e.val_recall1 is not None:
                self.val_label.setText(f"{e.val_recall1:.4f} (it {e.iteration})")
            self._log(f"[{e.iteration}] {e.message}")
        elif kind == "checkpoint":
            self.last_checkpoint = e.message
        elif kind == "message":
            m = _BASELINE_RE.search(e.message)
            if m:
                try:
                    self.plot.set_baseline(float(m.group(1).rstrip(".")))
                except ValueError:
                    pass
            self._log(e.message)
        elif kind == "done":
            self._log(f"done: {e.message}")

    def on_progress(self, done: int, total: int, message: str) -> None:
        if message.startswith("loss"):
            return  # iterations: shown from the events
        self.phase.setText(message or "Working…")
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(done)

    def _update_labels(self) -> None:
        e = self._latest
        if e is None:
            return
        self._latest = None
        if not self.paused and not (self.handle is not None and self.handle.worker.cancelled):
            self.phase.setText("Training…")
        self.progress.setRange(0, max(1, e.total))
        self.progress.setValue(e.iteration)
        self.iteration_label.setText(f"{e.iteration} / {e.total}")
        mem = f" (memory {e.loss_memory:.4f})" if e.loss_memory is not None else ""
        self.loss_label.setText(f"{e.loss:.4f}{mem}" if e.loss is not None else "—")
        self.speed_label.setText(f"{e.images_per_s:.0f}")
        self.eta_label.setText(fmt_duration(e.eta_s))
        if e.memory_size:
            self.memory_bar.setFormat("%v / %m embeddings")
            self.memory_bar.setRange(0, e.memory_size)
            self.memory_bar.setValue(min(e.memory_fill, e.memory_size))
        else:
            self.memory_bar.setFormat("off")

    def on_result(self, result) -> None:
        self.result = result
        self._update_labels()
        self.plot.set_baseline(result.baseline_val_metrics.get("recall@1"))
        self.plot.flush()
        keys = [k for k in ("recall@1", "recall@2", "recall@4", "recall@5", "recall@8", "recall@10", "map")
                if k in result.val_metrics or k in result.baseline_val_metrics]
        keys += sorted(k for k in set(result.val_metrics) | set(result.baseline_val_metrics) if k not in keys)
        best = self._best_metrics(result)
        self.metrics_table.setRowCount(len(keys))
        for r, k in enumerate(keys):
            b, v = result.baseline_val_metrics.get(k), best.get(k, result.val_metrics.get(k))
            for c, text in enumerate((k, _num(b), _num(v))):
                self.metrics_table.setItem(r, c, QTableWidgetItem(text))
        how = {"finished": "Finished", "cancelled": "Stopped"}.get(result.stopped_reason, result.stopped_reason)
        self.phase.setText(f"{how}. The best checkpoint (chosen on the validation classes) is kept.")
        self.result_label.setText(f"Best model: {result.best_checkpoint_path}\nLast checkpoint (resumable): "
                                  f"{result.checkpoint_path}")
        self.results.setTitle("Result on the validation classes (best checkpoint)" if best else
                              "Result on the validation classes")
        self.results.show()
        self.use_button.setEnabled(True)

    @staticmethod
    def _best_metrics(result) -> dict:
        """The validation metrics of the best checkpoint (what "Use this model" loads)."""
        try:
            from models.embedding import read_checkpoint

            m = read_checkpoint(result.best_checkpoint_path).get("metrics", {}).get("val", {})
            return dict(m) if isinstance(m, dict) else {}
        except Exception:  # the table then shows the last validation
            return {}

    def on_error(self, message: str, details: str) -> None:
        if message.startswith("Cancelled"):
            self.phase.setText("Stopped before training began; nothing was saved.")
            return
        self.error = (message, details)
        self.phase.setText("Training failed.")
        self.error_label.setText(message)
        self.error_details.setPlainText(details)
        self.error_label.show()
        self.error_details.show()

    def on_finished(self) -> None:
        self._labels_timer.stop()
        self._update_labels()
        self.plot.flush()
        self._set_buttons()
        self.completeChanged.emit()

    def _log(self, text: str) -> None:
        self.log.appendPlainText(text)

    def _use(self) -> None:
        if self.result is not None:
            self.useModelRequested.emit(self.result.best_checkpoint_path)


def wait_for_task(handle, timeout_ms: int) -> bool:
    """Block until ``handle``'s thread has finished, still delivering queued signals (the worker's
    ``finished -> thread.quit`` is queued to this thread, so a plain ``QThread.wait`` here would
    sit out the whole timeout). True when it finished in time."""
    deadline = time.monotonic() + timeout_ms / 1000
    while handle.thread.isRunning():
        QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
        if handle.thread.wait(20) or time.monotonic() > deadline:
            break
    QCoreApplication.processEvents()
    return not handle.thread.isRunning()


def _num(v: object) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "—"
