"""A trained checkpoint given as --backbone is evaluated as trained (its head), and directory-symlinked
class folders are read by `eval --root` and `train --data` (generated images, random weights, CPU)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from engine.cli import main
from engine.cli.common import default_descriptor, trained_head_note
from engine.training.checkpoint import save_checkpoint
from engine.training.config import TrainConfig
from models.embedding import build_model_from_config

MODEL = ["--image-size", "48", "--device", "cpu"]


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A trained-model checkpoint with a 64-d head (not the identity: the head changes the vectors)."""
    cfg = TrainConfig(data_root="x", weights="random", embedding_dim=64, pooling="mac").to_dict()
    torch.manual_seed(0)
    model = build_model_from_config(cfg)
    path = tmp_path / "run" / "best.pt"
    save_checkpoint(path, {"config": cfg, "model": model.state_dict(), "metrics": {}})
    return path


def test_default_descriptor_and_note() -> None:
    assert default_descriptor("runs/x/best.pt", None) == "fc"
    assert default_descriptor("efficientnet_lite0", None) == "gem"
    assert default_descriptor("runs/x/best.pt", "gem") == "gem"
    assert "trained head is not used" in trained_head_note("runs/x/best.pt", "gem")
    assert trained_head_note("runs/x/best.pt", "fc") == ""
    assert trained_head_note("runs/x/best.pt", None) == ""
    assert trained_head_note("efficientnet_lite0", "gem") == ""


def test_eval_help_says_what_the_default_descriptor_is(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "trained checkpoint" in text and "without the trained head" in text


def test_checkpoint_backbone_is_evaluated_through_its_head(image_folder, checkpoint: Path, capsys) -> None:
    root = image_folder(n_classes=3, per_class=3, size=48)
    assert main(["eval", "--root", str(root), "--backbone", str(checkpoint), *MODEL, "--json"]) == 0
    out, err = capsys.readouterr()
    m = json.loads(out)
    assert m["descriptor"] == "fc" and m["dim"] == 64          # the trained 64-d embedding
    assert "note" not in m and "not used" not in err
    # a pooling descriptor asked for explicitly: the backbone's 1280-d map, and the user is told
    assert main(["eval", "--root", str(root), "--backbone", str(checkpoint), "--descriptor", "mac", *MODEL,
                 "--json"]) == 0
    out, err = capsys.readouterr()
    m = json.loads(out)
    assert m["descriptor"] == "mac" and m["dim"] == 1280
    assert "the trained head is not used" in err and "the trained head is not used" in m["note"]


def _symlinked_class(root: Path, tmp_path: Path) -> None:
    """Move class_02 out of ``root`` and link it back as a directory symlink."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(str(root / "class_02"), str(elsewhere / "class_02"))
    os.symlink(elsewhere / "class_02", root / "class_02", target_is_directory=True)


@pytest.mark.skipif(os.name == "nt", reason="directory symlinks need privileges on Windows")
def test_eval_root_reads_a_directory_symlinked_class_folder(image_folder, tmp_path: Path, capsys) -> None:
    root = image_folder(n_classes=3, per_class=3, size=48)
    _symlinked_class(root, tmp_path)
    rc = main(["eval", "--root", str(root), "--backbone", "efficientnet_lite0", "--weights", "random", *MODEL,
               "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    m = json.loads(out)
    assert m["n_images"] == 9 and m["n_classes"] == 3


@pytest.mark.skipif(os.name == "nt", reason="directory symlinks need privileges on Windows")
def test_train_data_reads_a_directory_symlinked_class_folder(image_folder, tmp_path: Path) -> None:
    from engine.training.trainer import validation_split

    root = image_folder(n_classes=3, per_class=4, size=32)
    _symlinked_class(root, tmp_path)
    split = validation_split(TrainConfig(data_root=str(root), val_image_share=0.5))
    assert split.images.classes == ["class_00", "class_01", "class_02"]
    assert len(split.images.paths) == 12
    assert sum(1 for p in split.images.paths if "class_02" in p) == 4
