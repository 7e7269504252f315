"""The explorer's Sizes choice: one input size or the multi-scale sizes, indexed and searched like a
descriptor change (offscreen, random-weight EfficientNet-Lite0 on 64-px images: sizes 64 and 64+82+101)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.vocabulary import multi_scales
from retrieval_gui.main_window import MainWindow

TIMEOUT = 120_000


def _wait_result(qtbot, win: MainWindow) -> None:
    qtbot.waitUntil(lambda: win.results_current() and not win.searching, timeout=TIMEOUT)


def _choose(win: MainWindow, data: str) -> None:
    """Choose the Sizes entry holding ``data`` as a user does (the combo box's activated signal)."""
    i = win.sizes_box.findData(data)
    win.sizes_box.setCurrentIndex(i)
    win.sizes_box.activated.emit(i)


def test_multi_scale_ratios_give_the_measured_sizes():
    assert multi_scales(224) == (224, 288, 352)
    assert multi_scales(64) == (64, 82, 101)


def test_sizes_choice_indexes_and_searches_multi_scale(qtbot, window, folder):
    win = window()
    assert [win.sizes_box.itemText(i) for i in range(2)] == ["64 (fast)", "64+82+101 (best, about 5x slower)"]
    assert win.key.scales is None and win.key.image_size == 64
    assert win.open_collection(folder)
    qtbot.waitUntil(win.index_ready, timeout=TIMEOUT)
    query = str(folder / "class_01" / "001.jpg")
    win.set_query(query)
    _wait_result(qtbot, win)
    single = win.result
    assert single.spec.scales is None

    _choose(win, "multi")
    assert win.key.scales == (64, 82, 101) and win.key.image_size is None
    assert not win.index_ready()  # a new spec: indexed in the background
    assert win.grid_mode() == "stale"  # the single-size results stay, marked out of date
    assert "GeM (64) results" in win.grid_header.text() and "GeM (64+82+101)" in win.grid_header.text()
    qtbot.waitUntil(win.index_ready, timeout=TIMEOUT)
    _wait_result(qtbot, win)
    multi = win.result
    assert multi.spec.scales == (64, 82, 101) and multi.spec.descriptor == single.spec.descriptor
    assert len(multi.hits) == len(single.hits) == 11  # every other image of the folder
    assert win.index.has_index(win.key) and "sizes 64+82+101" in win.status_label.text()
    # its own collection beside the single size's (random weights give near-constant vectors, so the
    # vectors themselves are not compared); the scores are cosines against the multi-scale vectors
    assert win.key.key() != single.spec.key() and "64+82+101" in win.key.key()
    assert win.index.has_index(single.spec) and len(win.index.vectors(win.key)[0]) == 12
    paths, vecs = win.index.vectors(win.key)
    q = multi.vector / np.linalg.norm(multi.vector)
    by_hand = sorted(((float(v @ q) / float(np.linalg.norm(v)), p) for p, v in zip(paths, vecs, strict=True)
                      if p != query), reverse=True)
    assert [h.score for h in multi.hits] == pytest.approx([s for s, _ in by_hand], abs=2e-3)

    _choose(win, "single")  # back to the single size: its vectors exist, the query runs at once
    assert win.key == single.spec and win.index_ready()
    _wait_result(qtbot, win)
    assert [h.score for h in win.result.hits] == pytest.approx([h.score for h in single.hits])


def test_sizes_choice_is_remembered(qtbot, window):
    win = window()
    _choose(win, "multi")
    win.close()
    win2 = window()
    assert win2.key.scales == (64, 82, 101) and win2.sizes_box.currentData() == "multi"
    _choose(win2, "single")
    win2.close()
    win3 = window()
    assert win3.key.scales is None and win3.key.image_size == 64 and win3.sizes_box.currentData() == "single"
