"""Issue 18: the training target (image- or class-disjoint validation), visible model selection, run folders
that never collide, and honest progress (tiny generated data, random weights, CPU)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from engine.training import data as D
from engine.training.config import TrainConfig
from engine.training.launch import train
from engine.training.trainer import claim_run_folder, validation_split


@pytest.fixture
def tiny(image_folder, tmp_path):
    root = image_folder(n_classes=6, per_class=6, size=40)

    def make(**kw) -> TrainConfig:
        base = dict(data_root=str(root), weights="random", image_size=32, iterations=8, val_every=2,
                    classes_per_batch=3, samples_per_class=2, warmup_iters=2, cache_dir=str(tmp_path / "cache"),
                    out_dir=str(tmp_path / "run"), name="tiny", lr_head=3e-2, margin=0.3, num_threads=1)
        base.update(kw)
        return TrainConfig(**base)

    return make


# --- the image-disjoint split ----------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("share", [0.1, 0.2, 0.5])
def test_image_split_is_disjoint_stratified_and_covers_every_class_with_enough_images(seed, share):
    sizes = [1, 2, 3, 4, 5, 9, 10, 23, 60]
    labels = [c for c, n in enumerate(sizes) for _ in range(n)]
    tr, va = D.split_images(labels, share, seed)
    assert not set(tr) & set(va)                                   # never an image on both sides
    assert sorted(tr + va) == list(range(len(labels)))              # and none lost
    n_val, n_tr = Counter(labels[i] for i in va), Counter(labels[i] for i in tr)
    for c, n in enumerate(sizes):
        if n >= 4:   # enough images: validated (2 at least, the share otherwise) and still trained (2 at least)
            assert n_val[c] == min(max(2, round(share * n)), n - 2), (c, n)
            assert n_tr[c] >= 2
        else:
            assert n_val[c] == 0 and n_tr[c] == n
    assert D.split_images(labels, share, seed) == (tr, va)          # deterministic
    assert D.split_images(labels, 0.0, seed) == (list(range(len(labels))), [])


def test_validation_split_same_and_new_targets(tiny):
    same = validation_split(tiny(target="same", val_image_share=0.34))
    paths = same.images.paths
    val = {p for p, v in zip(paths, same.is_val, strict=True) if v}
    assert val and not val & {p for p, v in zip(paths, same.is_val, strict=True) if not v}
    assert same.val_classes == same.train_classes == same.images.classes   # every class on both sides
    assert "same categories" in same.description and "never trained on" in same.description
    new = validation_split(tiny(target="new", val_class_share=0.34))
    assert new.val_classes and not set(new.val_classes) & set(new.train_classes)
    assert "new categories" in new.description


def test_an_image_split_file_gives_the_validation_images(tiny, tmp_path):
    cfg = tiny()
    root = Path(cfg.data_root)
    rels = sorted(str(p.relative_to(root)) for p in root.rglob("*.jpg"))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": rels[::2], "val": rels[1::2], "query": ["ignored.jpg"]}))
    s = validation_split(tiny(image_split=str(split)))
    assert [p for p, v in zip(s.images.paths, s.is_val, strict=True) if v] == [str(root / r) for r in rels[1::2]]
    assert s.images.classes == sorted({Path(r).parent.name for r in rels})
    split.write_text(json.dumps({"train": rels, "val": rels[:1]}))
    with pytest.raises(ValueError, match="training and validation"):
        validation_split(tiny(image_split=str(split)))
    split.write_text(json.dumps({"train": rels + ["class_00/missing.jpg"], "val": []}))
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        validation_split(tiny(image_split=str(split)))


# --- visible selection ----------------------------------------------------------------------------
@pytest.mark.parametrize("metric,label", [("map", "mAP"), ("recall@1", "R@1")])
def test_the_kept_checkpoint_is_the_best_on_the_selection_metric_the_log_prints(tiny, metric, label):
    events = []
    res = train(tiny(select_metric=metric, iterations=10, lr_head=0.2), on_event=events.append)
    vals = [e for e in events if e.kind == "validation"]
    assert [e.iteration for e in vals] == [0, 2, 4, 6, 8, 10]
    printed = []
    for e in vals:   # every validation line names the selection metric and prints its value first
        m = re.match(rf"validation {re.escape(label)} ([0-9.]+) \(selection metric\)", e.message)
        assert m, e.message
        printed.append(float(m.group(1)))
        assert e.select_metric == metric and abs(e.val_score - float(m.group(1))) < 5e-5
    best = max(range(len(vals)), key=lambda i: (vals[i].val_score, -i))     # the first of equal scores
    ck = torch.load(res.best_checkpoint_path, weights_only=True)
    assert ck["metrics"]["iteration"] == vals[best].iteration == res.best_iteration
    assert ck["metrics"]["val"][metric] == pytest.approx(vals[best].val_score)
    assert ck["metrics"]["select_metric"] == metric
    assert printed[best] == max(printed)
    assert "best so far" in vals[best].message
    assert vals[-1].best_iteration == res.best_iteration
    # the untrained descriptors are measured on the same validation images
    assert set(res.untrained_val_metrics) == {"spoc", "mac", "gem", "rmac"}
    assert res.untrained_val_metrics["mac"][metric] == pytest.approx(vals[0].val_score, abs=1e-4)  # iteration 0
    assert res.best_untrained in res.untrained_val_metrics
    assert any(e.kind == "untrained" for e in events)


# --- run folders ------------------------------------------------------------------------------------
def test_runs_started_at_once_get_their_own_folders(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("RETRIEVAL_EXPLORER_HOME", str(tmp_path / "home"))
    # eight claims of the same name at the same moment: eight folders
    go = threading.Barrier(8)
    got: list[Path] = []

    def claim() -> None:
        cfg = TrainConfig(data_root="d", name="same-name")
        go.wait()
        got.append(claim_run_folder(cfg))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 8 and all((p / "info.json").is_file() for p in got)
    # two real runs started together with generated names
    results = []
    runs = [threading.Thread(target=lambda: results.append(train(tiny(out_dir="", name="", iterations=2))))
            for _ in range(2)]
    for t in runs:
        t.start()
    for t in runs:
        t.join()
    folders = {Path(r.best_checkpoint_path).parent for r in results}
    assert len(folders) == 2 and all(Path(r.best_checkpoint_path).is_file() for r in results)
    assert all("_images_" in f.name for f in folders)            # the data folder's name is in it


def test_a_folder_that_holds_a_run_is_reused_only_by_resume(tiny, tmp_path):
    first = train(tiny(iterations=2))
    with pytest.raises(ValueError, match=r"already holds a training run.*--resume"):
        train(tiny(iterations=2))
    resumed = train(tiny(iterations=4), resume_from=first.checkpoint_path)
    assert resumed.last_iteration == 4 and resumed.checkpoint_path == first.checkpoint_path


# --- honest progress ----------------------------------------------------------------------------------
def test_feature_caching_is_its_own_phase_and_the_eta_is_the_loops_own(tiny, monkeypatch):
    slow = D.decode_all

    def slow_decode(*a, **kw):
        time.sleep(1.0)  # a slow machine: caching (2 chunks) takes seconds, the loop milliseconds per step
        return slow(*a, **kw)

    monkeypatch.setattr(D, "decode_all", slow_decode)
    events = []
    train(tiny(iterations=20, val_every=10), on_event=events.append)
    phases = [e for e in events if e.kind == "phase"]
    assert phases and all(e.message.startswith("computing backbone features") for e in phases)
    assert phases[-1].iteration == phases[-1].total == 36 and phases[-1].images_per_s > 0
    assert phases[0].eta_s > 0 and phases[-1].eta_s == 0
    assert any(e.kind == "message" and e.message.startswith("Phase: computing") for e in events)
    its = [e for e in events if e.kind == "iteration"]
    # caching took >= 2 s: an ETA counted from the start would say >= 19 x 2 s after the first of 20 steps;
    # the loop's own (steps and validations left at their measured cost) says far less
    assert its[0].eta_s < 10, its[0].eta_s
    assert its[-1].eta_s == pytest.approx(0.0, abs=1e-6)


# --- the CLI ------------------------------------------------------------------------------------------
def test_cli_train_says_what_chose_the_kept_model(tiny, capsys):
    from engine.cli import main

    cfg = tiny()
    args = ["train", "--data", cfg.data_root, "--weights", "random", "--image-size", "32", "--iterations", "4",
            "--val-every", "2", "--classes-per-batch", "3", "--samples-per-class", "2", "--target", "same",
            "--out-dir", cfg.out_dir, "--cache-dir", cfg.cache_dir]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "chosen on validation mAP (the selection metric)" in out
    assert "best untrained descriptor" in out and "kept best.pt (iteration" in out and "last.pt (iteration 4)" in out
    assert "validation mAP" in err and "(selection metric)" in err
    assert main(args) == 2                                          # the folder holds that run now
    assert "already holds a training run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--data", cfg.data_root, "--target", "others"])


def test_a_run_from_before_targets_resumes_with_its_class_disjoint_validation(tiny):
    first = train(tiny(target="new", val_class_share=0.34, iterations=2))
    ck = torch.load(first.checkpoint_path, weights_only=True)
    for key in ("target", "val_image_share", "image_split"):   # what an older version wrote
        del ck["config"][key]
    torch.save(ck, first.checkpoint_path)
    resumed = train(tiny(iterations=4), resume_from=first.checkpoint_path)
    assert resumed.config.target == "new" and "new categories" in resumed.validation
    assert resumed.last_iteration == 4
