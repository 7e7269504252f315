"""The map of the collection: every image at its 2-D coordinates (engine.mapping), coloured by label.

One QGraphicsItem draws all the points, with a level of detail so that 100,000 points stay fluid:

- the visible points are rasterised with numpy into one image per paint (a dot each, in its label's colour,
  ``DOT_PX`` in radius in the fitted view and growing as one zooms in, up to ``DOT_MAX_PX``; selected ones
  larger, ringed in black): the cost grows with the points on screen, not with items or Qt calls;
- once at most ``THUMB_LIMIT`` points are in view, or the view is zoomed ``THUMB_ZOOM`` times the fitted
  view (four wheel steps), or a thumbnail would be at least ``THUMB_MIN_PX`` wide, thumbnails are drawn above the dots: one per cell of a grid of thumbnail-sized cells fixed to the map (so
  that they stay put while panning), at most ``THUMB_LIMIT``, however dense the map (ThumbnailLoader:
  decoded off the GUI thread; the dot shows until its thumbnail arrives).

The first view is fitted to the points (all of them in view); a legend lists the classes (sub-folders) by
colour when the images have labels; hovering a point shows its file name and class in a tooltip.
Mouse: drag to pan, wheel to zoom, click an image to search with it (``imageClicked``), Shift+drag to draw
a lasso that selects the images inside (Ctrl+Shift adds to the selection); the selection can be exported as
a list of paths. The map is computed (or read from its cache beside the collection) in a worker; the
computation itself runs in a child process, so the GUI thread never waits for it.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QEvent, QObject, QPoint, QPointF, QRectF, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QBrush, QColor, QIcon, QImage, QPainter, QPainterPath, QPen, QPixmap, QPolygonF
from PySide6.QtWidgets import (
    QDialog,
    QFileDialog,
    QGraphicsItem,
    QGraphicsPathItem,
    QGraphicsScene,
    QGraphicsView,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QStyleOptionGraphicsItem,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from retrieval_gui import workers
from retrieval_gui.thumbnails import ThumbnailLoader

log = logging.getLogger(__name__)
#: scene units of the map's half width (coordinates in [-1, 1] are scaled by this)
SCALE = 1000.0
#: at most this many thumbnails in view: they are drawn once at most this many points are in view, or
#: from THUMB_ZOOM x the fitted view's zoom (at least THUMB_FEW_PX wide), or from the zoom at which a
#: thumbnail would be at least THUMB_MIN_PX wide
THUMB_LIMIT = 300
THUMB_ZOOM = 2.4
THUMB_MIN_PX = 40
THUMB_FEW_PX = 48
#: a thumbnail's size in scene units (it grows on screen as one zooms in, up to THUMB_MAX_PX)
THUMB_SCENE = 40.0
THUMB_MAX_PX = 160
#: a dot's radius in pixels in the fitted view (DOT_PX_DENSE above DENSE points), growing with the zoom
DOT_PX, DOT_PX_DENSE, DENSE, DOT_MAX_PX = 4, 2, 20_000, 10
CLICK_PX = 6
#: the legend lists at most this many classes (the most frequent)
LEGEND_LIMIT = 200


def map_job(collection_fn: Callable[[], Any], method: str | None = None, isolate: bool = True, *,
            progress=None, should_stop=None):
    """Worker: (the collection's map (engine.mapping.collection_map), from its cache or computed; its label
    colours (N, 3)), so that the GUI thread has nothing per point left to do."""
    from engine.mapping import DEFAULT_METHOD, collection_map, label_colours

    m = collection_map(collection_fn(), method or DEFAULT_METHOD, isolate=isolate, progress=progress,
                       should_stop=should_stop)
    return m, label_colours(m.labels)


def points_in_polygon(x: np.ndarray, y: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """(N,) bool: which points (x, y) lie inside ``poly`` (M, 2) (even-odd rule), vectorised per edge."""
    inside = np.zeros(x.shape[0], bool)
    if poly.shape[0] < 3 or x.size == 0:
        return inside
    lo, hi = poly.min(0), poly.max(0)
    cand = np.flatnonzero((x >= lo[0]) & (x <= hi[0]) & (y >= lo[1]) & (y <= hi[1]))
    if cand.size == 0:
        return inside
    px, py = x[cand], y[cand]
    hit = np.zeros(cand.size, bool)
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for ax, ay, bx, by in zip(x0, y0, x1, y1, strict=True):
        crosses = (ay > py) != (by > py)
        if not crosses.any():
            continue
        xcross = ax + (py - ay) * (bx - ax) / ((by - ay) if by != ay else 1e-12)
        hit ^= crosses & (px < xcross)
    inside[cand] = hit
    return inside


class PointCloud(QGraphicsItem):
    """All the map's points as one item (see the module docstring for the level of detail)."""

    def __init__(self, coords: np.ndarray, colours: np.ndarray, paths: list[str],
                 loader: ThumbnailLoader | None) -> None:
        super().__init__()
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemUsesExtendedStyleOption, True)
        xy = np.asarray(coords, np.float64).reshape(-1, 2)
        self.x = xy[:, 0] * SCALE
        self.y = -xy[:, 1] * SCALE  # y up on screen
        rgb = np.asarray(colours, np.uint32).reshape(-1, 3)
        self.argb = (0xFF000000 | (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]).astype(np.uint32)
        self.paths = list(paths)
        self.selected = np.zeros(self.x.shape[0], bool)
        self.loader = loader
        self.last_mode = "none"
        self.last_visible = 0
        self.last_thumbs = 0
        self.last_dot_px = 0
        #: the zoom (pixels per scene unit) of the fitted view: dots grow from DOT_PX relative to it
        self.fit_zoom = 0.0

    def boundingRect(self) -> QRectF:  # noqa: N802 (Qt override)
        m = SCALE + THUMB_SCENE * 2
        return QRectF(-m, -m, 2 * m, 2 * m)

    def data_rect(self) -> QRectF:
        """The scene rectangle holding every point (at least a small square around a single one)."""
        if self.x.size == 0:
            return QRectF(-SCALE, -SCALE, 2 * SCALE, 2 * SCALE)
        x0, x1, y0, y1 = self.x.min(), self.x.max(), self.y.min(), self.y.max()
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        w, h = max(x1 - x0, THUMB_SCENE * 4), max(y1 - y0, THUMB_SCENE * 4)
        return QRectF(cx - w / 2, cy - h / 2, w, h)

    def dot_px(self, zoom: float) -> int:
        """A dot's radius in pixels at ``zoom``: DOT_PX in the fitted view, growing as one zooms in."""
        base = DOT_PX if self.x.size <= DENSE else DOT_PX_DENSE
        rel = zoom / self.fit_zoom if self.fit_zoom > 0 else 1.0
        return int(np.clip(round(base * math.sqrt(max(rel, 1e-9))), base, DOT_MAX_PX))

    def thumb_px(self, zoom: float, visible: int) -> float:
        """The thumbnails' width in pixels at ``zoom`` with ``visible`` points in view (0: none drawn)."""
        px = min(THUMB_MAX_PX, THUMB_SCENE * zoom)
        zoomed_in = self.fit_zoom > 0 and zoom >= THUMB_ZOOM * self.fit_zoom * 0.999
        if 0 < visible <= THUMB_LIMIT or zoomed_in:
            px = max(px, THUMB_FEW_PX)
        return px if px >= THUMB_MIN_PX else 0.0

    def visible(self, rect: QRectF) -> np.ndarray:
        """Indices of the points inside ``rect`` (item coordinates)."""
        return np.flatnonzero((self.x >= rect.left()) & (self.x <= rect.right()) & (self.y >= rect.top())
                              & (self.y <= rect.bottom()))

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem,
              widget: QWidget | None = None) -> None:
        t = painter.worldTransform()
        zoom = math.hypot(t.m11(), t.m12())
        exposed = option.exposedRect.adjusted(-THUMB_SCENE, -THUMB_SCENE, THUMB_SCENE, THUMB_SCENE)
        idx = self.visible(exposed)
        self.last_visible = int(idx.size)
        thumb_px = self.thumb_px(zoom, int(self.visible(option.exposedRect).size))
        self.last_dot_px = self.dot_px(zoom)
        self._paint_dots(painter, idx, self.last_dot_px)
        self.last_thumbs = 0
        if self.loader is not None and thumb_px and idx.size:
            self.last_mode = "thumbnails"
            picked = self.grid_pick(idx, thumb_px / zoom)
            self.last_thumbs = int(picked.size)
            self._paint_thumbnails(painter, picked, thumb_px / zoom)
        else:
            self.last_mode = "dots"

    def grid_pick(self, idx: np.ndarray, cell: float) -> np.ndarray:
        """Of the points ``idx`` (sorted), the first in each ``cell`` x ``cell`` square of a grid fixed to the
        map, at most THUMB_LIMIT (those nearest the middle of ``idx``'s extent first)."""
        kx = np.floor(self.x[idx] / cell).astype(np.int64)
        ky = np.floor(self.y[idx] / cell).astype(np.int64)
        _, first = np.unique(kx * 1_000_003 + ky, return_index=True)
        picked = idx[np.sort(first)]
        if picked.size > THUMB_LIMIT:
            cx, cy = (self.x[idx].min() + self.x[idx].max()) / 2, (self.y[idx].min() + self.y[idx].max()) / 2
            d = (self.x[picked] - cx) ** 2 + (self.y[picked] - cy) ** 2
            picked = np.sort(picked[np.argsort(d, kind="stable")[:THUMB_LIMIT]])
        return picked

    def _paint_dots(self, painter: QPainter, idx: np.ndarray, radius: int) -> None:
        t = painter.worldTransform()
        vp = painter.viewport()
        w, h = max(1, vp.width()), max(1, vp.height())
        if idx.size == 0:
            return
        px = (self.x[idx] * t.m11() + self.y[idx] * t.m21() + t.m31()).astype(np.int32)
        py = (self.x[idx] * t.m12() + self.y[idx] * t.m22() + t.m32()).astype(np.int32)
        m = radius + 3
        on = (px > -m) & (px < w + m) & (py > -m) & (py < h + m)
        px, py, colour, sel = px[on], py[on], self.argb[idx][on], self.selected[idx][on]
        # a canvas with a border of `pad` pixels, so that a dot near the edge needs no bounds check: each
        # offset of the disc is one vectorised add and scatter over the points
        pad = 2 * m  # >= the largest disc (radius + 2) beyond the kept margin m
        pw = w + 2 * pad
        padded = np.zeros((h + 2 * pad) * pw, np.uint32)
        base = (py.astype(np.int64) + pad) * pw + px + pad

        def stamp(at: np.ndarray, c: np.ndarray | np.uint32, r: int) -> None:
            for oy in range(-r, r + 1):
                for ox in range(-r, r + 1):
                    if ox * ox + oy * oy <= r * r + 1:
                        padded[at + (oy * pw + ox)] = c

        if sel.any():
            stamp(base[~sel], colour[~sel], radius)
            stamp(base[sel], np.uint32(0xFF000000), radius + 2)
            stamp(base[sel], colour[sel], radius + 1)
        else:
            stamp(base, colour, radius)
        canvas = np.ascontiguousarray(padded.reshape(h + 2 * pad, pw)[pad:pad + h, pad:pad + w])
        img = QImage(canvas.data, w, h, 4 * w, QImage.Format.Format_ARGB32_Premultiplied)
        painter.save()
        painter.resetTransform()
        painter.drawImage(0, 0, img)
        painter.restore()

    def _paint_thumbnails(self, painter: QPainter, idx: np.ndarray, side: float) -> None:
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
        pen_sel = QPen(QColor(0, 0, 0), 0)
        ready = []
        painter.setPen(Qt.PenStyle.NoPen)
        for i in idx.tolist():  # the dots are drawn already: a thumbnail not decoded yet leaves its dot
            img = self.loader.request(self.paths[i]) if self.loader is not None else None
            if img is not None and not img.isNull():
                ready.append((i, img))
        for i, img in ready:
            s = side / max(img.width(), img.height())
            w, h = img.width() * s, img.height() * s
            r = QRectF(self.x[i] - w / 2, self.y[i] - h / 2, w, h)
            painter.fillRect(r.adjusted(-side * 0.04, -side * 0.04, side * 0.04, side * 0.04),
                             QColor.fromRgb(int(self.argb[i])))
            painter.drawImage(r, img)
            if self.selected[i]:
                painter.setPen(pen_sel)
                painter.setBrush(Qt.BrushStyle.NoBrush)
                painter.drawRect(r.adjusted(-side * 0.08, -side * 0.08, side * 0.08, side * 0.08))
                painter.setPen(Qt.PenStyle.NoPen)
        painter.restore()

    def nearest(self, pos: QPointF, radius: float) -> int | None:
        """The point closest to ``pos`` (item coordinates) within ``radius``, or None."""
        if self.x.size == 0:
            return None
        d = (self.x - pos.x()) ** 2 + (self.y - pos.y()) ** 2
        i = int(np.argmin(d))
        return i if d[i] <= radius * radius else None


class MapCanvas(QGraphicsView):
    """Pan (drag), zoom (wheel), click (``clicked(row)``), lasso (Shift+drag, ``lassoed(mask, add)``) and a
    tooltip (file name and class) over a point."""

    clicked = Signal(int)
    lassoed = Signal(object, bool)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setScene(QGraphicsScene(self))
        self.setViewportUpdateMode(QGraphicsView.ViewportUpdateMode.FullViewportUpdate)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setDragMode(QGraphicsView.DragMode.NoDrag)
        self.setBackgroundBrush(QColor(250, 250, 250))
        self.cloud: PointCloud | None = None
        self._press: QPointF | None = None
        self._last: QPointF | None = None
        self._moved = False
        self._lasso: list[QPointF] | None = None
        self._lasso_item: QGraphicsPathItem | None = None
        self._fitted = False
        self._user_moved = False  # zoomed or panned by the user: a resize keeps the view
        #: the images' labels (row -> class or None), for the tooltip
        self.labels: list[str | None] = []

    def set_cloud(self, cloud: PointCloud | None, labels: list[str | None] | None = None) -> None:
        self.scene().clear()
        self._lasso_item = None
        self.cloud = cloud
        self.labels = list(labels) if labels is not None else []
        if cloud is not None:
            self.scene().addItem(cloud)
            self.scene().setSceneRect(cloud.boundingRect().adjusted(-SCALE, -SCALE, SCALE, SCALE))
        self._fitted = False
        self.fit()

    def fit(self) -> None:
        """Show every point: the view fitted to the points' extent, with a margin for the dots."""
        if self.cloud is None or self.viewport().width() < 10:
            return
        self.resetTransform()
        r = self.cloud.data_rect()
        vp = self.viewport()
        # margin: a dot's radius plus a little air on each side, whatever the zoom comes out as
        zoom = min((vp.width() - 4 * DOT_MAX_PX) / r.width(), (vp.height() - 4 * DOT_MAX_PX) / r.height())
        zoom = max(zoom, 1e-6)
        self.scale(zoom, zoom)
        self.centerOn(r.center())
        self.cloud.fit_zoom = self.transform().m11()
        self._fitted = True
        self._user_moved = False

    def pick_radius(self) -> float:
        """How near (scene units) the pointer must be to a point to pick it: its dot or its thumbnail."""
        zoom = max(self.transform().m11(), 1e-9)
        radius = max(CLICK_PX, (self.cloud.last_dot_px if self.cloud is not None else 0) + 2) / zoom
        if self.cloud is not None and self.cloud.last_mode == "thumbnails":
            radius = max(radius, self.cloud.thumb_px(zoom, self.cloud.last_visible) / zoom / 2)
        return radius

    def row_at(self, pos: QPoint) -> int | None:
        """The point under viewport position ``pos``, or None."""
        if self.cloud is None:
            return None
        return self.cloud.nearest(self.mapToScene(pos), self.pick_radius())

    def tooltip_at(self, pos: QPoint) -> str:
        """The tooltip at viewport position ``pos``: the file name and its class ('' away from points)."""
        row = self.row_at(pos)
        if row is None:
            return ""
        name = Path(self.cloud.paths[row]).name
        label = self.labels[row] if row < len(self.labels) else None
        return f"{name}\nclass: {label}" if label else f"{name}\n(no class: not in a sub-folder)"

    def viewportEvent(self, event: QEvent) -> bool:  # noqa: N802 (Qt override)
        if event.type() == QEvent.Type.ToolTip:
            text = self.tooltip_at(event.pos())
            if text:
                QToolTip.showText(event.globalPos(), text, self.viewport())
            else:
                QToolTip.hideText()
                event.ignore()
            return True
        return super().viewportEvent(event)

    def zoom(self, factor: float) -> None:
        """Zoom by ``factor`` around the view's centre."""
        self._user_moved = True
        self.scale(factor, factor)

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt override)
        super().resizeEvent(event)
        if not self._fitted or not self._user_moved:  # the first view stays fitted until the user moves it
            self.fit()

    def wheelEvent(self, event) -> None:  # noqa: N802
        steps = event.angleDelta().y() / 120.0
        if steps:
            current = self.transform().m11()
            factor = 1.25 ** steps
            if 0.02 < current * factor < 400:
                self._user_moved = True
                self.scale(factor, factor)
        event.accept()

    def mousePressEvent(self, event) -> None:  # noqa: N802
        if event.button() != Qt.MouseButton.LeftButton:
            return super().mousePressEvent(event)
        self._press = self._last = event.position()
        self._moved = False
        if event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            self._lasso = [self.mapToScene(event.position().toPoint())]
            pen = QPen(QColor(21, 101, 192), 0, Qt.PenStyle.DashLine)
            self._lasso_item = self.scene().addPath(QPainterPath(), pen,
                                                    QBrush(QColor(21, 101, 192, 40)))
        event.accept()

    def mouseMoveEvent(self, event) -> None:  # noqa: N802
        if self._press is None:
            return super().mouseMoveEvent(event)
        pos = event.position()
        if (pos - self._press).manhattanLength() > 4:
            self._moved = True
        if self._lasso is not None:
            self._lasso.append(self.mapToScene(pos.toPoint()))
            path = QPainterPath()
            path.addPolygon(QPolygonF(self._lasso))
            path.closeSubpath()
            if self._lasso_item is not None:
                self._lasso_item.setPath(path)
        elif self._last is not None:
            delta = pos - self._last
            self._user_moved = True
            self.horizontalScrollBar().setValue(self.horizontalScrollBar().value() - int(delta.x()))
            self.verticalScrollBar().setValue(self.verticalScrollBar().value() - int(delta.y()))
        self._last = pos
        event.accept()

    def mouseReleaseEvent(self, event) -> None:  # noqa: N802
        if self._press is None or event.button() != Qt.MouseButton.LeftButton:
            return super().mouseReleaseEvent(event)
        lasso, self._lasso = self._lasso, None
        if self._lasso_item is not None:
            self.scene().removeItem(self._lasso_item)
            self._lasso_item = None
        if lasso is not None and self.cloud is not None and len(lasso) >= 3:
            poly = np.array([[p.x(), p.y()] for p in lasso], np.float64)
            add = bool(event.modifiers() & Qt.KeyboardModifier.ControlModifier)
            self.lassoed.emit(points_in_polygon(self.cloud.x, self.cloud.y, poly), add)
        elif not self._moved and self.cloud is not None:
            row = self.row_at(event.position().toPoint())
            if row is not None:
                self.clicked.emit(row)
        self._press = self._last = None
        event.accept()


def legend_entries(labels: list[str | None], colours: np.ndarray) -> list[tuple[str, tuple[int, int, int], int]]:
    """(class, RGB colour, count) per class of ``labels`` with its colour of ``colours`` (N, 3), the most
    frequent first (ties by name), at most LEGEND_LIMIT; images without a class are left out."""
    first: dict[str, int] = {}
    counts: dict[str, int] = {}
    for i, lab in enumerate(labels):
        if lab is None or lab == "":
            continue
        first.setdefault(lab, i)
        counts[lab] = counts.get(lab, 0) + 1
    names = sorted(counts, key=lambda k: (-counts[k], k))[:LEGEND_LIMIT]
    return [(k, tuple(int(c) for c in colours[first[k]]), counts[k]) for k in names]


class MapView(QDialog):
    """The map window. ``collection_fn()`` gives the engine Collection (called in a worker);
    ``on_query(path)`` is called when an image is clicked (the main window's ``set_query``); ``isolate``:
    compute in a child process (False: in the worker thread, for tests with the 'pca' method);
    ``ask_save() -> str`` picks the export file (default: a Qt dialog).

    ``imageClicked(path)``: an image was clicked to search with it; whoever shows the results connects it
    to its query and brings its results into view (:func:`open_map` does both for the main window)."""

    imageClicked = Signal(str)

    def __init__(self, collection_fn: Callable[[], Any], *, on_query: Callable[[str], None] | None = None,
                 method: str | None = None, isolate: bool = True, loader: ThumbnailLoader | None = None,
                 ask_save: Callable[[], str] | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Map of the collection")
        self.resize(1000, 800)
        self.collection_fn = collection_fn
        self.method = method
        self.isolate = isolate
        self.ask_save = ask_save or self._ask_save_dialog
        if loader is None:
            from engine.vocabulary import cache_root

            loader = ThumbnailLoader(96, cache_root() / "thumbnails", capacity=THUMB_LIMIT * 3, parent=self)
        self.loader = loader
        self.map: Any = None
        self._task: workers.TaskHandle | None = None
        #: deleted when closed, after its task has stopped (the window's menu sets it)
        self.delete_on_close = False
        if on_query is not None:
            self.imageClicked.connect(on_query)
        outer = QVBoxLayout(self)
        self.status = QLabel("Computing the map…")
        self.status.setWordWrap(True)
        outer.addWidget(self.status)
        self.canvas = MapCanvas()
        self.canvas.clicked.connect(self._on_clicked)
        self.canvas.lassoed.connect(self._on_lasso)
        middle = QHBoxLayout()
        middle.addWidget(self.canvas, 1)
        self.legend = QListWidget()
        self.legend.setMaximumWidth(200)
        self.legend.setIconSize(QSize(12, 12))
        self.legend.setToolTip("The classes (sub-folders) by colour, with their number of images")
        self.legend.hide()
        middle.addWidget(self.legend)
        outer.addLayout(middle, 1)
        row = QHBoxLayout()
        hint = QLabel("Drag to pan · wheel to zoom · click an image to search with it · Shift+drag to select "
                      "(Ctrl+Shift adds)")
        hint.setStyleSheet("color: #555")
        row.addWidget(hint, 1)
        self.fit_button = QPushButton("Fit")
        self.fit_button.clicked.connect(self.canvas.fit)
        row.addWidget(self.fit_button)
        self.selection_label = QLabel()
        self.selection_label.setMinimumWidth(110)
        self.selection_label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        row.addWidget(self.selection_label)
        self.clear_button = QPushButton("Clear selection")
        self.clear_button.clicked.connect(self.clear_selection)
        row.addWidget(self.clear_button)
        self.export_button = QPushButton("Export selection…")
        self.export_button.clicked.connect(lambda: self.export_selection())
        row.addWidget(self.export_button)
        outer.addLayout(row)
        self.loader.ready.connect(self._on_thumbnail)
        self._repaint = QTimer(self)
        self._repaint.setSingleShot(True)
        self._repaint.setInterval(50)
        self._repaint.timeout.connect(self.canvas.viewport().update)
        self._update_selection()

    def start(self) -> workers.TaskHandle:
        """Load or compute the map in a worker."""
        if self._task is not None and self._task.is_running():
            return self._task
        self.status.setText("Computing the map…")
        task = workers.start_task(map_job, self.collection_fn, self.method, self.isolate, parent=self,
                                  name="map")
        task.progress.connect(lambda _d, _t, msg: self.status.setText(f"{msg}…"))
        task.result.connect(lambda out: self.set_map(*out))
        task.error.connect(lambda msg, _tb: self.status.setText(f"Cannot compute the map: {msg}"))
        self._task = task
        return task

    def set_map(self, m: Any, colours: np.ndarray | None = None) -> None:
        """Show a CollectionMap (engine.mapping) with its label colours (N, 3) (computed here when None)."""
        from engine.mapping import label_colours

        self.map = m
        n = len(m)
        if n == 0:
            self.canvas.set_cloud(None)
            self._set_legend([], np.zeros((0, 3), np.uint8))
            self.status.setText("No image is indexed yet: wait for indexing to finish, then open the map "
                                "again.")
            self._update_selection()
            return
        if colours is None:
            colours = label_colours(m.labels)
        cloud = PointCloud(m.coords, colours, m.paths, self.loader)
        labels = list(m.labels)
        self.canvas.set_cloud(cloud, labels)
        self._set_legend(labels, colours)
        how = "from the cache" if m.cached else f"computed in {m.seconds:.1f} s"
        what = "colours: the images' sub-folders (legend on the right)" if self.legend.count() else \
            "no classes (the images are not in sub-folders)"
        self.status.setText(f"{n:,} images, {m.method.upper() if m.method != 'tsne' else 't-SNE'} ({how}); "
                            f"{what}")
        self._update_selection()

    def _set_legend(self, labels: list[str | None], colours: np.ndarray) -> None:
        """One row per class (colour swatch, name, count); hidden when the images have no classes."""
        self.legend.clear()
        entries = legend_entries(labels, colours)
        for name, (r, g, b), count in entries:
            swatch = QPixmap(12, 12)
            swatch.fill(QColor(r, g, b))
            item = QListWidgetItem(QIcon(swatch), f"{name} ({count:,})")
            item.setData(Qt.ItemDataRole.UserRole, name)
            self.legend.addItem(item)
        classes = len({lab for lab in labels if lab})
        if classes > len(entries):
            self.legend.addItem(f"… {classes - len(entries):,} more classes")
        self.legend.setVisible(bool(entries))

    @property
    def cloud(self) -> PointCloud | None:
        return self.canvas.cloud

    def _on_thumbnail(self, path: str, _img: QImage) -> None:
        if self.cloud is not None and self.cloud.last_mode == "thumbnails" and not self._repaint.isActive():
            self._repaint.start()

    def _on_clicked(self, row: int) -> None:
        if self.cloud is not None:
            self.imageClicked.emit(self.cloud.paths[row])

    def _on_lasso(self, mask: np.ndarray, add: bool) -> None:
        if self.cloud is None:
            return
        self.cloud.selected = (self.cloud.selected | mask) if add else mask
        self.canvas.viewport().update()
        self._update_selection()

    def clear_selection(self) -> None:
        if self.cloud is not None:
            self.cloud.selected[:] = False
            self.canvas.viewport().update()
        self._update_selection()

    def selected_paths(self) -> list[str]:
        if self.cloud is None:
            return []
        return [self.cloud.paths[i] for i in np.flatnonzero(self.cloud.selected)]

    def _update_selection(self) -> None:
        n = int(self.cloud.selected.sum()) if self.cloud is not None else 0
        self.selection_label.setText(f"{n:,} selected" if n else "")
        self.export_button.setEnabled(n > 0)
        self.clear_button.setEnabled(n > 0)

    def export_selection(self, path: str | None = None) -> str | None:
        """Write the selected images (path, x, y, label) as CSV; returns the file."""
        rows = np.flatnonzero(self.cloud.selected) if self.cloud is not None else np.zeros(0, int)
        if rows.size == 0:
            return None
        path = path or self.ask_save()
        if not path:
            return None
        from engine.atomic import write_target

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "x", "y", "label"])
        for i in rows.tolist():
            x, y = self.map.coords[i].tolist()
            w.writerow([self.map.paths[i], f"{x:.6f}", f"{y:.6f}", self.map.labels[i] or ""])
        try:
            write_target(path, buf.getvalue())  # a FIFO or a device written through, a folder refused
        except (ValueError, OSError) as exc:  # engine.atomic.TargetError names the fix
            self.status.setText(f"Not written: {exc}")
            return None
        self.status.setText(f"Wrote {rows.size:,} images to {path}")
        return path

    def _ask_save_dialog(self) -> str:
        path, _ = QFileDialog.getSaveFileName(self, "Export the selected images",
                                              str(Path.home() / "selection.csv"),
                                              "CSV (*.csv)")
        return path

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt override)
        running = self._task is not None and self._task.is_running()
        if running:
            self._task.cancel()
        super().closeEvent(event)
        if self.delete_on_close:  # once its thread is done: a task must not outlive its parent
            if running:
                self._task.finished.connect(self.deleteLater)
            else:
                self.deleteLater()

    def wait_idle(self, msecs: int = 60_000) -> bool:
        return self._task.wait(msecs) if self._task is not None else True


def bring_to_front(window: QWidget) -> None:
    """Show ``window`` above the others and give it the focus (its results in view after a map click)."""
    if window.isMinimized():
        window.showNormal()
    window.raise_()
    window.activateWindow()


class _CloseWith(QObject):
    """Closes ``view`` when the watched window closes (the map is a window of its own, not a child)."""

    def __init__(self, view: MapView, window: QWidget) -> None:
        super().__init__(view)
        self.view = view
        window.installEventFilter(self)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt override)
        if event.type() == QEvent.Type.Close and self.view.isVisible():
            self.view.close()
        return False


#: the open map windows (they have no Qt parent: a child window would always stay above the main window)
_OPEN: set[MapView] = set()


def open_views() -> list[MapView]:
    """The map windows :func:`open_map` opened that are not deleted yet."""
    return list(_OPEN)


def open_map(window: Any, **kw: Any) -> MapView | None:
    """Open the map on ``window``'s collection and current descriptor; a click queries with the image and
    brings ``window`` (with its results) to the front.

    The map is a window of its own (no Qt parent), so that the main window can come above it; it closes
    with ``window``. A window that opens MapView itself connects ``imageClicked`` to its query and then to
    ``bring_to_front(itself)`` in the same way. ``kw``: passed to MapView (method, isolate, loader)."""
    from PySide6.QtWidgets import QMessageBox

    index, key = getattr(window, "index", None), getattr(window, "key", None)
    if index is None or key is None:
        QMessageBox.information(window, "Map of the collection", "Open an image folder first.")
        return None
    view = MapView(lambda: index.collection(key), on_query=window.set_query, **kw)
    view.imageClicked.connect(lambda _path: bring_to_front(window))
    _CloseWith(view, window)
    view.delete_on_close = True
    _OPEN.add(view)
    view.destroyed.connect(lambda *_a, v=view: _OPEN.discard(v))
    view.show()
    QTimer.singleShot(0, view.start)
    return view
