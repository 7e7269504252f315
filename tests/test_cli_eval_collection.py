"""`eval --collection`: the metrics of an indexed folder equal those of extracting it afresh."""

from __future__ import annotations

import json

import pytest
import torch

from engine.cli import main
from models.registry import get_backbone


@pytest.fixture
def setup(image_folder, tmp_path):
    folder = image_folder(n_classes=3, per_class=4, size=48)
    weights = tmp_path / "r18.pth"
    torch.manual_seed(0)
    torch.save(get_backbone("resnet18", weights="random").net.state_dict(), weights)
    model = ["--backbone", "resnet18", "--weights", str(weights), "--image-size", "64", "--device", "cpu",
             "--descriptor", "mac"]
    return folder, model, ["--cache-dir", str(tmp_path / "cache")]


def test_eval_on_collection_matches_fresh_extraction(setup, tmp_path, capsys):
    folder, model, cache = setup
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"query": ["class_00/000.jpg", "class_01/000.jpg", "class_02/000.jpg"],
                                 "retrieval": [f"class_{c:02d}/{v:03d}.jpg" for c in range(3) for v in (1, 2, 3)]}))
    assert main(["index", str(folder), *model, *cache]) == 0
    capsys.readouterr()
    assert main(["eval", "--collection", str(folder), *model, *cache, "--split", str(split), "--json"]) == 0
    indexed = json.loads(capsys.readouterr().out)
    assert main(["eval", "--root", str(folder), *model, "--split", str(split), "--json"]) == 0
    fresh = json.loads(capsys.readouterr().out)
    for key in ("recall@1", "recall@5", "recall@10", "map", "top1"):
        assert indexed[key] == pytest.approx(fresh[key], abs=1e-6), key
    assert indexed["n_images"] == fresh["n_images"] == 12
    assert indexed["images_per_s"] is None  # nothing was extracted


def test_eval_on_unindexed_collection_says_what_to_do(setup, capsys):
    folder, model, cache = setup
    assert main(["eval", "--collection", str(folder), *model, *cache]) == 2
    assert "retrieval-explorer index" in capsys.readouterr().err
