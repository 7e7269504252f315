"""Head mode's feature cache on the CPU runtime indexing uses: the same pooled features as PyTorch."""

from __future__ import annotations

import pytest
import torch


def test_head_mode_features_on_a_runtime_equal_pytorchs(tmp_path, image_folder):
    pytest.importorskip("onnxruntime")
    from engine.runtime import feature_runner
    from engine.training.config import TrainConfig
    from engine.training.trainer import compute_pooled_features
    from models.embedding import build_model_from_config

    root = image_folder(n_classes=2, per_class=3, size=48)
    paths = sorted(str(p) for p in root.rglob("*.jpg"))
    torch.manual_seed(0)
    model = build_model_from_config(TrainConfig(data_root=str(root), weights="random", image_size=32).to_dict())
    runner = feature_runner(model.backbone, 32, "test-random-weights", tmp_path, "onnxruntime")
    assert runner.name == "onnxruntime"
    kw = dict(image_size=32, views=2, seed=0, device=torch.device("cpu"))
    want_untrained: list[torch.Tensor] = []
    got_untrained: list[torch.Tensor] = []
    want, ok, _ = compute_pooled_features(model, paths, untrained=want_untrained, **kw)
    got, got_ok, _ = compute_pooled_features(model, paths, untrained=got_untrained, features=runner, **kw)
    assert got_ok == ok == list(range(len(paths))) and got.shape == want.shape == (len(paths), 2, want.shape[-1])
    assert torch.allclose(got, want, rtol=1e-3, atol=1e-4)
    assert torch.allclose(torch.cat(got_untrained), torch.cat(want_untrained), rtol=1e-3, atol=1e-4)
