"""Region queries in the window (issue 28): a rectangle drawn on the query preview searches that part and
ranks as `search --box` does; the results' best regions are drawn; Esc goes back to the whole image.

The stand-in network of tests/test_cli_index.py (the image is its own feature map) keeps it fast."""

from __future__ import annotations

import json
import shutil

import pytest
from PySide6.QtCore import QPoint, Qt

from engine.cli import main
from engine.regions import box_iou
from retrieval_gui.main_window import MainWindow
from tests.test_cli_index import _Colours
from tests.test_regions import PASTED, make_composites

TIMEOUT = 60_000


@pytest.fixture
def stand_in(monkeypatch):
    import engine.extraction
    import engine.runtime

    monkeypatch.setattr(engine.extraction, "build_model", lambda spec, device="cpu", backbone=None: _Colours(backbone))
    monkeypatch.setattr(engine.runtime, "feature_runner", lambda *a, **k: None)


def test_drawn_rectangle_ranks_as_the_cli_box_and_shows_best_regions(qtbot, stand_in, tmp_path, capsys,
                                                                      isolated_settings):
    root = tmp_path / "images"
    composite, patch = make_composites(root)
    outside = tmp_path / "composite.png"  # the query lies outside the folder: nothing of it is left out
    shutil.move(composite, outside)
    shutil.rmtree(root / "scene")
    win = MainWindow(weights="random", image_size=32, threads=1, thumb_size=64, restore=False)
    qtbot.addWidget(win)
    try:
        assert win.open_collection(root)
        qtbot.waitUntil(win.index_ready, timeout=TIMEOUT)
        win.set_query(str(outside))
        selector = win.region_selector
        qtbot.waitUntil(lambda: win.result is not None and not win.searching and selector.image_rect().isValid(),
                        timeout=TIMEOUT)
        assert win.result.box is None
        # drag a rectangle around the pasted part on the preview (a 160 x 120 image shown scaled)
        img = selector.image_rect()
        sx, sy = img.width() / 160, img.height() / 120
        a = QPoint(img.left() + round(PASTED[0] * sx), img.top() + round(PASTED[1] * sy))
        b = QPoint(img.left() + round((PASTED[0] + PASTED[2]) * sx), img.top() + round((PASTED[1] + PASTED[3]) * sy))
        qtbot.mousePress(win.query_slot, Qt.MouseButton.LeftButton, pos=a)
        qtbot.mouseMove(win.query_slot, b)
        qtbot.mouseRelease(win.query_slot, Qt.MouseButton.LeftButton, pos=b)
        assert win.explorer.query.region is not None and not selector.band.isHidden()
        qtbot.waitUntil(lambda: win.result is not None and win.result.box is not None and not win.searching,
                        timeout=TIMEOUT)
        r = win.result
        assert box_iou(r.box, PASTED) > 0.8  # the drawn rectangle is the pasted part, give or take a pixel
        assert r.hits[0].path == str(patch)
        assert f"region {r.box[2]}×{r.box[3]} at {r.box[0]},{r.box[1]}" in win.explorer.result_html(r)
        # the CLI with the same box ranks the same images in the same order
        key = win.key
        capsys.readouterr()
        code = main(["search", str(outside), "--collection", str(root), "--box", ",".join(map(str, r.box)),
                     "--backbone", key.backbone, "--weights", key.weights, "--descriptor", key.descriptor,
                     "--image-size", str(key.image_size or 32), "--k", str(r.options.k), "--exact", "--json",
                     "--device", "cpu", "--cache-dir", str(tmp_path / "cache")])
        out = json.loads(capsys.readouterr().out)
        assert code == 0 and out["box"] == list(r.box)
        assert [h["path"] for h in out["hits"]] == [h.path for h in r.hits]
        assert [h["score"] for h in out["hits"]] == pytest.approx([h.score for h in r.hits], abs=1e-5)
        # each result's best region arrives (in a worker) and is drawn on its card
        qtbot.waitUntil(lambda: len(win.results_model.regions) == len(r.hits), timeout=TIMEOUT)
        assert win.cards.region_of(str(patch)) is not None
        # right-click a result > "Search this region": that result's best region becomes the query
        second = r.hits[1]
        its_region = win.cards.region_of(second.path)
        menu = win.cards.hit_menu(second)
        (act,) = [a for a in menu.actions() if "region" in a.text()]
        act.trigger()
        menu.deleteLater()
        q = win.explorer.query
        assert q.path == second.path and q.region == its_region is not None
        qtbot.waitUntil(lambda: win.result is not None and win.result.query == second.path
                        and win.result.box is not None and not win.searching, timeout=TIMEOUT)
        qtbot.waitUntil(lambda: not win.explorer.regions.task.busy, timeout=TIMEOUT)
        # Esc on the preview: the whole image again, the rectangle and the drawn regions go
        win.query_slot.setFocus()
        qtbot.keyClick(win.query_slot, Qt.Key.Key_Escape)
        assert win.explorer.query.region is None and selector.band.isHidden()
        qtbot.waitUntil(lambda: win.result is not None and win.result.box is None and not win.searching,
                        timeout=TIMEOUT)
        assert not win.results_model.regions
    finally:
        win.close()
