"""evaluate_alike: a finished run's kept model and the untrained descriptors, evaluated the same way (tiny, CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_image  # tests/ is on sys.path under pytest

from engine.callbacks import Cancelled
from engine.evaluation import evaluate
from engine.training.alike import TRAINED, Evaluation, evaluate_alike
from engine.training.config import TrainConfig
from engine.training.launch import train
from engine.training.trainer import validation_split
from engine.vocabulary import multi_scales as multi_sizes

SIZES = (32, 48)


def _folder(root: Path, n_classes: int, per_class: int) -> Path:
    for c in range(n_classes):
        d = root / f"class_{c:02d}"
        d.mkdir(parents=True, exist_ok=True)
        for v in range(per_class):
            synthetic_image(c, v, 40).save(d / f"{v:03d}.jpg")
    return root


def _run(tmp: Path, n_classes: int, per_class: int, **kw) -> TrainConfig:
    """A tiny finished run (resnet18, random weights: 512-d vectors keep the whitenings quick)."""
    root = _folder(tmp / "images", n_classes, per_class)
    cfg = TrainConfig(data_root=str(root), backbone="resnet18", weights="random", image_size=32, iterations=6,
                      val_every=3, classes_per_batch=3, samples_per_class=2, warmup_iters=1, lr_head=1e-2,
                      margin=0.3, cache_dir=str(tmp / "cache"), out_dir=str(tmp / "run"), name="tiny",
                      num_threads=1, seed=3, **kw)
    res = train(cfg)
    assert Path(res.best_checkpoint_path).is_file()
    return res.config


@pytest.fixture(scope="module")
def head_run(tmp_path_factory) -> TrainConfig:
    """Head mode, new categories: 6 classes, 2 of them held back to validate (too few to choose an Lw on)."""
    return _run(tmp_path_factory.mktemp("alike_head"), 6, 5, mode="head", target="new", val_class_share=0.34)


def _direct(cfg: TrainConfig, paths: list[str], scales: tuple[int, ...]) -> np.ndarray:
    """GeM of the run's untrained backbone at ``scales`` computed the ordinary way (a DescriptorModel)."""
    from engine.extraction import extract_descriptors
    from models.descriptors import build_descriptor
    from models.registry import get_backbone

    torch.manual_seed(cfg.seed)  # the trainer's draw of the random weights
    bb = get_backbone(cfg.backbone, weights=cfg.weights)
    model = build_descriptor("gem", bb, scales=scales if len(scales) > 1 else None)
    res = extract_descriptors(model, paths, image_size=scales[0])
    assert res.paths == paths and not res.skipped
    return res.vectors


def _labels(paths: list[str]) -> list[str]:
    return [Path(p).parent.name for p in paths]


def test_rows_metrics_and_the_untrained_gem_of_a_head_run(head_run, monkeypatch):
    from models.whitening import PCAWhitening

    fitted: list[tuple[int, set]] = []
    original = PCAWhitening.fit_lw_many.__func__

    def spy(cls, X, labels, *a, **k):  # noqa: N803
        fitted.append((len(X), {str(v) for v in labels}))
        return original(cls, X, labels, *a, **k)

    monkeypatch.setattr(PCAWhitening, "fit_lw_many", classmethod(spy))
    seen = []
    rep = evaluate_alike(head_run.out_dir, sizes=SIZES, runtime="torch", progress=lambda d, t, m: seen.append((d, t)))
    split = validation_split(head_run)
    val = [p for p, v in zip(split.images.paths, split.is_val, strict=True) if v]
    train_p = [p for p, v in zip(split.images.paths, split.is_val, strict=True) if not v]
    assert sorted(rep.val_paths) == sorted(val) and sorted(rep.train_paths) == sorted(train_p)
    assert rep.n_val == len(val) and rep.n_train == len(train_p)
    # GeM and the run's best untrained descriptor, the kept model; every evaluation of each
    assert "gem" in rep.descriptors and rep.descriptors[0] == "gem"
    evs = [Evaluation((32,), False), Evaluation(SIZES, False), Evaluation((32,), True), Evaluation(SIZES, True)]
    assert rep.evaluations == evs
    assert {(r.model, r.evaluation) for r in rep.rows} == {(m, e) for m in (*rep.descriptors, TRAINED) for e in evs}
    for r in rep.rows:
        assert 0.0 <= r.metrics["recall@1"] <= 1.0 and 0.0 < r.metrics["map"] <= 1.0
        assert r.metrics["n"] == len(val)
    # 4 training classes are too few to carve 10 validation classes off: the stated default
    assert "fixed default" in rep.whitening
    lw = [r for r in rep.rows if r.evaluation.whitened]
    assert all(r.shrinkage == 0.5 and not r.chosen for r in lw)
    # every whitening was learned on the training images only (never a validation class: target new)
    val_classes, train_classes = set(_labels(val)), set(_labels(train_p))
    assert len(fitted) == len(lw)
    assert all(n == len(train_p) and classes == train_classes for n, classes in fitted)
    assert not val_classes & train_classes
    # the untrained GeM rows are GeM computed directly on the validation images
    for scales in ((32,), SIZES):
        direct = evaluate(_direct(head_run, val, scales), _labels(val), ks=(1,))
        got = rep.row("gem", Evaluation(scales, False)).metrics
        assert got["recall@1"] == pytest.approx(direct["recall@1"]) and got["map"] == pytest.approx(direct["map"])
    # the kept model at one size, no whitening: its embedding (a checkpoint's fc descriptor) on the same images
    from engine.extraction import build_model, extract_descriptors
    from engine.vocabulary import ModelSpec

    kept = extract_descriptors(build_model(ModelSpec(backbone=rep.checkpoint, descriptor="fc", image_size=32)), val)
    direct = evaluate(kept.vectors, _labels(val), ks=(1,))
    assert rep.row(TRAINED, evs[0]).metrics["map"] == pytest.approx(direct["map"])
    # the best untrained (descriptor, evaluation) by the run's selection metric; the table and the sentence
    untrained = [r for r in rep.rows if r.model != TRAINED]
    assert rep.row(rep.best_untrained, rep.best_evaluation).metrics[rep.metric] == max(
        r.metrics[rep.metric] for r in untrained)
    table = rep.table()
    assert [t["evaluation"] for t in table] == evs
    for t in table:
        assert t["diff"]["recall@1"] == pytest.approx(t["trained"]["recall@1"] - t["untrained"]["recall@1"])
    text = rep.sentence()
    assert text.startswith(f"Evaluated the same way ({rep.best_evaluation.words}), the kept model is")
    assert "R@1 points" in text or "level with" in text
    # progress with counts: every image, then every whitening
    assert (rep.n_val + rep.n_train, rep.n_val + rep.n_train) in seen and (len(lw), len(lw)) in seen


@pytest.mark.slow  # a tail run of 14 classes and a whitening grid per evaluation: ~15 s on 2 cores
def test_tail_run_untrained_backbone_and_whitening_chosen_on_carved_training_classes(tmp_path):
    cfg = _run(tmp_path, 14, 4, mode="tail", tail_units=1, target="same", lr_backbone=1e-2, head_views=1)
    rep = evaluate_alike(cfg.out_dir, sizes=(32,), descriptors=("gem",), runtime="torch")
    assert rep.evaluations == [Evaluation((32,), False), Evaluation((32,), True)]
    assert rep.n_train_classes == 14 and "chosen on 10 of the 14 training classes" in rep.whitening
    lw = [r for r in rep.rows if r.evaluation.whitened]
    assert len(lw) == 2 and all(r.chosen and r.val_r1 is not None for r in lw)
    # the untrained GeM comes from the untrained backbone, not from the trained tail
    val = rep.val_paths
    direct = evaluate(_direct(cfg, val, (32,)), _labels(val), ks=(1,))
    assert rep.row("gem", rep.evaluations[0]).metrics["map"] == pytest.approx(direct["map"])


def test_cancel_raises_and_bad_folders_are_refused(head_run, tmp_path):
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return True

    with pytest.raises(Cancelled):
        evaluate_alike(head_run.out_dir, sizes=SIZES, runtime="torch", batch_size=4, should_stop=stop)
    assert calls["n"] >= 1
    with pytest.raises(ValueError, match="no kept model"):
        evaluate_alike(tmp_path)
    with pytest.raises(ValueError, match="not found"):
        evaluate_alike(tmp_path / "missing")
    with pytest.raises(ValueError, match="input sizes"):
        evaluate_alike(head_run.out_dir, sizes=(8,))
    # a run whose images are gone
    moved = tmp_path / "run"
    shutil.copytree(head_run.out_dir, moved)
    from engine.training.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(moved / "best.pt")
    ck["config"]["data_root"] = str(tmp_path / "gone")
    save_checkpoint(moved / "best.pt", {k: v for k, v in ck.items() if k not in ("format", "version", "date")})
    with pytest.raises(ValueError, match="cannot be read again"):
        evaluate_alike(moved, runtime="torch")


def test_multi_sizes():
    assert multi_sizes(224) == (224, 288, 352)
    assert multi_sizes(32) == (32, 41, 50)


def test_train_cli_prints_the_table_alike(head_run, tmp_path, capsys, monkeypatch):
    from engine.cli import main

    monkeypatch.setenv("RETRIEVAL_EXPLORER_RUNTIME", "torch")
    common = ["train", "--data", head_run.data_root, "--backbone", "resnet18", "--weights", "random", "--image-size",
              "32", "--iterations", "2", "--val-every", "2", "--classes-per-batch", "3", "--samples-per-class", "2",
              "--target", "new", "--val-class-share", "0.34", "--cache-dir", head_run.cache_dir, "--num-threads", "1"]
    rc = main([*common, "--out-dir", str(tmp_path / "a"), "--alike-sizes", "32,48"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "evaluated alike on the validation images" in out and "Evaluated the same way (" in out
    for label in ("32 none", "32+48 none", "32 Lw", "32+48 Lw"):
        assert f"  {label} " in out
    rc = main([*common, "--out-dir", str(tmp_path / "b"), "--alike-sizes", "8", "--json"])
    captured = capsys.readouterr()
    assert rc == 1 and "input sizes" in json.loads(captured.out)["alike"]["error"]
    assert "the evaluation alike failed" in captured.err


def test_the_sentence_says_above_below_or_level():
    from engine.training.alike import AlikeReport, AlikeRow

    ev = Evaluation((224, 288, 352), True)

    def report(trained: dict, untrained: dict) -> AlikeReport:
        rows = [AlikeRow("gem", ev, untrained), AlikeRow(TRAINED, ev, trained)]
        return AlikeReport("run", "run/best.pt", "head", ev.sizes, "map", ("gem",), [ev], rows, "gem", ev, "", 10, 4, 3)

    above = report({"recall@1": 0.912, "map": 0.6}, {"recall@1": 0.9, "map": 0.61})
    assert above.sentence() == ("Evaluated the same way (224+288+352 + learned whitening), the kept model is 1.2 R@1 "
                                "points above the untrained GeM (mAP: 1.0 points below).")
    level = report({"recall@1": 0.9, "map": 0.6}, {"recall@1": 0.9, "map": 0.6})
    assert "is level with the untrained GeM on R@1 (mAP: level)." in level.sentence()
    assert [r["diff"]["recall@1"] for r in above.table()] == [pytest.approx(0.012)]


def test_even_sample_spreads_over_the_classes_and_keeps_the_order():
    from engine.training.alike import _even_sample

    items = list(range(100, 130))
    labels = [0] * 20 + [1] * 6 + [2] * 4  # unbalanced classes
    got = _even_sample(items, labels, 12, seed=0)
    assert len(got) == 12 and got == sorted(got) and set(got) <= set(items)
    per = [sum(1 for i in got if labels[items.index(i)] == c) for c in range(3)]
    assert per == [4, 4, 4]
    assert _even_sample(items, labels, 12, seed=0) == got  # seeded
    small = _even_sample(items, labels, 28, seed=1)  # class 2 runs out: the others fill in
    assert len(small) == 28 and sum(1 for i in small if labels[items.index(i)] == 2) == 4


def test_the_whitening_learns_from_a_capped_even_share_of_the_training_images(head_run):
    rep = evaluate_alike(head_run.out_dir, sizes=(32,), runtime="torch", max_train_images=8)
    assert rep.n_train == 8 and len(set(_labels(rep.train_paths))) == 4  # 2 from each of the 4 classes
    assert "learned on 8 of the 20 training images" in rep.whitening
    plain = evaluate_alike(head_run.out_dir, sizes=(32,), runtime="torch", whiten=False)
    assert plain.n_train == 0 and not any(r.evaluation.whitened for r in plain.rows)  # nothing else described
