"""The wizard keeps its heavy work off the GUI thread (issue 16 item 6) and says how long a run will take
before Start (issue 13): the Data page counts the folder in a worker, the Summary page measures the
backbone's speed in a worker and shows an estimate that follows the settings."""

from __future__ import annotations

import time

import pytest
from PySide6.QtCore import QSettings

from retrieval_gui.wizard import TrainWizard
from retrieval_gui.wizard.dataset import ScanRequest, scan
from retrieval_gui.wizard.estimate import Rates, estimate_run, measure_rates, rate_key
from retrieval_gui.wizard.pages import RATES_KEY, remember_rates, remembered_rates
from tests.gui.test_map_view import GapMeter
from tests.gui.test_wizard import (
    no_modal_question,  # noqa: F401 - autouse: no blocking question
    tiny_config,
)


def _big_folder(root, classes: int = 200, per_class: int = 100):
    """classes x per_class empty .jpg files: counting lists them, it does not open them."""
    for c in range(classes):
        d = root / f"class_{c:03d}"
        d.mkdir(parents=True)
        for i in range(per_class):
            (d / f"{i:03d}.jpg").touch()
    return root


def test_the_data_page_counts_a_big_folder_without_stalling_the_gui_thread(qtbot, tmp_path):
    """A 10 ms timer is never 100 ms late while the page counts 20,000 files three times, where the same
    count on the GUI thread (rescan) stalls it for longer. Best of five tries, as a loaded machine's
    scheduler can delay any thread now and then; a stall of our own repeats."""
    root = _big_folder(tmp_path / "big")
    t0 = time.perf_counter()
    direct = scan(ScanRequest(root=str(root)))
    one_count = time.perf_counter() - t0
    assert direct.summary.ok and direct.summary.train_images + direct.summary.val_images == 20_000
    assert one_count > 0.1, f"the folder is too small to show a stall ({one_count * 1000:.0f} ms)"

    wiz = TrainWizard(config=tiny_config(root, tmp_path))
    qtbot.addWidget(wiz)
    wiz.show()
    qtbot.waitExposed(wiz)
    page = wiz.data_page
    assert page.wait_scan(60_000)
    with GapMeter() as blocking:
        page.rescan()  # the count on the GUI thread: what the page did before
    assert blocking.longest > 100, f"a count on the GUI thread took only {blocking.longest:.0f} ms"
    tries, idle = [], []
    for attempt in range(5):
        with GapMeter() as quiet:  # the same timer with nothing to do: what the machine's load costs now
            qtbot.wait(500)
        idle.append(quiet.longest)
        with GapMeter() as gaps:
            for share in (0.3, 0.25, 0.2 + 0.01 * attempt):
                page.val_share.setValue(share)
                page.request_scan()
                assert not page.isComplete()  # until the count of these settings is shown
                assert page.wait_scan(60_000)
        tries.append(gaps.longest)
        if gaps.longest < 100:
            break
    if min(tries) >= 100 and min(idle) >= 100:
        pytest.skip(f"the machine delays an idle 10 ms timer by {min(idle):.0f} ms: too loaded to measure")
    assert min(tries) < 100, f"the GUI thread stalled for {min(tries):.0f} ms (tries: {tries}, idle: {idle})"
    assert page.isComplete() and page.summary.train_images + page.summary.val_images == 20_000
    assert page.summary.val_images == pytest.approx(20_000 * page.val_share.value(), rel=0.1)


def test_a_count_of_old_settings_is_not_shown(qtbot, image_folder, tmp_path):
    """Settings changed while a count runs: that count is dropped and the new settings are counted."""
    root = image_folder(n_classes=6, per_class=4, size=24)
    wiz = TrainWizard(config=tiny_config(root, tmp_path))
    qtbot.addWidget(wiz)
    page = wiz.data_page
    assert page.wait_scan()
    page.target_new.setChecked(True)
    page.request_scan()
    page.folder_edit.setText(str(tmp_path / "missing"))  # while that count runs
    assert page.wait_scan()
    assert not page.isComplete() and "not found" in page.message.text()
    page.folder_edit.setText(str(root))
    assert page.wait_scan() and page.isComplete() and page.summary.target == "new"


def test_estimate_adds_features_and_training_from_the_rates():
    rates = Rates(features=10.0, train=100.0, source="test")
    head = estimate_run(mode="head", n_train=800, n_val=200, iterations=500, val_every=100, batch=32, views=2,
                        rates=rates)
    assert head.features_s == pytest.approx(1000 * 2 / 10.0)
    assert head.training_s == pytest.approx(500 * 32 / 100.0)
    assert head.validation_s == 0 and head.total_s == pytest.approx(200 + 160)
    full = estimate_run(mode="full", n_train=800, n_val=200, iterations=500, val_every=100, batch=32, views=2,
                        rates=rates)
    assert full.features_s == 0 and full.validation_s == pytest.approx((1 + 5) * 200 / 10.0)  # the untrained network validates too
    longer = estimate_run(mode="head", n_train=800, n_val=200, iterations=1000, val_every=100, batch=32, views=2,
                          rates=rates)
    assert longer.training_s == pytest.approx(2 * head.training_s)


def test_measured_rates_are_positive_and_finite(image_folder):
    root = image_folder(n_classes=2, per_class=3, size=24)
    r = measure_rates("efficientnet_lite0", "random", 32, "cpu", "head", batch=4, repeats=1, sample_root=str(root),
                      classes_per_batch=2, samples_per_class=2, memory_size=16)
    assert 0 < r.features < float("inf") and 0 < r.train < float("inf")
    r = measure_rates("efficientnet_lite0", "random", 32, "cpu", "full", batch=2, repeats=1)
    assert 0 < r.train < float("inf")


def test_summary_page_shows_an_estimate_that_follows_the_settings(qtbot, image_folder, tmp_path):
    root = image_folder(n_classes=6, per_class=4, size=24)
    cfg = tiny_config(root, tmp_path)
    wiz = TrainWizard(config=cfg)
    qtbot.addWidget(wiz)
    wiz.show()
    assert wiz.data_page.wait_scan()
    for _ in range(4):
        wiz.next()
    page = wiz.summary_page
    assert wiz.currentPage() is page
    qtbot.waitUntil(lambda: page.estimate is not None, timeout=60_000)  # measured in a worker
    first = page.estimate
    assert first.features_s > 0 and first.training_s > 0
    assert "Estimated time" in page.estimate_label.text() and "measured now on a few of these images" in page.estimate_label.text()
    wiz.back()
    wiz.run_settings_page.iterations.setValue(cfg.iterations * 4)
    wiz.next()
    assert page.estimate.training_s == pytest.approx(4 * first.training_s)  # same speeds, no new measurement
    assert page.estimate.features_s == pytest.approx(first.features_s)
    # a finished run's speeds are remembered and used next time
    used = wiz.config()
    key = rate_key(used.backbone, used.weights, used.image_size, used.device, used.mode)
    remember_rates(key, 5.0, 50.0)
    assert remembered_rates(key) == Rates(5.0, 50.0, "of the last run with these settings")
    wiz.back()
    wiz.next()
    assert "of the last run" in page.estimate_label.text()
    n = page.estimate.features_s * 5.0 / used.head_views
    assert n == pytest.approx(wiz.data_page.summary.train_images + wiz.data_page.summary.val_images)
    # the evaluation alike after the run is in the estimate while it is switched on, and only then
    assert page.estimate.evaluation_s > 0 and "evaluation alike" in page.estimate_label.text()
    wiz.back()
    wiz.run_settings_page.alike.setChecked(False)
    wiz.next()
    assert page.estimate.evaluation_s == 0 and "evaluation alike" not in page.estimate_label.text()
    QSettings().remove(RATES_KEY + key)


def test_estimate_counts_the_evaluation_alike_by_pixels_and_networks():
    rates = Rates(features=10.0, train=100.0, source="test")
    kw = dict(n_train=800, n_val=200, iterations=500, val_every=100, batch=32, views=2, rates=rates, image_size=224)
    plain = estimate_run(mode="head", **kw)
    head = estimate_run(mode="head", alike_sizes=(224, 288, 352), **kw)
    work = 1 + (288 / 224) ** 2 + (352 / 224) ** 2  # three sizes cost their pixel counts
    assert plain.evaluation_s == 0
    assert head.evaluation_s == pytest.approx(1000 * work / 10.0)
    assert head.total_s == pytest.approx(plain.total_s + head.evaluation_s)
    assert "evaluation alike" in head.lines[-1] and "224+288+352" in head.lines[-1]
    tail = estimate_run(mode="tail", alike_sizes=(224, 288, 352), **kw)  # the trained backbone runs too
    assert tail.evaluation_s == pytest.approx(2 * head.evaluation_s)
    fewer = estimate_run(mode="head", alike_sizes=(224, 288, 352), alike_images=250, **kw)  # e.g. no whitening
    assert fewer.evaluation_s == pytest.approx(head.evaluation_s / 4) and "250 images" in fewer.lines[-1]
