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

from retrieval_gui.backend import (
    ActivationResult,
    LayerMaps,
    ModelCache,
    ModelKey,
    activation_layers,
    compute_activations,
)


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


def input_crop(path: str, size: int) -> np.ndarray:
    """The image as the network sees it (shorter side resized to ``size``, centre crop), uint8 RGB."""
    from PIL import Image

    from engine.images import load_image

    im = load_image(path)
    s = size / min(im.size)
    im = im.resize((max(size, round(im.width * s)), max(size, round(im.height * s))), Image.Resampling.BILINEAR)
    left, top = (im.width - size) // 2, (im.height - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)).convert("RGB"), dtype=np.uint8)


def activation_job(models: ModelCache, key: ModelKey, query: str, layer: str | None,
                   other: str | None, display: int = 176) -> ActivationPayload:
    """Worker function: compute the activations (``layer`` None = the deepest layer)."""
    layers = activation_layers(models, key)
    if not layers:
        raise RuntimeError(f"{key.backbone} exposes no activation layers")
    layer = layer if layer in layers else layers[-1]
    result = compute_activations(models, key, query, layer, other=other)
    return ActivationPayload(layers, result, input_crop(query, display),
                             input_crop(other, display) if other else None, query, other, key.descriptor)


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


def draw_regions(rgb: np.ndarray, result: ActivationResult, net_size: int, top: int = 5) -> QPixmap:
    """The query crop with the R-MAC regions: the ``top`` largest shares outlined in colour (yellow =
    largest) with their percentage, the others as thin grey outlines."""
    pm = QPixmap.fromImage(_qimage(rgb))
    scale = rgb.shape[0] / net_size
    p = QPainter(pm)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    font = QFont()
    font.setPixelSize(10)
    font.setBold(True)
    p.setFont(font)
    order = sorted(range(len(result.regions)), key=lambda i: result.regions[i].share)
    best = set(order[-top:])
    shares = [r.share for r in result.regions]
    lo, hi = (min(shares), max(shares)) if shares else (0.0, 1.0)
    for i in order:
        reg = result.regions[i]
        x, y, w, h = (int(v * scale) for v in reg.box)
        if i not in best:
            p.setPen(QPen(QColor(255, 255, 255, 90), 1))
            p.drawRect(QRect(x + 1, y + 1, w - 2, h - 2))
            continue
        t = (reg.share - lo) / (hi - lo) if hi > lo else 1.0
        colour = QColor.fromHsvF(0.02 + 0.14 * t, 0.95, 1.0)  # red -> yellow for the largest
        p.setPen(QPen(colour, 2.5))
        p.drawRect(QRect(x + 2, y + 2, w - 4, h - 4))
        tr = QRect(x + 4, y + h - 18, 40, 14)
        p.fillRect(tr, QColor(0, 0, 0, 170))
        p.setPen(colour)
        p.drawText(tr, Qt.AlignmentFlag.AlignCenter, f"{100 * reg.share:.1f}%")
    p.end()
    return pm


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
                 ("regions", "R-MAC regions: their share of the query→result score", 4, 0)]
        for name, title, row, col in cells:
            cap = QLabel(title)
            cap.setStyleSheet("color:#555; font-weight:bold")
            img = QLabel()
            img.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
            span = 2 if name == "regions" else 1
            self.grid.addWidget(cap, row, col, 1, span)
            self.grid.addWidget(img, row + 1, col, 1, 1)
            self.labels[name] = img
            self.labels[name + "_cap"] = cap
        self.regions_text = QLabel()
        self.regions_text.setWordWrap(True)
        self.regions_text.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.regions_text.setStyleSheet("font-size: 11px")
        self.grid.addWidget(self.regions_text, 5, 1)
        self.grid.setColumnStretch(2, 1)
        self.grid.setRowStretch(6, 1)
        self.payload: ActivationPayload | None = None
        self._set_visible_parts(False, False)

    def _set_visible_parts(self, other: bool, regions: bool) -> None:
        for n in ("o_heat", "o_grid"):
            self.labels[n].setVisible(other)
            self.labels[n + "_cap"].setVisible(other)
        self.labels["regions"].setVisible(regions)
        self.labels["regions_cap"].setVisible(regions)
        self.regions_text.setVisible(regions)

    def current_layer(self) -> str | None:
        return self.layer_box.currentText() or None

    def set_busy(self, text: str) -> None:
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
        has_regions = bool(r.regions)
        self._set_visible_parts(r.other is not None, has_regions)
        if has_regions:
            self.labels["regions"].setPixmap(draw_regions(p.query_rgb, r, r.query.image_size))
            lines = [f"score {r.score:.4f} = Σ of {len(r.regions)} regions:"]
            for i, reg in sorted(enumerate(r.regions), key=lambda t: -t[1].share):
                x, y, w_, h_ = reg.box
                lines.append(f"region {i + 1} ({w_}px at {x},{y}): {reg.contribution:+.3f} = {100 * reg.share:.1f}%")
            self.regions_text.setToolTip("<br>".join(lines))
            lines = lines[:7] + (["…"] if len(lines) > 7 else [])
            self.regions_text.setText("<br>".join(lines))
        elif p.descriptor == "rmac" and r.other is None:
            self.regions_text.setText("Select a result to see each region's share of its score.")
            self.regions_text.setVisible(True)
