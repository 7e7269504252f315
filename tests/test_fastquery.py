"""`search` describes a query outside the collection from the cached exports without importing torch
(engine.fastquery), with the scores of the PyTorch path (within 1e-4); before the exports exist it takes the
PyTorch path, says so once and exports them; exports that do not verify are never used.

A stand-in backbone (two small convolutions) under the real descriptor heads keeps the exports to about a
second each."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")  # the backbone's exporter

from engine.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCORE_TOL = 1e-4


class _Tiny(nn.Module):
    """The Backbone contract in miniature: (B, 3, S, S) -> (B, 8, S/4, S/4), fixed weights."""

    name = "tiny"
    feature_dim = 8
    fc_dim = 4

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 4)
        with torch.no_grad():
            for p in [*self.conv.parameters(), *self.fc.parameters()]:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.fc(fmap.mean((2, 3)))


@pytest.fixture
def stand_in(monkeypatch):
    """engine.extraction.build_model builds the real descriptor heads on :class:`_Tiny`."""
    import engine.extraction
    from models.descriptors import build_descriptor

    def build(spec, device="cpu", backbone=None):
        return build_descriptor(spec.descriptor, backbone or _Tiny(), scales=spec.scales).eval()

    monkeypatch.setattr(engine.extraction, "build_model", build)


@pytest.fixture(scope="module")
def backbone_exports(tmp_path_factory) -> Path:
    """The stand-in backbone's exports at 32 and 48 px, made and checked once for the module's tests."""
    from engine.runtime import feature_runner
    from engine.vocabulary import ModelSpec

    cache = tmp_path_factory.mktemp("exports")
    for size in (32, 48):
        assert feature_runner(_Tiny(), size, ModelSpec().backbone_identity(), cache, "onnxruntime").name == "onnxruntime"
    return cache / "runtimes"


@pytest.fixture
def cache(backbone_exports, tmp_path) -> Path:
    """A cache folder holding the backbone's exports (as after a first `index`)."""
    shutil.copytree(backbone_exports, tmp_path / "cache" / "runtimes")
    return tmp_path / "cache"


def _torch_vector(spec, cache, path) -> np.ndarray:
    from engine.session import ModelCache, embed_images

    return embed_images(ModelCache(runtime="torch", cache_dir=cache), spec, [path])[0]


def _cli_in_a_fresh_process(argv: list[str]) -> dict:
    code = ("import json, sys\nfrom engine.cli import main\n"
            f"rc = main({argv!r})\n"
            "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules, 'torchvision': 'torchvision' in sys.modules}))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    status = json.loads(lines[-1])
    return {**status, "result": json.loads("\n".join(lines[:-1])), "stderr": out.stderr}


def test_search_outside_the_collection_runs_without_torch_with_the_torch_scores(stand_in, image_folder, tmp_path, cache):
    root = image_folder(n_classes=2, per_class=3)
    model = ["--descriptor", "gem", "--image-size", "32", "--device", "cpu", "--cache-dir", str(cache)]
    assert main(["index", str(root), *model]) == 0
    assert list((cache / "runtimes").glob("*.head.onnx")), "index exports the descriptor heads"
    query = tmp_path / "outside.jpg"
    shutil.copyfile(root / "class_01" / "001.jpg", query)
    found = _cli_in_a_fresh_process(["search", str(query), "--collection", str(root), *model, "--k", "4",
                                        "--json", "--exact"])
    assert found["rc"] == 0 and not found["torch"] and not found["torchvision"]
    assert "PyTorch" not in found["stderr"]
    hits = found["result"]["hits"]
    assert hits[0]["path"] == str(root / "class_01" / "001.jpg")

    from engine.cli.index_cmd import spec_from_args
    from engine.session import FolderIndex

    spec = spec_from_args(type("A", (), {"backbone": "efficientnet_lite0", "weights": "pretrained", "descriptor": "gem",
                                         "image_size": 32, "whitening": None, "crop_fraction": 1.0,
                                         "scales": None})())
    vec = _torch_vector(spec, cache, str(query))
    paths, vectors = FolderIndex(root, cache_dir=cache).vectors(spec)
    expected = {p: float(v) for p, v in zip(paths, vectors @ vec, strict=True)}
    for h in hits:  # the same scores as the PyTorch path's vector on the same stored rows
        assert abs(h["score"] - expected[h["path"]]) <= SCORE_TOL, h


def test_first_search_without_exports_takes_pytorch_says_so_and_exports(stand_in, image_folder, tmp_path, capsys, cache):
    root = image_folder(n_classes=2, per_class=3)
    model = ["--descriptor", "spoc", "--image-size", "32", "--device", "cpu", "--cache-dir", str(cache)]
    assert main(["index", str(root), *model]) == 0
    for head in (cache / "runtimes").glob("*.head.onnx*"):
        head.unlink()
    query = tmp_path / "outside.jpg"
    shutil.copyfile(root / "class_00" / "002.jpg", query)
    capsys.readouterr()
    argv = ["search", str(query), "--collection", str(root), *model, "--k", "3", "--json", "--exact"]
    assert main(argv) == 0
    first = capsys.readouterr()
    assert first.err.count("described the query in PyTorch") == 1
    assert list((cache / "runtimes").glob("*.head.onnx"))
    assert main(argv) == 0
    second = capsys.readouterr()
    assert "PyTorch" not in second.err
    a, b = json.loads(first.out)["hits"], json.loads(second.out)["hits"]
    assert [h["path"] for h in a] == [h["path"] for h in b]
    assert np.allclose([h["score"] for h in a], [h["score"] for h in b], atol=SCORE_TOL)


def test_multi_scale_rmac_head_matches_pytorch_and_bad_exports_are_refused(stand_in, image_folder, cache):
    from engine.cli.index_cmd import _export_heads
    from engine.fastquery import load_describer
    from engine.session import ModelCache, scale_features
    from engine.vocabulary import ModelSpec

    root = image_folder(n_classes=2, per_class=2)
    spec = ModelSpec(descriptor="rmac", scales=(32, 48))
    models = ModelCache(runtime="onnxruntime", cache_dir=cache)
    runners = scale_features(models, spec, None)
    assert {r.name for r in runners.values()} == {"onnxruntime"}
    assert load_describer(spec, cache)[0] is None  # nothing exported yet
    _export_heads([spec], [models.get(spec)], runners, cache)
    fast, why = load_describer(spec, cache)
    assert fast is not None, why
    assert fast.sizes == (32, 48)
    for path in sorted(root.rglob("*.jpg")):
        assert np.abs(fast.describe(path) - _torch_vector(spec, cache, str(path))).max() <= SCORE_TOL

    head = fast.head_path
    data = head.read_bytes()
    head.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit changed
    assert load_describer(spec, cache) == (None, "descriptor head: " + head.name
                                           + " does not match its recorded size and SHA-256 (damaged)")
    head.write_bytes(data)
    backbone = runners[48].onnx_path
    mark = backbone.with_name(backbone.name + ".checked.json")
    mark.write_text(json.dumps({**json.loads(mark.read_text()), "version": "0.0"}))  # another onnxruntime
    fast, why = load_describer(spec, cache)
    assert fast is None and "not checked against PyTorch" in why


def test_index_from_cached_exports_runs_without_torch_and_stores_the_torch_vectors(stand_in, image_folder, tmp_path,
                                                                                   cache):
    """Every descriptor (five heads, one backbone pass) from the exports a first `index` left, in a fresh process:
    torch not imported, the same stored rows as the PyTorch-started index (to float16's step: the store's
    precision), the same file skipped for the same reason."""
    from engine.session import FolderIndex
    from engine.vocabulary import DESCRIPTORS, ModelSpec

    root = image_folder(n_classes=2, per_class=3)
    (root / "class_00" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    model = ["--image-size", "32", "--device", "cpu", "--json"]
    assert main(["index", str(root), *model, "--cache-dir", str(cache)]) == 0  # torch: exports every head
    assert len(list((cache / "runtimes").glob("*.head.onnx"))) == len(DESCRIPTORS)
    fresh = tmp_path / "fresh"
    shutil.copytree(cache / "runtimes", fresh / "runtimes")
    run = _cli_in_a_fresh_process(["index", str(root), *model, "--cache-dir", str(fresh)])
    assert run["rc"] == 0 and not run["torch"] and not run["torchvision"], run["stderr"][-2000:]
    summary = run["result"]
    assert summary["runtime"] == "onnxruntime" and summary["kept"] == 6
    assert [(s["path"], bool(s["reason"])) for s in summary["skipped"]] == [("class_00/broken.jpg", True)]
    for kind in DESCRIPTORS:
        spec = ModelSpec(descriptor=kind, image_size=32)
        paths, torch_rows = FolderIndex(root, cache_dir=cache).vectors(spec)
        fast_paths, fast_rows = FolderIndex(root, cache_dir=fresh).vectors(spec)
        assert fast_paths == paths and len(paths) == 6
        step = np.spacing(np.abs(torch_rows).astype(np.float16)).astype(np.float32)
        assert (np.abs(fast_rows - torch_rows) <= step).all(), kind
        skipped = {s.path: s.reason for s in FolderIndex(root, cache_dir=fresh).collection(spec).skipped}
        assert skipped == {s.path: s.reason for s in FolderIndex(root, cache_dir=cache).collection(spec).skipped}


def test_one_describer_of_several_heads_streams_the_torch_vectors(stand_in, image_folder, cache):
    """load_describers + extract (what `index` runs without torch) against embed_images in PyTorch, float32,
    batches of 4 over 6 images (a short last batch), a bad file skipped in its batch; heads of another
    backbone export are refused together."""
    from engine.cli.index_cmd import _export_heads
    from engine.fastquery import load_describers
    from engine.session import ModelCache
    from engine.vocabulary import ModelSpec

    root = image_folder(n_classes=2, per_class=3)
    specs = [ModelSpec(descriptor=k, image_size=32) for k in ("gem", "rmac", "fc")]
    models = ModelCache(runtime="onnxruntime", cache_dir=cache)
    assert _export_heads(specs, [models.get(s) for s in specs], models.features(specs[0]), cache) == 3
    fast, why = load_describers(specs, cache)
    assert fast is not None, why
    files = sorted(map(str, root.rglob("*.jpg")))
    bad = root / "bad.jpg"
    bad.write_bytes(b"nothing")
    batches = list(fast.extract(files[:3] + [str(bad)] + files[3:], batch_size=4, decode_threads=2))
    assert [b.done for b in batches] == [4, 7] and [len(b.paths) for b in batches] == [3, 3]
    assert [s.path for b in batches for s in b.skipped] == [str(bad)]
    assert [p for b in batches for p in b.paths] == files
    for i, spec in enumerate(specs):
        got = np.concatenate([b.vectors[i] for b in batches])
        want = np.stack([_torch_vector(spec, cache, f) for f in files])
        assert np.abs(got / np.linalg.norm(got, axis=1, keepdims=True) - want).max() <= SCORE_TOL, spec.descriptor
    other = [specs[0], ModelSpec(descriptor="gem", image_size=48)]
    _export_heads(other[1:], [models.get(other[1])], models.features(other[1]), cache)
    assert load_describers(other, cache) == (None, "descriptor heads of other backbone exports or preprocessing")
