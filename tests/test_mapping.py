"""engine.mapping and `retrieval-explorer map`: coordinates, the cache beside the collection, the CLI."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

import engine.mapping as mapping
from engine.callbacks import Cancelled
from engine.collection import Collection
from engine.mapping import collection_map, compute_map, knn_preservation, load_cached_map, map_path
from engine.vocabulary import ModelSpec

SPEC = ModelSpec(backbone="stand-in", weights="random", descriptor="spoc", image_size=48)


def clusters(n_per: int = 30, k: int = 3, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * 4
    x = np.concatenate([c + rng.normal(size=(n_per, dim)) for c in centres]).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.repeat(np.arange(k), n_per)


def purity(xy: np.ndarray, y: np.ndarray, k: int = 5) -> float:
    """The share of each point's k nearest in 2-D that share its cluster."""
    d = ((xy[:, None] - xy[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return float((y[np.argsort(d, 1)[:, :k]] == y[:, None]).mean())


def test_small_and_degenerate_inputs():
    assert compute_map(np.zeros((0, 8), np.float32)).shape == (0, 2)
    assert compute_map(np.ones((1, 8), np.float32)).tolist() == [[0.0, 0.0]]
    xy = compute_map(np.eye(3, 8, dtype=np.float32))  # under MIN_EMBED: the PCA plane
    assert xy.shape == (3, 2) and np.abs(xy).max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown map method"):
        compute_map(np.eye(3, dtype=np.float32), "mds")


def test_pca_map_keeps_clusters_apart_and_preservation_is_measured():
    x, y = clusters()
    xy = compute_map(x, "pca")
    assert xy.shape == (90, 2) and xy.dtype == np.float32 and np.abs(xy).max() <= 1.0 + 1e-6
    centres = np.array([xy[y == c].mean(0) for c in range(3)])
    spread = max(np.linalg.norm(xy[y == c] - centres[c], axis=1).mean() for c in range(3))
    gaps = [np.linalg.norm(centres[a] - centres[b]) for a in range(3) for b in range(a + 1, 3)]
    assert min(gaps) > spread
    assert purity(xy, y) > 0.95 and 0.0 < knn_preservation(x, xy, k=5, sample=None) <= 1.0
    line = np.stack([np.arange(50), np.zeros(50)], 1).astype(np.float32)
    vec = np.stack([np.cos(np.arange(50) / 100), np.sin(np.arange(50) / 100)], 1).astype(np.float32)
    assert knn_preservation(vec, line, k=4, sample=None) == 1.0


def test_tsne_in_a_child_process_and_cancel():
    x, y = clusters(n_per=20)
    xy = mapping.compute_map_isolated(x)  # the default method, t-SNE
    assert xy.shape == (60, 2) and np.isfinite(xy).all()
    assert purity(xy, y) > 0.95  # the clusters stay apart
    assert knn_preservation(x, xy, k=5, sample=None) > 0.3
    with pytest.raises(Cancelled):
        mapping.compute_map_isolated(x, should_stop=lambda: True)


def _indexed(root: Path, cache: Path) -> Collection:
    from test_duplicates import TinyImage, blocks  # noqa: E402 - tests/ is on sys.path under pytest

    (root / "a").mkdir(parents=True, exist_ok=True)
    (root / "b").mkdir(exist_ok=True)
    for s in range(6):
        blocks(s).save(root / ("a" if s < 3 else "b") / f"p{s}.png")
    c = Collection.open(root, model_spec=SPEC, cache_dir=cache, index="exact")
    c.update(TinyImage())
    return c


def test_the_map_is_cached_beside_the_collection_until_it_changes(tmp_path, monkeypatch):
    from test_duplicates import TinyImage, blocks

    root = tmp_path / "photos"
    c = _indexed(root, tmp_path / "cache")
    calls = []
    real = mapping.compute_map
    monkeypatch.setattr(mapping, "compute_map", lambda *a, **k: calls.append(1) or real(*a, **k))
    m = collection_map(c, "pca")
    assert len(calls) == 1 and not m.cached and m.coords.shape == (6, 2)
    assert sorted(set(m.labels)) == ["a", "b"] and map_path(c, "pca").parent == c.state_dir
    again = Collection.open(root, model_spec=SPEC, cache_dir=tmp_path / "cache")
    m2 = collection_map(again, "pca")
    assert len(calls) == 1 and m2.cached and np.array_equal(m2.coords, m.coords) and m2.relpaths == m.relpaths
    blocks(7).save(root / "b" / "p7.png")  # a new commit: the cached map is stale
    again.update(TinyImage())
    assert load_cached_map(again, "pca") is None
    m3 = collection_map(again, "pca")
    assert len(calls) == 2 and len(m3) == 7
    map_path(again, "pca").write_bytes(b"not a zip")  # damaged: computed again, never unpickled
    assert collection_map(again, "pca").cached is False and len(calls) == 3


def test_cli_map_writes_the_csv(tmp_path, monkeypatch, capsys):
    from test_duplicates import TinyImage

    import engine.extraction
    from engine.cli import main

    monkeypatch.setattr(engine.extraction, "build_model", lambda spec, device="cpu", backbone=None: TinyImage(backbone))
    import engine.runtime

    monkeypatch.setattr(engine.runtime, "feature_runner", lambda *a, **k: None)
    root = tmp_path / "photos"
    _indexed(root, tmp_path / "unused")
    cache = tmp_path / "cache"
    args = ["--cache-dir", str(cache), "--image-size", "48"]
    out = tmp_path / "map.csv"
    assert main(["map", str(root), "--csv", str(out), *args]) == 2
    assert "run `retrieval-explorer index" in capsys.readouterr().err
    assert main(["index", str(root), "--descriptor", "gem", "--device", "cpu", *args]) == 0  # the default
    capsys.readouterr()
    assert main(["map", str(root), "--csv", str(out), "--method", "pca", *args]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6 and set(rows[0]) == {"path", "x", "y", "label"}
    assert {r["label"] for r in rows} == {"a", "b"} and all(Path(r["path"]).is_file() for r in rows)
    assert "computed" in capsys.readouterr().err
    assert main(["map", str(root), "--csv", "-", "--method", "pca", *args]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("path,x,y,label\n") and "from the cache" in captured.err
