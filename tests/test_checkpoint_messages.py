"""A checkpoint or weights file that torch.load(weights_only=True) refuses is reported as refused for
holding code or objects, never with torch's advice to load it with weights_only=False."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from engine.training.checkpoint import load_checkpoint
from models.backbones import _load_state_dict_file, describe_load_error, strip_unsafe_advice
from models.embedding import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, read_checkpoint


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Custom:  # a plain object: not code, but not allowed by a safe load either
    pass


ADVICE = ("weights_only", "re-run", "trusted source", "safe_globals", "allowlist", "if you trust")


def _no_advice(message: str) -> None:
    low = message.lower()
    assert not [a for a in ADVICE if a in low], message


@pytest.mark.parametrize("payload_kind", ["code", "object"])
def test_refused_checkpoint_says_why_without_unsafe_advice(tmp_path: Path, payload_kind: str) -> None:
    marker = tmp_path / "PWNED"
    payload = _Evil(str(marker)) if payload_kind == "code" else _Custom()
    path = tmp_path / "best.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": {}, "model": payload}, path)
    for load in (read_checkpoint, load_checkpoint, _load_state_dict_file):
        with pytest.raises(ValueError) as info:
            load(path)
        msg = str(info.value)
        assert str(path) in msg and "refused" in msg and "code or objects that a safe load does not allow" in msg
        _no_advice(msg)
        assert info.value.__cause__ is None  # torch's own message is not chained into a traceback either
    assert not marker.exists()


def test_damaged_checkpoint_message_has_no_unsafe_advice(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    path.write_bytes(b"\x80\x02garbage" * 20)
    with pytest.raises(ValueError) as info:
        read_checkpoint(path)
    assert "damaged or foreign" in str(info.value) and str(path) in str(info.value)
    _no_advice(str(info.value))


def test_strip_unsafe_advice_keeps_the_finding() -> None:
    text = ("Weights only load failed. This file can still be loaded, to do so you have two options, do those "
            "steps only if you trust the source of the checkpoint. (1) Re-running `torch.load` with `weights_only` "
            "set to `False` will likely succeed, but it can result in arbitrary code execution.\n"
            "WeightsUnpickler error: Unsupported global: GLOBAL collections.Counter was not an allowed global by "
            "default. Please use `torch.serialization.add_safe_globals([Counter])` or the "
            "`torch.serialization.safe_globals([Counter])` context manager to allowlist this global if you trust "
            "this class/function.\n\nCheck the documentation of torch.load to learn more about types accepted "
            "by default with weights_only https://pytorch.org/docs/stable/generated/torch.load.html.")
    out = strip_unsafe_advice(text)
    assert "GLOBAL collections.Counter was not an allowed global" in out
    _no_advice(out)
    err = describe_load_error(RuntimeError(text))
    assert "code or objects" in err
    _no_advice(err)
