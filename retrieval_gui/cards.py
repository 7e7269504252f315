"""What a result card offers: the one preview window, the context menu (search with it, open, show in its
folder, copy), handing files to the desktop and copying an image (decoded in a worker)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QObject, QPoint, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QGuiApplication, QImage
from PySide6.QtWidgets import QMenu, QWidget

from retrieval_gui.thumbnails import ThumbnailLoader
from retrieval_gui.widgets import ImageViewer
from retrieval_gui.workers import LatestTask, TaskHandle


class CardActions(QObject):
    """The cards' actions for ``window`` (their parent widget); ``queryRequested(path)`` asks the window
    to search with an image, ``message(text, info)`` to show a banner."""

    queryRequested = Signal(str)
    message = Signal(str, bool)
    regionQueryRequested = Signal(str, object)  # (path, its region as shares): search with that part of it
    markRequested = Signal(str, int)  # mark a result: (path, +1 relevant / -1 not / 0 no mark)

    def __init__(self, window: QWidget, big_loader: ThumbnailLoader) -> None:
        super().__init__(window)
        self.window = window
        self.big_loader = big_loader
        self.preview: ImageViewer | None = None  # the one preview window (Space), made on first use
        self.menu: QMenu | None = None
        self.copy_task = LatestTask(self, "copy image")
        #: path -> the region of it drawn on its card and in the preview (a region query's best match), or None
        self.region_of: Callable[[str], tuple[float, float, float, float] | None] = lambda _p: None

    def preview_open(self) -> bool:
        return self.preview is not None and self.preview.isVisible()

    def show_preview(self, hit, browsing: bool = False) -> None:
        if self.preview is None:
            self.preview = ImageViewer(parent=self.window)
        if browsing or hit.score != hit.score:  # NaN: a collection image
            info = f"label {hit.label}" if hit.label else ""
        else:
            info = f"#{hit.rank} · score {hit.score:.4f}" + (f" · label {hit.label}" if hit.label else "")
        self.preview.show_hit(hit.path, info, self.big_loader.request(hit.path))
        self.preview.set_region(None if browsing else self.region_of(hit.path))
        self.preview.show()

    def hide_preview(self) -> None:
        if self.preview is not None:
            self.preview.hide()

    def hit_menu(self, hit, browsing: bool = False) -> QMenu:
        """The context menu of a card: search with it, preview, open, show in its folder, copy path or image."""
        menu = QMenu(self.window)
        menu.addAction("&Query with this image\tEnter", lambda: self.queryRequested.emit(hit.path))
        menu.addAction("Pre&view\tSpace", lambda: self.show_preview(hit, browsing))
        region = None if browsing else self.region_of(hit.path)
        if region is not None:  # a region query's result: search with the part of it that matched
            menu.addAction("Search this &region", lambda: self.regionQueryRequested.emit(hit.path, region))
        if not browsing:  # relevance feedback (controllers.feedback): the marks re-rank the query
            menu.addSeparator()
            for text, value in (("Mark &relevant\t+", 1), ("Mark &not relevant\t-", -1), ("C&lear mark\t0", 0)):
                menu.addAction(text, lambda v=value: self.markRequested.emit(hit.path, v))
        menu.addSeparator()
        menu.addAction("&Open", lambda: self.open_url(hit.path, "open the image"))
        menu.addAction("Show in &folder", lambda: self.open_url(str(Path(hit.path).parent), "show its folder"))
        menu.addSeparator()
        menu.addAction("Copy &path", lambda: QGuiApplication.clipboard().setText(hit.path))
        menu.addAction("Copy &image", lambda: self.copy_image(hit.path))
        return menu

    def show_menu(self, hit, pos: QPoint, browsing: bool = False) -> None:
        if hit is None:
            return
        if self.menu is not None:
            self.menu.deleteLater()
        self.menu = self.hit_menu(hit, browsing)
        self.menu.popup(pos)

    def open_url(self, path: str, what: str) -> bool:
        """Hand ``path`` to the desktop (file manager, image viewer); say so when nothing takes it."""
        if QDesktopServices.openUrl(QUrl.fromLocalFile(path)):
            return True
        QGuiApplication.clipboard().setText(path)
        self.message.emit(f"No program to {what} was found on this system (no file manager or desktop "
                          f"integration). Its path is copied to the clipboard: {path}", True)
        return False

    def copy_image(self, path: str) -> TaskHandle:
        """Put the image on the clipboard (decoded in a worker)."""
        self.copy_task.request(read_qimage, path, with_callbacks=False,
                               on_result=lambda img: QGuiApplication.clipboard().setImage(img),
                               on_error=lambda m, _tb: self.message.emit(f"Cannot copy the image: {m}", False))
        return self.copy_task.handle


def read_qimage(path: str) -> QImage:
    """The image as a QImage, read by the program's safe loader (worker; a QImage is not a GUI object)."""
    from engine.images import load_image

    im = load_image(path).convert("RGB")
    return QImage(im.tobytes(), im.width, im.height, 3 * im.width, QImage.Format.Format_RGB888).copy()
