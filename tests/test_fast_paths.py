"""Every image->vector path asks engine.runtime for its feature maps with the default runtime ("auto", the one
`index` uses) and gets every map from the runner it was given: `eval`, `whiten`, the evaluation alike, head
mode's feature cache, tail mode's trunk cache and a query outside the collection (the window's run_query).

engine.runtime.feature_runner is replaced by a spy that records what was asked and counts the images its
runner serves (computing them in PyTorch, so no export is made); the backbone's own forward is counted
outside the runner: it must stay 0 (no path computes maps in eager PyTorch beside the runtime). The ImageNet
weights of EfficientNet-Lite0 at 32 px (random weights have no identity to cache an export under: they run
in PyTorch by design)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from models.backbones import EfficientNetLite0


@pytest.fixture
def spy(monkeypatch):
    import engine.runtime as rt
    from models.registry import weights_available

    if not weights_available("efficientnet_lite0"):
        pytest.skip("the ImageNet weights of efficientnet_lite0 are not in the cache")
    seen = SimpleNamespace(requests=[], images=0, outside=0, inside=False)

    def runner(backbone, image_size, identity, cache_dir, runtime="auto", *, threads=None, check=True, trunk=None):
        seen.requests.append((runtime, trunk))
        maps = rt._torch_fn(backbone, trunk)

        def run(x: torch.Tensor) -> torch.Tensor:
            seen.images += x.shape[0]
            seen.inside = True
            try:
                return maps(x)
            finally:
                seen.inside = False

        return rt.FeatureRunner("spy", run, image_size, 1)

    monkeypatch.setattr(rt, "feature_runner", runner)
    for name in ("forward_features", "forward_trunk"):
        real = getattr(EfficientNetLite0, name)

        def counted(self, x, *a, _real=real, **k):
            if not seen.inside:
                seen.outside += x.shape[0]
            return _real(self, x, *a, **k)

        monkeypatch.setattr(EfficientNetLite0, name, counted)
    monkeypatch.delenv("RETRIEVAL_EXPLORER_RUNTIME", raising=False)
    return seen


def test_eval_runs_the_runtime(spy, image_folder, tmp_path, capsys):
    from engine.cli import main

    root = image_folder(n_classes=2, per_class=3)
    assert main(["eval", "--root", str(root), "--image-size", "32", "--device", "cpu", "--cache-dir",
                 str(tmp_path / "cache"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runtime"] == "spy"
    assert spy.requests == [("auto", None)] and spy.images == 6 and spy.outside == 0


def test_whiten_runs_the_runtime(spy, image_folder, tmp_path):
    from engine.vocabulary import ModelSpec
    from engine.whitening import learn_from_folder

    root = image_folder(n_classes=4, per_class=3)
    learn_from_folder(root, ModelSpec(descriptor="gem", image_size=32), method="pca", dim=4, shrinkage=0.1,
                      cache_dir=tmp_path / "cache", n_val=2)
    assert spy.requests and {r for r, _ in spy.requests} == {"auto"}
    assert spy.images >= 12 and spy.outside == 0


def test_a_query_outside_the_collection_runs_the_runtime(spy, image_folder, tmp_path):
    """The window's query: engine.session.run_query on a ModelCache built as the window builds it."""
    import shutil

    from engine.search import SearchOptions
    from engine.session import FolderIndex, ModelCache, run_query
    from engine.vocabulary import ModelSpec

    root = image_folder(n_classes=2, per_class=2)
    spec = ModelSpec(descriptor="gem", image_size=32)
    models = ModelCache(cache_dir=tmp_path / "cache")
    index = FolderIndex(root, cache_dir=tmp_path / "cache")
    index.update(models, spec, descriptors=["gem"])
    assert spy.requests == [("auto", None)] and spy.images == 4
    outside = tmp_path / "q.jpg"
    shutil.copyfile(root / "class_00" / "000.jpg", outside)
    res = run_query(index, models, spec, str(outside), SearchOptions(k=2, exact=True))
    assert res.hits[0].path == str(root / "class_00" / "000.jpg")
    assert spy.images == 5 and spy.outside == 0
    run_query(index, models, spec, str(root / "class_01" / "001.jpg"), SearchOptions(k=2, exact=True))
    assert spy.images == 5  # inside the collection: its stored row


@pytest.mark.parametrize("mode", ["head", "tail"])
def test_training_feature_caches_and_the_evaluation_alike_run_the_runtime(spy, image_folder, tmp_path, mode):
    from engine.training.alike import evaluate_alike
    from engine.training.config import TrainConfig
    from engine.training.launch import train

    root = image_folder(n_classes=4, per_class=4)
    cfg = TrainConfig(data_root=str(root), image_size=32, iterations=2, val_every=2, classes_per_batch=2,
                      samples_per_class=2, warmup_iters=1, cache_dir=str(tmp_path / "cache"), mode=mode,
                      tail_units=1, head_views=1, out_dir=str(tmp_path / "run"), name="tiny", num_threads=1,
                      device="cpu", target="new", val_class_share=0.5)
    train(cfg)
    assert spy.requests == [("auto", 1 if mode == "tail" else None)]
    assert spy.images == 16 + (mode == "tail") and spy.outside == 0  # tail: + its one-image shape probe
    if mode == "head":
        spy.requests.clear()
        evaluate_alike(cfg.out_dir, sizes=(32,), descriptors=("gem",), whiten=False, cache_dir=tmp_path / "c2")
        assert spy.requests and {r for r, _ in spy.requests} == {"auto"} and spy.outside == 0
