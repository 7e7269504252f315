"""The pages of the Train XBM wizard. Each settings page reads its part of a TrainConfig
(:meth:`load`) and writes it back (:meth:`store`); the wizard owns the config."""

from __future__ import annotations

import html
import time
from collections.abc import Callable

from PySide6.QtCore import QCoreApplication, QEventLoop, QSettings, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
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
    QScrollArea,
    QTableWidget,
    QTableWidgetItem,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
    QWizard,
    QWizardPage,
)

from engine.training.config import TrainConfig
from engine.training.options import page_fields
from engine.training.trainer import SELECT_LABELS
from engine.vocabulary import DESCRIPTOR_SHORT as UNTRAINED_LABELS
from engine.vocabulary import fmt_duration
from retrieval_gui.wizard.alike_panel import AlikeChoice, AlikePanel
from retrieval_gui.wizard.binding import Binding
from retrieval_gui.wizard.dataset import DataSummary, ScanRequest, ScanResult, read_class_list, scan
from retrieval_gui.wizard.estimate import Rates, alike_key, describe, estimate_run, measure_rates, rate_key
from retrieval_gui.wizard.plot import LiveTrainingPlot
from retrieval_gui.workers import LatestTask, wait_for_task

__all__ = ["DataPage", "LossPage", "ModelPage", "RunPage", "RunSettingsPage", "SummaryPage", "fmt_duration"]


class _SettingsPage(QWizardPage):
    """A page of TrainConfig settings: the fields its ``page`` binds (engine.training.options) are made,
    loaded and stored by ``self.fields``; a page adds what it binds by hand in :meth:`load_more` /
    :meth:`store_more`."""

    page = ""

    def __init__(self, parent: QWidget | None = None, items: dict | None = None) -> None:
        super().__init__(parent)
        self.fields = Binding(page_fields(self.page), items)

    def load(self, cfg: TrainConfig) -> None:
        self.fields.load(cfg)
        self.load_more(cfg)

    def store(self, cfg: TrainConfig) -> None:
        self.fields.store(cfg)
        self.store_more(cfg)

    def load_more(self, cfg: TrainConfig) -> None:
        """The fields this page binds by hand."""

    def store_more(self, cfg: TrainConfig) -> None:
        """The fields this page binds by hand."""

    def cleanupPage(self) -> None:  # noqa: N802 - keep the user's values when going back
        pass


# --------------------------------------------------------------------------------------------------
TARGET_TEXT = {
    "same": ("Find more of these categories in new pictures (same categories)",
             "For example more of your products, species or garment kinds among new photos. A share of every "
             "category's images is held back, never trained on, to follow progress and to choose the model "
             "to keep. This is what most people who train on their own labelled folders want."),
    "new": ("Work on categories it has never seen (new categories)",
            "Whole categories are held back to follow progress and to choose the model, as in research "
            "benchmarks. Expect small gains: on the cub100 benchmark, models trained this way rank unseen "
            "categories better as a whole (mAP) but end level with or slightly below the untrained descriptors "
            "on the first result."),
}
SHARE_LABEL = {"same": "Validation share of each class's images:", "new": "Validation share of the classes:"}


class DataPage(_SettingsPage):
    """What the model should get better at (the target), a folder of class sub-folders, optionally
    restricted by a split file, and the train/validation split that target gives.

    Counting walks the whole data folder: the page does it in a worker (:meth:`request_scan`, 300 ms
    after the last edit; the latest settings win) and is complete once the count shown is the count of
    the settings shown."""

    scanned = Signal(object)  # the DataSummary of a count just shown
    page = "data"

    def __init__(self, parent: QWidget | None = None, *, batch_classes: Callable[[], int] | None = None,
                 image_split: Callable[[], str] | None = None) -> None:
        super().__init__(parent)
        # the split depends on the batch's P (classes held back keep enough for a batch) and on an image split
        self._batch_classes = batch_classes or (lambda: 0)
        self._image_split = image_split or (lambda: "")
        self.setTitle("Training data")
        self.setSubTitle("A folder with one sub-folder of images per class (label = sub-folder name). "
                         "Validation images are held back from training and choose the model that is kept.")
        self.target_box = QGroupBox("What should the model get better at?")
        self.target_same = QRadioButton(TARGET_TEXT["same"][0])
        self.target_new = QRadioButton(TARGET_TEXT["new"][0])
        self.target_group = QButtonGroup(self)
        tl = QVBoxLayout(self.target_box)
        for key, button in (("same", self.target_same), ("new", self.target_new)):
            self.target_group.addButton(button)
            note = QLabel(TARGET_TEXT[key][1])
            note.setWordWrap(True)
            note.setContentsMargins(22, 0, 0, 4)
            note.setStyleSheet("color: #555")
            tl.addWidget(button)
            tl.addWidget(note)
        self._shares = {"same": 0.2, "new": 0.2}
        self._target = "same"
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("folder with class sub-folders")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse_folder)
        self.split_edit = QLineEdit()
        self.split_edit.setPlaceholderText("optional: JSON or text file listing the training classes")
        browse_split = QPushButton("Browse…")
        browse_split.clicked.connect(self._browse_split)
        self.val_share = Binding(["val_image_share"]).widgets["val_image_share"]  # shows the target's share
        self.val_share_label = QLabel(SHARE_LABEL["same"])
        self.seed = self.fields["seed"]
        form = QFormLayout()
        row = QHBoxLayout()
        row.addWidget(self.folder_edit)
        row.addWidget(browse)
        form.addRow("Data folder:", row)
        row2 = QHBoxLayout()
        row2.addWidget(self.split_edit)
        row2.addWidget(browse_split)
        form.addRow("Split file:", row2)
        form.addRow(self.val_share_label, self.val_share)
        self.fields.add_rows(form)
        self.counts = QTableWidget(2, 2)
        self.counts.setHorizontalHeaderLabels(["classes", "images"])
        self.counts.setVerticalHeaderLabels(["training", "validation"])
        self.counts.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.counts.setMaximumHeight(90)
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.setTextFormat(Qt.TextFormat.RichText)
        lay = QVBoxLayout(self)
        lay.addWidget(self.target_box)
        lay.addLayout(form)
        lay.addWidget(self.counts)
        lay.addWidget(self.message)
        lay.addStretch(1)
        self.summary = DataSummary(root="", error="Choose a folder with one sub-folder of images per class.")
        self.split_error = ""
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(300)
        self._debounce.timeout.connect(self.request_scan)
        self._given_classes: list[str] | None = None
        self._shown: ScanRequest | None = None  # what the shown summary counted
        self._classes: list[str] | None = None  # the training classes it was counted with
        # the latest settings' count wins; no parent, and cancelled when the page goes (see WhitenDataPage)
        self._scans = scans = LatestTask(None, "data scan")
        self.destroyed.connect(lambda *_: scans.cancel())
        self._scans.busy_changed.connect(self._on_scans_busy)
        for w in (self.folder_edit, self.split_edit):
            w.textEdited.connect(self._forget_given_classes)
            w.textChanged.connect(self._debounce.start)
        for s in (self.val_share, self.seed):
            s.valueChanged.connect(self._debounce.start)
        self.target_same.setChecked(True)
        self.target_group.buttonToggled.connect(self._target_changed)

    def target(self) -> str:
        """"same" or "new", as chosen."""
        return "new" if self.target_new.isChecked() else "same"

    def _target_changed(self, *_args) -> None:
        new = self.target()
        if new == self._target:
            return
        self._shares[self._target] = self.val_share.value()   # each target keeps its own share
        self._target = new
        self.val_share_label.setText(SHARE_LABEL[new])
        self.val_share.setValue(self._shares[new])
        self._debounce.start()

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
        """The classes of the split file (None = every sub-folder); sets split_error on a bad file. The
        shown count's classes when it is current (no file read)."""
        if self.is_current():
            return None if self._classes is None else list(self._classes)
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

    def scan_request(self) -> ScanRequest:
        """The count the settings shown ask for (cheap: reads the widgets only)."""
        return ScanRequest(root=self.folder_edit.text().strip(), split_file=self.split_edit.text().strip(),
                           given_classes=None if self._given_classes is None else tuple(self._given_classes),
                           val_share=self.val_share.value(), seed=self.seed.value(),
                           classes_per_batch=self._batch_classes(), target=self.target(),
                           image_split=self._image_split())

    def is_current(self) -> bool:
        """Whether the summary shown counts the settings shown."""
        return self._shown is not None and self._shown == self.scan_request()

    def scanning(self) -> bool:
        """A count is running (or waiting) in the worker."""
        return self._scans.busy

    def request_scan(self) -> None:
        """Count the folder under the current settings in a worker (workers.LatestTask: one count at a
        time, the latest request's result shown)."""
        self._debounce.stop()
        self._scans.request(scan, self.scan_request(), on_result=self._on_scanned, on_error=self._on_scan_error,
                            with_callbacks=False)
        self.completeChanged.emit()

    def _on_scan_error(self, message: str, _details: str) -> None:
        r = self.scan_request()
        self._show(ScanResult(r, DataSummary(root=r.root, error=message), None))

    def _on_scanned(self, result: ScanResult) -> None:
        if result.request == self.scan_request():  # else the settings changed meanwhile: a newer count follows
            self._show(result)

    def _on_scans_busy(self, busy: bool) -> None:
        if not busy and not self.is_current() and not self._debounce.isActive():
            self.request_scan()  # settings changed without an edit signal (e.g. the batch's P): count again
        else:
            self.completeChanged.emit()

    def wait_scan(self, timeout_ms: int = 10_000) -> bool:
        """Process events until the settings shown are counted (tests, scripts); True when they are."""
        deadline = time.monotonic() + timeout_ms / 1000
        while not self.is_current() or self.scanning() or self._debounce.isActive():
            if not self.scanning() and not self.is_current() and not self._debounce.isActive():
                self.request_scan()
            if time.monotonic() > deadline:
                return False
            QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
        return True

    def rescan(self) -> DataSummary:
        """Count now, on the calling thread (scripts and tests; the page itself counts in a worker)."""
        self._debounce.stop()
        return self._show(scan(self.scan_request()))

    def _show(self, result: ScanResult) -> DataSummary:
        """Show a count: the table, the message and the warnings."""
        s = result.summary
        self.summary, self._shown, self._classes = s, result.request, result.classes
        self.split_error = result.split_error
        rows = ((len(s.train_classes), s.train_images), (len(s.val_classes), s.val_images))
        for r, (nc, ni) in enumerate(rows):
            self.counts.setItem(r, 0, QTableWidgetItem(str(nc)))
            self.counts.setItem(r, 1, QTableWidgetItem(str(ni)))
        parts = []
        if s.error:
            parts.append(f"<span style='color:#b00020'><b>{html.escape(s.error)}</b></span>")
        else:
            restricted = ""
            if result.classes is not None:
                from_file = bool(result.request.split_file)
                restricted = " (classes from the split file)" if from_file else " (classes given with the settings)"
            parts.append(f"{len(s.per_class)} classes, {sum(s.per_class.values())} images{restricted}.")
            if s.description:
                parts.append(html.escape(s.description))
        parts += [f"<span style='color:#a15c00'>⚠ {html.escape(w)}</span>" for w in s.warnings]
        self.message.setText("<br>".join(parts))
        self.completeChanged.emit()
        self.scanned.emit(s)
        return s

    def isComplete(self) -> bool:  # noqa: N802
        return self.summary.ok and not self._debounce.isActive() and self.is_current()

    def validatePage(self) -> bool:  # noqa: N802
        if self.is_current():
            return self.summary.ok
        self.request_scan()
        return False

    def load_more(self, cfg: TrainConfig) -> None:
        self.folder_edit.setText(cfg.data_root)
        self._shares = {"same": cfg.val_image_share, "new": cfg.val_class_share}
        self._target = "new" if cfg.target == "new" else "same"
        (self.target_new if self._target == "new" else self.target_same).setChecked(True)
        self.val_share_label.setText(SHARE_LABEL[self._target])
        self.val_share.setValue(self._shares[self._target])
        split = cfg.extra.get("split_file", "") if isinstance(cfg.extra, dict) else ""
        self.split_edit.setText(str(split))
        # classes given with the settings but no split file (a script, the CLI's --classes): kept until
        # the user edits the folder or the split field, never silently widened to every sub-folder
        self._given_classes = list(cfg.train_classes) if cfg.train_classes and not split else None

    def store_more(self, cfg: TrainConfig) -> None:
        cfg.data_root = self.folder_edit.text().strip()
        cfg.train_classes = self.train_classes()
        self._shares[self.target()] = self.val_share.value()
        cfg.target = self.target()
        cfg.val_image_share, cfg.val_class_share = self._shares["same"], self._shares["new"]
        split = self.split_edit.text().strip()
        if split:
            cfg.extra["split_file"] = split
        else:
            cfg.extra.pop("split_file", None)


# --------------------------------------------------------------------------------------------------
def available_backbones() -> list[str]:
    try:
        from models.registry import list_backbones
    except ImportError:  # models.backbones not in this build: the trainer's stand-in EfficientNet-Lite0
        return ["efficientnet_lite0"]
    return list(list_backbones())


class ModelPage(_SettingsPage):
    page = "model"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent, items={"backbone": [(b, b) for b in available_backbones()]})
        self.setTitle("Model")
        self.setSubTitle("Backbone -> pooling -> linear embedding head. Embedding size 0 keeps the feature "
                         "size and starts from the identity, i.e. from the untrained descriptor.")
        self.backbone, self.weights = self.fields["backbone"], self.fields["weights"]
        self.note = QLabel()
        self.note.setWordWrap(True)
        form = QFormLayout(self)
        self.fields.add_rows(form, ["backbone", "weights", "pooling", "embedding_dim", "image_size"])
        form.addRow(self.note)
        self.backbone.currentTextChanged.connect(self._update_note)
        self.weights.currentTextChanged.connect(self._update_note)

    def _update_note(self) -> None:
        text = ""
        if self.weights.currentText() == "pretrained":
            try:
                from models.registry import weights_available
            except ImportError:
                weights_available = None
            if weights_available is not None and not weights_available(self.backbone.currentText()):
                text = ("⚠ The pretrained weights of this backbone are not on this computer, and nothing is "
                        "downloaded while training: choose another backbone or random weights.")
        self.note.setText(text)

    def load_more(self, cfg: TrainConfig) -> None:
        self._update_note()


# --------------------------------------------------------------------------------------------------
class LossPage(_SettingsPage):
    page = "loss"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle("Loss and cross-batch memory")
        self.setSubTitle("Triplet (or contrastive) loss on each P x K batch; the cross-batch memory (XBM) "
                         "adds pairs against embeddings of earlier batches once the warm-up is over.")
        self.memory = self.fields["memory"]
        self.fields.add_rows(QFormLayout(self))
        self.memory.toggled.connect(self._sync)

    def _sync(self) -> None:
        on = self.memory.isChecked()
        for name in ("memory_share", "memory_weight", "warmup_iters"):
            self.fields[name].setEnabled(on)

    def load_more(self, cfg: TrainConfig) -> None:
        self._sync()


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
    page = "run"

    def __init__(self, parent: QWidget | None = None, *, image_size: Callable[[], int] | None = None) -> None:
        super().__init__(parent, items={"device": available_devices()})
        self._image_size = image_size  # the model page's, which names the sizes of the evaluation alike
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
        f = self.fields
        self.tail_units, self.iterations, self.lr_backbone = f["tail_units"], f["iterations"], f["lr_backbone"]
        self.p, self.k, self.freeze_bn = f["classes_per_batch"], f["samples_per_class"], f["freeze_bn"]
        self.batch_label = QLabel()
        form = QFormLayout(self)
        form.addRow(self.mode_head)
        form.addRow(self.mode_tail)
        f.add_row(form, "tail_units")
        form.addRow(self.mode_full)
        f.add_row(form, "iterations")
        pk = QHBoxLayout()
        pk.addWidget(self.p)
        pk.addWidget(QLabel("classes ×"))
        pk.addWidget(self.k)
        pk.addWidget(QLabel("images"))
        pk.addWidget(self.batch_label)
        f.add_row(form, "classes_per_batch", pk)
        f.add_rows(form, ["lr_head", "lr_backbone", "weight_decay", "freeze_bn", "val_every", "select_metric",
                          "device", "num_threads", "name"])
        # what the run page evaluates when the run ends: remembered here, not part of the training settings
        self.alike = QCheckBox("When the run ends, evaluate both alike at sizes")
        self.alike_sizes = QComboBox()
        self.alike_sizes.addItem("224", False)
        self.alike_sizes.addItem("224+288+352", True)
        self.alike_whiten = QCheckBox("with a learned whitening")
        self.alike.setToolTip("After training, the kept model (best.pt) and the best untrained descriptor are "
                              "described again the same way, at these input sizes (each size's vector normalised, "
                              "summed, normalised) and with a whitening learned on the run's training images, and "
                              "compared on its validation images. It adds a pass over the run's images (three "
                              "sizes: about five times the work of one) after the estimate of the Summary page.")
        for w in (self.alike_sizes, self.alike_whiten):
            w.setToolTip(self.alike.toolTip())
        alike = QHBoxLayout()
        alike.addWidget(self.alike)
        alike.addWidget(self.alike_sizes)
        alike.addWidget(self.alike_whiten)
        alike.addStretch(1)
        form.addRow(alike)
        self.set_alike(AlikeChoice.remembered())
        self.alike.toggled.connect(self._alike_changed)
        self.alike_sizes.currentIndexChanged.connect(self._alike_changed)
        self.alike_whiten.toggled.connect(self._alike_changed)
        self.mode_group.buttonToggled.connect(lambda *_: self._sync())
        self.p.valueChanged.connect(self._sync)
        self.k.valueChanged.connect(self._sync)

    def _sync(self) -> None:
        trains_backbone = not self.mode_head.isChecked()
        self.lr_backbone.setEnabled(trains_backbone)
        self.freeze_bn.setEnabled(trains_backbone)
        self.tail_units.setEnabled(self.mode_tail.isChecked())
        self.batch_label.setText(f"= {self.p.value() * self.k.value()} per batch")

    def load_more(self, cfg: TrainConfig) -> None:
        {"full": self.mode_full, "tail": self.mode_tail}.get(cfg.mode, self.mode_head).setChecked(True)
        self._sync()

    def store_more(self, cfg: TrainConfig) -> None:
        cfg.mode = "full" if self.mode_full.isChecked() else "tail" if self.mode_tail.isChecked() else "head"

    def initializePage(self) -> None:  # noqa: N802
        self._sync()
        if self._image_size is not None:
            self.show_alike_sizes(self._image_size())

    # -- the evaluation alike when the run ends ----------------------------------------------------
    def alike_choice(self) -> AlikeChoice:
        return AlikeChoice(self.alike.isChecked(), bool(self.alike_sizes.currentData()), self.alike_whiten.isChecked())

    def set_alike(self, choice: AlikeChoice) -> None:
        self.alike.setChecked(choice.enabled)
        self.alike_sizes.setCurrentIndex(1 if choice.multi else 0)
        self.alike_whiten.setChecked(choice.whiten)
        self._sync_alike()

    def show_alike_sizes(self, image_size: int) -> None:
        """Name the sizes made from the run's image size (224 -> 224 | 224+288+352)."""
        from engine.vocabulary import multi_scales, sizes_label

        self.alike_sizes.setItemText(0, str(int(image_size)))
        self.alike_sizes.setItemText(1, sizes_label(multi_scales(image_size)))

    def _sync_alike(self) -> None:
        self.alike_sizes.setEnabled(self.alike.isChecked())
        self.alike_whiten.setEnabled(self.alike.isChecked())

    def _alike_changed(self, *_args) -> None:
        self._sync_alike()
        self.alike_choice().remember()


# --------------------------------------------------------------------------------------------------
class SummaryPage(QWizardPage):
    """Every setting at a glance, the data counts, and what TrainConfig.validate() objects to."""

    def __init__(self, config: Callable[[], TrainConfig], data_page: DataPage,
                 alike_choice: Callable[[], AlikeChoice] = AlikeChoice.remembered,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._config, self.data_page, self._alike_choice = config, data_page, alike_choice
        self.setTitle("Summary")
        self.setSubTitle("Check the settings; training starts with the button below.")
        self.setCommitPage(True)
        self.setButtonText(QWizard.WizardButton.CommitButton, "Start training")
        self.text = QTextBrowser()
        self.estimate_label = QLabel()
        self.estimate_label.setWordWrap(True)
        self.estimate_label.setTextFormat(Qt.TextFormat.RichText)
        lay = QVBoxLayout(self)
        lay.addWidget(self.text)
        lay.addWidget(self.estimate_label)
        self.problems: list[str] = []
        self.estimate = None  # the last estimate_run() shown
        self._rates: dict[str, Rates] = {}  # measured this session, per rate_key
        self._rate_task = None
        # a count arriving while this page shows refreshes it
        data_page.scanned.connect(lambda _s: self._is_current_page() and self.initializePage())

    def _is_current_page(self) -> bool:
        wiz = self.wizard()
        return wiz is not None and wiz.currentPage() is self

    def initializePage(self) -> None:  # noqa: N802
        cfg = self._config()
        if not self.data_page.is_current():
            if not self.data_page.scanning():
                self.data_page.request_scan()
            self.problems = ["counting the data folder…"]
            self.text.setHtml("<p>Counting the data folder…</p>")
            self.estimate_label.setText("")
            self.completeChanged.emit()
            return
        data = self.data_page.summary
        self.problems = list(cfg.validate())
        if not data.ok:
            self.problems.insert(0, data.error)
        self._show_estimate(cfg, data)
        target = {"same": f"the same categories (validation: {cfg.val_image_share:.0%} of each class's images)",
                  "new": f"new categories (validation: {cfg.val_class_share:.0%} of the classes)"}
        rows = [("Data", cfg.data_root),
                ("Target", target.get(cfg.target, cfg.target)),
                ("Training", f"{data.train_images} images of {len(data.train_classes)} classes"),
                ("Validation", f"{data.val_images} images of {len(data.val_classes)} classes"),
                ("Model kept", f"the checkpoint with the best validation "
                               f"{SELECT_LABELS.get(cfg.select_metric, cfg.select_metric)} (best.pt)"),
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

    def rates(self, cfg: TrainConfig) -> Rates | None:
        """The speeds of ``cfg``'s backbone: remembered from its last run, else measured (None: not yet)."""
        key = rate_key(cfg.backbone, cfg.weights, cfg.image_size, cfg.device, cfg.mode)
        choice = self._alike_choice()
        return remembered_rates(key, alike_key(choice.sizes(cfg.image_size), choice.whiten)) or self._rates.get(key)

    def _show_estimate(self, cfg: TrainConfig, data: DataSummary) -> None:
        """The run-time estimate under the table; starts measuring the speeds in a worker when unknown."""
        if not data.ok:
            self.estimate_label.setText("")
            return
        rates = self.rates(cfg)
        if rates is None:
            self.estimate = None
            self.estimate_label.setText("<b>Estimated time:</b> measuring the speed of "
                                        f"{html.escape(cfg.backbone)}…")
            self._measure(cfg, data)
            return
        self.estimate = estimate_run(mode=cfg.mode, n_train=data.train_images, n_val=data.val_images,
                                     iterations=cfg.iterations, val_every=cfg.val_every,
                                     batch=cfg.classes_per_batch * cfg.samples_per_class,
                                     views=cfg.head_views, rates=rates, image_size=cfg.image_size,
                                     alike_sizes=self._alike_sizes(cfg), alike_images=self._alike_images(data))
        self.estimate_label.setText(f"<b>Estimated time:</b> {html.escape(describe(self.estimate, rates))}")

    def _alike_sizes(self, cfg: TrainConfig) -> tuple[int, ...]:
        """The sizes the run page will evaluate alike at after the run (() when switched off)."""
        choice = self._alike_choice()
        return choice.sizes(cfg.image_size) if choice.enabled else ()

    def _alike_images(self, data: DataSummary) -> int:
        """The images the evaluation alike describes: the validation ones, and the training ones its
        whitenings learn from (capped, engine.training.alike.MAX_TRAIN_IMAGES)."""
        from engine.training.alike import MAX_TRAIN_IMAGES

        choice = self._alike_choice()
        return data.val_images + (min(data.train_images, MAX_TRAIN_IMAGES) if choice.whiten else 0)

    def _measure(self, cfg: TrainConfig, data: DataSummary) -> None:
        from retrieval_gui.workers import start_task

        if self._rate_task is not None and self._rate_task.is_running():
            return  # its result refreshes the page, which asks again for what is shown then
        self._rate_key = rate_key(cfg.backbone, cfg.weights, cfg.image_size, cfg.device, cfg.mode)
        memory = int(cfg.memory_share * data.train_images) if cfg.memory else 0
        device = "cpu" if cfg.device == "auto" else cfg.device  # what the trainer picks without a GPU
        try:
            import torch

            if cfg.device == "auto" and torch.cuda.is_available():
                device = "cuda"
        except ImportError:
            pass
        task = start_task(measure_rates, cfg.backbone, cfg.weights, cfg.image_size, device, cfg.mode,
                          sample_root=cfg.data_root, loss=cfg.loss, margin=cfg.margin, mining=cfg.mining,
                          classes_per_batch=cfg.classes_per_batch, samples_per_class=cfg.samples_per_class,
                          memory_size=memory, name="run estimate", with_callbacks=False)  # no parent: see DataPage
        self._rate_task = task
        task.result.connect(self._on_rates)
        task.error.connect(self._on_rates_error)

    def _on_rates_error(self, message: str, _details: str) -> None:
        self.estimate_label.setText(f"<b>Estimated time:</b> unknown (measuring failed: {html.escape(message)})")

    def _on_rates(self, rates: Rates) -> None:
        self._rates[self._rate_key] = rates
        if self._is_current_page():
            self.initializePage()


RATES_KEY = "wizard/rates/"


def remembered_rates(key: str, alike: str = "") -> Rates | None:
    """The speeds the last run of ``key`` (estimate.rate_key) measured, None when none was remembered;
    ``alike`` (estimate.alike_key): with the speed of its evaluation alike at those sizes, when measured."""
    import json

    raw = QSettings().value(RATES_KEY + key, "")
    try:
        d = json.loads(str(raw)) if raw else None
        if not d:
            return None
        return Rates(float(d["features"]), float(d["train"]), "of the last run with these settings",
                     float(d.get(alike, 0.0)) if alike else 0.0)
    except (ValueError, KeyError, TypeError):
        return None


def remember_rates(key: str, features: float, train: float, **alike: float) -> None:
    """Keep what a finished run measured (images/s of its feature phase and of its iterations); ``alike``:
    {estimate.alike_key: images/s} of its evaluation alike, kept beside them."""
    import json

    old = QSettings().value(RATES_KEY + key, "")
    try:
        d = json.loads(str(old)) if old else {}
    except ValueError:
        d = {}
    if features > 0 and train > 0:
        d.update(features=features, train=train)
    d.update({k: v for k, v in alike.items() if v > 0})
    if "features" in d and "train" in d:
        QSettings().setValue(RATES_KEY + key, json.dumps(d))


# --------------------------------------------------------------------------------------------------
class RunPage(QWizardPage):
    """The live view of a run: preparation phases with their own rate and ETA, loss and validation plots
    (the validation metric that chooses the kept model, the best untrained descriptor's level, the kept
    point), memory fill, speed, ETA, pause/resume/stop; then the kept model against the best untrained
    descriptor and last.pt on the validation data, and "Use this model"."""

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
        self.val_name = QLabel("<b>Val R@1</b>")
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
                                         (self.val_name, self.val_label))):
            stats.addWidget(name if isinstance(name, QLabel) else QLabel(f"<b>{name}</b>"), 0, col)
            stats.addWidget(w, 1, col)
        buttons = QHBoxLayout()
        buttons.addWidget(QLabel("Memory:"))
        buttons.addWidget(self.memory_bar, 1)
        buttons.addWidget(self.pause_button)
        buttons.addWidget(self.resume_button)
        buttons.addWidget(self.stop_button)

        self.results = QGroupBox("The kept model on the validation data")
        self.metrics_table = QTableWidget(0, 4)
        self.metrics_table.setHorizontalHeaderLabels(["metric", "best untrained descriptor", "kept model (best.pt)",
                                                      "last.pt"])
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

        # the kept model and the best untrained descriptor evaluated alike (multi-scale, learned whitening)
        self.alike_panel = AlikePanel()
        self.alike_panel.finished.connect(self.completeChanged)
        self.alike_panel.finished.connect(self._alike_finished)
        self._alike_t0: float | None = None
        self.config: TrainConfig | None = None  # of the run attached

        # the page's parts keep their minimum heights (the plots stay readable) and the page scrolls in a
        # window too short for them, instead of squeezing the plots under each other's labels
        body = QWidget()
        self.scroll = scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setWidget(body)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        lay = QVBoxLayout(body)
        lay.addWidget(self.phase)
        lay.addWidget(self.progress)
        lay.addLayout(stats)
        lay.addLayout(buttons)
        lay.addWidget(self.plot, 1)
        lay.addWidget(self.error_label)
        lay.addWidget(self.error_details)
        lay.addWidget(self.results)
        lay.addWidget(self.alike_panel)
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
        self._seen_rates: dict[str, float] = {}  # images/s of the feature phase and of the iterations
        self.error: tuple[str, str] | None = None
        self.events: dict[str, int] = {}
        self.last_checkpoint = ""
        self._latest = None
        self._val_scores: dict[int, float] = {}
        self.untrained: tuple[str, float] | None = None   # (descriptor, validation score) of the best untrained
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
        self.alike_panel.reset()
        self.use_label.clear()
        self.log.clear()
        self._set_buttons()

    @property
    def training(self) -> bool:
        """The training task is running."""
        return self.handle is not None and self.handle.is_running()

    @property
    def evaluating(self) -> bool:
        """The evaluation alike after the run is running."""
        return self.alike_panel.running

    @property
    def running(self) -> bool:
        """Training or the evaluation after it is running (closing the wizard stops either)."""
        return self.training or self.evaluating

    @property
    def paused(self) -> bool:
        return self.training and self.handle.paused

    def _set_buttons(self) -> None:
        running = self.training
        paused = running and self.handle.paused
        stopping = running and self.handle.worker.cancelled
        self.pause_button.setEnabled(running and not paused and not stopping)
        self.resume_button.setEnabled(paused and not stopping)
        self.stop_button.setEnabled(running and not stopping)

    def isComplete(self) -> bool:  # noqa: N802
        return not self.training  # Finish during the evaluation alike stops it (the wizard's done())

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
        label = SELECT_LABELS.get(config.select_metric, config.select_metric)
        self.plot.set_metric(label)
        self.val_name.setText(f"<b>Val {html.escape(label)}</b>")
        self.val_name.setToolTip(f"The validation {label}: the selection metric, which chooses the model kept "
                                 "as best.pt")
        self.phase.setText("Starting: reading the data and building the model…")
        self._labels_timer.start()
        self._set_buttons()
        self.completeChanged.emit()

    def pause(self) -> None:
        if self.training:
            self.handle.pause()
            self.phase.setText("Paused (the run waits at the next step; Resume continues it exactly).")
            self._set_buttons()

    def resume(self) -> None:
        if self.training:
            self.handle.resume()
            self.phase.setText("Training…")
            self._set_buttons()

    def stop(self, wait_ms: int = 0) -> None:
        """Ask the run to stop after the current step (the checkpoints are kept), or the evaluation alike
        after it; ``wait_ms`` > 0 blocks."""
        if self.evaluating:
            self.alike_panel.cancel(wait_ms)
        if not self.training:
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
            if e.images_per_s:
                self._seen_rates["train"] = float(e.images_per_s)
            self.plot.add_iteration(e.iteration, e.loss, e.loss_batch, e.loss_memory)
            self._latest = e
        elif kind == "phase":  # a preparation step (e.g. computing the features once): its own rate and ETA
            if e.images_per_s:
                self._seen_rates["features"] = float(e.images_per_s)
            self.phase.setText(f"{e.message}: {e.iteration} / {e.total} images")
            self.progress.setRange(0, max(1, e.total))
            self.progress.setValue(e.iteration)
            self.speed_label.setText(f"{e.images_per_s:.1f}")
            self.eta_label.setText(fmt_duration(e.eta_s))
        elif kind == "validation":
            value = getattr(e, "val_score", None)
            value = e.val_recall1 if value is None and not getattr(e, "select_metric", "") else value
            self.plot.add_validation(e.iteration, value)
            if value is not None:
                self._val_scores[e.iteration] = value
                self.val_label.setText(f"{value:.4f} (it {e.iteration})")
            best = getattr(e, "best_iteration", -1)
            if best in self._val_scores:
                self.plot.set_best(best, self._val_scores[best])
            self._log(f"[{e.iteration}] {e.message}")
        elif kind == "untrained":
            self.untrained = (e.message, e.val_score)
            self.plot.set_baseline(e.val_score, f"best untrained ({UNTRAINED_LABELS.get(e.message, e.message)})")
        elif kind == "checkpoint":
            self.last_checkpoint = e.message
        elif kind == "message":
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
        cfg = self.config
        seen = self._seen_rates
        if cfg is not None and "train" in seen and "features" in seen:  # the next estimate of these settings
            remember_rates(rate_key(cfg.backbone, cfg.weights, cfg.image_size, cfg.device, cfg.mode),
                           seen["features"], seen["train"])
        self._update_labels()
        sel = getattr(result, "select_metric", "map")
        label = SELECT_LABELS.get(sel, sel)
        best_untrained = getattr(result, "best_untrained", "")
        untrained = result.untrained_val_metrics.get(best_untrained, {}) if best_untrained else {}
        if untrained:
            self.plot.set_baseline(untrained.get(sel), f"best untrained ({UNTRAINED_LABELS[best_untrained]})")
        elif result.baseline_val_metrics:
            untrained = result.baseline_val_metrics
            self.plot.set_baseline(untrained.get(sel), "untrained")
        best = getattr(result, "best_val_metrics", {}) or self._best_metrics(result)
        best_it = getattr(result, "best_iteration", None)
        if best_it is not None and best.get(sel) is not None:
            self.plot.set_best(best_it, best[sel])
        self.plot.flush()
        last_it = getattr(result, "last_iteration", None)
        last_val = next((h for h in reversed(result.history) if "val" in h), None)
        last = last_val["val"] if last_val is not None and last_val["iteration"] == last_it else {}
        found = set(result.val_metrics) | set(untrained) | set(best)
        keys = [k for k in (sel, "recall@1", "recall@2", "recall@4", "recall@5", "recall@8", "recall@10", "map")
                if k in found]
        counts = {"map_excluded", "n"}  # how many queries, not scores: not rows of this table
        keys = list(dict.fromkeys(keys)) + sorted(k for k in found if k not in keys and k not in counts)
        self.metrics_table.setHorizontalHeaderLabels([
            "metric",
            f"best untrained ({UNTRAINED_LABELS[best_untrained]})" if best_untrained else "untrained descriptor",
            "kept model (best.pt" + (f", it {best_it})" if best_it is not None else ")"),
            "last.pt" + (f" (it {last_it})" if last_it is not None else "")])
        self.metrics_table.setRowCount(len(keys))
        for r, k in enumerate(keys):
            name = SELECT_LABELS.get(k, k) + (" (selection metric)" if k == sel else "")
            for c, text in enumerate((name, _num(untrained.get(k)), _num(best.get(k)), _num(last.get(k)))):
                self.metrics_table.setItem(r, c, QTableWidgetItem(text))
        how = {"finished": "Finished", "cancelled": "Stopped"}.get(result.stopped_reason, result.stopped_reason)
        kept = f" from iteration {best_it}" if best_it is not None else ""
        self.phase.setText(f"{how}. Kept as best.pt: the checkpoint{kept} with the best validation {label} "
                           "(the selection metric).")
        lines = []
        if best.get(sel) is not None and untrained.get(sel) is not None:
            diff = best[sel] - untrained[sel]
            lines.append(f"The kept model scores {best[sel]:.4f} validation {label}, {abs(diff):.4f} "
                         f"{'above' if diff >= 0 else 'below'} the best untrained descriptor"
                         + (f"; last.pt would have scored {last[sel]:.4f}." if last.get(sel) is not None else "."))
        if getattr(result, "validation", ""):
            lines.append(result.validation)
        lines.append(f"Best model: {result.best_checkpoint_path}\nLast checkpoint (resumable): {result.checkpoint_path}")
        self.result_label.setText("\n".join(lines))
        self.results.setTitle("The kept model on the validation data, beside the best untrained descriptor and last.pt")
        self.results.show()
        self.use_button.setEnabled(True)
        self._alike_t0 = time.monotonic() if self.alike_panel.start(result) else None

    def _alike_finished(self) -> None:
        """Remember how fast the whole evaluation alike went (loading and whitenings included), so that the
        next estimate of these settings counts it."""
        report, cfg, t0 = self.alike_panel.report, self.config, self._alike_t0
        self._alike_t0 = None
        if report is None or cfg is None or t0 is None:
            return
        whitened = any(ev.whitened for ev in report.evaluations)
        images = report.n_val + (report.n_train if whitened else 0)
        seconds = time.monotonic() - t0
        if images and seconds > 0:
            remember_rates(rate_key(cfg.backbone, cfg.weights, cfg.image_size, cfg.device, cfg.mode), 0.0, 0.0,
                           **{alike_key(tuple(report.sizes), whitened): images / seconds})

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


def _num(v: object) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "—"
