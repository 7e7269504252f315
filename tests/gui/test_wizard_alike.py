"""The wizard's last page: the kept model and the best untrained descriptor evaluated alike (issue 12)."""

from __future__ import annotations

import time
from types import SimpleNamespace

from PySide6.QtWidgets import QWizard

from engine.training.config import TrainConfig
from retrieval_gui.wizard import TrainWizard
from retrieval_gui.wizard.alike_panel import AlikeChoice
from retrieval_gui.wizard.pages import RunPage, RunSettingsPage
from tests.gui.test_wizard import (
    no_modal_question,  # noqa: F401 - autouse: no blocking question
    tiny_config,
    walk_to_run_page,
)


def test_after_a_run_the_alike_table_appears_with_numbers(qtbot, image_folder, tmp_path):
    root = image_folder(n_classes=6, per_class=4, size=40)
    # resnet18 (512-d) keeps the whitenings quick; the multi-scale sizes are made from the run's 32 px
    cfg = tiny_config(root, tmp_path, backbone="resnet18", iterations=6, val_every=3)
    wiz = TrainWizard(config=cfg)
    qtbot.addWidget(wiz)
    settings = wiz.run_settings_page
    assert settings.alike.isChecked() and settings.alike_whiten.isChecked()  # on by default, three sizes
    assert settings.alike_choice() == AlikeChoice(True, True, True)
    with qtbot.waitSignal(wiz.trainingFinished, timeout=120_000) as finished:
        walk_to_run_page(qtbot, wiz)
    assert [settings.alike_sizes.itemText(i) for i in range(2)] == ["32", "32+41+50"]
    result = finished.args[0]
    run = wiz.run_page
    qtbot.waitUntil(lambda: run.alike_panel.report is not None or bool(run.alike_panel.error), timeout=120_000)
    assert run.alike_panel.error == ""
    qtbot.waitUntil(lambda: not run.running, timeout=10_000)
    rep = run.alike_panel.report
    assert rep.checkpoint == result.best_checkpoint_path and rep.sizes == (32, 41, 50)
    assert run.alike_panel.isVisible() and run.alike_panel.table.isVisible() and not run.alike_panel.progress.isVisible()
    table = run.alike_panel.table
    cells = [[table.item(r, c).text() for c in range(4)] for r in range(table.rowCount())]
    assert [row[0] for row in cells] == ["32 alone, no whitening", "32+41+50, no whitening",
                                         "32+41+50, learned whitening"]
    for row, expected in zip(cells, rep.table(), strict=True):
        u, t, d = expected["untrained"], expected["trained"], expected["diff"]
        assert row[1:] == [f"{u['recall@1']:.4f} / {u['map']:.4f}", f"{t['recall@1']:.4f} / {t['map']:.4f}",
                           f"{d['recall@1']:+.4f} / {d['map']:+.4f}"]
        assert 0.0 <= t["recall@1"] <= 1.0 and 0.0 < u["map"] <= 1.0
    header = table.horizontalHeaderItem(1).text()
    assert header.startswith("best untrained (") and header.endswith("R@1 / mAP")
    sentence = run.alike_panel.status.text()
    assert sentence == rep.sentence() and sentence.startswith("Evaluated the same way (")
    assert "the kept model is" in sentence and "the untrained" in sentence
    assert "fixed default" in run.alike_panel.label.text()  # 6 classes: too few to choose the whitening on
    assert wiz.button(QWizard.WizardButton.FinishButton).isEnabled()


def test_the_option_is_remembered_and_off_means_no_evaluation(qtbot, tmp_path):
    page = RunSettingsPage()
    qtbot.addWidget(page)
    assert AlikeChoice.remembered() == AlikeChoice(True, True, True)
    page.alike_sizes.setCurrentIndex(0)
    page.alike_whiten.setChecked(False)
    assert AlikeChoice.remembered() == AlikeChoice(True, False, False)
    assert AlikeChoice(True, False, True).sizes(224) == (224,) and AlikeChoice().sizes(224) == (224, 288, 352)
    page.alike.setChecked(False)
    assert not page.alike_sizes.isEnabled() and not page.alike_whiten.isEnabled()
    again = RunSettingsPage()
    qtbot.addWidget(again)
    assert again.alike_choice() == AlikeChoice(False, False, False)
    # off (or a stopped run): the run page starts nothing
    run = RunPage()
    qtbot.addWidget(run)
    best = tmp_path / "best.pt"
    best.write_bytes(b"not a checkpoint")
    result = SimpleNamespace(best_checkpoint_path=str(best), cancelled=False, config=TrainConfig(data_root="x"))
    assert not run.alike_panel.start(result)
    assert not run.alike_panel.start(SimpleNamespace(**{**vars(result), "cancelled": True}), AlikeChoice())
    assert run.alike_panel.handle is None and run.alike_panel.isHidden()


def test_errors_show_a_message_and_cancel_stops_it(qtbot, tmp_path, monkeypatch):
    run = RunPage()
    qtbot.addWidget(run)
    best = tmp_path / "best.pt"
    best.write_bytes(b"not a checkpoint")
    result = SimpleNamespace(best_checkpoint_path=str(best), cancelled=False,
                             config=TrainConfig(data_root=str(tmp_path), image_size=32))
    assert run.alike_panel.start(result, AlikeChoice())
    qtbot.waitUntil(lambda: not run.running, timeout=30_000)
    text = run.alike_panel.status.text()
    assert text.startswith("The evaluation alike failed: ") and "not a" in text
    assert "Traceback" not in text and "ValueError" not in text and run.alike_panel.report is None
    # a long evaluation: Cancel stops it, and so does closing (stop())
    import engine.training.alike as A
    from engine.callbacks import Cancelled

    def slow(run_dir, *, progress=None, should_stop=None, **kw):
        for i in range(10_000):
            progress(i, 10_000, "describing the images")
            if should_stop():
                raise Cancelled("stopped")
            time.sleep(0.005)
        raise AssertionError("never cancelled")

    monkeypatch.setattr(A, "evaluate_alike", slow)
    assert run.alike_panel.start(result, AlikeChoice())
    qtbot.waitUntil(lambda: run.alike_panel.progress.value() > 2, timeout=10_000)
    assert run.running and run.evaluating and run.isComplete()  # Finish stays available
    run.alike_panel.cancel_button.click()
    qtbot.waitUntil(lambda: not run.running, timeout=10_000)
    assert "cancelled" in run.alike_panel.status.text() and run.alike_panel.error == ""
    assert run.alike_panel.start(result, AlikeChoice())
    qtbot.waitUntil(lambda: run.alike_panel.progress.value() > 2, timeout=10_000)
    run.stop(wait_ms=10_000)
    assert not run.running
