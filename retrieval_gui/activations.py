"""The layer-activations panel: feature maps, heatmaps and R-MAC region shares (computed in a worker)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PySide6.QtCore import QRect, Qt, Signal
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPen, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from engine.session import (
    ActivationResult,
    LayerMaps,
    ModelCache,
    RegionShare,
    activation_layers,
    compute_activations,
    network_crop,
)
from engine.vocabulary import ModelSpec

#: the regions shown: the MIN_REGIONS largest shares, and up to MAX_REGIONS when those stand out
MIN_REGIONS, MAX_REGIONS = 3, 5
REGION_COLOURS = ["#ffd400", "#ff6d00", "#00e5ff", "#ff40c4", "#76ff03"]


@dataclass
class ActivationPayload:
    """What the worker returns: the layer list, the result and the network-input crops (H, W, 3)."""

    layers: list[str]
    result: ActivationResult
    query_rgb: np.ndarray
    other_rgb: np.ndarray | None
    query: str
    other: str | None
    descriptor: str
    #: the result's R-MAC regions and their shares of the same score (against the query's descriptor)
    other_regions: list[RegionShare] | None = None

    @property
    def regions_layer(self) -> str | None:
        """The layer R-MAC pools (the deepest): its regions are shown only with that layer."""
        return self.layers[-1] if self.layers else None


def input_crop(path: str, size: int) -> np.ndarray:
    """The image as the network sees it (shorter side resized to ``size``, centre crop), uint8 RGB."""
    return np.asarray(network_crop(path, size), dtype=np.uint8)


def activation_job(models: ModelCache, key: ModelSpec, query: str, layer: str | None,
                   other: str | None, display: int = 176) -> ActivationPayload:
    """Worker function: compute the activations (``layer`` None = the deepest layer)."""
    layers = activation_layers(models, key)
    if not layers:
        raise RuntimeError(f"{key.backbone} exposes no activation layers")
    layer = layer if layer in layers else layers[-1]
    result = compute_activations(models, key, query, layer, other=other)
    other_regions = None
    if other and key.descriptor == "rmac":
        if layer == layers[-1]:  # the same score seen from the result: its regions against the query
            other_regions = compute_activations(models, key, other, layer, other=query).regions
        else:  # the regions belong to the deepest layer: not drawn over another one
            result.regions = []
    return ActivationPayload(layers, result, input_crop(query, display),
                             input_crop(other, display) if other else None, query, other, key.descriptor,
                             other_regions)


def _qimage(rgb: np.ndarray) -> QImage:
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w = rgb.shape[:2]
    return QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


def colormap(v: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (h, w) -> an (h, w, 3) uint8 'inferno'-like ramp (black-purple-orange-yellow)."""
    stops = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], float)
    x = np.clip(v, 0, 1) * (len(stops) - 1)
    i = np.minimum(x.astype(int), len(stops) - 2)
    f = (x - i)[..., None]
    return (stops[i] * (1 - f) + stops[i + 1] * f).astype(np.uint8)


def _upsample(m: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray((np.clip(m, 0, 1) * 255).astype(np.uint8), "L").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.float32) / 255.0


def heat_overlay(rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """The image with the heatmap blended over it."""
    h = colormap(_upsample(heat, rgb.shape[0]))
    return (rgb.astype(np.float32) * (1 - alpha) + h.astype(np.float32) * alpha).astype(np.uint8)


def channel_grid(maps: LayerMaps, cell: int = 42, cols: int = 4) -> np.ndarray:
    """The top channels' maps as a small grid image (rows of ``cols``)."""
    n = len(maps.top_channels)
    rows = max(1, (n + cols - 1) // cols)
    out = np.full((rows * (cell + 2), cols * (cell + 2), 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * (cell + 2):r * (cell + 2) + cell, c * (cell + 2):c * (cell + 2) + cell] = colormap(
            _upsample(maps.channel_maps[i], cell))
    return out


def top_regions(regions: list[RegionShare]) -> list[int]:
    """Indices of the regions worth showing, largest share first: the MIN_REGIONS largest, and up to
    MAX_REGIONS when the next ones stand out too (half as much again as an even share)."""
    order = sorted(range(len(regions)), key=lambda i: -regions[i].share)
    even = 1.0 / max(1, len(regions))
    keep = order[:MIN_REGIONS]
    keep += [i for i in order[MIN_REGIONS:MAX_REGIONS] if regions[i].share >= 1.5 * even]
    return keep


def describe_box(box: tuple[int, int, int, int], net_size: int) -> str:
    """Where a region lies, in words: 'the whole image', 'top left, large', 'centre, small'."""
    x, y, w, h = box
    if w * h >= 0.8 * net_size * net_size:
        return "the whole image"
    size = "large" if max(w, h) >= 0.6 * net_size else ("medium" if max(w, h) >= 0.4 * net_size else "small")
    cx, cy = (x + w / 2) / net_size, (y + h / 2) / net_size
    vert = "top" if cy < 0.4 else ("bottom" if cy > 0.6 else "")
    horiz = "left" if cx < 0.4 else ("right" if cx > 0.6 else "")
    return f"{f'{vert} {horiz}'.strip() or 'centre'}, {size}"


def draw_regions(rgb: np.ndarray, regions: list[RegionShare], net_size: int) -> QPixmap:
    """The image with the few regions that give most of the score (:func:`top_regions`), each outlined in
    its own colour with its number (1 = the largest share) and percentage."""
    pm = QPixmap.fromImage(_qimage(rgb))
    scale = rgb.shape[0] / net_size
    p = QPainter(pm)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    font = QFont()
    font.setPixelSize(11)
    font.setBold(True)
    p.setFont(font)
    keep = top_regions(regions)
    boxes, badges = [], []
    for n, i in enumerate(keep):  # badges placed largest first: it gets its corner, the others move aside
        x, y, w, h = (int(v * scale) for v in regions[i].box)
        inset = 1 + 2 * n  # nested outlines stay apart where regions share an edge
        boxes.append(QRect(x + inset, y + inset, w - 2 * inset, h - 2 * inset))
        text = f"{n + 1}: {100 * regions[i].share:.0f}%"
        badge = QRect(x + inset + 2, y + inset + 2, p.fontMetrics().horizontalAdvance(text) + 8, 16)
        while any(badge.intersects(b) for b, _ in badges) and badge.bottom() + 18 < pm.height():
            badge.translate(0, 18)
        badges.append((badge, text))
    for n in reversed(range(len(keep))):  # the largest outline drawn last, on top
        colour = QColor(REGION_COLOURS[n % len(REGION_COLOURS)])
        p.setPen(QPen(QColor(0, 0, 0, 150), 4))
        p.drawRect(boxes[n])
        p.setPen(QPen(colour, 2))
        p.drawRect(boxes[n])
    for n, (badge, text) in enumerate(badges):
        p.fillRect(badge, QColor(0, 0, 0, 200))
        p.setPen(QColor(REGION_COLOURS[n % len(REGION_COLOURS)]))
        p.drawText(badge, Qt.AlignmentFlag.AlignCenter, text)
    p.end()
    return pm


def regions_text(regions: list[RegionShare], score: float, net_size: int, whose: str) -> str:
    """The regions in plain words: 'this region gives 23% of the score' for the few that matter."""
    keep = top_regions(regions)
    shares = [100 * r.share for r in regions]
    spread = (f"its {len(regions)} regions give {min(shares):.0f}–{max(shares):.0f}% each"
              + (" (no region stands out)" if max(shares) < 150 / len(regions) else ""))
    lines = [f"<b>{whose}</b>: {spread}"]
    for n, i in enumerate(keep):
        colour = REGION_COLOURS[n % len(REGION_COLOURS)]
        lines.append(f"<span style='background:#222; color:{colour}'>&nbsp;{n + 1}&nbsp;</span> "
                     f"{describe_box(regions[i].box, net_size)}: this region gives "
                     f"<b>{100 * regions[i].share:.0f}%</b> of the score")
    return "<br>".join(lines)


class ActivationsPanel(QWidget):
    """Layer chooser + query / selected-result feature maps, heatmaps and R-MAC region shares."""

    layerChosen = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        outer = QVBoxLayout(self)
        row = QHBoxLayout()
        row.addWidget(QLabel("Layer:"))
        self.layer_box = QComboBox()
        self.layer_box.setToolTip("The backbone layer whose feature maps are shown (shallow to deep)")
        self.layer_box.activated.connect(lambda _i: self.layerChosen.emit(self.layer_box.currentText()))
        row.addWidget(self.layer_box, 1)
        outer.addLayout(row)
        self.status = QLabel("Run a query to see its activations.")
        self.status.setWordWrap(True)
        outer.addWidget(self.status)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        body = QWidget()
        self.grid = QGridLayout(body)
        scroll.setWidget(body)
        outer.addWidget(scroll, 1)
        self.labels: dict[str, QLabel] = {}
        cells = [("q_heat", "query: heatmap", 0, 0), ("o_heat", "selected result: heatmap", 0, 1),
                 ("q_grid", "query: top channels", 2, 0), ("o_grid", "result: top channels", 2, 1),
                 ("regions", "query: the regions that give most of the score", 5, 0),
                 ("o_regions", "result: the regions that give most of the score", 5, 1)]
        for name, title, row, col in cells:
            cap = QLabel(title)
            cap.setStyleSheet("color:#555; font-weight:bold")
            cap.setWordWrap(True)
            img = QLabel()
            img.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
            self.grid.addWidget(cap, row, col, 1, 1)
            self.grid.addWidget(img, row + 1, col, 1, 1)
            self.labels[name] = img
            self.labels[name + "_cap"] = cap
        self.regions_head = QLabel()  # what R-MAC regions are, or why they are not shown
        self.regions_head.setWordWrap(True)
        self.regions_head.setStyleSheet("color:#333")
        self.grid.addWidget(self.regions_head, 4, 0, 1, 2)
        self.regions_text = QLabel()
        self.regions_text.setWordWrap(True)
        self.regions_text.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.grid.addWidget(self.regions_text, 7, 0, 1, 1)
        self.other_regions_text = QLabel()
        self.other_regions_text.setWordWrap(True)
        self.other_regions_text.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.grid.addWidget(self.other_regions_text, 7, 1, 1, 1)
        for lab in (self.regions_text, self.other_regions_text):
            lab.setStyleSheet("font-size: 11px")
            lab.setMaximumWidth(200)
        self.grid.setColumnStretch(2, 1)
        self.grid.setRowStretch(8, 1)
        self.payload: ActivationPayload | None = None
        self._set_visible_parts(False, False, False)

    def _set_visible_parts(self, other: bool, regions: bool, other_regions: bool) -> None:
        for n in ("o_heat", "o_grid"):
            self.labels[n].setVisible(other)
            self.labels[n + "_cap"].setVisible(other)
        for n, on in (("regions", regions), ("o_regions", other_regions)):
            self.labels[n].setVisible(on)
            self.labels[n + "_cap"].setVisible(on)
        self.regions_text.setVisible(regions)
        self.other_regions_text.setVisible(other_regions)

    def current_layer(self) -> str | None:
        return self.layer_box.currentText() or None

    def set_busy(self, text: str) -> None:
        self.status.setText(text)

    def clear(self, text: str = "Run a query to see its activations.") -> None:
        """Nothing shown (no query, or it failed): the previous query's maps are taken away."""
        self.payload = None
        for name, lab in self.labels.items():
            if not name.endswith("_cap"):
                lab.clear()
        self.regions_head.clear()
        self.regions_text.clear()
        self.other_regions_text.clear()
        self._set_visible_parts(False, False, False)
        self.status.setText(text)

    def show_payload(self, p: ActivationPayload) -> None:
        self.payload = p
        r = p.result
        if [self.layer_box.itemText(i) for i in range(self.layer_box.count())] != p.layers:
            self.layer_box.clear()
            self.layer_box.addItems(p.layers)
        self.layer_box.setCurrentText(r.layer)
        c, h, w = r.query.shape
        msg = f"<b>{r.layer}</b>: {c} channels of {h}×{w}; query {Path(p.query).name}"
        if p.other:
            msg += f"; result {Path(p.other).name}, score {r.score:.4f}"
        self.status.setText(msg)
        self.labels["q_heat"].setPixmap(QPixmap.fromImage(_qimage(heat_overlay(p.query_rgb, r.query.heatmap))))
        self.labels["q_grid"].setPixmap(QPixmap.fromImage(_qimage(channel_grid(r.query))))
        self.labels["q_grid"].setToolTip("channels " + ", ".join(map(str, r.query.top_channels)))
        if r.other is not None and p.other_rgb is not None:
            self.labels["o_heat"].setPixmap(QPixmap.fromImage(_qimage(heat_overlay(p.other_rgb, r.other.heatmap))))
            self.labels["o_grid"].setPixmap(QPixmap.fromImage(_qimage(channel_grid(r.other))))
        size = r.query.image_size
        has_regions = bool(r.regions)
        other_regions = bool(has_regions and p.other_regions and p.other_rgb is not None)
        self._set_visible_parts(r.other is not None, has_regions, other_regions)
        self.regions_head.setVisible(p.descriptor == "rmac")
        if has_regions:
            self.regions_head.setText(
                f"R-MAC compares {len(r.regions)} regions of each image, taken from the layer {p.regions_layer}; "
                f"each gives a part of the score {r.score:.3f}. The few that give most:")
            self.labels["regions"].setPixmap(draw_regions(p.query_rgb, r.regions, size))
            self.regions_text.setText(regions_text(r.regions, r.score, size, "query"))
            self.regions_text.setToolTip(_all_regions(r.regions, size))
            if other_regions:
                self.labels["o_regions"].setPixmap(draw_regions(p.other_rgb, p.other_regions, size))
                self.other_regions_text.setText(regions_text(p.other_regions, r.score, size, "result"))
                self.other_regions_text.setToolTip(_all_regions(p.other_regions, size))
        elif p.descriptor == "rmac" and r.other is None:
            self.regions_head.setText("Select a result to see which regions give its score.")
        elif p.descriptor == "rmac" and r.layer != p.regions_layer:
            self.regions_head.setText(f"R-MAC's regions are pooled from the deepest layer, {p.regions_layer}: "
                                      "choose it to see which regions give the score.")
        else:
            self.regions_head.setText("")


def _all_regions(regions: list[RegionShare], size: int) -> str:
    return "<br>".join(f"{describe_box(reg.box, size)}: {100 * reg.share:.1f}% ({reg.contribution:+.3f})"
                       for reg in sorted(regions, key=lambda reg: -reg.share))
