"""Side-by-side comparison of two descriptors for the same query, with their overlap@k."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QComboBox, QDialog, QGridLayout, QHBoxLayout, QLabel, QWidget

from retrieval_gui.backend import DESCRIPTOR_TITLES, SearchResult, overlap_at_k
from retrieval_gui.thumbnails import ThumbnailLoader
from retrieval_gui.widgets import ResultsModel, ResultsView


def _summary(r: SearchResult) -> str:
    p = r.precision()
    prec = f", precision@{len(r.hits)} {p:.2f}" if p is not None else ""
    return f"<b>{DESCRIPTOR_TITLES.get(r.key.descriptor, r.key.descriptor)}</b> ({r.method}{prec})"


class CompareDialog(QDialog):
    """Two result grids for one query; the right-hand descriptor is chosen here (``descriptorChosen``)."""

    descriptorChosen = Signal(str)

    def __init__(self, loader: ThumbnailLoader, descriptors: list[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Compare descriptors")
        self.resize(1100, 700)
        lay = QGridLayout(self)
        top = QHBoxLayout()
        top.addWidget(QLabel("Compare with:"))
        self.other_box = QComboBox()
        for d in descriptors:
            self.other_box.addItem(DESCRIPTOR_TITLES.get(d, d), d)
        self.other_box.activated.connect(lambda _i: self.descriptorChosen.emit(self.other_box.currentData()))
        top.addWidget(self.other_box)
        top.addStretch(1)
        self.overlap_label = QLabel()
        self.overlap_label.setStyleSheet("font-size: 15px; font-weight: bold")
        top.addWidget(self.overlap_label)
        lay.addLayout(top, 0, 0, 1, 2)
        self.left_title, self.right_title = QLabel(), QLabel()
        lay.addWidget(self.left_title, 1, 0)
        lay.addWidget(self.right_title, 1, 1)
        self.left_model, self.right_model = ResultsModel(loader, self), ResultsModel(loader, self)
        self.left_view = ResultsView(self.left_model, 110)
        self.right_view = ResultsView(self.right_model, 110)
        lay.addWidget(self.left_view, 2, 0)
        lay.addWidget(self.right_view, 2, 1)
        self.overlap: float | None = None
        self.left: SearchResult | None = None
        self.right: SearchResult | None = None

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
        self.left_model.set_hits(left.hits, left.query_label)
        self.right_model.set_hits(right.hits, right.query_label)
        self.left_title.setText(_summary(left))
        self.right_title.setText(_summary(right))
        k = max(len(left.hits), len(right.hits))
        self.overlap = overlap_at_k(left.hits, right.hits, k)
        self.overlap_label.setText(f"overlap@{k} = {self.overlap:.2f}")
        self.overlap_label.setAlignment(Qt.AlignmentFlag.AlignRight)
