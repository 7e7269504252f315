"""Live training plots: loss curves (total, in-batch part, memory part) and the validation metric that
chooses the kept checkpoint (the run's selection metric), with the best untrained descriptor's level and
the kept point marked.

Points are buffered as they arrive and drawn by a timer at most every ``interval_ms`` (100 ms by
default), so thousands of iteration events per second never stall the event loop.
"""

from __future__ import annotations

import math

import pyqtgraph as pg
from PySide6.QtCore import QSize, Qt, QTimer
from PySide6.QtWidgets import QVBoxLayout, QWidget

TOTAL_COLOR = "#1f77b4"
BATCH_COLOR = "#ff7f0e"
MEMORY_COLOR = "#2ca02c"
VAL_COLOR = "#d62728"
BASELINE_COLOR = "#7f7f7f"


def _finite(v: float | None) -> float:
    return float(v) if v is not None and math.isfinite(v) else math.nan


class LiveTrainingPlot(QWidget):
    """Two stacked plots. Feed it with :meth:`add_iteration` / :meth:`add_validation`; it redraws itself."""

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt's name)
        # the two plots' own hints (pyqtgraph: 640 x 480 each) would make a scrolling page hand them
        # most of its height; ask for a little more than the minimum and let stretch share the rest
        return QSize(640, 360)

    def __init__(self, parent: QWidget | None = None, interval_ms: int = 100) -> None:
        super().__init__(parent)
        pg.setConfigOptions(antialias=True, background="w", foreground="k")
        self.loss_plot = pg.PlotWidget(title="Training loss")
        self.loss_plot.setLabel("bottom", "iteration")
        self.loss_plot.setLabel("left", "loss")
        self.loss_plot.getAxis("left").enableAutoSIPrefix(False)
        self.loss_plot.showGrid(x=True, y=True, alpha=0.25)
        self.loss_plot.addLegend(offset=(-10, 10))
        self.total_curve = self._curve(self.loss_plot, "total", TOTAL_COLOR, 2)
        self.batch_curve = self._curve(self.loss_plot, "batch part", BATCH_COLOR, 1)
        self.memory_curve = self._curve(self.loss_plot, "memory part", MEMORY_COLOR, 1)

        self.val_plot = pg.PlotWidget()
        self.val_plot.setLabel("bottom", "iteration")
        self.val_plot.getAxis("left").enableAutoSIPrefix(False)
        self.val_plot.showGrid(x=True, y=True, alpha=0.25)
        self.val_plot.addLegend(offset=(-10, -10))
        self.val_curve = self.val_plot.plot([], [], name="trained", pen=pg.mkPen(VAL_COLOR, width=2),
                                            symbol="o", symbolSize=6, symbolBrush=VAL_COLOR)
        self.best_marker = self.val_plot.plot([], [], name="kept (best.pt)", pen=None, symbol="star", symbolSize=16,
                                              symbolBrush=VAL_COLOR, symbolPen=pg.mkPen("k"))
        self.baseline_line = pg.InfiniteLine(angle=0, movable=False,
                                             pen=pg.mkPen(BASELINE_COLOR, width=1, style=Qt.PenStyle.DashLine),
                                             label="untrained",
                                             # left-aligned at 5 % of the width (centred there, the label's
                                             # left half was cut off by the plot's edge)
                                             labelOpts={"position": 0.05, "color": BASELINE_COLOR,
                                                        "anchors": [(0, 0), (0, 1)]})
        self.baseline_line.setVisible(False)
        self.val_plot.addItem(self.baseline_line)
        self.val_plot.setXLink(self.loss_plot)
        # the validation metrics (mAP, R@k) lie in [0, 1]: the axis never runs beyond (auto range padded it
        # to 1.4 once)
        self.val_plot.setLimits(yMin=0.0, yMax=1.0)
        self.metric_label = ""  # not "metric": that would hide QWidget.metric(), which Qt calls to paint
        self.best: tuple[float, float] | None = None
        self.set_metric("R@1")

        self.loss_plot.setMinimumHeight(170)  # title, axis labels and a readable curve
        self.val_plot.setMinimumHeight(150)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.loss_plot, 3)
        lay.addWidget(self.val_plot, 2)

        self._it: list[float] = []
        self._total: list[float] = []
        self._batch: list[float] = []
        self._memory: list[float] = []
        self._val_it: list[float] = []
        self._val: list[float] = []
        self.baseline: float | None = None
        self._dirty = False
        self.redraws = 0  # how many times the curves were actually redrawn (for tests and diagnostics)
        self._timer = QTimer(self)
        self._timer.setInterval(int(interval_ms))
        self._timer.timeout.connect(self._redraw_if_dirty)
        self._timer.start()

    @staticmethod
    def _curve(plot: pg.PlotWidget, name: str, color: str, width: int) -> pg.PlotDataItem:
        c = plot.plot([], [], name=name, pen=pg.mkPen(color, width=width))
        c.setDownsampling(auto=True, method="peak")
        c.setClipToView(True)
        return c

    # -- feeding ---------------------------------------------------------------------------------
    def add_iteration(self, iteration: int, loss: float | None, loss_batch: float | None = None,
                      loss_memory: float | None = None) -> None:
        """One training step; ``None`` parts (e.g. no memory yet) leave a gap in that curve."""
        self._it.append(float(iteration))
        self._total.append(_finite(loss))
        self._batch.append(_finite(loss_batch))
        self._memory.append(_finite(loss_memory))
        self._dirty = True

    def add_validation(self, iteration: int, value: float | None) -> None:
        """One validation's score on the plotted metric."""
        if value is None:
            return
        self._val_it.append(float(iteration))
        self._val.append(float(value))
        self._dirty = True

    def set_metric(self, label: str) -> None:
        """Name the validation metric plotted: the one that chooses the kept checkpoint (e.g. 'mAP')."""
        self.metric_label = label
        self.val_plot.setTitle(f"Validation {label}: the selection metric (the best point is kept as best.pt)")
        self.val_plot.setLabel("left", f"validation {label}")

    def set_best(self, iteration: int | None, value: float | None) -> None:
        """Mark the kept checkpoint (best.pt) on the validation curve; None clears the mark."""
        self.best = None if iteration is None or value is None else (float(iteration), float(value))
        self._dirty = True

    def set_baseline(self, value: float | None, label: str = "untrained") -> None:
        """The (best) untrained descriptor's validation score on the plotted metric, as a dashed line."""
        self.baseline = value
        self.baseline_line.setVisible(value is not None)
        self.baseline_line.label.setFormat(label)
        if value is not None:
            self.baseline_line.setValue(float(value))

    def clear(self) -> None:
        for buf in (self._it, self._total, self._batch, self._memory, self._val_it, self._val):
            buf.clear()
        self.set_baseline(None)
        self.best = None
        self._dirty = True
        self.flush()

    # -- reading ---------------------------------------------------------------------------------
    @property
    def iteration_points(self) -> int:
        """Number of training steps received."""
        return len(self._it)

    @property
    def validation_points(self) -> list[tuple[float, float]]:
        return list(zip(self._val_it, self._val, strict=True))

    def drawn_points(self) -> dict[str, int]:
        """How many points each curve shows right now (what the user sees, not what is buffered)."""
        def n(c: pg.PlotDataItem) -> int:
            x, _ = c.getOriginalDataset()
            return 0 if x is None else len(x)

        return {"total": n(self.total_curve), "batch": n(self.batch_curve), "memory": n(self.memory_curve),
                "val": n(self.val_curve)}

    # -- drawing ---------------------------------------------------------------------------------
    def flush(self) -> None:
        """Redraw now (the timer does this on its own at most every interval)."""
        self._dirty = True
        self._redraw_if_dirty()

    def _redraw_if_dirty(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        self.redraws += 1
        connect = "finite"
        self.total_curve.setData(self._it, self._total, connect=connect)
        self.batch_curve.setData(self._it, self._batch, connect=connect)
        self.memory_curve.setData(self._it, self._memory, connect=connect)
        self.val_curve.setData(self._val_it, self._val)
        self.best_marker.setData(*(([self.best[0]], [self.best[1]]) if self.best else ([], [])))
