"""`retrieval-explorer index` and `search`, run in-process with a stand-in descriptor model."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from engine.cli import main
from engine.collection import ModelSpec


class _Colours(nn.Module):
    """(B, 3, S, S) -> (B, 6) channel means and stds, L2-normalised; counts images."""

    seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _Colours.seen += x.shape[0]
        return nn.functional.normalize(torch.cat([x.mean((2, 3)), x.std((2, 3))], 1), dim=1)


@pytest.fixture
def cli(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(ModelSpec, "build", lambda self, device="cpu": _Colours())
    _Colours.seen = 0
    cache = tmp_path / "cache"

    def run(*argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--cache-dir", str(cache), "--image-size", "32", "--device", "cpu"])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_index_then_reindex_then_search(cli, image_folder):
    root = image_folder(n_classes=3, per_class=3)
    code, out, _ = cli("index", str(root))
    assert code == 0 and "added 9" in out and "total 9 images" in out and _Colours.seen == 9
    (root / "class_00" / "000.jpg").unlink()
    code, out, _ = cli("index", str(root), "--json")
    summary = json.loads(out)
    assert code == 0 and summary["removed"] == 1 and summary["added"] == 0 and summary["total"] == 8
    assert _Colours.seen == 9  # nothing re-extracted
    query = root / "class_01" / "001.jpg"
    code, out, _ = cli("search", str(query), "--collection", str(root), "--k", "3")
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 3 and lines[0].split()[0] == "1" and lines[0].endswith(str(query))
    code, out, _ = cli("search", str(query), "--collection", str(root), "--k", "4", "--exact", "--qe", "alpha",
                       "--json")
    res = json.loads(out)
    assert code == 0 and len(res["hits"]) == 4 and res["options"]["exact"] and res["options"]["query_expansion"] == "alpha"
    assert res["hits"][0]["label"] == "class_01" and [h["rank"] for h in res["hits"]] == [1, 2, 3, 4]
    code, out, _ = cli("search", str(query), "--collection", str(root), "--threshold", "1.01")
    assert code == 0 and "no result" in out


def test_rebuild_and_errors(cli, image_folder, tmp_path):
    root = image_folder(n_classes=2, per_class=2)
    code, out, _ = cli("index", str(root), "--rebuild")
    assert code == 0 and _Colours.seen == 4
    code, out, _ = cli("index", str(root), "--rebuild")
    assert code == 0 and _Colours.seen == 8 and "added 4" in out
    code, _, err = cli("search", str(root / "class_00" / "000.jpg"), "--collection", str(root), "--descriptor", "rmac")
    assert code == 2 and "not indexed with this model" in err
    code, _, err = cli("search", str(tmp_path / "missing.jpg"), "--collection", str(root))
    assert code == 2 and "not found" in err
    code, _, err = cli("index", str(tmp_path / "nowhere"))
    assert code == 2 and "not found" in err
    # a damaged cache is refused with the fix in the message
    state = next((tmp_path / "cache").rglob("seg-*.npy"))
    state.write_bytes(state.read_bytes()[:50])
    code, _, err = cli("index", str(root))
    assert code == 2 and "--rebuild" in err
