"""File > Use a whitening file…: a saved whitening applied to the window's descriptor (indexed and searched
in the background), a refused file answered with a message box (offscreen, random-weight EfficientNet-Lite0
on 64-px images, GeM: 1280-d)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.whitening import save_whitening
from models.whitening import PCAWhitening
from retrieval_gui import main_window
from retrieval_gui.main_window import MainWindow

TIMEOUT = 120_000


def _whitening(tmp_path, name="w.npz", descriptor="gem", sizes=(64,), dim=32):
    X = np.random.default_rng(0).standard_normal((200, 1280)).astype(np.float32)  # noqa: N806
    w = PCAWhitening.fit(X, dim=dim, shrinkage=0.1, meta={"descriptor": descriptor, "sizes": list(sizes)})
    path = tmp_path / name
    save_whitening(w, path)
    return path


@pytest.fixture
def warnings(monkeypatch):
    """QMessageBox.warning recorded instead of shown (a modal box would wait for a click)."""
    shown = []
    monkeypatch.setattr(main_window.QMessageBox, "warning", lambda _parent, title, text: shown.append((title, text)))
    return shown


def test_whitening_file_whitens_the_search(qtbot, window, folder, tmp_path, warnings):
    win: MainWindow = window()
    assert win.open_collection(folder)
    qtbot.waitUntil(win.index_ready, timeout=TIMEOUT)
    path = _whitening(tmp_path)
    assert win.use_whitening(path) and not warnings
    assert win.key.whitening == str(path) and "whitened (w.npz)" in win.status_label.text()
    assert win.no_whitening_action.isEnabled()
    query = str(folder / "class_02" / "003.jpg")
    win.set_query(query)
    qtbot.waitUntil(lambda: win.results_current() and not win.searching, timeout=TIMEOUT)
    r = win.result
    assert r.spec.whitening == str(path) and r.vector.shape == (32,)  # whitened to the file's 32 dims
    assert len(r.hits) == 11
    paths, vecs = win.index.vectors(win.key)
    assert vecs.shape == (12, 32)
    # the scores are cosines against the whitened vectors
    q = r.vector / np.linalg.norm(r.vector)
    by_hand = sorted((float(v @ q) / float(np.linalg.norm(v)) for p, v in zip(paths, vecs, strict=True)
                      if p != query), reverse=True)
    assert [h.score for h in r.hits] == pytest.approx(by_hand, abs=2e-3)
    # another descriptor drops it (a whitening belongs to one descriptor); so does File > No whitening
    win.set_descriptor("mac")
    assert win.key.whitening is None and not win.no_whitening_action.isEnabled()
    win.set_descriptor("gem")
    assert win.use_whitening(path)
    win.no_whitening_action.trigger()
    assert win.key.whitening is None and win.index_ready()  # the plain GeM vectors exist: instant
    qtbot.waitUntil(lambda: win.results_current() and not win.searching, timeout=TIMEOUT)
    assert win.result.vector.shape == (1280,)


def test_refused_whitening_files_give_a_message(qtbot, window, tmp_path, warnings):
    win: MainWindow = window()
    before = win.key
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip archive")
    assert not win.use_whitening(junk)
    assert warnings[-1][0] == "Whitening file refused" and "junk.npz" in warnings[-1][1]
    assert not win.use_whitening(tmp_path / "missing.npz") and "not found" in warnings[-1][1]
    assert not win.use_whitening(_whitening(tmp_path, "mac.npz", descriptor="mac"))
    assert "learned for the MAC" in warnings[-1][1] and "current one is GeM" in warnings[-1][1]
    assert not win.use_whitening(_whitening(tmp_path, "multi.npz", sizes=(64, 82, 101)))
    assert "64+82+101" in warnings[-1][1] and "Sizes" in warnings[-1][1]
    old = tmp_path / "old.npz"  # no record of what it was learned for: refused with the command to relearn it
    save_whitening(PCAWhitening.fit(np.random.default_rng(2).standard_normal((50, 8)), dim=4), old)
    assert not win.use_whitening(old)
    assert "does not record" in warnings[-1][1] and "retrieval-explorer whiten" in warnings[-1][1]
    assert len(warnings) == 5 and win.key == before
    win.set_sizes("multi")  # learned at the multi-scale sizes: accepted there, and dropped by a sizes change
    assert win.use_whitening(tmp_path / "multi.npz") and win.key.whitening
    win.set_sizes("single")
    assert win.key.whitening is None


def test_whitening_of_another_dimension_fails_in_the_banner(qtbot, window, folder, tmp_path, warnings):
    win: MainWindow = window()
    assert win.open_collection(folder)
    qtbot.waitUntil(win.index_ready, timeout=TIMEOUT)
    X = np.random.default_rng(1).standard_normal((100, 512)).astype(np.float32)  # noqa: N806
    save_whitening(PCAWhitening.fit(X, dim=16, shrinkage=0.1, meta={"descriptor": "gem", "sizes": [64]}),
                   tmp_path / "resnet18.npz")  # GeM at 64 as the window's: the dimension is checked when built
    assert win.use_whitening(tmp_path / "resnet18.npz")
    qtbot.waitUntil(lambda: not win.indexing, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: not win.banner.isHidden(), timeout=TIMEOUT)
    assert "Indexing failed" in win.banner.text() and "512-d" in win.banner.text() and not warnings
