"""engine.whiten_folder: the whitening wizard's logic without Qt (the count, the checks, the model, the
report)."""

from __future__ import annotations

from types import SimpleNamespace

from engine.vocabulary import ModelSpec, multi_scales
from engine.whiten_folder import (
    FolderCount,
    WhitenOutcome,
    command_line,
    count_folder,
    default_file_name,
    model_base_of,
    report_rows,
    settings_problems,
)
from engine.whitening import VAL_CLASSES


def test_count_folder_counts_classes_and_loose_images(image_folder, tmp_path):
    root = image_folder(n_classes=3, per_class=2, size=24)
    (root / "class_00" / "000.jpg").rename(root / "loose.jpg")  # class_00 keeps one image, one lies loose
    count = count_folder(str(root))
    assert count.ok and count.classes == {"class_00": 1, "class_01": 2, "class_02": 2} and count.loose == 1
    assert (count.n_images, count.n_classes, count.n_learn_classes) == (6, 3, 4)
    warnings = " ".join(count.warnings())
    assert "directly in the folder" in warnings and "single image" in warnings and "class_00" in warnings
    assert count_folder("").error.startswith("Choose a folder")
    assert "not found" in count_folder(str(tmp_path / "nowhere")).error
    (tmp_path / "empty").mkdir()
    assert "No images" in count_folder(str(tmp_path / "empty")).error


def test_settings_problems_block_what_the_engine_refuses(tmp_path):
    few = FolderCount(root="r", classes={"a": 3, "b": 3})
    problems, _ = settings_problems(few, auto=True, method="lw", output=str(tmp_path / "w.npz"))
    assert len(problems) == 1 and f"at least {VAL_CLASSES + 2} classes" in problems[0]
    problems, notes = settings_problems(few, auto=False, method="lw", output=str(tmp_path / "w.npz"))
    assert problems == [] and notes[0].startswith("6 images of 2 classes will be described once")
    one = FolderCount(root="r", classes={"a": 3})
    assert "at least 2 class" in settings_problems(one, auto=False, method="lw", output="x.npz")[0][0]
    assert settings_problems(one, auto=False, method="pca", output="x.npz")[0] == []
    assert settings_problems(few, auto=False, method="lw", output="")[0] == ["Choose where to save the whitening."]
    assert "is a folder" in settings_problems(few, auto=False, method="lw", output=str(tmp_path))[0][0]
    (tmp_path / "w.npz").write_bytes(b"x")
    assert "will be replaced" in settings_problems(few, auto=False, method="lw", output=str(tmp_path / "w.npz"))[1][1]
    import os

    os.mkfifo(tmp_path / "pipe.npz")  # a FIFO is written through, never replaced; a broken link is refused
    problems, notes = settings_problems(few, auto=False, method="lw", output=str(tmp_path / "pipe.npz"))
    assert problems == [] and "written through" in notes[1]
    (tmp_path / "broken.npz").symlink_to(tmp_path / "nowhere" / "w.npz")
    assert "remove the link" in settings_problems(few, auto=False, method="lw",
                                                  output=str(tmp_path / "broken.npz"))[0][0]


def test_model_base_follows_the_window_model():
    multi = model_base_of(ModelSpec(backbone="resnet18", weights="random", descriptor="gem", scales=(64, 80)))
    assert (multi.backbone, multi.sizes, multi.single, multi.multi) == ("resnet18", "multi", 64, (64, 80))
    single = model_base_of(ModelSpec(backbone="resnet18", descriptor="gem", image_size=96), device="cpu")
    assert (single.sizes, single.single, single.multi) == ("single", 96, multi_scales(96))
    assert single.spec("mac", "single").image_size == 96 and single.spec("mac", "multi").scales == multi_scales(96)
    none = model_base_of(None)
    assert none.sizes is None and none.backbone == "efficientnet_lite0"


def test_report_rows_and_file_name():
    rep = SimpleNamespace(chosen=True, val_r1=0.5, val_none_r1=0.6, val_map=0.4, method="lw", shrinkage=0.1,
                          n_images=120, n_classes=12, seconds=3.25)
    out = WhitenOutcome("/w/birds.npz", rep, "resnet18", "gem", (224, 288), 512, 256, images_per_s=40.0)
    rows, warnings = report_rows(out, {"gem": "GeM"})
    d = dict(rows)
    assert d["Validation R@1"].startswith("0.5000 with the whitening, 0.6000 without (−0.1000)")
    assert d["Descriptor"] == "GeM at 224+288 of resnet18" and d["Settings"].endswith("512 -> 256 dimensions "
                                                                                      "(chosen on the validation classes)")
    assert d["Time"] == "3.2 s, describing 40.0 images/s" and len(warnings) == 1
    assert command_line(out) == "--backbone resnet18 --descriptor gem --scales 224,288 --whitening /w/birds.npz"
    assert default_file_name("/data/my birds/", "resnet18", "gem", (224,), "lw") == "my_birds-resnet18-gem-224-lw.npz"
