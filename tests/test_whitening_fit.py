"""A whitening is refused for anything but what it was learned for, and absurd or degenerate whitening files are
refused before use (issue 26, item 8)."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from engine.whitening import save_whitening
from engine.whitening_fit import WhiteningMismatch, load_whitening_for, whiten_command
from models.whitening import MAX_DIM, PCAWhitening, WhiteningFileError


def _fit(d=16, dim=8, **meta):
    X = np.random.default_rng(0).standard_normal((200, d))  # noqa: N806
    return PCAWhitening.fit(X, dim=dim, meta=meta or None)


def test_a_whitening_fits_only_what_it_was_learned_for(tmp_path):
    path = tmp_path / "w.npz"
    save_whitening(_fit(descriptor="gem", sizes=[224], backbone="resnet18"), path)
    assert load_whitening_for(path, descriptor="gem", sizes=[224], in_dim=16, backbone="resnet18").out_dim == 8
    for kwargs, applied in [(dict(descriptor="mac", sizes=[224]), "MAC at 224"),
                            (dict(descriptor="gem", sizes=[288]), "GeM at 288"),
                            (dict(descriptor="gem", sizes=[224, 288, 352]), "GeM at 224+288+352"),
                            (dict(descriptor="gem", sizes=[224], in_dim=1280), "1280-d"),
                            (dict(descriptor="gem", sizes=[224], backbone="resnet50"), "of resnet50")]:
        with pytest.raises(WhiteningMismatch) as info:
            load_whitening_for(path, **kwargs)
        msg = str(info.value)
        assert "learned for GeM at 224 (16-d vectors of resnet18)" in msg and applied in msg, msg
        assert "retrieval-explorer whiten DIR -o FILE" in msg and str(path) in msg


def test_a_file_that_does_not_record_what_it_was_learned_for_says_how_to_relearn(tmp_path):
    path = tmp_path / "old.npz"
    save_whitening(_fit(), path)
    with pytest.raises(WhiteningMismatch, match="does not record the descriptor") as info:
        load_whitening_for(path, descriptor="mac", sizes=[224, 288])
    assert whiten_command("mac", [224, 288]) in str(info.value)
    assert "--scales 224,288" in str(info.value)


def test_degenerate_whitenings_are_refused(tmp_path):
    zero = _fit(descriptor="gem", sizes=[224])
    zero.projection[:] = 0
    save_whitening(zero, tmp_path / "zero.npz")
    with pytest.raises(WhiteningFileError, match="all zeros"):
        PCAWhitening.load(tmp_path / "zero.npz")
    low = _fit(d=64, dim=32, descriptor="gem", sizes=[224])
    low.projection[:] = low.projection[0]  # every row the same: rank 1 for 32 output dimensions
    save_whitening(low, tmp_path / "rank1.npz")
    with pytest.raises(WhiteningFileError, match="rank 1 for 32"):
        PCAWhitening.load(tmp_path / "rank1.npz")


def _npz_with(path, **arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


def _huge_member(path, name, shape):
    """A real whitening archive whose member ``name`` claims ``shape`` in its .npy header (the data stays small)."""
    w = _fit(descriptor="gem", sizes=[224])
    arrays = w.to_arrays()
    with zipfile.ZipFile(path, "w") as z:
        for key, arr in arrays.items():
            if key != name:
                with z.open(key + ".npy", "w") as fh:
                    np.lib.format.write_array(fh, np.asarray(arr))
        header = {"descr": "<f4", "fortran_order": False, "shape": shape}
        raw = io.BytesIO()
        np.lib.format.write_array_header_1_0(raw, header)
        z.writestr(name + ".npy", raw.getvalue() + b"\0" * 64)


@pytest.mark.parametrize("name,shape,why", [
    ("projection", (1 << 20, 1 << 20), "more than"),
    ("mean", (MAX_DIM,), "claims"),
])
def test_absurd_header_sizes_are_refused_before_any_allocation(tmp_path, name, shape, why):
    path = tmp_path / "huge.npz"
    _huge_member(path, name, shape)
    with pytest.raises(WhiteningFileError, match=why):
        PCAWhitening.load(path)


def test_a_bare_npy_and_a_fifo_are_refused_without_reading(tmp_path):
    bare = tmp_path / "bare.npz"
    with open(bare, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f8", "fortran_order": False, "shape": (1 << 40,)})
    with pytest.raises(WhiteningFileError, match="single array"):
        PCAWhitening.load(bare)
    import os

    fifo = tmp_path / "w.npz"
    os.mkfifo(fifo)
    with pytest.raises(WhiteningFileError, match="not a regular file"):
        PCAWhitening.load(fifo)


def test_a_program_learned_whitening_of_few_vectors_is_not_called_degenerate():
    X = np.random.default_rng(1).standard_normal((30, 96))  # noqa: N806 - fewer vectors than dimensions
    labels = np.repeat(np.arange(10), 3)
    for w in (PCAWhitening.fit(X), PCAWhitening.fit_lw(X, labels), PCAWhitening.fit_lw(X, labels, dim=20)):
        assert w.degenerate() is None
    assert json.loads(str(PCAWhitening.fit(X).to_arrays()["header"]))["format"]
