"""The results grid from the keyboard and its context menu (issue 13 item 4): Enter searches with the
selected card, Space toggles ONE reusable preview that shows the file's path, and the menu's actions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication

from retrieval_gui.main_window import MainWindow
from retrieval_gui.widgets import ImageViewer

from .conftest import open_shown

TIMEOUT = 60_000


@pytest.fixture
def win(qtbot, image_folder):
    folder = image_folder(n_classes=3, per_class=4, size=64)
    w = MainWindow(weights="random", image_size=64, threads=1, thumb_size=64, restore=False)
    qtbot.addWidget(w)
    open_shown(qtbot, w, folder, TIMEOUT)
    w.set_query(str(folder / "class_00" / "000.jpg"))
    _wait_result(qtbot, w, str(folder / "class_00" / "000.jpg"))
    yield w
    w.close()


def _wait_result(qtbot, w: MainWindow, query: str) -> None:
    qtbot.waitUntil(lambda: w.result is not None and w.result.query == os.path.abspath(query)
                    and not w.searching, timeout=TIMEOUT)


def test_enter_searches_with_the_selected_result(qtbot, win):
    view = win.results_view
    hit = win.results_model.hit_at(2)
    view.setFocus()
    view.setCurrentIndex(win.results_model.index(2))
    qtbot.keyClick(view, Qt.Key.Key_Return)
    _wait_result(qtbot, win, hit.path)
    assert win.query_slot.path == hit.path


def test_space_toggles_one_reusable_preview(qtbot, win):
    view = win.results_view
    view.setFocus()
    first, second = win.results_model.hit_at(0), win.results_model.hit_at(1)
    view.setCurrentIndex(win.results_model.index(0))
    qtbot.keyClick(view, Qt.Key.Key_Space)
    preview = win.preview
    assert preview is not None and preview.isVisible() and preview.path == first.path
    assert preview.path_label.text() == first.path  # the file's path is shown
    assert f"#{first.rank}" in preview.info.text()
    qtbot.waitUntil(lambda: preview.image.pixmap() is not None and not preview.image.pixmap().isNull(),
                    timeout=TIMEOUT)
    # moving on (arrows, clicks) shows the next card in the same window
    view.setCurrentIndex(win.results_model.index(1))
    assert win.preview is preview and preview.path == second.path and preview.path_label.text() == second.path
    win.select_hit(win.results_model.hit_at(3))
    assert win.preview is preview and preview.path == win.results_model.hit_at(3).path
    assert len(win.findChildren(ImageViewer)) == 1
    qtbot.keyClick(view, Qt.Key.Key_Space)
    assert not preview.isVisible()
    qtbot.keyClick(view, Qt.Key.Key_Space)
    assert preview.isVisible() and len(win.findChildren(ImageViewer)) == 1


def test_context_menu_copies_the_path_and_the_image_and_searches(qtbot, win):
    hit = win.results_model.hit_at(1)
    menu = win.hit_menu(hit)
    actions = {a.text().split("\t")[0].replace("&", ""): a for a in menu.actions() if a.text()}
    assert {"Query with this image", "Preview", "Open", "Show in folder", "Copy path", "Copy image"} <= set(actions)
    QGuiApplication.clipboard().clear()
    actions["Copy path"].trigger()
    assert QGuiApplication.clipboard().text() == hit.path
    task = win.copy_image(hit.path)
    with qtbot.waitSignal(task.finished, timeout=TIMEOUT):
        pass
    qtbot.waitUntil(lambda: not QGuiApplication.clipboard().image().isNull(), timeout=TIMEOUT)
    assert QGuiApplication.clipboard().image().size().width() == 64
    actions["Query with this image"].trigger()
    _wait_result(qtbot, win, hit.path)
    assert Path(win.query_path) == Path(hit.path)
    QGuiApplication.clipboard().clear()


def test_right_click_pops_the_menu_of_the_card_under_the_mouse(qtbot, win):
    shown = []
    win.results_view.hitMenu.connect(lambda hit, _pos: shown.append(hit))
    rect = win.results_view.visualRect(win.results_model.index(2))
    win.results_view.customContextMenuRequested.emit(rect.center())
    assert shown == [win.results_model.hit_at(2)]
    assert win.results_view.current_hit() == win.results_model.hit_at(2)
    assert win._menu is not None and win._menu.isVisible()
    win._menu.close()
