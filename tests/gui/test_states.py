"""What the window shows in each state (issue 13): a collection of symbolic links keeps its labels; a failed
query, a descriptor still being indexed and a cancelled indexing never leave stuck or unmarked results; the
collection is browsable before any query; and the small things of a first run (title, names, progress)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication

from engine.session import FolderIndex, IndexState
from retrieval_gui.main_window import MainWindow
from retrieval_gui.widgets import MarkRole

TIMEOUT = 60_000


def _open(qtbot, win: MainWindow, folder: Path) -> None:
    assert win.open_collection(folder)
    qtbot.waitUntil(win.index_ready, timeout=TIMEOUT)


def _settled(win: MainWindow) -> bool:
    return not win.searching


def _wait_result(qtbot, win: MainWindow, query: str) -> None:
    qtbot.waitUntil(lambda: win.result is not None and win.result.query == os.path.abspath(query) and _settled(win),
                    timeout=TIMEOUT)


# ------------------------------------------------------------------------------------------ item 1
def test_a_collection_of_symbolic_links_keeps_its_labels(qtbot, window, image_folder, tmp_path):
    """Images linked into class folders: each link is labelled by its folder, marked hit or miss, and the
    query does not find itself (its target lies outside the folder)."""
    originals = image_folder(n_classes=3, per_class=4, size=64, root=tmp_path / "originals")
    links = tmp_path / "linked"
    for img in sorted(originals.rglob("*.jpg")):
        target = links / img.parent.name / img.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(img)
    win = window()
    _open(qtbot, win, links)
    query = links / "class_01" / "002.jpg"
    win.set_query(str(query))
    _wait_result(qtbot, win, str(query))
    r = win.result
    assert r.query_label == "class_01"
    assert len(r.hits) == 11 and str(query) not in [h.path for h in r.hits]
    assert all(h.label is not None and Path(h.path).parent.parent == links for h in r.hits)
    marks = [win.results_model.data(win.results_model.index(i), MarkRole) for i in range(11)]
    assert marks == [h.label == "class_01" for h in r.hits] and any(marks)
    assert r.precision() is not None and "precision@11" in win.query_info.text()
    # the index answers by the path as given, never by the link's target
    assert win.index.label_of(query) == "class_01"
    assert win.index.label_of(originals / "class_01" / "002.jpg") is None


def test_a_folder_opened_through_a_link_keeps_its_labels(tmp_path, image_folder):
    real = image_folder(n_classes=2, per_class=2, size=32)
    alias = tmp_path / "alias"
    alias.symlink_to(real)
    index = FolderIndex(alias, cache_dir=tmp_path / "cache")
    assert index.folder == real.resolve()
    assert index.label_of(alias / "class_01" / "000.jpg") == "class_01"
    assert index.collection_path(alias / "class_01" / "000.jpg") == str(real.resolve() / "class_01" / "000.jpg")
    assert index.collection_path(tmp_path / "elsewhere.jpg") is None


# ------------------------------------------------------------------------------------------ item 2
def test_a_failed_query_is_said_and_takes_the_old_results_away(qtbot, window, folder, tmp_path):
    win = window()
    _open(qtbot, win, folder)
    win.set_query(str(folder / "class_00" / "000.jpg"))
    _wait_result(qtbot, win, str(folder / "class_00" / "000.jpg"))
    assert win.grid_mode() == "results"
    bad = tmp_path / "not-a-photo.jpg"
    bad.write_bytes(b"this is not a JPEG")
    win.set_query(str(bad))
    qtbot.waitUntil(lambda: "Search failed" in win.banner.text() and _settled(win), timeout=TIMEOUT)
    assert "searching" not in win.query_info.text()
    assert "Could not search with this image" in win.query_info.text()
    assert win.result is None
    # the grid no longer shows the previous query's results: it is back to the collection
    assert win.grid_mode() == "collection"
    qtbot.waitUntil(lambda: win.results_model.rowCount() == 12, timeout=TIMEOUT)
    assert win.results_model.browsing


def test_results_of_another_model_are_marked_out_of_date_while_it_indexes(qtbot, window, folder):
    win = window()
    _open(qtbot, win, folder)
    query = str(folder / "class_01" / "001.jpg")
    win.set_query(query)
    _wait_result(qtbot, win, query)
    win.use_model("resnet18")  # a backbone not indexed yet: its vectors take a while
    assert not win.index_ready()
    assert win.grid_mode() == "stale" and win.results_model.stale
    assert "Out of date" in win.grid_header.text() and "efficientnet_lite0" in win.grid_header.text()
    qtbot.waitUntil(lambda: win.result.spec.backbone == "resnet18" and _settled(win), timeout=TIMEOUT)
    assert win.grid_mode() == "results" and not win.results_model.stale
    assert "Out of date" not in win.grid_header.text()


def _stoppable_update(self, models, key, *, progress=None, should_stop=None, **_kwargs):
    """FolderIndex.update that indexes nothing until it is cancelled."""
    progress(0, 12, "indexing")
    while not should_stop():
        time.sleep(0.01)
    return IndexState(key, 12, 0, 0, 0, [], True, 0.1)


def test_cancel_before_anything_is_indexed_does_not_leave_the_query_waiting(qtbot, window, folder, monkeypatch):
    monkeypatch.setattr(FolderIndex, "update", _stoppable_update)
    win = window()
    assert win.open_collection(folder)
    win.set_query(str(folder / "class_02" / "001.jpg"))
    assert "waiting for the first indexed images" in win.query_info.text()
    assert win.cancel_button.isVisibleTo(win)
    win.cancel_button.click()
    qtbot.waitUntil(lambda: not win.indexing, timeout=TIMEOUT)
    assert "waiting" not in win.query_info.text()
    assert "stopped before any image was indexed" in win.query_info.text()
    assert "Reindex" in win.query_info.text()


# ------------------------------------------------------------------------------------------ item 3
def test_the_collection_is_shown_before_a_query_and_a_click_searches(qtbot, window, folder):
    win = window()
    assert win.grid_mode() == "welcome" and win.grid_stack.currentIndex() == 0
    _open(qtbot, win, folder)
    assert win.grid_mode() == "collection"
    qtbot.waitUntil(lambda: win.results_model.rowCount() == 12, timeout=TIMEOUT)
    assert win.results_model.browsing and win.grid_stack.currentIndex() == 1
    header = win.grid_header.text()
    assert "12 images" in header and "Click an image" in header and "paste" in header and "drop" in header
    # no ranks, scores or marks in the collection view
    assert win.results_model.mark(win.results_model.hit_at(0)) is None
    win.resize(900, 700)
    win.show()
    qtbot.waitExposed(win)
    view = win.results_view
    hit = win.results_model.hit_at(4)
    rect = view.visualRect(win.results_model.index(4))
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    _wait_result(qtbot, win, hit.path)
    assert win.grid_mode() == "results" and not win.results_model.browsing


def test_a_folder_dropped_on_the_window_opens(qtbot, window, folder):
    win = window()
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(folder))])
    pos = QPointF(10, 10)
    enter = QDragEnterEvent(pos, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(win, enter)
    assert enter.isAccepted()
    QApplication.sendEvent(win, QDropEvent(pos, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                                           Qt.KeyboardModifier.NoModifier))
    assert win.index is not None and win.index.folder == folder.resolve()
    qtbot.waitUntil(win.index_ready, timeout=TIMEOUT)


# ------------------------------------------------------------------------------------------ item 8
def test_names_title_menu_and_best_possible_precision(qtbot, window, folder):
    win = window()
    assert win.windowTitle() == "Retrieval Explorer"
    _open(qtbot, win, folder)
    # the test folder is called 'images', which says nothing: its parent is named too
    name = f"{folder.parent.name}/images"
    assert win.windowTitle() == f"{name} — Retrieval Explorer"
    assert win.windowTitle().count("Retrieval Explorer") == 1
    assert win.status_label.text().startswith(name)
    file_menu = win.menuBar().actions()[0].menu()
    assert "&Open folder…" in [a.text() for a in file_menu.actions()]
    query = str(folder / "class_00" / "003.jpg")
    win.set_query(query)
    _wait_result(qtbot, win, query)
    # 3 other images of class_00 among 11 results: a perfect ranking scores 3/11
    assert win.result.relevant == 3 and win.result.best_precision() == pytest.approx(3 / 11)
    assert "best possible 0.27" in win.query_info.text()


def test_progress_text_stays_on_one_line(qtbot, window, monkeypatch):
    win = window()
    times = [100.0, 4000.0]  # 1,233 images in 3,900 s: 999k images take 35 days at that rate
    real = time.monotonic
    monkeypatch.setattr("retrieval_gui.controllers.folder.time.monotonic",
                        lambda: times.pop(0) if times else real())
    win.rate.text(1, 999_999)
    text = win.rate.text(1_234, 999_999)
    monkeypatch.undo()
    assert text.count("(") == 0 and "left" in text and ":" in text
    assert win.progress.fontMetrics().horizontalAdvance(text) + 20 <= win.progress.width()


def test_the_activations_dock_shows_on_the_first_start(qtbot, window):
    win = window(restore=True)  # no saved window state: a first start
    assert not win.act_dock.isHidden()
    win.act_dock.hide()
    win.save_settings()
    win2 = window(restore=True)
    assert win2.act_dock.isHidden()  # the user's choice is kept


def test_the_collection_view_of_100k_images_is_not_built_on_the_gui_thread(qtbot, tmp_path):
    """The rows of a large collection are made as they are painted: showing 100k images and appending
    another 20k as indexing goes on cost the GUI thread no per-image work."""
    from retrieval_gui.thumbnails import ThumbnailLoader
    from retrieval_gui.widgets import CollectionRows, ResultsModel, browse_rows

    loader = ThumbnailLoader(32, None)
    model = ResultsModel(loader)
    paths = [str(tmp_path / f"class_{i % 50:02d}" / f"{i:06d}.jpg") for i in range(120_000)]
    labels = [Path(p).parent.name for p in paths]
    first_rows, all_rows = browse_rows(paths[:100_000]), browse_rows(paths)  # a worker's job
    inserted = []
    model.rowsInserted.connect(lambda _parent, a, b: inserted.append((a, b)))
    t0 = time.perf_counter()
    model.set_collection(paths[:100_000], labels[:100_000], first_rows)
    model.set_collection(paths, labels, all_rows)
    assert time.perf_counter() - t0 < 0.5
    assert isinstance(model.hits, CollectionRows) and model.rowCount() == 120_000
    assert inserted == [(100_000, 119_999)]  # appended, not reset: the scroll position stays
    hit = model.hit_at(100_123)
    assert hit.path == paths[100_123] and hit.label == labels[100_123] and model.mark(hit) is None
    loader.wait()
