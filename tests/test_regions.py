"""Region queries (issue 28): a box of the query image searched alone, and each result's best region.

In-process with the stand-in network of tests/test_cli_index.py (the image is its own feature map, the
descriptor its colour statistics): a region whose pixels are another indexed image must find that image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.images import clip_box, crop_geometry, parse_box, resize_crop
from engine.regions import box_iou, box_to_cells, candidate_regions, cells_to_box
from tests.conftest import synthetic_image
from tests.test_cli_index import cli  # noqa: F401 - the fixture

#: where the patch is pasted in the composite, (x, y, w, h)
PASTED = (60, 28, 64, 64)  # inside the centre square the network sees of the 160 x 120 image


def make_composites(root: Path) -> tuple[Path, Path]:
    """class_00..03 (two images each, PNG) and scene/composite.png: a 160 x 120 class_03-like ground with
    class_00/000.png pasted at PASTED. Returns (composite, the pasted image)."""
    for c in range(4):
        d = root / f"class_{c:02d}"
        d.mkdir(parents=True, exist_ok=True)
        for v in range(2):
            synthetic_image(c, v, 64).save(d / f"{v:03d}.png")
    patch = root / "class_00" / "000.png"
    ground = synthetic_image(3, 7, 64).resize((160, 120), Image.Resampling.NEAREST)
    ground.paste(Image.open(patch), PASTED[:2])
    (root / "scene").mkdir()
    composite = root / "scene" / "composite.png"
    ground.save(composite)
    return composite, patch


def test_box_helpers_round_trip_and_refuse_nonsense():
    assert parse_box("10, 20,30,40") == (10, 20, 30, 40)
    for bad in ("1,2,3", "a,b,c,d", "0,0,0,5", "-1,0,4,4"):
        with pytest.raises(ValueError, match="X,Y,W,H|X, Y"):
            parse_box(bad)
    assert clip_box((150, 100, 40, 40), 160, 120) == (150, 100, 10, 20)
    with pytest.raises(ValueError, match="outside"):
        clip_box((200, 0, 10, 10), 160, 120)
    # the geometry is resize_crop's: a 160 x 120 image -> 42 x 32, the 32 square 5 pixels from the left
    assert crop_geometry(160, 120, 32) == (42, 32, 5, 0)
    assert resize_crop(Image.new("RGB", (160, 120)), 32).size == (32, 32)
    # cells -> pixels -> cells is the identity on a 32 x 32 map of a 160 x 120 image
    for cells in candidate_regions(32, 32, 3, (0.4,)):
        box = cells_to_box(cells, (32, 32), (160, 120), 32)
        assert box_to_cells(box, (160, 120), (32, 32), 32) == cells
    assert box_iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)


def test_a_region_finds_the_image_it_shows_first_and_the_best_region_is_the_pasted_part(cli, tmp_path):  # noqa: F811
    root = tmp_path / "images"
    composite, patch = make_composites(root)
    assert cli("index", str(root), "--descriptor", "gem")[0] == 0
    common = ("--collection", str(root), "--descriptor", "gem", "--k", "3", "--exact", "--json")
    code, out, _ = cli("search", str(composite), *common)
    whole = json.loads(out)
    assert code == 0 and whole["box"] is None and whole["hits"][0]["path"] == str(composite)
    assert whole["hits"][1]["label"] == "class_03"  # the ground dominates the whole image
    code, out, err = cli("search", str(composite), *common, "--box", ",".join(map(str, PASTED)))
    region = json.loads(out)
    assert code == 0 and region["box"] == list(PASTED), err
    assert region["hits"][0]["path"] == str(patch) and region["hits"][0]["score"] == pytest.approx(1.0, abs=1e-3)
    code, _, err = cli("search", str(composite), *common, "--box", "400,10,20,20")
    assert code == 2 and "outside the 160x120 image" in err and "Traceback" not in err
    code, _, err = cli("search", str(composite), *common, "--box", "10,10")
    assert code == 2 and "X,Y,W,H" in err

    # the best region of the composite for the pasted image's vector lies on the pasted part
    from engine.regions import best_regions
    from engine.session import FolderIndex, ModelCache
    from engine.vocabulary import ModelSpec

    spec = ModelSpec(descriptor="gem", image_size=32)
    index = FolderIndex(root, cache_dir=tmp_path / "cache")
    q = index.stored_vector(spec, str(patch))
    events: list = []
    (match,) = best_regions(ModelCache(), spec, [composite], q, on_event=events.append)
    assert match is not None and match.size == (160, 120) and events == [[match]]
    assert box_iou(match.box, PASTED) >= 0.5, match
    assert np.isfinite(match.score) and 0.0 < match.score <= 1.0 + 1e-6
    # asked again (the window drawing the regions a region query was re-ranked by), nothing is computed again;
    # a changed file is
    import engine.extraction

    calls: list = []
    real = engine.extraction.iter_extract
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(engine.extraction, "iter_extract", lambda paths, *a, **k: calls.append(list(paths)) or
                        real(paths, *a, **k))
    try:
        again: list = []
        assert best_regions(ModelCache(), spec, [composite, patch], q, on_event=again.append)[0] == match
        assert calls == [[str(patch)]] and again[0] == [match]
        Image.open(patch).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(composite)
        best_regions(ModelCache(), spec, [composite], q)
        assert calls[-1] == [str(composite)]
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize("kind", ["gem", "spoc", "mac"])
def test_window_pooling_equals_the_head_on_each_cut_out_window(kind):
    """engine.regions pools every window of a size in one pass: the same as the head on each window alone."""
    from types import SimpleNamespace

    import torch

    from engine.regions import region_descriptors
    from models.descriptors import DescriptorModel

    model = DescriptorModel(SimpleNamespace(feature_dim=16, fc_dim=0, name="stand-in"), kind).eval()
    fmap = torch.rand(2, 16, 9, 7)
    regions = candidate_regions(9, 7, 3, (0.4, 0.6))
    fast = region_descriptors(model, fmap, regions)
    slow = torch.stack([model.describe(fmap[:, :, y:y + h, x:x + w]) for y, x, h, w in regions], dim=1)
    assert fast.shape == slow.shape == (2, len(regions), model.dim)
    assert torch.allclose(fast, slow, atol=1e-5)


def test_rerank_puts_copies_first_then_orders_by_best_region():
    from dataclasses import dataclass

    from engine.regions import RegionMatch, region_options, rerank_hits
    from engine.search import SearchOptions

    @dataclass
    class Hit:
        path: str
        score: float
        rank: int

    hits = [Hit("a", 0.80, 1), Hit("b", 0.70, 2), Hit("copy", 0.90, 3), Hit("c", 0.60, 4), Hit("after", 0.5, 5)]
    matches = [RegionMatch(p, (0, 0, 1, 1), (2, 2), s) for p, s in (("a", 0.5), ("b", 0.75), ("copy", 0.1))] + [None]
    out = rerank_hits(hits, matches, depth=4, copy_score=0.85)
    assert [h.path for h in out] == ["copy", "b", "c", "a", "after"]  # c: no region, its own score
    assert [h.score for h in out] == [0.90, 0.75, 0.60, 0.5, 0.5] and [h.rank for h in out] == [1, 2, 3, 4, 5]
    assert region_options(SearchOptions(k=5), depth=20).k == 20 and region_options(SearchOptions(k=50)).k == 50


def test_region_query_map_is_the_one_metric_on_other_query_vectors():
    """engine.evaluation ranks region queries (other query vectors, image i left out) with the one AP."""
    from engine.evaluation import average_precisions, mean_average_precision

    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 5)).astype(np.float32)
    labels = [i // 3 for i in range(12)]
    assert mean_average_precision(x, labels, queries=x) == pytest.approx(mean_average_precision(x, labels))
    q = rng.normal(size=(12, 5)).astype(np.float32)
    ap = average_precisions(x, labels, queries=q)
    assert ap == pytest.approx(average_precisions(x, labels, scores=q @ x.T))
    perfect = np.where(np.equal.outer(labels, labels), 1.0, 0.0)
    assert np.nanmean(average_precisions(x, labels, scores=perfect)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        average_precisions(x, labels, queries=q[:3])
