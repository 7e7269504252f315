"""Region queries on screen (issue 28): the rubber band on the query preview, and the best region drawn
on a result's thumbnail and in the preview. Regions are (x, y, w, h) shares of the image's width and
height (engine.regions.box_fraction), so every view of an image draws the same rectangle."""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QEvent, QObject, QPoint, QRect, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QPainter, QPen
from PySide6.QtWidgets import QLabel, QMenu, QRubberBand, QStyle

Fraction = tuple[float, float, float, float]

#: the colour of a region: the query's rubber band and the results' best regions
REGION_COLOUR = QColor("#ff8f00")
MIN_DRAG = 6  # pixels: a shorter drag is a click, not a rectangle


def fraction_rect(fraction: Sequence[float], target: QRect) -> QRect:
    """A region (shares of the image) -> the rectangle it covers on ``target``, where the image is drawn."""
    fx, fy, fw, fh = fraction
    return QRect(target.left() + round(fx * target.width()), target.top() + round(fy * target.height()),
                 max(1, round(fw * target.width())), max(1, round(fh * target.height())))


def draw_region(painter: QPainter, target: QRect, fraction: Sequence[float] | None) -> None:
    """Outline the region ``fraction`` of the image drawn on ``target`` (nothing when None)."""
    if fraction is None or target.isEmpty():
        return
    painter.save()
    painter.setBrush(Qt.BrushStyle.NoBrush)
    painter.setPen(QPen(QColor("black"), 4))
    r = fraction_rect(fraction, target)
    painter.drawRect(r)
    painter.setPen(QPen(REGION_COLOUR, 2))
    painter.drawRect(r)
    painter.restore()


class RegionSelector(QObject):
    """A rubber band on ``label`` (a QLabel showing an image's scaled pixmap, the query preview).

    Dragging a rectangle on the image emits ``drawn(fraction)``; it stays shown until :meth:`show_fraction`
    None. Esc (the preview has the keyboard after a click) emits ``cleared``; the context menu offers
    "Search this region" (``drawn`` again with the shown rectangle) and "Search the whole image"."""

    drawn = Signal(object)  # (x, y, w, h) shares of the image
    cleared = Signal()

    def __init__(self, label: QLabel) -> None:
        super().__init__(label)
        self.label = label
        self.fraction: Fraction | None = None
        self.band = QRubberBand(QRubberBand.Shape.Rectangle, label)
        self._origin: QPoint | None = None
        self.menu: QMenu | None = None
        label.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        label.setToolTip("Drag a rectangle on the image to search with that part of it; Esc or right-click: "
                         "the whole image again")
        label.installEventFilter(self)

    def image_rect(self) -> QRect:
        """Where the label draws its pixmap (centred in its contents); empty when it shows none."""
        pm = self.label.pixmap()
        if pm is None or pm.isNull():
            return QRect()
        size = QSize(round(pm.width() / pm.devicePixelRatio()), round(pm.height() / pm.devicePixelRatio()))
        return QStyle.alignedRect(self.label.layoutDirection(), self.label.alignment(), size,
                                  self.label.contentsRect())

    def show_fraction(self, fraction: Fraction | None) -> None:
        """Show ``fraction`` as the query's region (None: hide the rectangle)."""
        self.fraction = tuple(fraction) if fraction is not None else None
        self._place()

    def fraction_at(self, a: QPoint, b: QPoint) -> Fraction | None:
        """The region spanned by two points of the label, as shares of the image (None: too small)."""
        img = self.image_rect()
        r = QRect(a, b).normalized().intersected(img)
        if img.isEmpty() or r.width() < MIN_DRAG or r.height() < MIN_DRAG:
            return None
        return ((r.left() - img.left()) / img.width(), (r.top() - img.top()) / img.height(),
                r.width() / img.width(), r.height() / img.height())

    def _place(self) -> None:
        img = self.image_rect()
        if self.fraction is None or img.isEmpty():
            self.band.hide()
            return
        self.band.setGeometry(fraction_rect(self.fraction, img))
        self.band.show()

    def _context_menu(self, pos: QPoint) -> QMenu:
        menu = QMenu(self.label)
        here = self.fraction
        act = menu.addAction("Search this &region", lambda: self.drawn.emit(here))
        act.setEnabled(here is not None)
        act = menu.addAction("Search the &whole image\tEsc", self.cleared.emit)
        act.setEnabled(here is not None)
        if here is None:
            menu.addSection("Drag a rectangle on the image to search with a part of it")
        return menu

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt override)
        if obj is not self.label:
            return False
        t = event.type()
        if t == QEvent.Type.MouseButtonPress and event.button() == Qt.MouseButton.LeftButton:
            pos = event.position().toPoint()
            if self.image_rect().contains(pos):
                self._origin = pos
                self.band.setGeometry(QRect(pos, QSize()))
                self.band.show()
                return True
        elif t == QEvent.Type.MouseMove and self._origin is not None:
            self.band.setGeometry(QRect(self._origin, event.position().toPoint()).normalized()
                                  .intersected(self.image_rect()))
            return True
        elif t == QEvent.Type.MouseButtonRelease and self._origin is not None:
            origin, self._origin = self._origin, None
            fraction = self.fraction_at(origin, event.position().toPoint())
            if fraction is None:
                self._place()  # a click: the region stays as it was
            else:
                self.show_fraction(fraction)
                self.drawn.emit(fraction)
            return True
        elif t == QEvent.Type.KeyPress and event.key() == Qt.Key.Key_Escape and self.fraction is not None:
            self.cleared.emit()
            return True
        elif t == QEvent.Type.ContextMenu:
            if self.menu is not None:
                self.menu.deleteLater()
            self.menu = self._context_menu(event.pos())
            self.menu.popup(event.globalPos())
            return True
        elif t == QEvent.Type.Resize:
            QTimer.singleShot(0, self._place)  # after the label has scaled its pixmap again
        return False
