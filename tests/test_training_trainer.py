"""train(): exact resume, NaN handling, checkpoints loadable as backbones, registry, CLI (tiny, CPU)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from engine.training.checkpoint import save_checkpoint
from engine.training.config import TrainConfig
from engine.training.launch import train
from engine.training.registry import list_trained_models, models_dir
from models.embedding import EmbeddingModel, build_model_from_config, load_trained_backbone


@pytest.fixture
def tiny(image_folder, tmp_path):
    root = image_folder(n_classes=6, per_class=5, size=40)

    def make(**kw) -> TrainConfig:
        base = dict(data_root=str(root), weights="random", image_size=32, iterations=12, val_every=4,
                    classes_per_batch=3, samples_per_class=2, warmup_iters=2, val_class_share=0.34,
                    cache_dir=str(tmp_path / "cache"), out_dir=str(tmp_path / "run"), name="tiny",
                    lr_head=1e-2, margin=0.3, num_threads=1)
        base.update(kw)
        return TrainConfig(**base)

    return make


@pytest.mark.slow  # three short runs: ~10 s on 2 cores
@pytest.mark.parametrize("mode", ["head", "tail"])
def test_resume_continues_exactly_like_an_uninterrupted_run(tiny, tmp_path, mode):
    tiny = functools.partial(tiny, mode=mode, lr_backbone=1e-3)
    full = train(tiny(out_dir=str(tmp_path / "a")))
    calls = {"n": 0}

    def stop_after_5():
        calls["n"] += 1
        return calls["n"] > 5

    part = train(tiny(out_dir=str(tmp_path / "b")), should_stop=stop_after_5)
    assert part.cancelled and part.stopped_reason == "cancelled"
    resumed = train(tiny(), resume_from=part.checkpoint_path)
    assert not resumed.cancelled

    def losses(h):
        return [(r["iteration"], r["loss"], r["loss_batch"], r["loss_memory"], r["triplets_memory"])
                for r in h if "loss" in r]

    assert len(losses(full.history)) == 12
    assert losses(resumed.history) == losses(full.history)  # bit-identical floats
    a = torch.load(full.checkpoint_path, weights_only=True)
    b = torch.load(resumed.checkpoint_path, weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["memory"]["emb"], b["memory"]["emb"])
    assert a["train_state"]["iteration"] == b["train_state"]["iteration"] == 12
    assert any(r["loss_memory"] is not None for r in full.history if "loss" in r)


def _poison_loss_at(monkeypatch, at: int) -> None:
    """Make the loss NaN at the 0-based iteration ``at``."""
    from engine.training import trainer as T

    original = T.XBMLoss.__call__

    def poisoned(self, emb, labels, ids, iteration):
        total, b, m = original(self, emb, labels, ids, iteration)
        return (total * float("nan") if iteration == at else total), b, m

    monkeypatch.setattr(T.XBMLoss, "__call__", poisoned)


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tiny, monkeypatch):
    _poison_loss_at(monkeypatch, 3)
    events = []
    res = train(tiny(iterations=8, val_every=2), on_event=events.append)
    assert "loss became nan" in res.stopped_reason and "iteration 4" in res.stopped_reason
    assert any(e.kind == "message" and "loss became nan" in e.message for e in events)
    assert not any(e.kind == "iteration" and e.iteration > 3 for e in events)
    ck = torch.load(res.checkpoint_path, weights_only=True)
    assert ck["train_state"]["iteration"] == 2  # the last good checkpoint, not overwritten
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    tb = load_trained_backbone(res.best_checkpoint_path)
    assert torch.isfinite(tb(torch.rand(2, 3, 32, 32))).all()


def test_nan_found_in_a_deferred_read_keeps_the_checkpoint_before_it(tiny, monkeypatch):
    """log_every=3 (as on a GPU): the NaN at iteration 5 is read at 7, after two more steps; the
    message still names iteration 5 and nothing after the checkpoint of iteration 4 is written."""
    _poison_loss_at(monkeypatch, 4)
    events = []
    res = train(tiny(iterations=12, val_every=4, log_every=3), on_event=events.append)
    assert "loss became nan at iteration 5" in res.stopped_reason and not res.cancelled
    assert [e.iteration for e in events if e.kind == "iteration"] == [1, 2, 3, 4]
    assert torch.load(res.checkpoint_path, weights_only=True)["train_state"]["iteration"] == 4


def test_head_mode_events_validation_and_feature_cache(tiny, tmp_path):
    events = []
    res = train(tiny(iterations=8, log_every=3), on_event=events.append)
    kinds = {e.kind for e in events}
    assert {"iteration", "validation", "checkpoint", "message", "done"} <= kinds
    its = [e for e in events if e.kind == "iteration"]
    assert [e.iteration for e in its] == list(range(1, 9))
    assert all(e.loss_memory is None for e in its[:1]) and its[-1].loss_memory is not None
    assert its[-1].memory_size > 0 and 0 < its[-1].memory_fill <= its[-1].memory_size
    assert res.baseline_val_metrics["recall@1"] >= 0 and "recall@1" in res.val_metrics
    # identity-initialised head: before training, the embedding IS the pooled descriptor
    val0 = [h for h in res.history if h.get("iteration") == 0 and "val" in h][0]["val"]
    assert val0["recall@1"] == pytest.approx(res.baseline_val_metrics["recall@1"])
    events2 = []
    train(tiny(iterations=1, out_dir=str(tmp_path / "again")), on_event=events2.append)
    assert any("from the cache" in e.message for e in events2 if e.kind == "message")


def test_full_mode_trains_on_cpu_with_frozen_batchnorm(tiny):
    torch.manual_seed(0)
    # validations in between (every 2): BatchNorm must stay frozen after each one
    res = train(tiny(mode="full", iterations=5, val_every=2, lr_backbone=1e-3, warmup_iters=1))
    torch.manual_seed(res.config.seed)  # seeded like the run
    start = build_model_from_config(res.config.to_dict())
    end = torch.load(res.checkpoint_path, weights_only=True)["model"]
    bn_stats = [k for k in end if k.endswith("running_mean")]
    convs = [k for k in end if k.endswith("weight") and end[k].ndim == 4]
    sd = start.state_dict()
    assert bn_stats and all(torch.equal(sd[k], end[k]) for k in bn_stats)     # statistics frozen
    assert any(not torch.equal(sd[k], end[k]) for k in convs)                  # the backbone did train
    assert len([h for h in res.history if "loss" in h]) == 5


def test_tail_mode_trains_only_the_tail_and_matches_the_full_forward(tiny, tmp_path):
    from engine.training.data import decode_all, normalize
    from engine.training.trainer import _TailData

    res = train(tiny(mode="tail", tail_units=3, iterations=6, val_every=3, lr_backbone=1e-2, head_views=3))
    torch.manual_seed(res.config.seed)
    start = build_model_from_config(res.config.to_dict()).state_dict()
    end = torch.load(res.checkpoint_path, weights_only=True)["model"]
    changed = {k for k in end if end[k].is_floating_point() and not torch.equal(start[k], end[k])}
    # units 16-18 of 18: the last two MBConv blocks and the head conv (+ the embedding head)
    assert any(k.startswith("backbone.net._conv_head") for k in changed)
    assert any(k.startswith("backbone.net._blocks.15.") for k in changed)
    assert all(k.startswith(("head.", "backbone.net._conv_head", "backbone.net._bn1", "backbone.net._blocks.14.",
                             "backbone.net._blocks.15.")) for k in changed), sorted(changed)[:5]
    assert not any("running_" in k for k in changed)                       # BatchNorm statistics frozen
    assert list((tmp_path / "cache").glob("maps_*.pt"))
    # the trained model, run whole on images, gives what the tail gives on cached float16 maps
    tb = load_trained_backbone(res.checkpoint_path)
    imgs, _, _ = decode_all(sorted(str(p) for p in Path(res.config.data_root).rglob("*.jpg"))[:6], 32)
    x = normalize(imgs, tb.mean, tb.std)
    with torch.no_grad():
        want = tb(x)
        maps = tb.model.backbone.forward_trunk(x, 3).half().unsqueeze(1)
    got, _ = _TailData(maps, torch.device("cpu"), 3).embed_eval(tb.model, torch.arange(6))
    assert torch.equal(tb.forward_tail(tb.forward_trunk(x, 2), 2), tb.forward_features(x))  # a trained model splits too
    assert torch.allclose(got, want, atol=2e-3)


def test_load_trained_backbone_round_trip_and_refusals(tmp_path):
    cfg = TrainConfig(data_root="x", weights="random", embedding_dim=64, pooling="gem").to_dict()
    torch.manual_seed(3)
    model = build_model_from_config(cfg)
    model.eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, {"config": cfg, "model": model.state_dict(), "metrics": {"val": {"recall@1": 0.5}}})
    tb = load_trained_backbone(path)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
        got = tb.forward_head(tb.forward_features(x))
    assert got.shape == (2, 64) and tb.fc_dim == 64 and tb.feature_dim == model.backbone.feature_dim
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(got.norm(dim=1), torch.ones(2), atol=1e-4)
    assert tb.metrics["val"]["recall@1"] == 0.5
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="damaged or foreign"):
        load_trained_backbone(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="not a Retrieval Explorer"):
        load_trained_backbone(foreign)
    code = tmp_path / "code.pt"
    torch.save({"format": "x", "obj": EmbeddingModel}, code)   # a pickled class: refused by weights_only
    with pytest.raises(ValueError):
        load_trained_backbone(code)
    with pytest.raises(FileNotFoundError):
        load_trained_backbone(tmp_path / "missing.pt")


def test_registry_lists_trained_models(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("RETRIEVAL_EXPLORER_HOME", str(tmp_path / "home"))
    assert models_dir() == tmp_path / "home" / "models"
    res = train(tiny(out_dir="", name="", iterations=2, val_every=2))
    assert res.best_checkpoint_path.startswith(str(tmp_path / "home" / "models"))
    found = list_trained_models()
    assert len(found) == 1 and found[0].path == res.best_checkpoint_path
    assert found[0].config["iterations"] == 2 and "val" in found[0].metrics
    assert list_trained_models(tmp_path / "nowhere") == []


def test_config_round_trip_and_validation():
    c = TrainConfig(data_root="d", train_classes=["a", "b"], iterations=5)
    assert TrainConfig.from_dict(c.to_dict()) == c
    assert TrainConfig(data_root="d").validate() == []
    problems = TrainConfig(data_root="", mode="bogus", samples_per_class=1, margin=0).validate()
    assert len(problems) == 4 and any("mode" in p for p in problems)
    with pytest.raises(ValueError, match="unknown training setting"):
        TrainConfig.from_dict({"data_root": "d", "lr": 1})
    with pytest.raises(ValueError, match="invalid training settings"):
        train(TrainConfig(data_root="d", iterations=0))


def test_bad_data_gives_clear_messages(tmp_path, image_folder):
    with pytest.raises(FileNotFoundError, match="not found"):
        train(TrainConfig(data_root=str(tmp_path / "none"), out_dir=str(tmp_path / "o")))
    root = image_folder(n_classes=3, per_class=3, size=32)
    with pytest.raises(ValueError, match="class folder"):
        train(TrainConfig(data_root=str(root), train_classes=["class_00", "nope"], out_dir=str(tmp_path / "o")))


def test_cli_train_json(tiny, tmp_path, capsys):
    from engine.cli import main

    cfg = tiny()
    rc = main(["train", "--data", cfg.data_root, "--weights", "random", "--image-size", "32", "--iterations", "3",
               "--val-every", "3", "--classes-per-batch", "3", "--samples-per-class", "2", "--val-class-share",
               "0.34", "--no-memory", "--out-dir", str(tmp_path / "cli"), "--cache-dir", cfg.cache_dir, "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["iterations_done"] == 3 and out["best_checkpoint"].endswith("best.pt")
    assert load_trained_backbone(out["best_checkpoint"]).config["memory"] is False


def test_full_mode_on_the_cpu_refuses_a_batch_that_would_not_fit(tiny, monkeypatch):
    from engine.training import trainer as T

    monkeypatch.setattr(T, "available_memory_bytes", lambda: 200_000_000)
    with pytest.raises(ValueError, match=r"needs about .* GB of memory, and 0\.2 GB are available: lower P x K"):
        train(tiny(mode="full", classes_per_batch=3, samples_per_class=2, image_size=224))
    # small enough: runs
    res = train(tiny(mode="full", iterations=1, val_every=1))
    assert res.stopped_reason == "finished"


def test_tail_mode_refuses_a_map_cache_that_would_not_fit_and_names_bad_units(tiny, monkeypatch):
    from engine.training import trainer as T

    monkeypatch.setattr(T, "available_memory_bytes", lambda: 2_000_000)
    # 30 images x 4 views of (320, 7, 7) float16 maps at 224 px: 3.8 MB
    with pytest.raises(ValueError, match=r"caches \(320, 7, 7\) maps of 30 images x 4 view\(s\): .* train fewer"):
        train(tiny(mode="tail", tail_units=1, head_views=4, image_size=224))
    with pytest.raises(ValueError, match="tail must be between 1 and 17"):
        train(tiny(mode="tail", tail_units=18))
    with pytest.raises(ValueError, match="vgg16 cannot be split"):
        train(tiny(mode="tail", backbone="vgg16"))
