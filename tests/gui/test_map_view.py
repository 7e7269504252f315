"""The map view: it opens on an empty, a one-image and a 10,000-point collection without stalling the GUI
thread (the longest gap of a 10 ms timer), zooms from dots to thumbnails, a click queries, a lasso selects
and the selection is exported."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QEvent, QPoint, QPointF, Qt, QTimer
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import QApplication
from test_duplicates import blocks  # noqa: E402 - tests/ is on sys.path under pytest

from retrieval_gui.map_view import THUMB_LIMIT, MapView, points_in_polygon
from retrieval_gui.thumbnails import ThumbnailLoader

TIMEOUT = 60_000


class FakeCollection:
    """What engine.mapping.collection_map reads of a Collection: N vectors (clustered), their files and
    labels."""

    def __init__(self, root: Path, n: int, real_images: int = 0, dim: int = 64, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        centres = rng.normal(size=(20, dim)) * 3
        x = centres[rng.integers(0, 20, n)] + rng.normal(size=(n, dim))
        self.vectors = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32) if n else \
            np.zeros((0, 0), np.float32)
        self.folder = root
        self.relpaths = [f"group{i % 7}/img{i:06d}.png" for i in range(n)]
        self.paths = [str(root / r) for r in self.relpaths]
        self.labels = [r.split("/")[0] for r in self.relpaths]
        self.is_saved, self.generation, self.state_dir = False, None, root / "state"
        for i in range(min(real_images, n)):
            Path(self.paths[i]).parent.mkdir(parents=True, exist_ok=True)
            blocks(i, size=64).save(self.paths[i])

    def __len__(self) -> int:
        return len(self.relpaths)


class GapMeter:
    """A 10 ms QTimer on the GUI thread; ``longest`` is the longest time between two of its ticks (ms)."""

    def __init__(self) -> None:
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.last = time.perf_counter()
        self.longest = 0.0

    def _tick(self) -> None:
        now = time.perf_counter()
        self.longest = max(self.longest, (now - self.last) * 1000)
        self.last = now

    def __enter__(self) -> GapMeter:
        self.last = time.perf_counter()
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.stop()
        self._tick()


@pytest.fixture
def open_map(qtbot, tmp_path):
    made = []

    def make(coll: FakeCollection, **kw) -> MapView:
        loader = ThumbnailLoader(64, tmp_path / "thumbs", parent=None)
        view = MapView(lambda: coll, method="pca", isolate=False, loader=loader, **kw)
        qtbot.addWidget(view)
        view.resize(800, 640)
        view.show()
        view.start()
        qtbot.waitUntil(lambda: view.map is not None, timeout=TIMEOUT)
        made.append((view, loader))
        return view

    yield make
    for view, loader in made:
        view.wait_idle()
        view.close()
        loader.wait()


def _pump(qtbot, ms: int) -> None:
    qtbot.wait(ms)


def _scene_to_viewport(view: MapView, row: int) -> QPoint:
    c = view.cloud
    return view.canvas.mapFromScene(QPointF(c.x[row], c.y[row]))


@pytest.mark.parametrize("n", [0, 1, 10_000])
def test_opens_without_stalling_the_gui_thread(qtbot, open_map, tmp_path, n):
    """The longest gap of a 10 ms timer while the view opens, computes (in its worker), shows every point,
    zooms in to thumbnails and out again. A stall of our own repeats at every try; the scheduler of a loaded
    machine (this one runs other test suites and benchmarks) does not: the best of three tries counts."""
    coll = FakeCollection(tmp_path / "photos", n, real_images=min(n, 40))
    tries = []
    for _ in range(3):
        with GapMeter() as gaps:
            view = open_map(coll)
            view.canvas.viewport().repaint()  # a full paint of every point, as the window shows it
            _pump(qtbot, 100)
            if n:
                view.canvas.zoom(60.0)  # far in: thumbnails
                view.canvas.centerOn(view.cloud.x[0], view.cloud.y[0])
                view.canvas.viewport().repaint()
                _pump(qtbot, 300)
                view.canvas.viewport().repaint()
                view.canvas.fit()
                view.canvas.viewport().repaint()
                _pump(qtbot, 100)
        tries.append(gaps.longest)
        if gaps.longest < 100:
            break
    assert min(tries) < 100, f"the GUI thread stalled for {min(tries):.0f} ms (tries: {tries})"
    assert len(view.map) == n
    if n == 0:
        assert view.cloud is None and "No image is indexed yet" in view.status.text()
    else:
        # few points in view (at most THUMB_LIMIT): thumbnails at once; many: dots
        assert f"{n:,} images" in view.status.text()
        assert view.cloud.last_mode == ("thumbnails" if n <= THUMB_LIMIT else "dots")
        assert view.cloud.last_visible == n


def test_zooming_in_turns_dots_into_thumbnails(qtbot, open_map, tmp_path):
    """Thumbnails appear above the dots once they would be large enough, one per grid cell fixed to the
    map (at most 300), however dense the map is."""
    coll = FakeCollection(tmp_path / "photos", 400, real_images=400)
    view = open_map(coll)
    view.canvas.viewport().repaint()
    assert view.cloud.last_mode == "dots"
    view.canvas.zoom(40.0)
    view.canvas.centerOn(view.cloud.x[0], view.cloud.y[0])
    view.canvas.viewport().repaint()
    assert view.cloud.last_mode == "thumbnails" and 0 < view.cloud.last_thumbs <= 300
    qtbot.waitUntil(lambda: view.loader.cached(coll.paths[0]) is not None, timeout=TIMEOUT)


def _mouse(widget, kind, pos: QPoint, mods=Qt.KeyboardModifier.NoModifier) -> None:
    button = Qt.MouseButton.LeftButton
    buttons = Qt.MouseButton.NoButton if kind == QEvent.Type.MouseButtonRelease else button
    ev = QMouseEvent(kind, QPointF(pos), widget.mapToGlobal(QPointF(pos)), button, buttons, mods)
    QApplication.sendEvent(widget, ev)


def test_click_queries_and_lasso_selects_and_exports(qtbot, open_map, tmp_path):
    coll = FakeCollection(tmp_path / "photos", 2_000)
    queried: list[str] = []
    view = open_map(coll, on_query=queried.append, ask_save=lambda: str(tmp_path / "sel.csv"))
    vp = view.canvas.viewport()
    view.canvas.viewport().repaint()
    p = _scene_to_viewport(view, 123)
    _mouse(vp, QEvent.Type.MouseButtonPress, p)
    _mouse(vp, QEvent.Type.MouseButtonRelease, p)
    assert len(queried) == 1
    hit = coll.paths.index(queried[0])
    assert np.hypot(view.cloud.x[hit] - view.cloud.x[123], view.cloud.y[hit] - view.cloud.y[123]) * \
        view.canvas.transform().m11() <= 7  # the image under the pointer (or one drawn on it)
    # a lasso around the whole viewport's middle third, with Shift
    w, h = vp.width(), vp.height()
    corners = [QPoint(w // 3, h // 3), QPoint(2 * w // 3, h // 3), QPoint(2 * w // 3, 2 * h // 3),
               QPoint(w // 3, 2 * h // 3)]
    shift = Qt.KeyboardModifier.ShiftModifier
    _mouse(vp, QEvent.Type.MouseButtonPress, corners[0], shift)
    for c in corners[1:] + corners[:1]:
        _mouse(vp, QEvent.Type.MouseMove, c, shift)
    _mouse(vp, QEvent.Type.MouseButtonRelease, corners[0], shift)
    sel = view.cloud.selected
    tl, br = view.canvas.mapToScene(corners[0]), view.canvas.mapToScene(corners[2])
    x, y = view.cloud.x, view.cloud.y
    inside = (x >= tl.x()) & (x <= br.x()) & (y >= tl.y()) & (y <= br.y())
    assert sel.sum() > 0 and (sel == inside).mean() > 0.995
    assert len(queried) == 1  # a lasso is not a click
    out = view.export_selection()
    rows = list(csv.DictReader(Path(out).open()))
    assert len(rows) == int(sel.sum()) and {r["path"] for r in rows} == set(view.selected_paths())
    view.clear_selection()
    assert not view.cloud.selected.any() and not view.export_button.isEnabled()


def test_points_in_polygon():
    x = np.array([0.5, 1.5, 0.5, -1.0])
    y = np.array([0.5, 0.5, 1.5, 0.0])
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)
    assert points_in_polygon(x, y, square).tolist() == [True, False, False, False]
    assert not points_in_polygon(x, y, square[:2]).any()


def test_closing_while_the_map_is_computed_stops_it(qtbot, tmp_path):
    """The window's views delete themselves on close, but only once their task has stopped: t-SNE in its
    child process is ended at once."""
    import shiboken6

    coll = FakeCollection(tmp_path / "photos", 3_000)
    view = MapView(lambda: coll, loader=ThumbnailLoader(64, tmp_path / "thumbs"))  # t-SNE, in a child process
    view.delete_on_close = True
    view.show()
    task = view.start()
    qtbot.waitUntil(lambda: "computing the map" in view.status.text(), timeout=TIMEOUT)
    start = time.perf_counter()
    view.close()
    qtbot.waitUntil(lambda: not task.is_running(), timeout=TIMEOUT)
    assert time.perf_counter() - start < 10
    qtbot.waitUntil(lambda: not shiboken6.isValid(view), timeout=TIMEOUT)


def test_thumbnails_of_a_dense_map_are_one_per_cell_of_a_grid_fixed_to_the_map(qtbot, open_map, tmp_path):
    coll = FakeCollection(tmp_path / "photos", 10_000)
    view = open_map(coll)
    c = view.cloud
    c.x[:] = c.x[0] + np.linspace(-3, 3, c.x.size)  # 10,000 points on a short segment: dense everywhere
    c.y[:] = c.y[0]
    view.canvas.zoom(40.0)
    view.canvas.centerOn(c.x[0], c.y[0])
    view.canvas.viewport().repaint()
    assert c.last_mode == "thumbnails" and c.last_visible > 1_000 and 0 < c.last_thumbs <= 300
    picked = c.grid_pick(np.arange(c.x.size), 1.0)  # cells of 1 scene unit: the 6 units hold 6 or 7
    assert np.unique(np.floor(c.x[picked])).size == picked.size  # one per cell
    assert np.array_equal(picked, c.grid_pick(np.arange(c.x.size), 1.0))


def _in_viewport(view: MapView) -> np.ndarray:
    """(N,) bool: which points are drawn inside the viewport (their dot's whole radius)."""
    c, vp = view.cloud, view.canvas.viewport()
    t = view.canvas.viewportTransform()
    px = c.x * t.m11() + c.y * t.m21() + t.m31()
    py = c.x * t.m12() + c.y * t.m22() + t.m32()
    r = c.dot_px(view.canvas.transform().m11())
    return (px - r >= 0) & (px + r < vp.width()) & (py - r >= 0) & (py + r < vp.height())


def test_first_view_is_fitted_to_every_point_and_stays_fitted_on_resize(qtbot, open_map, tmp_path):
    """Every point is in the first view, however the coordinates spread (here: stretched along x and
    shifted), also after the window is resized before the user zooms; the view then fills with them."""
    coll = FakeCollection(tmp_path / "photos", 500, dim=8)
    view = open_map(coll)
    c = view.cloud
    c.x[:] = c.x * 0.3 + 700.0  # one far cluster to the right, a narrow spread
    c.x[:5] = -1100.0           # a handful of outliers far left, beyond the nominal [-1, 1] square
    view.canvas.fit()
    view.canvas.viewport().repaint()
    assert _in_viewport(view).all()
    vp = view.canvas.viewport()
    zoom = view.canvas.transform().m11()
    # fitted, not merely inside a far-out view: the points fill the width or the height
    assert max((c.x.max() - c.x.min()) * zoom / vp.width(), (c.y.max() - c.y.min()) * zoom / vp.height()) > 0.9
    view.resize(1200, 450)
    qtbot.waitUntil(lambda: view.canvas.viewport().height() < 400, timeout=TIMEOUT)
    assert _in_viewport(view).all()
    view.canvas.zoom(3.0)  # the user's zoom is kept on resize
    zoom = view.canvas.transform().m11()
    view.resize(700, 700)
    qtbot.wait(50)
    assert view.canvas.transform().m11() == pytest.approx(zoom)


def _colour_near(img, x: int, y: int, rgb: tuple, r: int) -> int:
    """How many pixels of colour ``rgb`` lie within r pixels of (x, y) in QImage ``img``."""
    from PySide6.QtGui import QColor

    want = QColor(*rgb)
    return sum(img.pixelColor(x + dx, y + dy) == want for dx in range(-r, r + 1) for dy in range(-r, r + 1)
               if 0 <= x + dx < img.width() and 0 <= y + dy < img.height())


def test_dots_are_visible_and_grow_with_the_zoom(qtbot, open_map, tmp_path):
    from retrieval_gui.map_view import DOT_MAX_PX, DOT_PX

    coll = FakeCollection(tmp_path / "photos", 2_000, dim=8)
    view = open_map(coll)
    view.loader = None
    view.cloud.loader = None  # dots only, whatever the zoom
    view.canvas.viewport().repaint()
    assert view.cloud.last_dot_px == DOT_PX >= 3
    row = int(np.argmax(view.cloud.x))  # the rightmost point: nothing drawn over it on that side
    rgb = tuple(int(v) for v in (view.cloud.argb[row] >> np.array([16, 8, 0], np.uint32)) & 0xFF)
    p = _scene_to_viewport(view, row)
    img = view.canvas.viewport().grab().toImage()
    assert _colour_near(img, p.x() + DOT_PX - 1, p.y(), rgb, 0) == 1  # the dot reaches DOT_PX - 1 pixels out
    view.canvas.zoom(4.0)
    view.canvas.centerOn(view.cloud.x[row], view.cloud.y[row])
    view.canvas.viewport().repaint()
    assert DOT_PX < view.cloud.last_dot_px <= DOT_MAX_PX


def test_legend_lists_the_classes_by_colour_and_hides_without_labels(qtbot, open_map, tmp_path):
    coll = FakeCollection(tmp_path / "photos", 700)
    view = open_map(coll)
    assert view.legend.isVisible() and view.legend.count() == 7
    for i in range(view.legend.count()):
        item = view.legend.item(i)
        name = item.data(Qt.ItemDataRole.UserRole)
        row = coll.labels.index(name)
        swatch = item.icon().pixmap(12, 12).toImage().pixelColor(6, 6)
        expected = int(view.cloud.argb[row]) & 0xFFFFFF
        assert swatch.rgb() & 0xFFFFFF == expected, name
        assert item.text() == f"{name} (100)"
    bare = FakeCollection(tmp_path / "loose", 50, seed=1)
    bare.labels = [None] * 50
    view2 = open_map(bare)
    assert not view2.legend.isVisible() and "no classes" in view2.status.text()


def test_hovering_a_point_shows_its_name_and_class(qtbot, open_map, tmp_path):
    from PySide6.QtGui import QHelpEvent
    from PySide6.QtWidgets import QToolTip

    coll = FakeCollection(tmp_path / "photos", 300)
    view = open_map(coll)
    view.canvas.viewport().repaint()
    row = int(np.argmax(view.cloud.x))
    p = _scene_to_viewport(view, row)
    text = view.canvas.tooltip_at(p)
    assert Path(coll.paths[row]).name in text and coll.labels[row] in text
    assert view.canvas.tooltip_at(QPoint(1, 1)) == ""  # the corner is away from every point
    vp = view.canvas.viewport()
    QApplication.sendEvent(vp, QHelpEvent(QEvent.Type.ToolTip, p, vp.mapToGlobal(p)))
    qtbot.waitUntil(lambda: QToolTip.isVisible(), timeout=5_000)
    assert QToolTip.text() == text
    QToolTip.hideText()


def test_thumbnails_appear_within_a_few_wheel_steps(qtbot, open_map, tmp_path):
    """A small collection shows thumbnails in the first view; a large one after four wheel steps."""
    from PySide6.QtGui import QWheelEvent

    small = open_map(FakeCollection(tmp_path / "small", 224, real_images=224))
    small.canvas.viewport().repaint()
    assert small.cloud.last_mode == "thumbnails" and small.cloud.last_thumbs > 20
    view = open_map(FakeCollection(tmp_path / "large", 5_000, seed=2))
    vp = view.canvas.viewport()
    vp.repaint()
    assert view.cloud.last_mode == "dots"
    centre = QPointF(vp.width() / 2, vp.height() / 2)
    for _ in range(4):
        ev = QWheelEvent(centre, vp.mapToGlobal(centre), QPoint(0, 0), QPoint(0, 120), Qt.MouseButton.NoButton,
                         Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
        QApplication.sendEvent(vp, ev)
    vp.repaint()
    assert view.cloud.last_mode == "thumbnails" and 0 < view.cloud.last_thumbs <= THUMB_LIMIT


def test_a_click_queries_and_brings_the_main_window_with_its_results_to_the_front(qtbot, tmp_path):
    """open_map: the map is a window of its own (a child window would stay above the main window and
    hide the results); a click runs the query and raises and activates the main window; the map closes
    with the main window."""
    from PySide6.QtWidgets import QMainWindow

    from retrieval_gui.map_view import open_map

    coll = FakeCollection(tmp_path / "photos", 300)

    class Index:
        def collection(self, key):
            return coll

    class Window(QMainWindow):
        def __init__(self) -> None:
            super().__init__()
            self.index, self.key, self.queries = Index(), "k", []

        def set_query(self, path: str) -> None:
            self.queries.append(path)

    win = Window()
    qtbot.addWidget(win)
    win.show()
    view = open_map(win, method="pca", isolate=False, loader=ThumbnailLoader(64, tmp_path / "thumbs"))
    qtbot.waitUntil(lambda: view.map is not None, timeout=TIMEOUT)
    assert view.parent() is None and view.isVisible()
    view.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is view, timeout=5_000)
    view.canvas.viewport().repaint()
    p = _scene_to_viewport(view, 7)
    _mouse(view.canvas.viewport(), QEvent.Type.MouseButtonPress, p)
    _mouse(view.canvas.viewport(), QEvent.Type.MouseButtonRelease, p)
    assert len(win.queries) == 1
    qtbot.waitUntil(lambda: QApplication.activeWindow() is win, timeout=5_000)
    view.wait_idle()
    win.close()
    assert not view.isVisible()
