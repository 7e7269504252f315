"""The explorer window's widgets and menus, built onto the window (retrieval_gui.main_window wires them).

The widgets and actions become attributes of the window under the names the rest of the GUI and the tests
use (``win.results_view``, ``win.map_action``...); this module only builds, it decides nothing."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QDockWidget,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMenu,
    QProgressBar,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from engine.session import list_descriptors
from engine.vocabulary import DESCRIPTOR_TITLES
from retrieval_gui import dialogs
from retrieval_gui.activations import ActivationsPanel
from retrieval_gui.thumbnails import ThumbnailLoader
from retrieval_gui.widgets import Banner, QuerySlot, ResultsModel, ResultsView, SearchBar, WelcomePage

ABOUT = ("Retrieval Explorer — content-based image retrieval with deep metric learning. "
         "Drop an image on the query slot; results are ranked by cosine similarity.")


def build_widgets(win: QMainWindow, loader: ThumbnailLoader, thumb_size: int, size: int, k: int) -> None:
    """The search bar, the query column, the banner/header/grid column, the activations dock and the status
    bar (status label, progress, Cancel), set on ``win``."""
    bar = SearchBar([(d, DESCRIPTOR_TITLES.get(d, d)) for d in list_descriptors()], size, k)
    win.addToolBar(bar)
    win.search_bar = bar
    for name in ("model_box", "descriptor_box", "sizes_box", "k_spin", "threshold_spin", "method_box",
                 "qe_spin", "compare_button"):
        setattr(win, name, getattr(bar, name))
    central = QWidget()
    outer = QHBoxLayout(central)
    left = QVBoxLayout()
    win.query_slot = QuerySlot()
    win.query_slot.setFixedSize(260, 260)
    left.addWidget(win.query_slot)
    win.query_info = QLabel("")
    win.query_info.setWordWrap(True)
    win.query_info.setFixedWidth(260)
    win.query_info.setTextFormat(Qt.TextFormat.RichText)
    left.addWidget(win.query_info)
    left.addStretch(1)
    outer.addLayout(left)
    right = QVBoxLayout()
    win.banner = Banner()
    right.addWidget(win.banner)
    win.grid_header = QLabel()  # what the grid shows and what to do with it
    win.grid_header.setWordWrap(True)
    win.grid_header.setTextFormat(Qt.TextFormat.RichText)
    right.addWidget(win.grid_header)
    win.results_model = ResultsModel(loader, win)
    win.results_view = ResultsView(win.results_model, thumb_size)
    win.welcome = WelcomePage()
    win.open_button = win.welcome.open_button
    win.grid_stack = QStackedWidget()
    win.grid_stack.addWidget(win.welcome)
    win.grid_stack.addWidget(win.results_view)
    right.addWidget(win.grid_stack, 1)
    outer.addLayout(right, 1)
    win.setCentralWidget(central)
    win.activations = ActivationsPanel()
    win.act_dock = QDockWidget("Layer activations", win)
    win.act_dock.setObjectName("activationsDock")
    win.act_dock.setWidget(win.activations)
    win.act_dock.setMinimumWidth(420)
    win.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, win.act_dock)
    win.act_dock.hide()
    win.status_label = QLabel()
    win.statusBar().addWidget(win.status_label, 1)
    win.progress = QProgressBar()
    # wide enough for the longest text on one line ("indexing 123,456 / 123,456 · 45/s · 1:02:03 left")
    win.progress.setFixedWidth(win.progress.fontMetrics().horizontalAdvance(
        "indexing 888,888 / 888,888 · 888/s · 88:88:88 left") + 36)
    win.progress.hide()
    win.statusBar().addPermanentWidget(win.progress)
    win.cancel_button = QPushButton("Cancel")
    win.cancel_button.hide()
    win.statusBar().addPermanentWidget(win.cancel_button)


def build_menus(win: Any) -> None:
    """File, View, Tools, Training and Help; the actions other code reaches are set on ``win``
    (recent_menu, demo_action, paste_action, whitening_action, no_whitening_action, export_action,
    export_split_action, duplicates_action, map_action, train_action, learn_whitening_action, models_action,
    usage_action). Needs the widgets of :func:`build_widgets` (the activations dock)."""
    mb = win.menuBar()
    file_menu = mb.addMenu("&File")
    file_menu.addAction("&Open folder…", lambda: dialogs.ask_collection(win)).setShortcut(
        QKeySequence.StandardKey.Open)
    win.recent_menu = QMenu("Open &recent", win)
    file_menu.addMenu(win.recent_menu)
    win.recent_menu.aboutToShow.connect(lambda: fill_recent(win.recent_menu, win.recent(), win.open_collection))
    win.demo_action = file_menu.addAction("Open the &demo collection", win.open_demo)
    file_menu.addSeparator()
    file_menu.addAction("Open &query image…", lambda: dialogs.ask_query(win))
    win.paste_action = QAction("&Paste query image", win)
    win.paste_action.setShortcut(QKeySequence.StandardKey.Paste)
    win.paste_action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
    win.paste_action.triggered.connect(win.paste_query)
    file_menu.addAction(win.paste_action)
    win.addAction(win.paste_action)
    file_menu.addSeparator()
    win.whitening_action = file_menu.addAction("Use a &whitening file…", lambda: dialogs.ask_whitening(win))
    win.no_whitening_action = file_menu.addAction("&No whitening", lambda: win.use_whitening(None))
    file_menu.addSeparator()
    win.export_action = file_menu.addAction("&Export results…", win._ask_export)
    win.export_split_action = file_menu.addAction("Export &split gallery…", lambda: dialogs.ask_export_split(win))
    file_menu.addSeparator()
    file_menu.addAction("&Quit", win.close).setShortcut(QKeySequence.StandardKey.Quit)
    view = mb.addMenu("&View")
    view.addAction("&Compare descriptors…", lambda: win.open_compare())
    view.addAction(win.act_dock.toggleViewAction())
    win.act_dock.toggleViewAction().setText("Layer &activations")
    view.addAction("&Reindex", win.reindex)
    tools = mb.addMenu("T&ools")  # the views are imported when first opened (issue 14)
    win.duplicates_action = tools.addAction("Find &duplicates…", lambda: importlib.import_module(
        "retrieval_gui.duplicates_view").open_duplicates(win))
    win.map_action = tools.addAction("&Map of the collection…", lambda: importlib.import_module(
        "retrieval_gui.map_view").open_map(win))
    training = mb.addMenu("&Training")
    win.train_action = training.addAction("Train &XBM model…", win.open_train_wizard)
    win.learn_whitening_action = training.addAction("Learn a &whitening…",
                                                    lambda: win.open_train_wizard(path="whiten"))
    if importlib.util.find_spec("retrieval_gui.wizard") is None:
        win.train_action.setEnabled(False)
        win.train_action.setToolTip("The training wizard is not part of this build")
        win.learn_whitening_action.setEnabled(False)
    win.models_action = training.addAction("Trained &models…", win.open_trained_models)
    win.models_action.setEnabled(win.train_action.isEnabled())
    training.addAction("&Refresh trained models", win._show_choice)
    training.setToolTipsVisible(True)
    help_menu = mb.addMenu("&Help")
    win.usage_action = help_menu.addAction("&How to use it and keys", win.show_usage)
    win.usage_action.setShortcut(QKeySequence.StandardKey.HelpContents)
    help_menu.addAction("&About", lambda: win.show_error(ABOUT, info=True))


def fill_recent(menu: QMenu, folders: list[str], open_folder) -> None:
    """The Open recent submenu: one entry per folder (most recent first), or a disabled "(none)"."""
    menu.clear()
    for folder in folders:
        menu.addAction(folder, lambda f=folder: open_folder(f))
    if not folders:
        menu.addAction("(none)").setEnabled(False)
