"""engine.duplicates and `retrieval-explorer duplicates`: planted copies are found, grouped and ordered;
regrouping never searches again; moving and trashing move exactly what they are given."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from engine.collection import Collection
from engine.duplicates import (
    DuplicatePairs,
    find_duplicates,
    group_rows,
    groups_csv,
    move_files,
    trash_files,
    unique_pairs,
)
from engine.vocabulary import ModelSpec

SPEC = ModelSpec(backbone="stand-in", weights="random", descriptor="spoc", image_size=48)


class _Identity(nn.Module):
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x


class TinyImage(nn.Module):
    """A stand-in descriptor, no weights: the image pooled to 4 x 4 per channel, centred, L2-normalised
    (robust to re-encoding and resizing, blind to nothing else)."""

    def __init__(self, backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone or _Identity()

    def describe(self, fmap: torch.Tensor) -> torch.Tensor:
        f = nn.functional.adaptive_avg_pool2d(fmap, 4).flatten(1)
        return nn.functional.normalize(f - f.mean(1, keepdim=True), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.describe(self.backbone.forward_features(x))


def blocks(seed: int, size: int = 96) -> Image.Image:
    """A distinct picture: a random 4 x 4 grid of colours with a little noise."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, (4, 4, 3)).astype(np.float32)
    arr = np.kron(grid, np.ones((size // 4, size // 4, 1))) + rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


@pytest.fixture
def planted(tmp_path: Path):
    """8 distinct pictures; #0 has 2 copies (half size, JPEG 60), #1 one copy in another folder (JPEG 70).
    Returns (root, cache, collection, expected groups as sets of relpaths, best of each)."""
    root = tmp_path / "photos"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    for s in range(8):
        blocks(s).save(root / "a" / f"p{s}.png")
    blocks(0).resize((48, 48), Image.Resampling.BILINEAR).save(root / "a" / "p0_small.jpg", quality=60)
    blocks(0).save(root / "b" / "p0_copy.jpg", quality=60)
    blocks(1).save(root / "b" / "p1_copy.jpg", quality=70)
    old = 1_500_000_000
    os.utime(root / "b" / "p0_copy.jpg", (old, old))  # same resolution as a/p0.png, smaller file
    cache = tmp_path / "cache"
    c = Collection.open(root, model_spec=SPEC, cache_dir=cache, index="exact")
    c.update(TinyImage())
    expected = [{"a/p0.png", "a/p0_small.jpg", "b/p0_copy.jpg"}, {"a/p1.png", "b/p1_copy.jpg"}]
    return root, cache, c, expected


def test_planted_duplicates_are_found_grouped_and_ordered(planted):
    root, _, c, expected = planted
    sims = c.vectors @ c.vectors.T
    dup = find_duplicates(c, threshold=0.95)
    groups = dup.groups(0.95)
    assert [{it.relpath for it in g.items} for g in groups] == expected, sims.round(3)
    g0 = groups[0]
    # largest resolution first; of the two 96 x 96 files the larger one (PNG) beats the smaller JPEG
    assert g0.items[0].relpath == "a/p0.png" and g0.items[0].best and g0.items[0].score == 1.0
    last = g0.items[-1]
    assert last.relpath == "a/p0_small.jpg" and (last.facts.width, last.facts.height) == (48, 48)
    assert [it.relpath for it in g0.others] == ["b/p0_copy.jpg", "a/p0_small.jpg"]
    assert 0.95 <= g0.min_score <= g0.max_score <= 1.0001
    assert dup.pairs.exact and dup.pairs.floor == pytest.approx(0.85)


def test_order_falls_back_to_the_oldest_file(tmp_path):
    root = tmp_path / "same"
    root.mkdir()
    for name in ("x.png", "y.png"):
        blocks(3).save(root / name)
    os.utime(root / "y.png", (1_000_000_000, 1_000_000_000))
    c = Collection.open(root, model_spec=SPEC, cache_dir=tmp_path / "cache", index="exact")
    c.update(TinyImage())
    (g,) = find_duplicates(c, threshold=0.99).groups(0.99)
    assert [it.relpath for it in g.items] == ["y.png", "x.png"]  # equal size and bytes: the older first


def test_regrouping_does_not_search_the_index_again(planted, monkeypatch):
    _, _, c, expected = planted
    from engine.index import ExactIndex

    calls = []
    real, real_exact = Collection.search_many, ExactIndex.query

    def counting(self, queries, options=None):
        calls.append(len(queries))
        return real(self, queries, options)

    def counting_exact(self, vectors, k, *, ef=None):  # the exact pair search asks the index directly
        calls.append(len(vectors))
        return real_exact(self, vectors, k, ef=ef)

    monkeypatch.setattr(Collection, "search_many", counting)
    monkeypatch.setattr(ExactIndex, "query", counting_exact)
    dup = find_duplicates(c, threshold=0.95, floor=0.5)
    searched = len(calls)
    assert searched >= 1 and dup.pairs.queries == searched
    sizes = {}
    for t in np.linspace(0.5, 1.0, 26):
        sizes[round(float(t), 2)] = sum(len(g) for g in dup.groups(float(t)))
    assert len(calls) == searched  # 26 regroupings, no search
    assert sizes[0.5] >= sizes[0.96] >= 5 and sizes[1.0] <= 5  # lower thresholds group at least as much
    with pytest.raises(ValueError, match="searched down to"):
        dup.groups(0.4)


def test_an_empty_or_unindexed_collection_has_no_pairs(tmp_path):
    (tmp_path / "empty").mkdir()
    c = Collection.open(tmp_path / "empty", model_spec=SPEC, cache_dir=tmp_path / "cache")
    dup = find_duplicates(c, threshold=0.9)
    assert len(dup.pairs) == 0 and dup.groups(0.9) == []


def test_neighbour_lists_widen_until_they_end_below_the_floor(tmp_path):
    """40 identical pictures: every image has 39 neighbours at 1.0, more than the first k=4."""
    root = tmp_path / "frames"
    root.mkdir()
    for n in range(40):
        blocks(9).save(root / f"f{n:02d}.png")
    blocks(10).save(root / "other.png")
    c = Collection.open(root, model_spec=SPEC, cache_dir=tmp_path / "cache", index="exact")
    c.update(TinyImage())
    dup = find_duplicates(c, threshold=0.99, k=4)
    assert len(dup.pairs) == 40 * 39 // 2 and dup.pairs.truncated == 0
    (g,) = dup.groups(0.99)
    assert len(g) == 40


def test_complete_linkage_does_not_chain_unrelated_images():
    # 0~1 and 1~2 score above 0.9 but 0 and 2 do not: a chain through 1
    i, j, s = unique_pairs(4, np.array([0, 2, 1]), np.array([1, 1, 3]), np.array([0.95, 0.93, 0.5]))
    assert group_rows(4, i, j, s, 0.9, "components")[0].tolist() == [0, 1, 2]
    assert [g.tolist() for g in group_rows(4, i, j, s, 0.9, "complete")] == [[0, 1]]
    assert group_rows(4, i, j, s, 0.96, "complete") == []
    with pytest.raises(ValueError, match="unknown grouping rule"):
        group_rows(4, i, j, s, 0.9, "single")


def test_unique_pairs_keeps_the_best_score_of_each_pair():
    i, j, s = unique_pairs(5, np.array([3, 1, 2, 4]), np.array([1, 3, 2, 0]), np.array([0.8, 0.9, 1.0, 0.7]))
    assert (i.tolist(), j.tolist()) == ([1, 0], [3, 4]) and s.tolist() == pytest.approx([0.9, 0.7])
    p = DuplicatePairs(5, i, j, s, floor=0.6)
    assert len(p.above(0.8)[0]) == 1 and len(p.above(0.6)[0]) == 2


def test_csv_move_and_trash(planted, tmp_path):
    root, _, c, _ = planted
    groups = find_duplicates(c, threshold=0.95).groups(0.95)
    rows = list(csv.DictReader(io.StringIO(groups_csv(groups))))
    assert len(rows) == 5 and rows[0]["keep"] == "True" and rows[0]["path"].endswith("p0.png")
    dest = tmp_path / "moved"
    victims = [it.path for g in groups for it in g.others]
    moved = move_files(victims, dest, root=root)
    assert len(moved) == 3 and all(not Path(s).exists() and Path(d).is_file() for s, d in moved)
    assert (dest / "b" / "p0_copy.jpg").is_file()  # the path under the collection is kept
    blocks(5).save(root / "a" / "p5b.png")
    (dest / "a").mkdir(exist_ok=True)
    blocks(5).save(dest / "a" / "p5b.png")
    (_, d), = move_files([root / "a" / "p5b.png"], dest, root=root)
    assert Path(d).name == "p5b (1).png"  # never overwrites
    sent: list[str] = []
    assert trash_files([root / "a" / "p2.png"], trash=sent.append) == [str(root / "a" / "p2.png")]
    assert sent == [str(root / "a" / "p2.png")] and (root / "a" / "p2.png").is_file()  # the injected trash


@pytest.fixture
def cli(monkeypatch, tmp_path, capsys):
    import engine.extraction
    from engine.cli import main

    monkeypatch.setattr(engine.extraction, "build_model", lambda spec, device="cpu", backbone=None: TinyImage(backbone))
    import engine.runtime

    monkeypatch.setattr(engine.runtime, "feature_runner", lambda *a, **k: None)
    cache = tmp_path / "cache"

    def run(*argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--cache-dir", str(cache), "--image-size", "48"])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_cli_duplicates(cli, planted):
    root = planted[0]
    code, out, err = cli("duplicates", str(root), "--threshold", "0.95")
    assert code == 2 and "run `retrieval-explorer index" in err
    assert cli("index", str(root), "--descriptor", "gem", "--device", "cpu")[0] == 0  # the default descriptor
    # the descriptors alone (no verification: every group is a "similar photos" group)
    code, out, err = cli("duplicates", str(root), "--threshold", "0.95", "--no-verify")
    assert code == 0, err
    assert "group 1: 3 images" in out and "group 2: 2 images" in out and "2 groups of similar photos" in out
    lines = out.splitlines()
    assert lines[0].startswith("similar photos") and lines[2].split()[0] == "keep" and lines[2].endswith("p0.png")
    code, out, _ = cli("duplicates", str(root), "--threshold", "0.95", "--json")
    data = json.loads(out)
    assert data["threshold"] == 0.95 and [len(g["images"]) for g in data["groups"]] == [3, 2]
    assert data["groups"][0]["images"][0]["keep"] is True
