"""Issue 24, the window's items 1, 2, 3, 5 and 10: one consistent state across folders, queries, models,
cancels and the small things (preview, names, Help, file manager, --cache-dir, export header, save folder)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QGuiApplication

from engine.session import FolderIndex
from retrieval_gui.main_window import MainWindow

TIMEOUT = 60_000


def _open(qtbot, win: MainWindow, folder: Path) -> None:
    assert win.open_collection(folder)
    qtbot.waitUntil(lambda: win.index_ready() and not win.indexing, timeout=TIMEOUT)


def _search(qtbot, win: MainWindow, query: Path) -> None:
    win.set_query(str(query))
    qtbot.waitUntil(lambda: win.result is not None and win.result.query == os.path.abspath(query)
                    and not win.searching, timeout=TIMEOUT)


# ------------------------------------------------------------------------------------------ item 1
def test_a_folder_opened_while_another_indexes_is_indexed(qtbot, window, image_folder, tmp_path, monkeypatch):
    first = image_folder(n_classes=2, per_class=3, root=tmp_path / "first")
    second = image_folder(n_classes=2, per_class=2, root=tmp_path / "second")
    real_update = FolderIndex.update

    def update(self, models, key, *, progress=None, should_stop=None, **kwargs):
        if self.folder.name == "first":  # a long indexing: it runs until it is cancelled
            progress(0, 6, "indexing")
            while not should_stop():
                time.sleep(0.01)
        return real_update(self, models, key, progress=progress, should_stop=should_stop, **kwargs)

    monkeypatch.setattr(FolderIndex, "update", update)
    win = window()
    assert win.open_collection(first)
    qtbot.waitUntil(lambda: win.indexing, timeout=TIMEOUT)
    assert win.open_collection(second)  # the same model settings, while the first still runs
    qtbot.waitUntil(lambda: win.index_ready() and not win.indexing, timeout=TIMEOUT)
    assert win.index.folder == second.resolve() and win.index.indexed_count(win.key) == 4
    assert win.status_label.text().startswith("second  ·  4 images · 4 indexed")
    qtbot.waitUntil(lambda: win.results_model.rowCount() == 4, timeout=TIMEOUT)
    assert all(Path(h.path).is_relative_to(second) for h in (win.results_model.hit_at(i) for i in range(4)))


# ------------------------------------------------------------------------------------------ item 2
def test_nothing_of_the_previous_folder_carries_over(qtbot, window, folder, image_folder, tmp_path):
    other = image_folder(n_classes=2, per_class=2, root=tmp_path / "other")
    win = window()
    win.act_dock.show()
    _open(qtbot, win, folder)
    _search(qtbot, win, folder / "class_00" / "001.jpg")
    qtbot.waitUntil(lambda: win.activations.payload is not None and not win.act_task.busy, timeout=TIMEOUT)
    assert win.open_collection(other)
    # no query, no results, no activations of the previous folder; nothing searched in the new one
    assert win.query_path is None and win.result is None and win.activations.payload is None
    assert win.query_info.text() == "" and win.grid_mode() == "collection"
    qtbot.waitUntil(lambda: win.index_ready() and not win.indexing, timeout=TIMEOUT)
    assert win.result is None and not win.searching


def test_a_query_from_another_folder_says_so(qtbot, window, folder, image_folder, tmp_path):
    other = image_folder(n_classes=1, per_class=2, root=tmp_path / "elsewhere")
    win = window()
    _open(qtbot, win, folder)
    _search(qtbot, win, other / "class_00" / "000.jpg")
    assert "from outside this folder" in win.grid_header.text() and "not marked" in win.grid_header.text()
    assert "no label" in win.query_info.text()
    assert "elsewhere" not in {Path(h.path).parts[-3] for h in win.result.hits}


def test_a_failed_query_takes_the_activations_away(qtbot, window, folder, tmp_path):
    win = window()
    win.act_dock.show()
    _open(qtbot, win, folder)
    _search(qtbot, win, folder / "class_01" / "000.jpg")
    qtbot.waitUntil(lambda: win.activations.payload is not None and not win.act_task.busy, timeout=TIMEOUT)
    bad = tmp_path / "not-a-photo.jpg"
    bad.write_bytes(b"this is not a JPEG")
    win.set_query(str(bad))
    qtbot.waitUntil(lambda: "Search failed" in win.banner.text() and not win.searching, timeout=TIMEOUT)
    assert win.activations.payload is None and "could not be searched" in win.activations.status.text()


# ------------------------------------------------------------------------------------------ item 3
def test_use_this_model_selects_the_trained_model_and_its_own_embedding(qtbot, window, folder, tmp_path):
    """The wizard's "Use this model" calls MainWindow.use_model(checkpoint): the trained model AND its
    trained embedding are chosen, and the descriptor is named as the trained one."""
    import torch

    from engine.training.checkpoint import save_checkpoint
    from engine.training.config import TrainConfig
    from models.embedding import build_model_from_config

    cfg = TrainConfig(data_root="x", weights="random", embedding_dim=32, pooling="gem", image_size=64).to_dict()
    torch.manual_seed(0)
    path = tmp_path / "runs" / "my-birds" / "best.pt"
    save_checkpoint(path, {"config": cfg, "model": build_model_from_config(cfg).state_dict(), "metrics": {}})
    win = window()
    _open(qtbot, win, folder)
    win.set_descriptor("gem")
    query = folder / "class_02" / "000.jpg"
    _search(qtbot, win, query)
    win.use_model(str(path))
    assert win.key.backbone == str(path) and win.key.descriptor == "fc"
    assert win.model_box.currentData() == str(path)
    assert win.descriptor_box.currentData() == "fc"
    assert win.descriptor_box.currentText() == "trained embedding (my-birds)"
    assert "trained embedding (my-birds)" in win.status_label.text()
    qtbot.waitUntil(lambda: win.result.spec == win.key and not win.searching, timeout=TIMEOUT)
    assert len(win.result.vector) == 32  # the trained 32-d embedding, not the backbone's pooled map


# ------------------------------------------------------------------------------------------ item 5
@pytest.mark.parametrize("content", ["nothing", "text files"])
def test_an_empty_or_non_image_folder_says_so(qtbot, window, tmp_path, content):
    empty = tmp_path / "notes"
    empty.mkdir()
    if content == "text files":
        (empty / "readme.txt").write_text("no images here")
        (empty / "sub").mkdir()
        (empty / "sub" / "data.csv").write_text("a,b")
    win = window()
    assert win.open_collection(empty)
    qtbot.waitUntil(lambda: not win.indexing, timeout=TIMEOUT)
    header = win.grid_header.text()
    assert "holds no image files" in header and "0 images" not in header and "Click an image" not in header
    assert "holds no image files" in win.banner.text()
    assert "Indexing failed (see the message above)" not in win.query_info.text()


def test_a_query_in_an_empty_folder_is_told_why(qtbot, window, tmp_path, folder):
    empty = tmp_path / "nothing"
    empty.mkdir()
    win = window()
    assert win.open_collection(empty)
    qtbot.waitUntil(lambda: not win.indexing, timeout=TIMEOUT)
    win.set_query(str(folder / "class_00" / "000.jpg"))
    assert "holds no image files" in win.query_info.text()


# ------------------------------------------------------------------------------------------ item 10
def test_results_are_faded_for_the_whole_of_a_sizes_switch(qtbot, window, folder):
    win = window()
    _open(qtbot, win, folder)
    _search(qtbot, win, folder / "class_01" / "001.jpg")
    modes = []

    def record() -> None:  # also called when the window closes at teardown (no result then)
        modes.append((win.grid_mode(), win.result is not None and win.result.spec.scales is not None))

    win.explorer.changed.connect(record)
    win.set_sizes("multi")
    qtbot.waitUntil(lambda: win.result.spec.scales is not None and not win.searching, timeout=TIMEOUT)
    win.explorer.changed.disconnect(record)
    before = [m for m, multi in modes if not multi]
    assert before and set(before) == {"stale"}, before  # never shown unfaded while they are out of date
    assert win.grid_mode() == "results" and not win.results_model.stale


def test_escape_closes_the_preview(qtbot, window, folder):
    win = window()
    _open(qtbot, win, folder)
    _search(qtbot, win, folder / "class_00" / "000.jpg")
    win.show()
    qtbot.waitExposed(win)
    win.results_view.setCurrentIndex(win.results_model.index(0))
    win.results_view.setFocus()
    qtbot.keyClick(win.results_view, Qt.Key.Key_Space)
    assert win.preview is not None and win.preview.isVisible()
    qtbot.keyClick(win.results_view, Qt.Key.Key_Escape)
    assert not win.preview.isVisible()


def test_results_for_an_ambiguous_name_name_its_folder(qtbot, window, folder):
    win = window()
    _open(qtbot, win, folder)
    qtbot.waitUntil(lambda: win.results_model.rowCount() == 12, timeout=TIMEOUT)
    _search(qtbot, win, folder / "class_02" / "001.jpg")  # every class has a 001.jpg
    assert "Results for <b>class_02/001.jpg</b>" in win.grid_header.text()
    assert "class_02/001.jpg" in win.query_info.text()


def test_after_cancel_the_status_says_how_many_of_how_many(qtbot, window, folder, monkeypatch):
    real_update = FolderIndex.update

    def update(self, models, key, *, progress=None, should_stop=None, **kwargs):
        calls = []

        def stop():  # stops after the first batch is committed
            calls.append(1)
            return len(calls) > 1 or should_stop()

        return real_update(self, models, key, progress=progress, should_stop=stop, batch_size=5)

    monkeypatch.setattr(FolderIndex, "update", update)
    win = window()
    assert win.open_collection(folder)
    qtbot.waitUntil(lambda: not win.indexing, timeout=TIMEOUT)
    done = win.index.indexed_count(win.key)
    assert 0 < done < 12 and win.state.cancelled
    assert f"  ·  {done} of 12 images indexed  ·  " in win.status_label.text()
    assert "Reindex" in win.explorer.folder.why_not


def test_help_has_a_usage_page_with_the_keys(qtbot, window, monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    shown = []
    monkeypatch.setattr(QMessageBox, "information", lambda _parent, title, text: shown.append(text))
    win = window()
    help_menu = [a.menu() for a in win.menuBar().actions() if a.text() == "&Help"][0]
    assert [a.text() for a in help_menu.actions()] == ["&How to use it and keys", "&About"]
    win.usage_action.trigger()
    assert shown and all(k in shown[0] for k in ("Ctrl+O", "Ctrl+V", "Space", "Escape", "Enter"))


def test_show_in_folder_without_a_file_manager_says_so(qtbot, window, folder, monkeypatch):
    from PySide6.QtGui import QDesktopServices

    monkeypatch.setattr(QDesktopServices, "openUrl", lambda _url: False)
    win = window()
    target = str(folder / "class_00")
    assert not win.open_url(target, "show its folder")
    assert "No program to show its folder" in win.banner.text() and target in win.banner.text()
    assert QGuiApplication.clipboard().text() == target


def test_the_window_takes_cache_dir_like_the_other_commands(qtbot, window, folder, tmp_path):
    from engine.cli import build_parser
    from engine.collection import collection_dir
    from retrieval_gui.app import _parse
    from retrieval_gui.launcher import gui_argv, register

    cache = tmp_path / "elsewhere-cache"
    args = build_parser(extra=(register,)).parse_args(["gui", str(folder), "--cache-dir", str(cache)])
    assert _parse(gui_argv(args)).cache_dir == str(cache)
    win = window(cache_dir=str(cache))
    _open(qtbot, win, folder)
    assert win.index.cache_dir == cache and win.models.cache_dir == cache
    assert collection_dir(folder.resolve(), win.key, cache).is_dir()


def test_the_contact_sheet_header_names_model_and_descriptor(qtbot, window, folder, tmp_path, monkeypatch):
    import engine.export as export

    texts = []
    real_fit = export._fit
    monkeypatch.setattr(export, "_fit", lambda draw, text, font, width: texts.append(text) or real_fit(
        draw, text, font, width))
    win = window()
    _open(qtbot, win, folder)
    win.set_descriptor("gem")
    _search(qtbot, win, folder / "class_00" / "000.jpg")
    task = win.export_current(str(tmp_path / "out" / "sheet.png"), ["png"])
    qtbot.waitUntil(lambda: not task.is_running(), timeout=TIMEOUT)
    assert (tmp_path / "out" / "sheet.png").is_file()
    assert "model efficientnet_lite0 · descriptor GeM · sizes 64" in texts


def test_save_dialogs_remember_their_folder(qtbot, window, folder, tmp_path, monkeypatch, isolated_settings):
    from PySide6.QtWidgets import QFileDialog

    starts = []
    out = tmp_path / "exports"
    out.mkdir()

    def save_name(_parent, _caption, start, _filters):
        starts.append(start)
        return str(out / "results.csv"), ""

    monkeypatch.setattr(QFileDialog, "getSaveFileName", save_name)
    win = window()
    _open(qtbot, win, folder)
    _search(qtbot, win, folder / "class_00" / "000.jpg")
    win._ask_export()
    assert win.wait_idle(TIMEOUT) and (out / "results.csv").is_file()
    assert QSettings().value("saveFolder") == str(out)
    win2 = window()
    _open(qtbot, win2, folder)
    _search(qtbot, win2, folder / "class_00" / "000.jpg")
    win2._ask_export()
    assert win2.wait_idle(TIMEOUT)
    assert Path(starts[0]).parent == Path.home() and Path(starts[1]).parent == out
