"""benchmarks/train.py: the WiSE-FT weight interpolation and the evaluation picker (issue 12 item 4)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "train.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train_under_test", _PATH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))


def test_wise_state_interpolates_floats_and_keeps_integer_buffers(bench):
    m0, m1 = _model(0), _model(1)
    m1[1].num_batches_tracked += 7
    t0, t1 = m0.state_dict(), m1.state_dict()
    for a in (0.0, 0.3, 1.0):
        mixed = bench.wise_state(t0, t1, a)
        for k, v in mixed.items():
            if v.is_floating_point():
                torch.testing.assert_close(v, (1 - a) * t0[k] + a * t1[k])
            else:
                assert torch.equal(v, t1[k])
    assert torch.equal(bench.wise_state(t0, t1, 0.0)["0.weight"], t0["0.weight"])
    assert torch.equal(bench.wise_state(t0, t1, 1.0)["0.weight"], t1["0.weight"])
    # the result loads into the model (same keys, shapes, dtypes)
    m0.load_state_dict(bench.wise_state(t0, t1, 0.5))


def test_wise_state_refuses_different_models(bench):
    t0 = _model(0).state_dict()
    t1 = torch.nn.Linear(4, 3).state_dict()
    with pytest.raises(ValueError, match="different keys"):
        bench.wise_state(t0, t1, 0.5)


def test_pick_by_val_breaks_ties_by_validation_map_never_by_test(bench):
    rows = [
        (0.0, {"val_r1": 0.99, "val_map": 0.80, "r1": 0.99}),   # best test figure: must not matter
        (0.5, {"val_r1": 0.99, "val_map": 0.85, "r1": 0.80}),
        (1.0, {"val_r1": 0.98, "val_map": 0.95, "r1": 0.85}),
    ]
    a, row = bench._pick_by_val(rows)
    assert a == 0.5 and row["val_map"] == 0.85
    a, _ = bench._pick_by_val(rows[:1] + [(1.0, {"val_r1": 0.995, "val_map": 0.1, "r1": 0.1})])
    assert a == 1.0
