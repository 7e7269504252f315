"""The wizard keeps one consistent state (issue 24): settings pages bound from TrainConfig's fields, Cancel
remembers, the whitening path offers the window's open folder, closing mid-run asks (wizard and window),
estimates count the final validations and the measured evaluation, the validation axis stays in [0, 1]."""

from __future__ import annotations

import dataclasses
import json
import time
from types import SimpleNamespace

import pytest
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QMainWindow

import retrieval_gui.wizard.wizard as W
from engine.training.config import TrainConfig
from engine.training.options import page_fields
from engine.vocabulary import ModelSpec
from retrieval_gui.wizard import LiveTrainingPlot, TrainWizard
from retrieval_gui.wizard.estimate import Rates, estimate_run, rate_key
from retrieval_gui.wizard.pages import remember_rates
from retrieval_gui.wizard.whiten_page import WhitenSettings
from tests.gui.test_wizard import (
    no_modal_question,  # noqa: F401 - autouse: no blocking question
    tiny_config,
    walk_to_run_page,
)


def changed_config(root: str) -> TrainConfig:
    """Every field a page binds from the table away from its default (values the widgets can show)."""
    return TrainConfig(data_root=root, seed=7, weights="random", pooling="gem", embedding_dim=128, image_size=96,
                       loss="contrastive", margin=0.25, mining="hard", memory=False, memory_share=0.3,
                       memory_weight=0.5, warmup_iters=20, tail_units=2, iterations=300, classes_per_batch=6,
                       samples_per_class=3, lr_head=2e-4, lr_backbone=3e-5, weight_decay=2e-4, freeze_bn=False,
                       val_every=30, select_metric="recall@1", device="cpu", num_threads=2, name="mine",
                       mode="tail", target="new", val_class_share=0.3, val_image_share=0.1)


def test_pages_are_bound_from_the_table(qtbot, image_folder):
    root = str(image_folder(n_classes=3, per_class=2, size=24))
    cfg = changed_config(root)
    wiz = TrainWizard(config=cfg)
    qtbot.addWidget(wiz)
    pages = {"data": wiz.data_page, "model": wiz.model_page, "loss": wiz.loss_page, "run": wiz.run_settings_page}
    for key, page in pages.items():
        assert sorted(page.fields.widgets) == sorted(page_fields(key))
        assert page.fields[page_fields(key)[0]].toolTip()  # the help the CLI prints
    shown = wiz.config()
    for f in dataclasses.fields(TrainConfig):
        if f.name not in ("extra", "backbone"):
            assert getattr(shown, f.name) == pytest.approx(getattr(cfg, f.name)), f.name
    # a value no item offers is kept, so that validation names it; an absent device shows the first offered
    wiz.set_config(dataclasses.replace(cfg, select_metric="recall@5", device="cuda:7"))
    assert wiz.config().select_metric == "recall@5" and wiz.config().device == wiz.run_settings_page.fields[
        "device"].itemData(0)


def test_remembered_settings_of_before_still_load(qtbot, image_folder):
    """The remembered JSON is TrainConfig.to_dict() as before; a key of another version is skipped."""
    root = str(image_folder(n_classes=3, per_class=2, size=24))
    d = changed_config(root).to_dict()
    d["removed_setting"] = 1
    QSettings().setValue(W.SETTINGS_KEY, json.dumps(d))
    wiz = TrainWizard(path="train")
    qtbot.addWidget(wiz)
    assert wiz.config().iterations == 300 and wiz.config().loss == "contrastive" and wiz.config().data_root == root


def test_cancel_remembers_the_settings(qtbot, image_folder, tmp_path):
    root = str(image_folder(n_classes=3, per_class=2, size=24))
    wiz = TrainWizard(path="train")
    qtbot.addWidget(wiz)
    wiz.data_page.folder_edit.setText(root)
    wiz.run_settings_page.iterations.setValue(1234)
    wiz.whiten_data_page.folder_edit.setText(str(tmp_path))
    wiz.reject()  # Cancel
    again = TrainWizard(path="train")
    qtbot.addWidget(again)
    assert again.config().data_root == root and again.config().iterations == 1234
    assert WhitenSettings.from_settings().folder == str(tmp_path)


class Window:
    """A stand-in window with a model and an open folder (what explorer.WindowLink reads)."""

    def __init__(self, folder: str) -> None:
        self.key = ModelSpec(backbone="resnet18", weights="random", descriptor="gem", image_size=64)
        self.models = SimpleNamespace(device="cpu", runtime="torch", cache_dir=None)
        self.index = SimpleNamespace(folder=folder)


def test_whitening_offers_the_windows_open_folder(qtbot, tmp_path):
    opened = tmp_path / "opened"
    opened.mkdir()
    wiz = TrainWizard(main_window=Window(str(opened)), path="whiten")
    qtbot.addWidget(wiz)
    page = wiz.whiten_data_page
    assert page.folder() == str(opened) and not page.offer_button.isHidden()
    assert wiz.whiten_settings_page.base.backbone == "resnet18"  # the window's model
    WhitenSettings(folder=str(tmp_path)).remember()
    other = TrainWizard(main_window=Window(str(opened)), path="whiten")
    qtbot.addWidget(other)
    assert other.whiten_data_page.folder() == str(tmp_path)  # the remembered one, the open one offered
    other.whiten_data_page.offer_button.click()
    assert other.whiten_data_page.folder() == str(opened)


# -- closing mid-run -----------------------------------------------------------------------------------
@pytest.fixture
def endless_run(monkeypatch, image_folder, tmp_path):
    """A wizard factory whose training is a stand-in that runs until stopped (one event per 10 ms)."""
    import engine.training.launch as T

    def endless(config, *, progress=None, should_stop=None, on_event=None, resume_from=None):
        n = 0
        while not should_stop():
            n += 1
            on_event(T.TrainEvent("iteration", n, 10**9, loss=1.0, loss_batch=1.0))
            time.sleep(0.01)
        return T.TrainResult("", "", config, cancelled=True, stopped_reason="cancelled")

    monkeypatch.setattr(T, "train", endless)
    root = image_folder(n_classes=6, per_class=4, size=24)
    cfg = tiny_config(root, tmp_path, device="cpu")  # remembered speeds: no measuring task
    remember_rates(rate_key(cfg.backbone, cfg.weights, cfg.image_size, cfg.device, cfg.mode), 100.0, 100.0)

    def answer(*choices: str) -> list:
        asked: list = []
        replies = list(choices)
        monkeypatch.setattr(W, "ask_about_run", lambda _p, text, offered: asked.append((text, offered)) or
                            replies.pop(0))
        return asked

    return cfg, answer


def test_closing_the_wizard_mid_run_asks(qtbot, endless_run):
    cfg, answer = endless_run
    wiz = TrainWizard(config=cfg)
    qtbot.addWidget(wiz)
    walk_to_run_page(qtbot, wiz)
    qtbot.waitUntil(lambda: wiz.run_page.plot.iteration_points >= 3, timeout=10_000)
    asked = answer(W.CANCEL_CLOSE, W.KEEP_RUNNING, W.STOP_RUN)
    wiz.reject()  # Cancel: the run goes on, the wizard stays
    assert wiz.isVisible() and wiz.run_page.training
    assert "Training is still running" in asked[0][0]
    assert set(asked[0][1]) == {W.KEEP_RUNNING, W.STOP_RUN, W.CANCEL_CLOSE}
    wiz.close()  # the window's close button: in the background
    assert not wiz.isVisible() and wiz.in_background and wiz.run_page.training
    n = wiz.run_page.plot.iteration_points
    qtbot.waitUntil(lambda: wiz.run_page.plot.iteration_points > n + 3, timeout=10_000)  # it trains on, hidden
    wiz.run_page.stop()  # the run ends: the wizard comes back with its result
    qtbot.waitUntil(lambda: not wiz.run_page.training, timeout=10_000)
    qtbot.waitUntil(wiz.isVisible, timeout=5_000)
    assert not wiz.in_background
    wiz.reject()  # nothing runs: closes without asking
    assert len(asked) == 2 and not wiz.isVisible()


def test_closing_the_window_mid_run_asks(qtbot, endless_run):
    cfg, answer = endless_run
    window = QMainWindow()
    qtbot.addWidget(window)
    window.show()
    wiz = TrainWizard(window, config=cfg)
    walk_to_run_page(qtbot, wiz)
    qtbot.waitUntil(lambda: wiz.run_page.plot.iteration_points >= 3, timeout=10_000)
    asked = answer(W.CANCEL_CLOSE, W.STOP_RUN)
    assert not window.close()  # "Keep training": the window stays open, the run goes on
    assert window.isVisible() and wiz.run_page.training
    assert W.KEEP_RUNNING not in asked[0][1] and "Closing the explorer ends it" in asked[0][0]
    handle = wiz.handle
    assert window.close()  # "Stop and keep the last checkpoint": stopped before the window goes
    assert not handle.thread.isRunning() and len(asked) == 2


# -- estimates and the plot ------------------------------------------------------------------------------
def test_estimate_counts_the_final_validation_and_the_measured_evaluation():
    rates = Rates(features=10.0, train=100.0, source="test")
    one = estimate_run(mode="full", n_train=100, n_val=50, iterations=1, val_every=100, batch=10, views=1,
                       rates=rates)
    assert one.validation_s == pytest.approx(2 * 50 / 10.0)  # the untrained network's and iteration 1's
    assert estimate_run(mode="full", n_train=100, n_val=50, iterations=250, val_every=100, batch=10, views=1,
                        rates=rates).validation_s == pytest.approx(4 * 50 / 10.0)  # 0, 100, 200, 250
    guess = estimate_run(mode="head", n_train=100, n_val=50, iterations=1, val_every=100, batch=10, views=1,
                         rates=rates, alike_sizes=(224,), alike_images=60)
    measured = estimate_run(mode="head", n_train=100, n_val=50, iterations=1, val_every=100, batch=10, views=1,
                            rates=dataclasses.replace(rates, evaluation=2.0), alike_sizes=(224,), alike_images=60)
    assert guess.evaluation_s == pytest.approx(6.0) and "at least" in guess.lines[-1]
    assert measured.evaluation_s == pytest.approx(30.0) and "last run" in measured.lines[-1]


def test_the_alike_speed_is_remembered_beside_the_rates():
    from retrieval_gui.wizard.estimate import alike_key
    from retrieval_gui.wizard.pages import remembered_rates

    remember_rates("k", 10.0, 20.0)
    remember_rates("k", 0.0, 0.0, **{alike_key((224, 288), True): 3.5})
    assert remembered_rates("k") == Rates(10.0, 20.0, "of the last run with these settings")
    assert remembered_rates("k", alike_key((224, 288), True)).evaluation == 3.5
    assert remembered_rates("k", alike_key((224,), True)).evaluation == 0.0


def test_validation_axis_stays_in_zero_one_and_the_label_is_whole(qtbot):
    plot = LiveTrainingPlot()
    qtbot.addWidget(plot)
    plot.resize(640, 400)
    plot.show()
    qtbot.waitExposed(plot)
    for it, v in ((0, 0.93), (100, 0.97), (200, 0.99)):
        plot.add_validation(it, v)
    plot.set_baseline(0.95, "best untrained (GeM)")
    plot.set_best(200, 0.99)
    plot.flush()
    qtbot.wait(50)
    lo, hi = plot.val_plot.getViewBox().viewRange()[1]
    assert 0.0 <= lo and hi <= 1.0
    label = plot.baseline_line.label
    view = plot.val_plot.getViewBox().sceneBoundingRect()
    box = label.sceneBoundingRect()
    assert label.toPlainText() == "best untrained (GeM)"
    assert view.left() <= box.left() and box.right() <= view.right()
