"""Relevance feedback in the window (issue 28): marks by keyboard, menu and badge click re-rank off the GUI
thread, undo, a saved concept reopened in another window ranks the same, the CLI agrees, and concepts open
the training wizard on a split file."""

from __future__ import annotations

import json
import os

import pytest
from PySide6.QtCore import Qt

from retrieval_gui.main_window import MainWindow

from .conftest import open_shown
from .test_regions_window import stand_in  # noqa: F401 - the stand-in network

TIMEOUT = 60_000


@pytest.fixture
def folder(image_folder):
    return image_folder(n_classes=3, per_class=4, size=64)


def _window(qtbot, folder) -> MainWindow:
    w = MainWindow(weights="random", image_size=64, threads=1, thumb_size=64, restore=False)
    qtbot.addWidget(w)
    return open_shown(qtbot, w, folder, TIMEOUT)


def _wait(qtbot, w: MainWindow, marks: int) -> None:
    """Until the shown result is the feedback ranking of ``marks`` marks (or the plain one for 0)."""
    fc = w.explorer.feedback

    def ok():
        r = w.result
        if r is None or w.searching or fc.busy:
            return False
        return r.method.startswith("feedback") == bool(marks) and len(fc.marks) == marks

    qtbot.waitUntil(ok, timeout=TIMEOUT)


def test_marks_rerank_undo_save_reopen_and_cli_agree(qtbot, folder, capsys):
    from engine.cli import main

    w = _window(qtbot, folder)
    query = str(folder / "class_00" / "000.jpg")
    w.set_query(query)
    _wait(qtbot, w, 0)
    fc, view, model = w.explorer.feedback, w.results_view, w.results_model
    # + on the current card (keyboard)
    first = model.hit_at(3)
    view.setFocus()
    view.setCurrentIndex(model.index(3))
    qtbot.keyClicks(view, "+")
    _wait(qtbot, w, 1)
    assert fc.marks == {first.path: 1} and model.feedback == {first.path: 1}
    # not relevant, from the card's context menu
    second = model.hit_at(0) if model.hit_at(0).path != first.path else model.hit_at(1)
    menu = w.cards.hit_menu(second)
    next(a for a in menu.actions() if a.text().startswith("Mark &not relevant")).trigger()
    _wait(qtbot, w, 2)
    assert fc.marks[second.path] == -1
    # a click on a card's badge marks it + (the next mark of an unmarked card)
    row = next(i for i in range(len(model.hits)) if model.hit_at(i).path not in fc.marks)
    third = model.hit_at(row)
    rect = view.visualRect(model.index(row))
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton,
                     pos=view.itemDelegate().feedback_badge(rect).center())
    _wait(qtbot, w, 3)
    assert fc.marks[third.path] == 1 and "feedback" in w.result.method
    ranked = [(h.path, round(h.score, 4)) for h in w.result.hits]
    # undo takes the last mark back, and the ranking with it
    assert fc.undo()
    _wait(qtbot, w, 2)
    assert third.path not in fc.marks and third.path not in model.feedback
    fc.mark(third.path, 1)
    _wait(qtbot, w, 3)
    assert [(h.path, round(h.score, 4)) for h in w.result.hits] == ranked
    # the CLI ranks the same (it keeps the query itself, at the top)
    argv = ["search", query, "--collection", str(folder), "--weights", "random", "--image-size", "64",
            "--descriptor", "gem", "--k", "20", "--json", "--positive", first.path, third.path,
            "--negative", second.path]
    assert main(argv) == 0
    cli_hits = [(h["path"], round(h["score"], 4)) for h in json.loads(capsys.readouterr().out)["hits"]]
    assert [h for h in cli_hits if h[0] != os.path.abspath(query)] == ranked
    # saved, then reopened in another window: the same marks and the same ranking
    assert w.feedback_ui.save("class zero")
    w.close()
    w2 = _window(qtbot, folder)
    assert w2.feedback_ui.open("class zero")
    _wait(qtbot, w2, 3)
    assert w2.explorer.feedback.marks == {first.path: 1, second.path: -1, third.path: 1}
    assert [(h.path, round(h.score, 4)) for h in w2.result.hits] == ranked
    assert w2.explorer.feedback.concept_name == "class zero"
    # a new query starts without marks
    w2.set_query(str(folder / "class_02" / "001.jpg"))
    _wait(qtbot, w2, 0)
    assert not w2.explorer.feedback.marks and not w2.results_model.feedback
    w2.close()


def test_train_on_concepts_opens_the_wizard_on_its_split(qtbot, folder, monkeypatch):
    import retrieval_gui.wizard.wizard as wizard_module
    from engine.concepts import Concept, save_concept
    from retrieval_gui.wizard.dataset import summarize

    class Wizard:  # the real wizard is tested in test_wizard*.py; here: what it is handed
        def __init__(self, parent, window, *, config):
            self.config = config

        def show(self):
            pass

    monkeypatch.setattr(wizard_module, "TrainWizard", Wizard)
    imgs = sorted(str(p) for p in folder.rglob("*.jpg"))
    save_concept(Concept("a", queries=[imgs[0]], positives=imgs[1:4]))
    save_concept(Concept("b", positives=imgs[4:9]))
    w = MainWindow(weights="random", image_size=64, threads=1, thumb_size=64, restore=False)
    qtbot.addWidget(w)
    wizard = w.feedback_ui.train(["a", "b"])
    assert wizard is not None
    cfg = wizard.config
    assert cfg.image_split.endswith(".split.json") and cfg.data_root == str(folder)
    # the data page counts the concepts as its classes (the trainer's own split)
    s = summarize(cfg.data_root, image_split=cfg.image_split)
    assert s.ok and s.per_class == {"a": 4, "b": 5} and s.train_images + s.val_images == 9
    w.close()


def test_marks_on_a_region_query_rerank_from_the_region_as_the_cli_does(qtbot, stand_in, folder, capsys):  # noqa: F811
    """Marks on a region query's results re-rank from the REGION's vector (the one its ranking was searched
    with), not the whole image's stored row; `search IMAGE --box ... --positive ... --negative ...` agrees.
    The stand-in network of tests/test_cli_index.py keeps it fast."""
    from engine.cli import main

    w = _window(qtbot, folder)
    query = str(folder / "class_01" / "000.jpg")
    w.set_query(query, (0.25, 0.25, 0.5, 0.5))
    fc = w.explorer.feedback
    qtbot.waitUntil(lambda: w.result is not None and w.result.box is not None and not w.searching, timeout=TIMEOUT)
    plain = w.result
    plus, minus = plain.hits[2].path, plain.hits[0].path
    fc.mark(plus, 1)
    fc.mark(minus, -1)
    _wait(qtbot, w, 2)
    r = w.result
    assert r.box == plain.box and fc.marks == {plus: 1, minus: -1}
    key = w.key
    argv = ["search", query, "--collection", str(folder), "--backbone", key.backbone, "--weights", key.weights,
            "--descriptor", key.descriptor, "--image-size", str(key.image_size or 64), "--device", "cpu",
            "--k", "20", "--json", "--positive", plus, "--negative", minus]
    assert main([*argv, "--box", ",".join(map(str, r.box))]) == 0
    region_cli = json.loads(capsys.readouterr().out)
    hits = [h for h in region_cli["hits"] if h["path"] != os.path.abspath(query)]
    assert region_cli["box"] == list(r.box)
    assert [h["path"] for h in hits] == [h.path for h in r.hits]
    assert [h["score"] for h in hits] == pytest.approx([h.score for h in r.hits], abs=1e-4)
    assert main(argv) == 0  # the whole image's marks rank otherwise: the region's vector was used
    whole = [h for h in json.loads(capsys.readouterr().out)["hits"] if h["path"] != os.path.abspath(query)]
    assert [h["score"] for h in whole] != pytest.approx([h.score for h in r.hits], abs=1e-3)
    qtbot.waitUntil(lambda: not w.explorer.regions.task.busy, timeout=TIMEOUT)  # the results' best regions
    w.close()
