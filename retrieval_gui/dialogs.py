"""The explorer's small file dialogs: each asks for a path and hands it to the window's public method
(open_collection, set_query, use_whitening, export_current, export_split). The save dialogs open where the
last one saved (the settings' "saveFolder")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QFileDialog, QWidget

IMAGE_FILTER = "Images (*.jpg *.jpeg *.png *.bmp *.gif *.tif *.tiff *.webp)"


def save_path(parent: QWidget, settings: QSettings, caption: str, name: str, filters: str) -> str:
    """A save dialog that opens where the last one saved (remembered in ``settings``); '' when cancelled."""
    start = Path(str(settings.value("saveFolder", Path.home())))
    path, _ = QFileDialog.getSaveFileName(parent, caption, str(start / name), filters)
    if path:
        settings.setValue("saveFolder", str(Path(path).parent))
    return path


def _start(win: Any) -> str:
    return str(win.index.folder) if win.index else str(Path.home())


def ask_collection(win: Any) -> None:
    folder = QFileDialog.getExistingDirectory(win, "Open an image folder", _start(win))
    if folder:
        win.open_collection(folder)


def ask_query(win: Any) -> None:
    path, _ = QFileDialog.getOpenFileName(win, "Query image", _start(win), IMAGE_FILTER)
    if path:
        win.set_query(path)


def ask_whitening(win: Any) -> None:
    start = str(Path(win.key.whitening).parent) if win.key.whitening else str(Path.home())
    path, _ = QFileDialog.getOpenFileName(win, "Whitening file (retrieval-explorer whiten)", start,
                                          "Whitening (*.npz);;All files (*)")
    if path:
        win.use_whitening(path)


def ask_export(win: Any) -> None:
    """File > Export results…: the format follows the name's suffix (HTML when it names none we write)."""
    if win.result is None:
        win.show_error("Run a query first: there is nothing to export yet.", info=True)
        return
    path = save_path(win, win.settings, "Export results", "results.html",
                     "HTML page (*.html);;PNG contact sheet (*.png);;CSV (*.csv)")
    if path:
        from engine.export import FORMATS  # PIL: imported when first exporting, not at start

        fmt = Path(path).suffix.lower().lstrip(".") or "html"
        win.export_current(path, [fmt] if fmt in FORMATS else ["html"])


def ask_export_split(win: Any) -> None:
    if win.index is None:
        win.show_error("Open a collection first.", info=True)
        return
    split, _ = QFileDialog.getOpenFileName(win, "Split file (query / retrieval lists)", str(win.index.folder),
                                           "Split files (*.json *.pkl *.pickle);;All files (*)")
    out = split and save_path(win, win.settings, "Export split gallery", "split-gallery.html",
                              "HTML page (*.html)")
    if out:
        win.export_split(split, out)
