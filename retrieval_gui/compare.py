"""Side-by-side comparison of two descriptors for the same query: the query image, their overlap@k, and
on the cards what is unique to its side ("only here") and how shared results' ranks moved on the right."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import QComboBox, QDialog, QGridLayout, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from engine.session import SearchResult, overlap_at_k
from engine.vocabulary import DESCRIPTOR_TITLES, SearchHit
from retrieval_gui.thumbnails import ThumbnailLoader
from retrieval_gui.widgets import ONLY_HERE, ResultsModel, ResultsView


def _title(r: SearchResult) -> str:
    return DESCRIPTOR_TITLES.get(r.spec.descriptor, r.spec.descriptor)


def _summary(r: SearchResult, unique: int) -> str:
    p = r.precision()
    prec = f", precision@{len(r.hits)} {p:.2f}" if p is not None else ""
    return (f"<b>{_title(r)}</b> ({r.method}{prec}) · <span style='color:#b36b00'>{unique} only here</span>")


def compare_notes(left: list[SearchHit], right: list[SearchHit]) -> tuple[dict[str, str], dict[str, str]]:
    """The tag of every card: 'only here' for a hit the other side does not have; on the right, how the
    rank of a shared hit moved from the left ('↑3': three places higher, '↓2', '=')."""
    lrank = {h.path: h.rank for h in left}
    rrank = {h.path: h.rank for h in right}
    lnotes = {p: ONLY_HERE for p in lrank if p not in rrank}
    rnotes = {}
    for p, r in rrank.items():
        if p not in lrank:
            rnotes[p] = ONLY_HERE
        else:
            move = lrank[p] - r
            rnotes[p] = "=" if move == 0 else (f"↑{move}" if move > 0 else f"↓{-move}")
    return lnotes, rnotes


class CompareDialog(QDialog):
    """Two result grids for one query; the right-hand descriptor is chosen here (``descriptorChosen``)."""

    descriptorChosen = Signal(str)

    def __init__(self, loader: ThumbnailLoader, descriptors: list[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Compare descriptors")
        self.resize(1180, 760)
        self.loader = loader
        outer = QVBoxLayout(self)
        top = QHBoxLayout()
        self.query_image = QLabel()
        self.query_image.setFixedSize(120, 120)
        self.query_image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.query_image.setStyleSheet("border: 2px solid #1565c0; border-radius: 4px; background: #f5f7fa")
        top.addWidget(self.query_image)
        side = QVBoxLayout()
        self.query_label = QLabel()
        self.query_label.setTextFormat(Qt.TextFormat.RichText)
        side.addWidget(self.query_label)
        row = QHBoxLayout()
        row.addWidget(QLabel("Compare with:"))
        self.other_box = QComboBox()
        for d in descriptors:
            self.other_box.addItem(DESCRIPTOR_TITLES.get(d, d), d)
        self.other_box.activated.connect(lambda _i: self.descriptorChosen.emit(self.other_box.currentData()))
        row.addWidget(self.other_box)
        row.addStretch(1)
        side.addLayout(row)
        self.overlap_label = QLabel()
        self.overlap_label.setStyleSheet("font-size: 15px; font-weight: bold")
        side.addWidget(self.overlap_label)
        legend = QLabel("<span style='color:#b36b00'><b>only here</b></span>: not in the other list · "
                        "<span style='color:#1565c0'><b>↑3 / ↓2 / =</b></span>: a shared result's rank on the right "
                        "against the left")
        legend.setStyleSheet("color:#555")
        side.addWidget(legend)
        side.addStretch(1)
        top.addLayout(side, 1)
        outer.addLayout(top)
        lay = QGridLayout()
        self.left_title, self.right_title = QLabel(), QLabel()
        lay.addWidget(self.left_title, 0, 0)
        lay.addWidget(self.right_title, 0, 1)
        self.left_model, self.right_model = ResultsModel(loader, self), ResultsModel(loader, self)
        self.left_view = ResultsView(self.left_model, 110)
        self.right_view = ResultsView(self.right_model, 110)
        lay.addWidget(self.left_view, 1, 0)
        lay.addWidget(self.right_view, 1, 1)
        outer.addLayout(lay, 1)
        self.overlap: float | None = None
        self.left: SearchResult | None = None
        self.right: SearchResult | None = None
        self._query: str | None = None
        loader.ready.connect(self._on_thumbnail)

    def set_other(self, descriptor: str) -> None:
        i = self.other_box.findData(descriptor)
        if i >= 0:
            self.other_box.setCurrentIndex(i)

    def other_descriptor(self) -> str:
        return self.other_box.currentData()

    def set_busy(self, text: str) -> None:
        self.overlap_label.setText(text)

    def set_results(self, left: SearchResult, right: SearchResult) -> None:
        self.left, self.right = left, right
        lnotes, rnotes = compare_notes(left.hits, right.hits)
        self.left_model.set_hits(left.hits, left.query_label, lnotes)
        self.right_model.set_hits(right.hits, right.query_label, rnotes)
        self.left_title.setText(_summary(left, sum(v == ONLY_HERE for v in lnotes.values())))
        self.right_title.setText(_summary(right, sum(v == ONLY_HERE for v in rnotes.values())))
        k = max(len(left.hits), len(right.hits))
        self.overlap = overlap_at_k(left.hits, right.hits, k)
        self.overlap_label.setText(f"overlap@{k} = {self.overlap:.2f}")
        self._set_query(left)

    def _set_query(self, r: SearchResult) -> None:
        label = f" · label {r.query_label}" if r.query_label is not None else ""
        self.query_label.setText(f"Query <b>{Path(r.query).name}</b>{label}: {_title(r)} on the left, "
                                 f"{_title(self.right) if self.right else '…'} on the right")
        if r.query != self._query:
            self._query = r.query
            self.query_image.setPixmap(QPixmap())
            self.query_image.setText("…")
        img = self.loader.request(r.query)
        if img is not None:
            self._on_thumbnail(r.query, img)

    def _on_thumbnail(self, path: str, img: QImage) -> None:
        if path == self._query and not img.isNull():
            self.query_image.setPixmap(QPixmap.fromImage(img).scaled(
                112, 112, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation))
