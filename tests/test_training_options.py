"""engine.training.options: one description of every TrainConfig field, read by the CLI and the wizard;
a run folder's state.json, so that an interrupted run never looks like a finished one (issue 24 item 4)."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from engine.training.config import MODES, TARGETS, TrainConfig
from engine.training.options import OPTIONS, option, page_fields
from engine.training.registry import list_trained_models, read_run_state, write_run_state


def test_every_field_is_described_once():
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    assert sorted(OPTIONS) == sorted(names)
    with pytest.raises(ValueError, match="the fields are: data_root"):
        option("no_such_field")
    # every field a wizard page binds has a label, and a number's range holds its default
    defaults = TrainConfig(data_root="")
    for page in ("data", "model", "loss", "run"):
        for name in page_fields(page):
            opt, value = OPTIONS[name], getattr(defaults, name)
            assert opt.label or name == "samples_per_class", name  # K shares P's row
            if opt.lo is not None:
                assert opt.lo <= value <= opt.hi, name


def test_the_cli_reads_the_same_help_and_choices():
    from engine.cli import train_cmd

    parser = argparse.ArgumentParser()
    train_cmd.register(parser.add_subparsers())
    train = parser._subparsers._group_actions[0].choices["train"]
    actions = {a.dest: a for a in train._actions}
    assert tuple(actions["target"].choices) == TARGETS and tuple(actions["mode"].choices) == MODES
    assert actions["weights"].choices is None  # suggestions only: a weights file is allowed too
    assert OPTIONS["target"].help in actions["target"].help
    assert OPTIONS["margin"].help in actions["margin"].help


def _fake_run(folder, name="run"):
    folder.mkdir(parents=True)
    (folder / "best.pt").write_bytes(b"x")
    (folder / "info.json").write_text(json.dumps({"name": name, "date": "2026-01-01T00:00:00", "data_root": "d"}))


def test_run_state_marks_interrupted_runs(tmp_path):
    _fake_run(tmp_path / "old", "old")  # a run from before state.json: listed as it was
    for name, state, it in (("done", "finished", 100), ("halted", "stopped", 40), ("crashed", "running", 20)):
        _fake_run(tmp_path / name, name)
        write_run_state(tmp_path / name, state, it, 100)
    titles = {m.name: m.title for m in list_trained_models(tmp_path)}
    assert titles == {"old": "old", "done": "done", "halted": "halted (stopped at iteration 40 of 100)",
                      "crashed": "crashed (not finished: iteration 20 of 100)"}
    with pytest.raises(ValueError, match="run state must be one of"):
        write_run_state(tmp_path / "done", "paused", 1, 2)
    (tmp_path / "done" / "state.json").write_text("{broken")
    assert read_run_state(tmp_path / "done") == {}


@pytest.mark.slow  # two tiny runs on the CPU: a few seconds
def test_a_stopped_run_is_listed_as_stopped(image_folder, tmp_path):
    from engine.training.launch import train

    root = image_folder(n_classes=6, per_class=5, size=40)
    base = dict(data_root=str(root), weights="random", image_size=32, iterations=12, val_every=4,
                classes_per_batch=3, samples_per_class=2, warmup_iters=2, val_class_share=0.34,
                cache_dir=str(tmp_path / "cache"), lr_head=1e-2, margin=0.3, num_threads=1)
    models = tmp_path / "models"
    calls = {"n": 0}

    def stop_after_5() -> bool:
        calls["n"] += 1
        return calls["n"] > 5

    part = train(TrainConfig(**base, out_dir=str(models / "part"), name="part"), should_stop=stop_after_5)
    full = train(TrainConfig(**base, out_dir=str(models / "full"), name="full"))
    assert part.cancelled and not full.cancelled
    state = read_run_state(models / "part")
    assert state["state"] == "stopped" and state["iteration"] == part.last_iteration < 12
    assert read_run_state(models / "full") == {"state": "finished", "iteration": 12, "iterations": 12}
    titles = {m.name: m.title for m in list_trained_models(models)}
    assert titles == {"full": "full", "part": f"part (stopped at iteration {part.last_iteration} of 12)"}
