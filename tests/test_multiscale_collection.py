"""Multi-scale descriptors and learned whitening through collections (ModelSpec.scales, identity)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from whitening_helpers import learn_whitening  # tests/ is on sys.path under pytest

from engine.collection import Collection, update_collections
from engine.extraction import build_model, extract_descriptors
from engine.images import scan_images
from engine.search import SearchOptions
from engine.vocabulary import ModelSpec
from engine.whitening import save_whitening


def test_scales_are_part_of_the_identity_and_single_size_keys_do_not_move():
    plain = ModelSpec(backbone="resnet18", weights="random", descriptor="gem", image_size=224)
    assert "scales" not in plain.identity()  # collections made before scales existed keep their key
    multi = ModelSpec(backbone="resnet18", weights="random", descriptor="gem", scales=(352, 224, 288))
    assert multi.scales == (224, 288, 352) and multi.identity()["scales"] == [224, 288, 352]
    assert multi.key() != plain.key() and "224+288+352" in multi.key()
    one = ModelSpec(backbone="resnet18", weights="random", descriptor="gem", scales=(224,))
    assert one.scales is None and one.key() == plain.key()
    with pytest.raises(ValueError, match="either image_size or scales"):
        ModelSpec(image_size=224, scales=(224, 288))
    with pytest.raises(ValueError, match="224,288,352"):
        ModelSpec(scales=(8, 224))


def test_a_multi_scale_whitened_collection_searches_like_its_model(image_folder, tmp_path):
    root = image_folder(n_classes=3, per_class=4, size=48)
    files = scan_images(root)
    torch.manual_seed(0)
    base = ModelSpec(backbone="resnet18", weights="random", descriptor="gem", scales=(32, 48))
    w = learn_whitening("gem", build_model(base).backbone, files, image_size=base.scales, method="lw",
                        labels=[p.parent.name for p in files], shrinkage=0.3, dim=8)
    save_whitening(w, tmp_path / "lw.npz")
    spec = ModelSpec(backbone="resnet18", weights="random", descriptor="gem", scales=(32, 48),
                     whitening=str(tmp_path / "lw.npz"))
    model = build_model(spec)
    assert model.scales == (32, 48) and model.dim == 8
    col = Collection.open(root, model_spec=spec, cache_dir=tmp_path / "cache", index="exact")
    (report,) = update_collections([(col, model)], batch_size=5)
    assert report.total == 12 and col.dim == 8
    again = Collection.open(root, model_spec=spec, cache_dir=tmp_path / "cache", index="exact")
    assert len(again) == 12
    q = extract_descriptors(model, [files[0]], batch_size=1)  # (random weights: the same model object)
    hits = again.search(q.vectors[0], SearchOptions(k=12, exact=True))
    own = [h for h in hits if h.path == str(files[0])]
    assert own and own[0].score == pytest.approx(1.0, abs=2e-3)  # the query image finds itself
    stored = again.vectors[again.relpaths.index(files[0].relative_to(root).as_posix())]
    assert np.allclose(stored, q.vectors[0], atol=2e-3)  # float16 storage
