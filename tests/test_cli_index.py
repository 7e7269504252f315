"""`retrieval-explorer index` and `search`, run in-process with a stand-in descriptor model."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from engine.cli import main


class _Identity(nn.Module):
    """A stand-in backbone: the image is its own feature map; counts the images that pass through."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        _Colours.seen += x.shape[0]
        return x


class _Colours(nn.Module):
    """A stand-in DescriptorModel: feature map (B, 3, S, S) -> (B, 6) channel means and stds,
    L2-normalised; ``seen`` counts the backbone passes (one per image, whatever the descriptors)."""

    seen = 0

    def __init__(self, backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone or _Identity()

    def describe(self, fmap: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(torch.cat([fmap.mean((2, 3)), fmap.std((2, 3))], 1), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.describe(self.backbone.forward_features(x))


@pytest.fixture
def cli(monkeypatch, tmp_path, capsys):
    import engine.extraction

    monkeypatch.setattr(engine.extraction, "build_model", lambda spec, device="cpu", backbone=None: _Colours(backbone))
    import engine.runtime

    monkeypatch.setattr(engine.runtime, "feature_runner", lambda *a, **k: None)  # the backbone runs as is
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
    # every descriptor is stored from ONE pass of the backbone per image
    assert code == 0 and "added 9" in out and "total 9 images" in out and _Colours.seen == 9
    assert "descriptors gem, fc, spoc, rmac, mac" in out  # the default first: its graph is built now
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
    code, _, err = cli("search", str(root / "class_00" / "000.jpg"), "--collection", str(root), "--descriptor", "rmac",
                       "--weights", "random")
    assert code == 2 and "not indexed with this model" in err and "--descriptor rmac" in err
    code, _, err = cli("search", str(tmp_path / "missing.jpg"), "--collection", str(root))
    assert code == 2 and "not found" in err
    code, _, err = cli("index", str(tmp_path / "nowhere"))
    assert code == 2 and "not found" in err
    # a damaged cache is refused with the fix in the message
    state = next((tmp_path / "cache").rglob("seg-*.npy"))
    state.write_bytes(state.read_bytes()[:50])
    code, _, err = cli("index", str(root))
    assert code == 2 and "--rebuild" in err


def test_index_json_says_what_was_extracted_kept_and_skipped(cli, image_folder):
    import os

    root = image_folder(n_classes=2, per_class=3)
    (root / "class_00" / "broken.jpg").write_bytes(b"not a jpeg")
    os.symlink(root / "nowhere.jpg", root / "class_01" / "dangling.jpg")
    code, out, _ = cli("index", str(root), "--json", "--descriptor", "gem")
    s = json.loads(out)
    assert code == 0 and s["extracted"] == 7 and s["kept"] == 6 and s["total"] == 6
    assert [x["path"] for x in s["skipped"]] == ["class_00/broken.jpg"] and s["skipped"][0]["reason"]
    assert [x["path"] for x in s["unreadable"]] == [str(root / "class_01" / "dangling.jpg")]
    assert "link" in s["unreadable"][0]["reason"]
    assert list(s["descriptors"]) == ["gem"] and s["descriptors"]["gem"]["total"] == 6


def test_index_json_counts_every_descriptors_extraction(cli, image_folder, tmp_path):
    """Issue 26, item 10: the first descriptor up to date, another one missing: what was read is said."""
    import shutil

    root = image_folder(n_classes=2, per_class=3)
    assert cli("index", str(root))[0] == 0
    shutil.rmtree(next((tmp_path / "cache").rglob("*-mac-*")))  # one descriptor's state gone
    seen = _Colours.seen
    code, out, _ = cli("index", str(root), "--json")
    s = json.loads(out)
    assert code == 0 and _Colours.seen - seen == 6 and s["extracted"] == 6 and s["kept"] == 6
    assert s["descriptors"]["fc"]["extracted"] == 0 and s["descriptors"]["mac"]["extracted"] == 6


def test_search_messages_for_odd_queries_and_file_names(cli, image_folder, tmp_path):
    import os

    root = image_folder(n_classes=2, per_class=2)
    odd = os.fsdecode(b"caf\xe9.jpg")  # a Latin-1 file name: not valid UTF-8
    (root / "class_00" / "000.jpg").rename(root / "class_00" / odd)
    assert cli("index", str(root), "--descriptor", "spoc")[0] == 0
    code, out, err = cli("search", str(root / "class_00" / odd), "--collection", str(root), "--descriptor", "spoc")
    assert code == 0 and "caf\\xe9.jpg" in out  # printed escaped, not a UnicodeEncodeError
    code, _, err = cli("search", str(root / "class_01"), "--collection", str(root), "--descriptor", "spoc")
    assert code == 2 and "folder" in err and "not found" not in err
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    code, _, err = cli("search", str(fifo), "--collection", str(root), "--descriptor", "spoc")
    assert code == 2 and "not a regular file" in err


def test_a_closed_pipe_ends_quietly(cli, image_folder, monkeypatch):
    import sys

    root = image_folder(n_classes=2, per_class=2)
    assert cli("index", str(root), "--descriptor", "spoc")[0] == 0

    class Closed:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", Closed())
    code, _, err = cli("search", str(root / "class_00" / "000.jpg"), "--collection", str(root), "--descriptor", "spoc")
    assert code == 0 and "Traceback" not in err


def test_index_then_search_use_the_cache_the_variable_names(monkeypatch, tmp_path, capsys, image_folder):
    """$RETRIEVAL_EXPLORER_CACHE moves the cache of every command: `index` writes the collection there and
    `search` finds it there; nothing is written under the platform's cache folder."""
    import platformdirs

    import engine.extraction
    import engine.runtime

    platform = tmp_path / "platform-cache"
    monkeypatch.setattr(platformdirs, "user_cache_dir", lambda *a, **k: str(platform / "retrieval-explorer"))
    cache = tmp_path / "moved-cache"
    monkeypatch.setenv("RETRIEVAL_EXPLORER_CACHE", str(cache))
    monkeypatch.setattr(engine.extraction, "build_model", lambda spec, device="cpu", backbone=None: _Colours(backbone))
    monkeypatch.setattr(engine.runtime, "feature_runner", lambda *a, **k: None)
    root = image_folder(n_classes=2, per_class=3)
    model = ["--descriptor", "gem", "--image-size", "32", "--device", "cpu"]
    assert main(["index", str(root), *model]) == 0
    query = root / "class_01" / "001.jpg"
    capsys.readouterr()
    assert main(["search", str(query), "--collection", str(root), *model, "--k", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert hits[0]["path"] == str(query) and hits[0]["label"] == "class_01"
    assert any((cache / "collections").rglob("manifest.json"))
    assert not platform.exists()


def test_index_stores_the_default_descriptor_first_so_its_graph_is_built():
    """`index` without --descriptor stores every kind and builds the search graph of the FIRST one at the end
    (the others' when first searched): that must be the descriptor a plain `search` and the window use."""
    from engine.cli import build_parser
    from engine.cli.index_cmd import index_descriptors
    from engine.vocabulary import DEFAULT_DESCRIPTOR, DESCRIPTORS

    kinds = index_descriptors(build_parser().parse_args(["index", "."]))
    assert kinds[0] == DEFAULT_DESCRIPTOR and sorted(kinds) == sorted(DESCRIPTORS)
    assert index_descriptors(build_parser().parse_args(["index", ".", "--descriptor", "mac"])) == ["mac"]
