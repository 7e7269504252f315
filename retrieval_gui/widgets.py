"""The explorer's building blocks: the query slot, the results grid (model, delegate, view), the viewer."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import (
    QAbstractListModel,
    QMimeData,
    QModelIndex,
    QPersistentModelIndex,
    QPoint,
    QRect,
    QSize,
    Qt,
    QUrl,
    Signal,
    Slot,
)
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPen, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QListView,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from engine.images import IMAGE_EXTENSIONS
from engine.search import SearchOptions
from engine.session import hit as make_hit
from engine.session import model_title
from engine.vocabulary import SearchHit, multi_scales
from retrieval_gui.regions import draw_region
from retrieval_gui.thumbnails import ThumbnailLoader

HIT_COLOUR = QColor(46, 160, 67)
MISS_COLOUR = QColor(218, 54, 51)
PLAIN_COLOUR = QColor(120, 120, 120)
NOTE_ONLY_COLOUR = QColor(230, 140, 0)
NOTE_MOVE_COLOUR = QColor(21, 101, 192)
ONLY_HERE = "only here"
HitRole = Qt.ItemDataRole.UserRole + 1
MarkRole = Qt.ItemDataRole.UserRole + 2


def is_image_file(path: str) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS and os.path.isfile(path)


def image_path_from_mime(mime: QMimeData) -> str | None:
    """The first local image file among the mime data's URLs (file-manager drops, result drags)."""
    if mime is None or not mime.hasUrls():
        return None
    for url in mime.urls():
        if url.isLocalFile() and is_image_file(url.toLocalFile()):
            return url.toLocalFile()
    return None


def folder_from_mime(mime: QMimeData) -> str | None:
    """The first local folder among the mime data's URLs (a folder dropped from a file manager)."""
    if mime is None or not mime.hasUrls():
        return None
    for url in mime.urls():
        if url.isLocalFile() and os.path.isdir(url.toLocalFile()):
            return url.toLocalFile()
    return None


class QuerySlot(QLabel):
    """Shows the query image; accepts image files dropped from a file manager or the results grid."""

    imageDropped = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAcceptDrops(True)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setMinimumSize(220, 220)
        self.setWordWrap(True)
        self.setObjectName("querySlot")
        self._image: QImage | None = None
        self.path: str | None = None
        self._set_style(False)
        self.clear_image()

    def _set_style(self, hover: bool) -> None:
        border = "#1565c0" if hover else "#9e9e9e"
        self.setStyleSheet(f"QLabel#querySlot {{ border: 2px dashed {border}; border-radius: 8px;"
                           " background: #f5f7fa; color: #555; padding: 6px; }")

    def clear_image(self) -> None:
        self._image = None
        self.path = None
        self.setPixmap(QPixmap())
        self.setText("Drop an image here\n\nor paste one (Ctrl+V)\nor File > Open query image…")

    def set_image(self, path: str, image: QImage | None) -> None:
        self.path = path
        self._image = image if image is not None and not image.isNull() else None
        self._refresh()

    def _refresh(self) -> None:
        if self._image is None:
            self.setPixmap(QPixmap())
            self.setText(Path(self.path).name if self.path else "")
            return
        pm = QPixmap.fromImage(self._image).scaled(self.width() - 16, self.height() - 16,
                                                   Qt.AspectRatioMode.KeepAspectRatio,
                                                   Qt.TransformationMode.SmoothTransformation)
        self.setPixmap(pm)

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt override)
        super().resizeEvent(event)
        if self._image is not None:
            self._refresh()

    def dragEnterEvent(self, event) -> None:  # noqa: N802
        if image_path_from_mime(event.mimeData()):
            event.acceptProposedAction()
            self._set_style(True)
        else:
            event.ignore()

    def dragMoveEvent(self, event) -> None:  # noqa: N802
        if image_path_from_mime(event.mimeData()):
            event.acceptProposedAction()

    def dragLeaveEvent(self, event) -> None:  # noqa: N802
        self._set_style(False)

    def dropEvent(self, event) -> None:  # noqa: N802
        self._set_style(False)
        path = image_path_from_mime(event.mimeData())
        if path:
            event.acceptProposedAction()
            self.imageDropped.emit(path)
        else:
            event.ignore()


def browse_rows(paths: list[str]) -> dict[str, list[int]]:
    """path -> its row numbers (for :meth:`ResultsModel.set_collection`; make it in a worker for many)."""
    rows: dict[str, list[int]] = {}
    for i, p in enumerate(paths):
        rows.setdefault(p, []).append(i)
    return rows


class CollectionRows(Sequence):
    """The collection view's rows as hits without rank or score, made when asked for (100k images cost
    nothing until painted)."""

    def __init__(self, paths: list[str], labels: list[str | None]) -> None:
        self.paths, self.labels = paths, labels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return make_hit(self.paths[i], float("nan"), (i % len(self.paths)) + 1, self.labels[i])


class ResultsModel(QAbstractListModel):
    """Ranked hits; thumbnails come lazily from a ThumbnailLoader and update their rows when ready."""

    def __init__(self, loader: ThumbnailLoader, parent=None) -> None:
        super().__init__(parent)
        self.loader = loader
        self.hits: Sequence[SearchHit] = []  # a list of results, or the collection view's CollectionRows
        self.query_label: str | None = None
        #: the rows are the collection's images (no rank or score), not the results of a query
        self.browsing = False
        #: the rows are results that no longer answer the current query or settings (drawn faded)
        self.stale = False
        #: a short tag per path drawn on its card (the comparison's "only here", "↑3")
        self.notes: dict[str, str] = {}
        #: the best-matching region of a region query's results, drawn on their cards (retrieval_gui.regions)
        self.regions: dict[str, tuple[float, float, float, float]] = {}
        #: the user's relevance marks, path -> +1 / -1 (controllers.feedback), drawn as a badge
        self.feedback: dict[str, int] = {}
        self._rows: dict[str, list[int]] = {}
        self._pixmaps: dict[str, QPixmap] = {}
        loader.ready.connect(self._on_thumbnail)

    def set_hits(self, hits: list[SearchHit], query_label: str | None = None, notes: dict[str, str] | None = None) -> None:
        """Show the ranked results of a query (fresh: not stale)."""
        self.beginResetModel()
        self.loader.clear_queue()
        self.browsing = False
        self.stale = False
        self.notes = dict(notes or {})
        self.regions = {}
        self._set_rows(list(hits), query_label)
        self.endResetModel()

    def set_collection(self, paths: list[str], labels: list[str | None],
                       rows: dict[str, list[int]] | None = None) -> None:
        """Show the collection's images to browse (``rows``: path -> row numbers, made by the caller's worker
        for a large collection). When the rows so far are the start of ``paths`` (a collection being indexed
        grows at its end) the new ones are appended, keeping the scroll position. Nothing here is per image:
        the rows' SearchHit objects are made as they are painted."""
        rows = rows if rows is not None else browse_rows(paths)
        old = self.hits if isinstance(self.hits, CollectionRows) else None
        n = len(old) if (old is not None and self.browsing) else -1
        if 0 <= n <= len(paths) and (n == 0 or (old.paths[0] == paths[0] and old.paths[n - 1] == paths[n - 1])):
            if len(paths) > n:
                self.beginInsertRows(QModelIndex(), n, len(paths) - 1)
                self.hits, self._rows = CollectionRows(paths, labels), rows
                self.endInsertRows()
            return
        self.beginResetModel()
        self.loader.clear_queue()
        self.browsing, self.stale, self.notes, self.regions = True, False, {}, {}
        self.hits, self.query_label, self._rows = CollectionRows(paths, labels), None, rows
        self._pixmaps = {p: pm for p, pm in self._pixmaps.items() if p in self._rows}
        self.endResetModel()

    def set_stale(self, stale: bool) -> None:
        """Mark the results as out of date (or current again) and repaint them."""
        if stale != self.stale and not self.browsing:
            self.stale = stale
            if self.hits:
                self.dataChanged.emit(self.index(0), self.index(len(self.hits) - 1))

    def set_regions(self, regions: dict[str, tuple[float, float, float, float]]) -> None:
        """Draw these best regions (path -> shares of the image) on the results' cards (replacing any)."""
        changed = set(self.regions) | set(regions)
        self.regions = dict(regions)
        for p in changed:
            for r in self._rows.get(p, ()):
                self.dataChanged.emit(self.index(r), self.index(r))

    def set_feedback(self, marks: dict[str, int]) -> None:
        """The user's relevance marks (path -> +1 / -1) to draw on the cards."""
        changed = set(marks.items()) ^ set(self.feedback.items())
        self.feedback = dict(marks)
        for path in {p for p, _ in changed}:
            for r in self._rows.get(path, []):
                self.dataChanged.emit(self.index(r), self.index(r))

    def _set_rows(self, hits: list[SearchHit], query_label: str | None) -> None:
        self.hits = hits
        self.query_label = query_label
        self._rows = {}
        for i, h in enumerate(self.hits):
            self._rows.setdefault(h.path, []).append(i)
        self._pixmaps = {p: pm for p, pm in self._pixmaps.items() if p in self._rows}

    def hit_at(self, row: int) -> SearchHit | None:
        return self.hits[row] if 0 <= row < len(self.hits) else None

    def pixmap_at(self, row: int) -> QPixmap | None:
        """The row's thumbnail when loaded (requests it otherwise)."""
        h = self.hit_at(row)
        if h is None:
            return None
        pm = self._pixmaps.get(h.path)
        if pm is None:
            img = self.loader.request(h.path)
            if img is not None and not img.isNull():
                pm = self._pixmaps[h.path] = QPixmap.fromImage(img)
        return pm

    def mark(self, hit: SearchHit) -> bool | None:
        if self.query_label is None or hit.label is None or self.browsing:
            return None
        return hit.label == self.query_label

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(self.hits)

    def data(self, index, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or index.row() >= len(self.hits):
            return None
        h = self.hits[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return Path(h.path).name if self.browsing else f"#{h.rank}  {h.score:.3f}\n{Path(h.path).name}"
        if role == Qt.ItemDataRole.DecorationRole:
            return self.pixmap_at(index.row())
        if role == Qt.ItemDataRole.ToolTipRole:
            lab = f"\nlabel: {h.label}" if h.label is not None else ""
            if self.browsing:
                return f"{h.path}{lab}\nclick or Enter: search with this image · Space: preview"
            mark = {1: "\nmarked relevant (+)", -1: "\nmarked not relevant (−)"}.get(self.feedback.get(h.path, 0), "")
            return (f"{h.path}\nrank {h.rank}, score {h.score:.4f}{lab}{mark}\n"
                    "+ / − / 0: mark relevant, not relevant, clear (or click the badge, bottom left)")
        if role == HitRole:
            return h
        if role == MarkRole:
            return self.mark(h)
        return None

    def flags(self, index):
        f = super().flags(index)
        return f | Qt.ItemFlag.ItemIsDragEnabled if index.isValid() else f

    def mimeTypes(self) -> list[str]:  # noqa: N802
        return ["text/uri-list"]

    def mimeData(self, indexes) -> QMimeData:  # noqa: N802
        mime = QMimeData()
        mime.setUrls([QUrl.fromLocalFile(self.hits[i.row()].path) for i in indexes if i.isValid()])
        return mime

    def supportedDragActions(self):  # noqa: N802
        return Qt.DropAction.CopyAction

    @Slot(str, QImage)
    def _on_thumbnail(self, path: str, img: QImage) -> None:
        rows = self._rows.get(path)
        if not rows:
            return
        if not img.isNull():
            self._pixmaps[path] = QPixmap.fromImage(img)
        for r in rows:
            idx = self.index(r)
            self.dataChanged.emit(idx, idx, [Qt.ItemDataRole.DecorationRole])


#: the keys that mark the current card (the text they type): relevant, not relevant, no mark
MARK_KEYS = {"+": 1, "=": 1, "-": -1, "0": 0}
FEEDBACK_COLOURS = {1: QColor("#1e88e5"), -1: QColor("#8e24aa")}


def paint_feedback_badge(painter: QPainter, badge: QRect, mark: int, font: QFont) -> None:
    """A relevance mark: a filled blue + or purple − disc; an empty ring for no mark (click to mark)."""
    painter.save()
    if mark:
        painter.setPen(QPen(QColor("white"), 2))
        painter.setBrush(FEEDBACK_COLOURS[1 if mark > 0 else -1])
        painter.drawEllipse(badge)
        f = QFont(font)
        f.setBold(True)
        painter.setFont(f)
        painter.drawText(badge, Qt.AlignmentFlag.AlignCenter, "+" if mark > 0 else "−")
    else:
        painter.setOpacity(painter.opacity() * 0.5)
        painter.setPen(QPen(QColor("#607d8b"), 1.5))
        painter.setBrush(QColor(255, 255, 255, 160))
        painter.drawEllipse(badge.adjusted(3, 3, -3, -3))
    painter.restore()


class ResultDelegate(QStyledItemDelegate):
    """A card: the thumbnail framed green (same label as the query), red (another) or grey; rank,
    score and file name below."""

    def __init__(self, thumb: int = 150, parent=None) -> None:
        super().__init__(parent)
        self.thumb = thumb

    def sizeHint(self, option, index) -> QSize:  # noqa: N802
        return QSize(self.thumb + 16, self.thumb + 46)

    def thumb_box(self, rect: QRect) -> QRect:
        """The thumbnail's square inside a card's ``rect``."""
        r = rect.adjusted(3, 3, -3, -3)
        return QRect(r.left() + (r.width() - self.thumb) // 2, r.top() + 4, self.thumb, self.thumb)

    def feedback_badge(self, rect: QRect) -> QRect:
        """Where a card's relevance mark is drawn (and clicked): the thumbnail's bottom-left corner."""
        box = self.thumb_box(rect)
        return QRect(box.left() + 4, box.bottom() - 25, 22, 22)

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index) -> None:
        # Read the Python model directly: QModelIndex.data() returning None from Python over-releases
        # None in PySide6 6.12 / CPython 3.11 and crashes the process after some thousand calls.
        model = index.model()
        if not isinstance(model, ResultsModel):
            return
        hit = model.hit_at(index.row())
        if hit is None:
            return
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        if model.stale:
            painter.setOpacity(0.35)
        r = option.rect.adjusted(3, 3, -3, -3)
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor("#dbe8fb") if selected else QColor("#ffffff"))
        painter.drawRoundedRect(r, 6, 6)
        mark = model.mark(hit)
        colour = PLAIN_COLOUR if mark is None else (HIT_COLOUR if mark else MISS_COLOUR)
        box = self.thumb_box(option.rect)
        pm = model.pixmap_at(index.row())
        if isinstance(pm, QPixmap) and not pm.isNull():
            scaled = pm if (pm.width() <= box.width() and pm.height() <= box.height()) else pm.scaled(
                box.size(), Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)
            shown = QRect(box.left() + (box.width() - scaled.width()) // 2,
                          box.top() + (box.height() - scaled.height()) // 2, scaled.width(), scaled.height())
            painter.drawPixmap(shown.topLeft(), scaled)
            draw_region(painter, shown, model.regions.get(hit.path))
        else:
            painter.setBrush(QColor("#eceff1"))
            painter.drawRect(box)
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.setPen(QPen(colour, 4 if mark is not None else 1))
        painter.drawRect(box.adjusted(1, 1, -1, -1))
        if mark is not None:  # a badge with ✓ / ✗
            badge = QRect(box.right() - 24, box.top() + 4, 20, 20)
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(colour)
            painter.drawEllipse(badge)
            painter.setPen(QColor("white"))
            f = QFont(option.font)
            f.setBold(True)
            painter.setFont(f)
            painter.drawText(badge, Qt.AlignmentFlag.AlignCenter, "✓" if mark else "✗")
        if not model.browsing:  # the user's relevance mark: a + / − badge, an empty ring to click when none
            paint_feedback_badge(painter, self.feedback_badge(option.rect), model.feedback.get(hit.path, 0),
                                 option.font)
        note = model.notes.get(hit.path)
        if note:  # the comparison's tag, top left: amber for "only here", blue for a rank move
            f = QFont(option.font)
            f.setBold(True)
            painter.setFont(f)
            tw = painter.fontMetrics().horizontalAdvance(note) + 10
            tag = QRect(box.left() + 4, box.top() + 4, min(tw, box.width() - 8), 18)
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(NOTE_ONLY_COLOUR if note == ONLY_HERE else NOTE_MOVE_COLOUR)
            painter.drawRoundedRect(tag, 4, 4)
            painter.setPen(QColor("white"))
            painter.drawText(tag, Qt.AlignmentFlag.AlignCenter, note)
        line1 = QRect(r.left() + 4, box.bottom() + 4, r.width() - 8, 18)
        name = Path(hit.path).name if hit.label is None else f"{hit.label}/{Path(hit.path).name}"
        if model.browsing:  # no rank or score: the label, then the name
            painter.setFont(option.font)
            painter.setPen(QColor("#333"))
            painter.drawText(line1, Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignVCenter,
                             painter.fontMetrics().elidedText(hit.label or "", Qt.TextElideMode.ElideRight,
                                                              line1.width()))
            name = Path(hit.path).name
        else:
            painter.setPen(QColor("#222"))
            f = QFont(option.font)
            f.setBold(True)
            painter.setFont(f)
            painter.drawText(line1, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, f"#{hit.rank}")
            painter.drawText(line1, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, f"{hit.score:.3f}")
        painter.setFont(option.font)
        painter.setPen(QColor("#555"))
        line2 = QRect(r.left() + 4, line1.bottom() + 1, r.width() - 8, 16)
        painter.drawText(line2, Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignVCenter,
                         painter.fontMetrics().elidedText(name, Qt.TextElideMode.ElideMiddle, line2.width()))
        painter.restore()


class ResultsView(QListView):
    """The results grid: IconMode, drag a card out (file URL), click = select, double-click or Enter =
    query with it, Space = toggle the preview, right-click = the card's menu (``hitMenu``)."""

    hitActivated = Signal(object)  # double-click or Enter: query with this hit
    hitSelected = Signal(object)  # single click: show larger / activations
    previewToggled = Signal(object)  # Space: show or hide the preview of this hit
    hitMenu = Signal(object, QPoint)  # right-click on a card: (hit, global position)
    currentHitChanged = Signal(object)  # the current card changed (click or arrow keys)
    escapePressed = Signal()  # Escape: close the preview
    #: + / - / 0 on a card (hit, +1 / -1 / 0), or a click on its mark badge (hit, None: the next mark)
    markRequested = Signal(object, object)

    def __init__(self, model: ResultsModel, thumb: int = 150, parent=None) -> None:
        super().__init__(parent)
        self.setModel(model)
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setMovement(QListView.Movement.Static)
        self.setUniformItemSizes(True)
        self.setLayoutMode(QListView.LayoutMode.Batched)  # a collection of 100k cards is laid out in steps
        self.setBatchSize(400)
        self.setSpacing(4)
        self.setWordWrap(True)
        self.setItemDelegate(ResultDelegate(thumb, self))
        self.setSelectionMode(QListView.SelectionMode.SingleSelection)
        self.setDragEnabled(True)
        self.setDragDropMode(QListView.DragDropMode.DragOnly)
        self.setStyleSheet("QListView { background: #eef1f5; border: none; }")
        self.doubleClicked.connect(lambda idx: self.hitActivated.emit(model.hit_at(idx.row())))
        self.clicked.connect(lambda idx: self.hitSelected.emit(model.hit_at(idx.row())))
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.customContextMenuRequested.connect(self._on_menu)
        self.selectionModel().currentChanged.connect(
            lambda cur, _prev: self.currentHitChanged.emit(model.hit_at(cur.row()) if cur.isValid() else None))

    def current_hit(self) -> SearchHit | None:
        model = self.model()
        idx = self.currentIndex()
        return model.hit_at(idx.row()) if isinstance(model, ResultsModel) and idx.isValid() else None

    def keyPressEvent(self, event) -> None:  # noqa: N802 (Qt override)
        key = event.key()
        if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self.current_hit() is not None:
            self.hitActivated.emit(self.current_hit())
            event.accept()
            return
        if key == Qt.Key.Key_Space and not event.modifiers() and self.current_hit() is not None:
            self.previewToggled.emit(self.current_hit())
            event.accept()
            return
        if key == Qt.Key.Key_Escape:  # the preview opens without taking the keyboard: Escape here closes it
            self.escapePressed.emit()
            event.accept()
            return
        value = MARK_KEYS.get(event.text()) if not (event.modifiers() & Qt.KeyboardModifier.ControlModifier) else None
        model = self.model()
        if value is not None and self.current_hit() is not None and not getattr(model, "browsing", True):
            self.markRequested.emit(self.current_hit(), value)
            event.accept()
            return
        super().keyPressEvent(event)

    def mousePressEvent(self, event) -> None:  # noqa: N802 (Qt override)
        idx = self.indexAt(event.position().toPoint())
        model, delegate = self.model(), self.itemDelegate()
        if (idx.isValid() and event.button() == Qt.MouseButton.LeftButton and isinstance(model, ResultsModel)
                and not model.browsing and isinstance(delegate, ResultDelegate)
                and delegate.feedback_badge(self.visualRect(idx)).contains(event.position().toPoint())):
            self.setCurrentIndex(idx)
            self.markRequested.emit(model.hit_at(idx.row()), None)
            event.accept()
            return
        super().mousePressEvent(event)

    def _on_menu(self, pos: QPoint) -> None:
        idx = self.indexAt(pos)
        model = self.model()
        if not idx.isValid() or not isinstance(model, ResultsModel):
            return
        self.setCurrentIndex(idx)
        self.hitMenu.emit(model.hit_at(idx.row()), self.viewport().mapToGlobal(pos))


class ImageViewer(QDialog):
    """The preview: a larger view of one image with its file path (non-modal, reused: :meth:`show_hit`
    puts another image in the same window). Space or Escape hides it."""

    def __init__(self, path: str = "", info: str = "", parent=None) -> None:
        super().__init__(parent)
        self.setAttribute(Qt.WidgetAttribute.WA_ShowWithoutActivating)  # the grid keeps the keyboard
        self.path = path
        self._image: QImage | None = None
        self.region: tuple[float, float, float, float] | None = None  # drawn on the image (retrieval_gui.regions)
        lay = QVBoxLayout(self)
        self.image = QLabel(alignment=Qt.AlignmentFlag.AlignCenter)
        self.image.setMinimumSize(240, 240)
        # the pixmap follows the window's size, never the other way round
        self.image.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)
        lay.addWidget(self.image, 1)
        self.info = QLabel()
        self.info.setWordWrap(True)
        self.info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(self.info)
        self.path_label = QLabel()
        self.path_label.setWordWrap(True)
        self.path_label.setStyleSheet("color:#555; font-family: monospace")
        self.path_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(self.path_label)
        self.resize(560, 600)
        self.show_hit(path, info)

    def show_hit(self, path: str, info: str = "", image: QImage | None = None) -> None:
        """Show ``path`` (its image when given, else 'loading…' until :meth:`set_image`), no region drawn."""
        self.path = path
        self.region = None
        self.setWindowTitle(f"{Path(path).name} — preview" if path else "Preview")
        self.info.setText(info)
        self.info.setVisible(bool(info))
        self.path_label.setText(path)
        self._image = None
        if image is not None:
            self.set_image(image)
        else:
            self.image.setPixmap(QPixmap())
            self.image.setText("loading…" if path else "")

    def set_image(self, img: QImage) -> None:
        if img.isNull():
            self._image = None
            self.image.setPixmap(QPixmap())
            self.image.setText("cannot read this image")
            return
        self._image = img
        self._fit()

    def set_region(self, region: tuple[float, float, float, float] | None) -> None:
        """Outline this part of the image (shares of its width and height; None: none)."""
        self.region = region
        self._fit()

    def _fit(self) -> None:
        if self._image is not None:
            size = self.image.size()
            pm = QPixmap.fromImage(self._image).scaled(
                max(16, size.width()), max(16, size.height()), Qt.AspectRatioMode.KeepAspectRatio,
                Qt.TransformationMode.SmoothTransformation)
            if self.region is not None:
                painter = QPainter(pm)
                draw_region(painter, pm.rect(), self.region)
                painter.end()
            self.image.setPixmap(pm)

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt override)
        super().resizeEvent(event)
        self._fit()

    def keyPressEvent(self, event) -> None:  # noqa: N802 (Qt override)
        if event.key() in (Qt.Key.Key_Space, Qt.Key.Key_Escape):
            self.hide()
            event.accept()
            return
        super().keyPressEvent(event)


class SearchBar(QToolBar):
    """The window's toolbar: model, descriptor, sizes and the search options (k, min score, exact or
    HNSW, query expansion), and Compare. It only shows choices; the window wires them to its controllers."""

    optionsChanged = Signal(object)  # SearchOptions

    def __init__(self, descriptors: list[tuple[str, str]], single_size: int, k: int, parent=None) -> None:
        super().__init__("Search", parent)
        self.setObjectName("searchToolbar")
        self.setMovable(False)
        self.model_box = self._labelled(" Model ", QComboBox(), "Backbone network, or a model you trained")
        self.model_box.setMinimumContentsLength(18)
        self.descriptor_box = self._labelled("  Descriptor ", QComboBox(), "How the feature maps become one vector")
        for key, title in descriptors:
            self.descriptor_box.addItem(title, key)
        self.sizes_box = self._labelled("  Sizes ", QComboBox(), (
            "Input sizes of the network: one, or several whose descriptors are summed (multi-scale: better "
            "rankings, indexing about 5 times slower)"))
        self.sizes_box.addItem(f"{single_size} (fast)", "single")
        self.sizes_box.addItem("+".join(map(str, multi_scales(single_size))) + " (best, about 5x slower)", "multi")
        self.k_spin = self._labelled("  k ", QSpinBox(), "Number of results")
        self.k_spin.setRange(1, 500)
        self.k_spin.setValue(k)
        self.threshold_spin = self._labelled("  min score ", QDoubleSpinBox(),
                                             "Hide results scoring below this cosine similarity")
        self.threshold_spin.setRange(-1.0, 1.0)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setDecimals(2)
        self.threshold_spin.setValue(-1.0)
        self.threshold_spin.setSpecialValueText("off")
        self.method_box = self._labelled("  ", QComboBox(), "Exact (brute-force) search or the approximate HNSW index")
        self.method_box.addItem("exact", True)
        self.method_box.addItem("HNSW", False)
        self.qe_spin = self._labelled("  QE ", QSpinBox(), "Average query expansion over the top n results (off = 0)")
        self.qe_spin.setRange(0, 20)
        self.qe_spin.setSpecialValueText("off")
        for w in (self.k_spin, self.threshold_spin, self.qe_spin):
            w.valueChanged.connect(lambda *_a: self.optionsChanged.emit(self.options()))
        self.method_box.activated.connect(lambda *_a: self.optionsChanged.emit(self.options()))
        self.addSeparator()
        self.compare_button = QPushButton("Compare…")
        self.compare_button.setToolTip("The same query with two descriptors side by side")
        self.addWidget(self.compare_button)

    def _labelled(self, label: str, widget, tip: str):
        self.addWidget(QLabel(label))
        widget.setToolTip(tip)
        self.addWidget(widget)
        return widget

    def options(self) -> SearchOptions:
        """The search options the bar shows."""
        qe = self.qe_spin.value()
        return SearchOptions(k=self.k_spin.value(),
                             threshold=None if self.threshold_spin.value() <= -1.0 else self.threshold_spin.value(),
                             exact=bool(self.method_box.currentData()),
                             query_expansion="average" if qe > 0 else None, qe_top=max(1, qe))

    def show_choice(self, models: list[tuple[str, str]], backbone: str, descriptor: str, sizes: str,
                    fc_title: str = "FC") -> None:
        """Select ``backbone`` (added when not listed), ``descriptor`` and ``sizes``; ``fc_title`` names
        the FC entry (a trained model's own embedding is named as the trained one)."""
        if [(self.model_box.itemText(i), self.model_box.itemData(i)) for i in range(self.model_box.count())] != models:
            self.model_box.clear()
            for title, data in models:
                self.model_box.addItem(title, data)
        i = self.model_box.findData(backbone)
        if i < 0:
            self.model_box.addItem(model_title(backbone), backbone)
            i = self.model_box.count() - 1
        self.model_box.setCurrentIndex(i)
        fc = self.descriptor_box.findData("fc")
        if fc >= 0:
            self.descriptor_box.setItemText(fc, fc_title)
        self.descriptor_box.setCurrentIndex(max(0, self.descriptor_box.findData(descriptor)))
        self.sizes_box.setCurrentIndex(max(0, self.sizes_box.findData(sizes)))


class WelcomePage(QWidget):
    """The grid's page when no folder is open: one large 'Open folder…' and the demo."""

    openClicked = Signal()
    demoClicked = Signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setObjectName("welcome")
        self.setStyleSheet("QWidget#welcome { background: #eef1f5; }")
        lay = QVBoxLayout(self)
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
        self.open_button.clicked.connect(self.openClicked)
        demo = QPushButton("or try the demo collection")
        demo.setFlat(True)
        demo.setStyleSheet("color:#1565c0; text-decoration: underline")
        demo.clicked.connect(self.demoClicked)
        lay.addSpacing(16)
        for button in (self.open_button, demo):
            row = QHBoxLayout()
            row.addStretch(1)
            row.addWidget(button)
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


class Banner(QWidget):
    """A message above the results (an error, or information), closed with its ✕; no modal dialog."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        row.addWidget(self.label, 1)
        self.close_button = QPushButton("✕")
        self.close_button.setFixedWidth(28)
        self.close_button.clicked.connect(self.hide)
        row.addWidget(self.close_button)
        self.hide()

    def text(self) -> str:
        return self.label.text()

    def show_message(self, message: str, info: bool = False) -> None:
        style = ("background:#e8f0fe; color:#0b3d91; border:1px solid #c6dafc;" if info else
                 "background:#fdecea; color:#611a15; border:1px solid #f5c6cb;")
        self.label.setStyleSheet(style + " border-radius:6px; padding:8px;")
        self.label.setText(message)
        self.show()


#: Help > How to use it and keys
USAGE_HTML = ("<h3>Using Retrieval Explorer</h3><ol><li><b>Open a folder</b> of images (Ctrl+O, or drop it on the "
         "window): it is indexed once, in the background; a sub-folder's name is its images' label.</li>"
         "<li><b>Search</b>: click an image of the folder, drop or paste (Ctrl+V) one, or File > Open query "
         "image. Results are ranked by cosine similarity; a green frame has the query's label, a red one "
         "another.</li><li><b>Compare</b> the model, descriptor and sizes in the toolbar; faded results are "
         "out of date until the new choice is indexed.</li><li><b>Train</b> a model on your labels "
         "(Training > Train XBM model…), then use it from the model list.</li></ol>"
         "<h3>Keys</h3><table><tr><td>Ctrl+O</td><td>open a folder</td></tr><tr><td>Ctrl+V</td><td>paste a "
         "query image</td></tr><tr><td>Enter / double-click</td><td>search with the selected result</td></tr>"
         "<tr><td>Space</td><td>preview the selected result</td></tr><tr><td>Escape</td><td>close the preview"
         "</td></tr><tr><td>arrows</td><td>move through the results</td></tr><tr><td>right-click</td><td>open, "
         "show in folder, copy</td></tr><tr><td>Ctrl+Q</td><td>quit</td></tr></table>")


def save_pasted_image(img: QImage, folder: Path) -> tuple[Path | None, str]:
    """Save a pasted image as ``folder/pasted-<sha1>.png`` (once per image): (path, "") or (None, why not)."""
    import hashlib

    if img.isNull():
        return None, "The clipboard holds no image (copy an image or an image file first)."
    folder.mkdir(parents=True, exist_ok=True)
    data = bytes(img.constBits()) if img.constBits() is not None else b""
    target = folder / f"pasted-{hashlib.sha1(data).hexdigest()[:12]}.png"
    if not target.exists() and not img.save(str(target), "PNG"):
        return None, f"Could not save the pasted image to {target}"
    return target, ""
