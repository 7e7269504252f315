"""engine.session and what the `search` command's speed rests on: the input transform without torchvision
matches torchvision's number for number; a runtime's check against PyTorch is remembered per export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from engine.images import build_transform


@pytest.mark.parametrize("size,crop", [(224, 1.0), (224, 224 / 227), (32, 1.0), (40, 0.875)])
def test_build_transform_equals_torchvision(size, crop):
    from torchvision import transforms as T  # noqa: N812

    rng = np.random.default_rng(size)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ours = build_transform(size, mean, std, crop)
    theirs = T.Compose([T.Resize(int(round(size / crop)), interpolation=T.InterpolationMode.BILINEAR, antialias=True),
                        T.CenterCrop(size), T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))])
    for w, h in [(300, 200), (200, 300), (257, 257), (size, size), (33, 517), (1001, 37), (int(round(size / crop)), 999)]:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
        a, b = ours(img), theirs(img)
        assert a.shape == (3, size, size) and a.dtype == torch.float32
        assert torch.equal(a, b), (w, h)


def test_other_modes_take_torchvision_steps():
    img = Image.fromarray(np.arange(64 * 48, dtype=np.uint8).reshape(48, 64), "L")
    with pytest.raises(RuntimeError):  # as torchvision: one channel cannot take three means in place
        build_transform(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))(img)
    one = build_transform(32, (0.5,), (0.5,))(img)
    assert one.shape == (1, 32, 32)


def test_the_runtime_check_is_remembered_per_export(tmp_path, monkeypatch):
    """A passed comparison with PyTorch is written beside the export with its SHA-256; a second cache in
    another process (here: a fresh ModelCache) builds its runner without the check; a changed export is
    checked again."""
    pytest.importorskip("onnxruntime")
    import engine.runtime as rt
    from engine.runtime import _checked_marker
    from engine.session import ModelCache
    from engine.vocabulary import ModelSpec

    spec = ModelSpec(weights="random", image_size=32)
    checks = []
    real_check = rt._check
    monkeypatch.setattr(rt, "_check", lambda *a, **k: (checks.append(1), real_check(*a, **k))[1])
    first = ModelCache(runtime="onnxruntime", cache_dir=tmp_path).features(spec)
    assert first.name == "onnxruntime" and len(checks) == 1
    mark = json.loads(_checked_marker(first.onnx_path).read_text())
    side = json.loads(first.onnx_path.with_name(first.onnx_path.name + ".json").read_text())
    assert mark["sha256"] == side["sha256"] and mark["runtime"] == "onnxruntime"
    second = ModelCache(runtime="auto", cache_dir=tmp_path).features(spec)
    assert second.name == "onnxruntime" and len(checks) == 1  # no second probe
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(first(x), second(x))
    _checked_marker(first.onnx_path).write_text(json.dumps({**mark, "sha256": "0" * 64}))  # another file
    ModelCache(runtime="auto", cache_dir=tmp_path).features(spec)
    assert len(checks) == 2


def test_search_hits_renumber_after_leaving_the_query_out(tmp_path, image_folder):
    from engine.search import SearchOptions
    from engine.session import FolderIndex, ModelCache, run_query
    from engine.vocabulary import ModelSpec

    root = image_folder(n_classes=2, per_class=3)
    spec = ModelSpec(weights="random", descriptor="spoc", image_size=32)
    models = ModelCache(runtime="torch")
    index = FolderIndex(root, cache_dir=tmp_path / "cache")
    index.update(models, spec, descriptors=["spoc"])
    query = str(root / "class_00" / "000.jpg")
    kept = run_query(index, models, spec, query, SearchOptions(k=3, exact=True), exclude_query=False)
    left = run_query(index, models, spec, query, SearchOptions(k=3, exact=True))
    assert kept.hits[0].path == query and kept.hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.path for h in left.hits] == [h.path for h in kept.hits[1:]] + [left.hits[-1].path]
    assert [h.rank for h in left.hits] == [1, 2, 3] and query not in [h.path for h in left.hits]
    assert left.relevant == 2 and left.query_label == "class_00"
    via_runtime = run_query(index, models, spec, query, SearchOptions(k=3, exact=True), runtime="torch")
    assert np.allclose(via_runtime.vector, kept.vector, atol=1e-5)


def test_a_query_reads_its_stored_row_and_an_outside_one_is_described_as_indexing_does(tmp_path, image_folder,
                                                                                        monkeypatch):
    """An indexed, unchanged query searches with its stored row (no network pass); a copy outside the folder
    is described through the extraction path on the cache's runtime and gets the same vector (float16
    storage apart); a changed file is described again."""
    import shutil

    import engine.session as session
    from engine.search import SearchOptions
    from engine.session import FolderIndex, ModelCache, run_query
    from engine.vocabulary import ModelSpec

    root = image_folder(n_classes=2, per_class=3)
    spec = ModelSpec(weights="random", image_size=32, descriptor="gem")
    models = ModelCache(runtime="torch")
    index = FolderIndex(root, cache_dir=tmp_path / "cache")
    index.update(models, spec, descriptors=["gem"])
    query = root / "class_01" / "001.jpg"
    stored = index.stored_vector(spec, str(query))
    assert stored is not None and stored.shape == (index.collection(spec).dim,)
    described = []
    real = session.embed_images
    monkeypatch.setattr(session, "embed_images", lambda *a, **k: (described.append(1), real(*a, **k))[1])
    inside = run_query(index, models, spec, str(query), SearchOptions(k=3, exact=True), exclude_query=False)
    assert not described and np.array_equal(inside.vector, stored)
    outside = tmp_path / "copy.jpg"
    shutil.copyfile(query, outside)
    other = run_query(index, models, spec, str(outside), SearchOptions(k=3, exact=True))
    assert described == [1] and np.allclose(other.vector, stored, atol=2e-3)
    assert other.hits[0].path == str(query)
    query.write_bytes(outside.read_bytes() + b"\0")  # changed since it was indexed: no stored row
    assert index.stored_vector(spec, str(query)) is None
