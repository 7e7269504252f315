"""The wizard's "Learn a whitening" path (issue 12), walked with pytest-qt offscreen: a generated folder of
class sub-folders of 64-px images, a random-weight ResNet-18 (512-d, so the eigendecompositions are quick),
the file written, loaded and handed to the explorer; stop, too few classes and the engine's refusals."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QWizard

from engine.vocabulary import ModelSpec
from models.whitening import PCAWhitening
from retrieval_gui.wizard import TrainWizard
from retrieval_gui.wizard.whiten_page import (
    SETTINGS_KEY,
    WhitenOutcome,
    count_folder,
    hand_to_explorer,
    multi_scales,
    whitening_dir,
)
from tests.gui.test_wizard import (
    no_modal_question,  # noqa: F401 - autouse: no blocking question
    tiny_config,
)

TIMEOUT = 120_000


class StubExplorer:
    """Stands in for the main window: a model (``key``), its runtime, and the two methods the wizard calls."""

    def __init__(self, descriptor: str = "gem", backbone: str = "resnet18") -> None:
        self.key = ModelSpec(backbone=backbone, weights="random", descriptor=descriptor, image_size=64)
        self.models = SimpleNamespace(device="cpu", runtime="torch", cache_dir=None)
        self.calls: list[tuple[str, str]] = []

    def set_sizes(self, sizes: str) -> None:
        self.calls.append(("set_sizes", sizes))
        self.key = (replace(self.key, image_size=None, scales=multi_scales(64)) if sizes == "multi"
                    else replace(self.key, scales=None, image_size=64))

    def use_whitening(self, path: str) -> bool:
        self.calls.append(("use_whitening", str(path)))
        return True


def open_whitening(qtbot, folder: Path, main_window=None) -> TrainWizard:
    """The wizard on the whitening path, its folder counted, shown on the settings page."""
    wiz = TrainWizard(main_window=main_window, path="whiten")
    qtbot.addWidget(wiz)
    wiz.show()
    assert wiz.currentPage() is wiz.whiten_data_page
    wiz.whiten_data_page.folder_edit.setText(str(folder))
    assert wiz.whiten_data_page.wait_count()
    wiz.next()
    assert wiz.currentPage() is wiz.whiten_settings_page
    return wiz


def no_temporaries(path: Path) -> bool:
    return not [p for p in path.parent.glob(f".{path.name}*")] if path.parent.exists() else True


# ------------------------------------------------------------------------------------------------
def test_choice_page_routes_both_paths_and_a_config_starts_training(qtbot, image_folder, tmp_path):
    root = image_folder(n_classes=3, per_class=2, size=24)
    wiz = TrainWizard()
    qtbot.addWidget(wiz)
    wiz.show()
    assert wiz.currentPage() is wiz.choice_page and wiz.choice_page.choice() == "train"
    assert "learn a whitening" in wiz.windowTitle()
    wiz.next()
    assert wiz.currentPage() is wiz.data_page
    wiz.back()
    wiz.choice_page.whiten_button.setChecked(True)
    wiz.next()
    assert wiz.currentPage() is wiz.whiten_data_page
    wiz.back()
    wiz.set_config(tiny_config(root, tmp_path))  # a training's config: on to the training path (the window's way)
    assert wiz.currentPage() is wiz.data_page and wiz.data_page.wait_scan()
    scripted = TrainWizard(config=tiny_config(root, tmp_path))  # scripts and the training tests start on Data
    qtbot.addWidget(scripted)
    scripted.show()
    assert scripted.currentPage() is scripted.data_page
    assert scripted.data_page.wait_scan()
    with pytest.raises(ValueError, match="path"):
        TrainWizard(path="other")


def test_count_folder_and_hand_to_explorer_messages(image_folder, tmp_path):
    root = image_folder(n_classes=3, per_class=2, size=24)
    (root / "loose.jpg").write_bytes((root / "class_00" / "000.jpg").read_bytes())
    c = count_folder(str(root))
    assert c.ok and c.n_classes == 3 and c.loose == 1 and c.n_images == 7
    assert "not found" in count_folder(str(tmp_path / "nope")).error
    (tmp_path / "empty").mkdir()
    assert "No images" in count_folder(str(tmp_path / "empty")).error
    outcome = WhitenOutcome(str(tmp_path / "w.npz"), None, "resnet18", "gem", (64,), 512, 128)
    assert "File > Use a whitening file" in hand_to_explorer(None, outcome, "single")
    other = StubExplorer(backbone="mobilenet_v2")
    assert "learned for the model resnet18" in hand_to_explorer(other, outcome, "single") and not other.calls
    stub = StubExplorer()
    assert "now searches with GeM at 64" in hand_to_explorer(stub, outcome, "single")
    assert stub.calls == [("use_whitening", str(tmp_path / "w.npz"))]  # the sizes match already: left alone


def test_whitening_path_learns_saves_and_the_window_uses_it(qtbot, window, image_folder):
    """The real window (multi-scale sizes): the wizard defaults to them, learns with shrinkage and
    dimension chosen on validation classes, saves a file that loads, and "Use it in the explorer"."""
    QSettings().setValue("model", "resnet18")
    QSettings().setValue("sizes", "multi")
    win = window()
    assert win.key.backbone == "resnet18" and win.key.scales == multi_scales(64)
    root = image_folder(n_classes=12, per_class=3, size=64)
    (root / "class_03" / "broken.jpg").write_bytes(b"not an image")
    win.learn_whitening_action.trigger()  # Training > Learn a whitening…
    wiz = win.findChild(TrainWizard)
    qtbot.addWidget(wiz)
    assert wiz.currentPage() is wiz.whiten_data_page
    wiz.whiten_data_page.folder_edit.setText(str(root))
    assert wiz.whiten_data_page.wait_count()
    assert "12 classes, 37 images" in wiz.whiten_data_page.message.text()
    wiz.next()
    page = wiz.whiten_settings_page
    assert page.sizes.currentData() == "multi" and page.descriptor.currentData() == "gem"
    assert page.auto_button.isChecked() and page.method() == "lw" and page.isComplete(), page.problems
    assert "resnet18" in page.model_label.text() and "explorer" in page.model_label.text()
    out = Path(page.output())
    assert out.parent == whitening_dir() and out.name == "images-resnet18-gem-64+82+101-lw.npz"
    assert page.buttonText(QWizard.WizardButton.NextButton) == "Learn the whitening"
    run = wiz.whiten_run_page
    with qtbot.waitSignal(wiz.whiteningLearned, timeout=TIMEOUT) as learned:
        wiz.next()
    qtbot.waitUntil(lambda: not run.running, timeout=TIMEOUT)
    outcome = learned.args[0]
    rep = outcome.report
    assert Path(outcome.path) == out and out.is_file() and no_temporaries(out)
    w = PCAWhitening.load(out)
    assert w.meta["sizes"] == list(multi_scales(64)) and w.meta["descriptor"] == "gem"
    assert w.meta["backbone"] == "resnet18" and w.method == "lw" and w.in_dim == 512
    assert rep.chosen and rep.n_images == 36 and rep.n_classes == 12 and rep.skipped == 1
    text = run.report.toPlainText()
    assert f"{rep.val_r1:.4f} with the whitening, {rep.val_none_r1:.4f} without" in text
    assert f"shrinkage {rep.shrinkage:g}" in text and f"512 -> {w.out_dim} dimensions" in text
    assert "1 image(s) could not be read" in text and "broken.jpg" in text and str(out) in text
    assert "images/s" in text and outcome.images_per_s > 0
    assert "Done" in run.phase.text() and run.use_button.isEnabled()
    # remembered under the wizard's own key
    assert "whiten_wizard" in SETTINGS_KEY and str(root) in str(QSettings().value(SETTINGS_KEY))
    run.use_button.click()
    assert win.key.whitening == str(out) and win.no_whitening_action.isEnabled()
    assert "whitened" in win.status_label.text() and "now searches with GeM at 64+82+101" in run.use_label.text()
    wiz.close()


def test_use_sets_the_windows_sizes_and_stop_saves_nothing(qtbot, image_folder, tmp_path):
    root = image_folder(n_classes=12, per_class=2, size=64)
    stub = StubExplorer()
    wiz = open_whitening(qtbot, root, stub)
    page = wiz.whiten_settings_page
    assert page.sizes.currentData() == "single"  # the window's current choice
    page.sizes.setCurrentIndex(page.sizes.findData("multi"))
    page.manual_button.setChecked(True)
    page.shrinkage.setValue(0.2)
    page.dim.setValue(64)
    out = tmp_path / "out" / "mine.npz"
    page.set_output(str(out))
    page.descriptor.setCurrentIndex(page.descriptor.findData("mac"))  # a typed name stays
    assert page.output() == str(out) and page.isComplete()
    run = wiz.whiten_run_page
    wiz.next()  # stopped at once: the run stops at its next check, and nothing is written
    assert run.running
    run.stop()
    qtbot.waitUntil(lambda: not run.running, timeout=TIMEOUT)
    assert "nothing was saved" in run.phase.text() and not out.exists() and no_temporaries(out)
    assert not run.use_button.isEnabled() and run.outcome is None
    wiz.back()  # the settings are kept; run again, to the end
    assert page.output() == str(out) and page.manual_button.isChecked()
    with qtbot.waitSignal(wiz.whiteningLearned, timeout=TIMEOUT):
        wiz.next()
    qtbot.waitUntil(lambda: not run.running, timeout=TIMEOUT)
    w = PCAWhitening.load(out)
    assert w.meta["sizes"] == list(multi_scales(64)) and w.meta["descriptor"] == "mac" and w.out_dim == 64
    assert "as given" in run.report.toPlainText() and "Validation R@1" not in run.report.toPlainText()
    stub.key = replace(stub.key, descriptor="mac")
    run.use_button.click()
    assert stub.calls == [("set_sizes", "multi"), ("use_whitening", str(out))]
    assert "now searches with MAC at 64+82+101" in run.use_label.text()
    # closing the wizard during a run stops it: the file of the earlier run stays as it was
    before = out.read_bytes()
    wiz.back()
    wiz.next()
    assert run.running
    wiz.reject()
    assert not run.running and out.read_bytes() == before and no_temporaries(out)


def test_too_few_classes_are_refused_with_a_message(qtbot, image_folder, tmp_path):
    root = image_folder(n_classes=5, per_class=2, size=64)
    stub = StubExplorer()
    wiz = open_whitening(qtbot, root, stub)
    assert "needs at least 12" in wiz.whiten_data_page.message.text()
    page = wiz.whiten_settings_page
    assert not page.isComplete() and not wiz.button(QWizard.WizardButton.NextButton).isEnabled()
    assert "needs at least 12 classes" in page.note.text() and "the folder has 5" in page.note.text()
    page.manual_button.setChecked(True)
    assert page.isComplete()
    page.auto_button.setChecked(True)
    # the folder changes after it was counted: the engine's own refusal is shown, and nothing is written
    wiz.back()
    many = image_folder(n_classes=12, per_class=2, size=64, root=tmp_path / "many")
    wiz.whiten_data_page.folder_edit.setText(str(many))
    assert wiz.whiten_data_page.wait_count()
    wiz.next()
    assert page.isComplete()
    out = Path(page.output())
    for i in range(4, 12):
        shutil.rmtree(many / f"class_{i:02d}")
    run = wiz.whiten_run_page
    wiz.next()
    qtbot.waitUntil(lambda: not run.running, timeout=TIMEOUT)
    text = run.report.toPlainText()
    assert "needs at least 12 classes (sub-folders), the folder has 4" in text and "by hand" in text
    assert "Traceback" not in text and "ValueError" not in text
    assert "nothing was saved" in run.phase.text() and not out.exists() and not stub.calls
