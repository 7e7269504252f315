"""A checkpoint's config is bounded before anything is built or allocated (issue 26, item 8): absurd input
or embedding sizes, unknown poolings and a checkpoint naming a checkpoint (itself) as its backbone are refused
at once, naming the file and the fix; nothing of the file runs (weights_only)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from engine.training.checkpoint import load_checkpoint
from models.embedding import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_trained_backbone, read_checkpoint
from models.registry import get_backbone


def _ckpt(path: Path, **config) -> Path:
    cfg = {"backbone": "resnet18", "pooling": "mac", "embedding_dim": 0, "image_size": 64, **config}
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": cfg, "model": {}}, path)
    return path


@pytest.mark.parametrize("config,said", [
    ({"image_size": 10 ** 6}, "image_size is 1000000, outside 16..2048"),
    ({"image_size": 8}, "outside 16..2048"),
    ({"image_size": "224"}, "image_size is 224"),
    ({"embedding_dim": 400_000}, "embedding_dim is 400000, outside 0..8192"),
    ({"embedding_dim": True}, "embedding_dim"),
    ({"pooling": "rmac"}, "pooling 'rmac'"),
    ({"backbone": "vit_h14"}, "'vit_h14' as its backbone"),
])
def test_absurd_configs_are_refused_before_anything_is_built(tmp_path, config, said):
    path = _ckpt(tmp_path / "best.pt", **config)
    start = time.perf_counter()
    for load in (read_checkpoint, load_checkpoint, load_trained_backbone, get_backbone):
        with pytest.raises(ValueError) as info:
            load(path)
        msg = str(info.value)
        assert str(path) in msg and said in msg and "train the model again" in msg, msg
    assert time.perf_counter() - start < 5  # refused, not tried (400000-d once took 52 s and 6.6 GB)


def test_a_checkpoint_naming_itself_as_backbone_is_refused_not_recursed(tmp_path):
    path = tmp_path / "self.pt"
    _ckpt(path, backbone=str(path))
    with pytest.raises(ValueError, match="names another trained checkpoint as its backbone"):
        get_backbone(str(path))
