"""The Duplicates view: groups of planted copies, a slider that regroups without searching again, and
moves that happen only after an explicit confirmation (the trash is never the real one here)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox
from test_duplicates import SPEC, TinyImage, blocks  # noqa: E402 - tests/ is on sys.path under pytest

from engine.collection import Collection
from retrieval_gui.duplicates_view import DuplicatesView

TIMEOUT = 30_000


@pytest.fixture
def collection(tmp_path: Path) -> Collection:
    """6 distinct pictures; #0 with two copies, #1 with one (as tests/test_duplicates.py's ``planted``)."""
    root = tmp_path / "photos"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    for s in range(6):
        blocks(s).save(root / "a" / f"p{s}.png")
    blocks(0).resize((48, 48), Image.Resampling.BILINEAR).save(root / "a" / "p0_small.jpg", quality=60)
    blocks(0).save(root / "b" / "p0_copy.jpg", quality=60)
    blocks(1).save(root / "b" / "p1_copy.jpg", quality=70)
    c = Collection.open(root, model_spec=SPEC, cache_dir=tmp_path / "cache", index="exact")
    c.update(TinyImage())
    return c


@pytest.fixture
def make_view(qtbot, tmp_path):
    made = []

    def make(coll: Collection, **kw) -> DuplicatesView:
        calls = {"confirm": [], "trash": []}
        kw.setdefault("confirm", lambda title, text: calls["confirm"].append((title, text)) or False)
        kw.setdefault("trash", lambda p: calls["trash"].append(p))
        kw.setdefault("verify", False)  # the similar tier alone; the copies tier: tests/gui/test_copies_view.py
        view = DuplicatesView(lambda: coll, descriptor="spoc", **kw)
        view.calls = calls
        qtbot.addWidget(view)
        view.show()
        view.start()
        qtbot.waitUntil(lambda: view.dup is not None and view.regroups >= 1, timeout=TIMEOUT)
        made.append(view)
        return view

    yield make
    for v in made:
        v.wait_idle()
        v.close()


def _group_names(view: DuplicatesView) -> list[list[str]]:
    return [[it.relpath for it in g.items] for g in view.groups]


def test_planted_copies_are_grouped_and_the_slider_regroups_without_searching(make_view, collection,
                                                                               monkeypatch):
    from engine.index import ExactIndex

    calls = []
    real, real_exact = Collection.search_many, ExactIndex.query
    monkeypatch.setattr(Collection, "search_many",
                        lambda self, q, options=None: calls.append(len(q)) or real(self, q, options))
    # the exact pair search asks the index directly
    monkeypatch.setattr(ExactIndex, "query",
                        lambda self, q, k, ef=None: calls.append(len(q)) or real_exact(self, q, k, ef=ef))
    view = make_view(collection)
    searched = len(calls)
    assert searched >= 1
    assert _group_names(view) == [["a/p0.png", "b/p0_copy.jpg", "a/p0_small.jpg"],
                                  ["a/p1.png", "b/p1_copy.jpg"]]
    assert "2 groups" in view.status.text() and view.threshold() == pytest.approx(0.90)
    assert len(view._cards) == 5 and view.csv_button.isEnabled() and not view.trash_button.isEnabled()
    before = view.regroups
    for v in range(view.slider.minimum(), view.slider.maximum() + 1, 4):  # the whole range, live
        view.slider.setValue(v)
    view.slider.setValue(view.slider.maximum())
    assert view.threshold() == pytest.approx(1.0) and view.groups == []
    view.set_threshold(0.95)
    view.strict_box.setChecked(True)
    assert view.regroups - before >= 10 and len(calls) == searched  # regrouped many times, never searched
    assert len(view.groups) == 2


def test_nothing_moves_without_an_explicit_confirmation(make_view, collection, tmp_path):
    view = make_view(collection)
    view.select_all_but_best()
    chosen = view.selected_paths()
    assert [Path(p).name for p in chosen] == ["p0_copy.jpg", "p0_small.jpg", "p1_copy.jpg"]
    assert view.trash_button.isEnabled() and "3 selected" in view.selection_label.text()
    dest = tmp_path / "chosen-by-the-test"
    # declined: nothing is moved or trashed
    assert view.move_selection_to_folder(str(dest)) == []
    assert view.move_selection_to_trash() == []
    assert len(view.calls["confirm"]) == 2 and view.calls["trash"] == []
    assert all(Path(p).is_file() for p in chosen) and not dest.exists()
    assert "p0_copy.jpg" in view.calls["confirm"][0][1]  # the confirmation names what would move
    # accepted: moved to the folder this test chose, under their path in the collection
    view.confirm = lambda title, text: True
    moved = view.move_selection_to_folder(str(dest))
    assert sorted(Path(d).relative_to(dest).as_posix() for _, d in moved) == [
        "a/p0_small.jpg", "b/p0_copy.jpg", "b/p1_copy.jpg"]
    assert not any(Path(p).exists() for p in chosen) and view.groups == [] and not view.selected
    assert view.calls["trash"] == []


def test_trash_goes_through_the_injected_function_after_confirming(make_view, collection):
    view = make_view(collection, confirm=lambda title, text: True)
    view.select_all_but_best()
    sent = view.move_selection_to_trash()
    assert len(sent) == 3 and view.calls["trash"] == sent
    assert all(Path(p).is_file() for p in sent)  # the injected trash only recorded them


def test_the_default_confirmation_defaults_to_cancel(make_view, collection, tmp_path, monkeypatch):
    seen = []

    def exec_(box):
        seen.append((box.defaultButton() is box.button(QMessageBox.StandardButton.Cancel), box.text()))
        return QMessageBox.StandardButton.Cancel  # as if Enter was pressed: the default button

    monkeypatch.setattr(QMessageBox, "exec", exec_)
    view = make_view(collection, confirm=None, ask_folder=lambda: str(tmp_path / "dest"))
    view.select_all_but_best()
    assert view.move_selection_to_folder() == [] and seen and seen[0][0]
    assert view.move_selection_to_trash() == [] and len(seen) == 2 and view.calls["trash"] == []
    assert all(Path(p).is_file() for p in view.selected_paths()) and not (tmp_path / "dest").exists()


def test_export_csv(make_view, collection, tmp_path):
    view = make_view(collection, ask_save=lambda: str(tmp_path / "dups.csv"))
    assert view.export_csv() == str(tmp_path / "dups.csv")
    rows = list(csv.DictReader((tmp_path / "dups.csv").open()))
    assert [(r["group"], r["rank"], r["keep"]) for r in rows][:3] == [("1", "1", "True"), ("1", "2", "False"),
                                                                      ("1", "3", "False")]


def test_an_empty_collection_says_so(make_view, tmp_path):
    (tmp_path / "none").mkdir()
    view = make_view(Collection.open(tmp_path / "none", model_spec=SPEC, cache_dir=tmp_path / "cache"))
    assert view.groups == [] and "No image is indexed yet" in view.status.text()


def test_the_window_opens_both_views_on_its_collection(qtbot, image_folder, monkeypatch):
    """Tools > Find duplicates… and Tools > Map of the collection… on the explorer's open folder; a click on
    the map queries with that image."""
    from PySide6.QtCore import QPointF

    from retrieval_gui.main_window import MainWindow
    from retrieval_gui.map_view import open_views

    folder = image_folder(n_classes=3, per_class=4, size=64)
    (folder / "class_00" / "copy.jpg").write_bytes((folder / "class_00" / "000.jpg").read_bytes())
    win = MainWindow(weights="random", image_size=64, threads=1, thumb_size=64, restore=False)
    qtbot.addWidget(win)
    try:
        assert win.open_collection(folder)
        qtbot.waitUntil(win.index_ready, timeout=120_000)
        win.duplicates_action.trigger()
        (dups,) = win.findChildren(DuplicatesView)
        qtbot.waitUntil(lambda: dups.dup is not None and dups.regroups >= 1, timeout=TIMEOUT)
        assert any({"000.jpg", "copy.jpg"} <= {Path(it.path).name for it in g.items} for g in dups.groups)
        dups.close()
        win.map_action.trigger()
        (view,) = open_views()  # a window of its own (no Qt parent), so the results can come above it
        qtbot.waitUntil(lambda: view.map is not None, timeout=TIMEOUT)
        assert len(view.map) == 13
        view.canvas.viewport().repaint()
        row = 5
        p = view.canvas.mapFromScene(QPointF(view.cloud.x[row], view.cloud.y[row]))
        from PySide6.QtCore import QEvent
        from PySide6.QtGui import QMouseEvent
        from PySide6.QtWidgets import QApplication

        for kind in (QEvent.Type.MouseButtonPress, QEvent.Type.MouseButtonRelease):
            release = kind == QEvent.Type.MouseButtonRelease
            buttons = Qt.MouseButton.NoButton if release else Qt.MouseButton.LeftButton
            QApplication.sendEvent(view.canvas.viewport(), QMouseEvent(
                kind, QPointF(p), view.canvas.viewport().mapToGlobal(QPointF(p)), Qt.MouseButton.LeftButton,
                buttons,
                Qt.KeyboardModifier.NoModifier))
        assert win.query_path is not None and Path(win.query_path).parent.parent == folder.resolve()
        view.close()
    finally:
        win.close()
        win.wait_idle()


def test_grouping_in_a_worker_shows_only_the_latest_thresholds_groups(make_view, collection, monkeypatch, qtbot):
    """Large pair lists are grouped in a worker (workers.LatestTask): one grouping at a time, and whatever
    the order the groupings end in, only the latest slider position's groups are shown."""
    import retrieval_gui.duplicates_view as dv

    view = make_view(collection)
    monkeypatch.setattr(dv, "GUI_REGROUP_PAIRS", -1)  # every regrouping in a worker
    before = view.regroups
    running_at_once = []
    real_groups = view.dup.groups

    def slow_groups(t, rule):
        running_at_once.append(sum(1 for h in dv.workers.live_tasks() if h.name == "regroup"))
        return real_groups(t, rule)

    monkeypatch.setattr(view.dup, "groups", slow_groups)
    for v in range(view.slider.minimum(), view.slider.maximum() + 1, 2):
        view.slider.setValue(v)
    view.set_threshold(0.95)
    qtbot.waitUntil(lambda: not view._regroup.busy, timeout=TIMEOUT)
    assert max(running_at_once) == 1  # never two groupings at once
    assert view.regroups - before <= len(running_at_once)  # stale results were dropped, not shown
    assert _group_names(view) == [[it.relpath for it in g.items] for g in real_groups(0.95, view.rule())]
    assert len(view.groups) == 2 and "2 groups" in view.status.text()
