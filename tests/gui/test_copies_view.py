"""The Duplicates view's copies tier (issue 29): verified copies apart from similar photos, each with its
own slider; the keep-best rule shown and configurable; 'Not copies' and 'Keep all' remembered; the
verification runs in a worker that can be cancelled."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from test_copycheck import edited, scene  # noqa: E402 - tests/ is on sys.path under pytest
from test_duplicates import SPEC, TinyImage  # noqa: E402

from engine.collection import Collection
from engine.duplicates import Decisions
from retrieval_gui.duplicates_view import DuplicatesView

TIMEOUT = 60_000


@pytest.fixture
def collection(tmp_path: Path) -> Collection:
    """One picture with an upscaled, a cropped and a captioned copy; two other pictures of the same kind."""
    root = tmp_path / "photos"
    root.mkdir()
    scene(1).save(root / "original.jpg", quality=92)
    original = Image.open(root / "original.jpg").convert("RGB")
    for kind in ("upscaled", "crop", "text"):
        edited(original, kind).save(root / f"{kind}.png")
    for seed in (2, 3):
        scene(seed).save(root / f"other{seed}.jpg", quality=92)
    c = Collection.open(root, model_spec=SPEC, cache_dir=tmp_path / "cache", index="exact")
    c.update(TinyImage())
    return c


@pytest.fixture
def view(qtbot, collection):
    # a threshold low enough that every pair is a candidate: the stand-in descriptor is crude
    v = DuplicatesView(lambda: collection, descriptor="spoc", confirm=lambda *_a: False, trash=lambda _p: None)
    v.floor = -1.0
    v.slider.setRange(0, round(2.0 / 0.005))
    v.set_threshold(-1.0)
    qtbot.addWidget(v)
    v.show()
    v.start()
    qtbot.waitUntil(lambda: v.verified >= 1, timeout=TIMEOUT)
    yield v
    v.wait_idle()
    v.close()


def _names(groups) -> list[set[str]]:
    return [{it.relpath for it in g.items} for g in groups]


def test_copies_and_similar_photos_are_two_tiers(view, qtbot):
    copies = _names(view.copy_groups)
    assert copies == [{"original.jpg", "upscaled.png", "crop.png", "text.png"}]
    best = view.copy_groups[0].best
    assert best.relpath == "original.jpg"  # never the upscaled copy, though it has 4 x the pixels
    assert "not an upscaled" in view.copy_groups[0].best_reason
    assert "derived" in view.best_label.text() or "not an upscaled" in view.best_label.text()
    # the similar tier holds no verified pair
    qtbot.waitUntil(lambda: view.dup.similar_only, timeout=TIMEOUT)
    for g in view.groups:
        names = {it.relpath for it in g.items}
        assert names - copies[0]  # never only verified copies
    # 'select all but the best copy' selects the three copies
    view.select_all_but_best_copy()
    assert {Path(p).name for p in view.selected_paths()} == {"upscaled.png", "crop.png", "text.png"}


def test_the_copy_slider_and_the_keep_best_rule(view, qtbot):
    n = view.verified
    view.copy_slider.setValue(100)  # only perfect agreement: the caption and the crop drop out
    qtbot.waitUntil(lambda: view.verified > n, timeout=TIMEOUT)
    assert all("text.png" not in s for s in _names(view.copy_groups))
    view.copy_slider.setValue(60)
    n = view.verified
    view.best_edit.setText("resolution,derived,bytes,date,folder")
    view.best_edit.editingFinished.emit()
    qtbot.waitUntil(lambda: view.verified > n, timeout=TIMEOUT)
    assert view.copy_groups[0].best.relpath == "upscaled.png"
    assert view.copy_groups[0].best_reason == "largest resolution"
    assert view.best_label.text().startswith("The best of each group (kept, green) is: largest resolution")
    view.best_edit.setText("resolution,size")
    view.best_edit.editingFinished.emit()
    assert "keep-best criteria" in view.copy_status.text()


def test_not_copies_is_remembered(view, qtbot, collection):
    n = view.verified
    view.mark_not_copies(view.copy_groups[0])
    qtbot.waitUntil(lambda: view.verified > n, timeout=TIMEOUT)
    assert view.copy_groups == []
    assert Decisions.for_collection(collection).dismissed("original.jpg", "upscaled.png")


def test_keep_all_is_remembered(view, qtbot, collection):
    n = view.verified
    view.mark_keep_all(view.copy_groups[0])
    qtbot.waitUntil(lambda: view.verified > n, timeout=TIMEOUT)
    assert view.copy_groups == []
    assert Decisions.for_collection(collection).kept(["original.jpg", "crop.png"])


def test_verification_can_be_cancelled(qtbot, collection):
    v = DuplicatesView(lambda: collection, descriptor="spoc", confirm=lambda *_a: False, trash=lambda _p: None)
    qtbot.addWidget(v)
    v.show()
    v.start()
    qtbot.waitUntil(lambda: v.dup is not None, timeout=TIMEOUT)
    v.cancel_verification()
    assert "cancelled" in v.copy_status.text() and not v.cancel_verify_button.isEnabled()
    assert v.wait_idle()
    v.close()
