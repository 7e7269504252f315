"""Descriptor heads on a backbone: shapes, normalisation, whitening, registry errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import pooling
from models.descriptors import build_descriptor, list_descriptors
from models.registry import get_backbone
from models.whitening import PCAWhitening


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return get_backbone("resnet18", weights="random")


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 64, 96, generator=torch.Generator().manual_seed(0))


def test_every_kind_gives_unit_vectors(backbone, images):
    assert list_descriptors() == ["fc", "spoc", "rmac", "mac", "gem"]
    with torch.no_grad():
        for kind in list_descriptors():
            d = build_descriptor(kind, backbone)
            v = d(images)
            assert v.shape == (3, d.dim) and v.dtype == torch.float32
            assert torch.allclose(v.norm(dim=1), torch.ones(3), atol=1e-4)


def test_heads_match_pooling_functions(backbone, images):
    with torch.no_grad():
        f = backbone.forward_features(images)
        assert torch.allclose(build_descriptor("spoc", backbone).describe(f), pooling.l2n(pooling.spoc(f)))
        assert torch.allclose(build_descriptor("mac", backbone).describe(f), pooling.l2n(pooling.mac(f)))
        assert torch.allclose(build_descriptor("fc", backbone).describe(f),
                              pooling.l2n(backbone.forward_head(f)), atol=1e-6)
        assert torch.allclose(build_descriptor("rmac", backbone, rmac_levels=2).describe(f), pooling.rmac(f, 2))


def test_unknown_kind_names_the_choices(backbone):
    with pytest.raises(ValueError, match="fc, spoc, rmac, mac, gem"):
        build_descriptor("vlad", backbone)


def test_rmac_whitening_per_region_and_region_shares(backbone, images):
    with torch.no_grad():
        f = backbone.forward_features(images)
        regions = pooling.l2n(pooling.rmac_region_vectors(f)).reshape(-1, f.shape[1]).numpy()
    w = PCAWhitening.fit(np.concatenate([regions] * 3) + np.random.default_rng(0).normal(0, 1e-3, (len(regions) * 3, f.shape[1])), dim=16)
    d = build_descriptor("rmac", backbone, whitening=w)
    assert d.dim == 16
    with torch.no_grad():
        v = d.describe(f)
        assert v.shape == (3, 16)
        shares = d.region_contributions(f[:1], v[1])
    assert shares.shape == (1, len(d.region_boxes(tuple(f.shape[-2:]))))
    # the parts add up to the cosine score of the two final descriptors
    assert torch.allclose(shares.sum(), v[0] @ v[1], atol=1e-4)


def test_whitening_dimension_mismatch_is_refused(backbone):
    w = PCAWhitening.fit(np.random.default_rng(0).normal(size=(50, 8)))
    with pytest.raises(ValueError, match="expects 8-d"):
        build_descriptor("spoc", backbone, whitening=w)


def test_pooled_whitening_is_l2n_whiten_l2n(backbone, images):
    with torch.no_grad():
        f = backbone.forward_features(images)
    rng = np.random.default_rng(1)
    w = PCAWhitening.fit(rng.normal(size=(600, f.shape[1])), dim=8)
    for kind, pool in (("spoc", pooling.spoc), ("mac", pooling.mac), ("gem", lambda t: pooling.gem(t, 2.0))):
        d = build_descriptor(kind, backbone, whitening=w, gem_p=2.0)
        with torch.no_grad():
            got = d.describe(f)
        expected = pooling.l2n(torch.as_tensor(w.apply(pooling.l2n(pool(f)).numpy())))
        assert d.dim == 8 and got.shape == (3, 8)
        assert torch.allclose(got, expected, atol=1e-5)


def test_region_boxes_are_the_whole_map_and_the_grid_of_the_levels(backbone):
    d = build_descriptor("rmac", backbone, rmac_levels=2)
    assert d.region_boxes((5, 9)) == pooling.rmac_regions(5, 9, 2)
    assert d.region_boxes((7, 7)) == [(0, 0, 7, 7)] + pooling.rmac_regions(7, 7, 2, whole_map=False)
    assert len(d.region_boxes((7, 7))) == 1 + 1 + 4


def test_region_contributions_only_for_rmac(backbone):
    d = build_descriptor("mac", backbone)
    with pytest.raises(ValueError, match="rmac"):
        d.region_contributions(torch.rand(1, 512, 3, 3), torch.rand(512))


# --- multi-scale ----------------------------------------------------------------------------------
def test_multi_scale_is_the_normalised_sum_of_normalised_scales(backbone):
    from models.descriptors import resize_to

    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    scales = (64, 80, 96)
    for kind in ("spoc", "mac", "gem", "rmac"):
        d = build_descriptor(kind, backbone, scales=scales)
        single = build_descriptor(kind, backbone)
        with torch.no_grad():
            got = d(x)
            parts = [single(resize_to(x, s)) for s in scales]  # each L2-normalised
            expected = pooling.l2n(sum(parts))
            by_list = d([resize_to(x, s) for s in scales])
        assert got.shape == (2, backbone.feature_dim)
        assert torch.allclose(got, expected, atol=1e-5), kind
        assert torch.allclose(by_list, expected, atol=1e-5), kind
        assert not torch.allclose(got, parts[0], atol=1e-3), kind  # the other scales count


def test_multi_scale_whitening_applies_after_the_sum(backbone):
    rng = np.random.default_rng(4)
    w = PCAWhitening.fit_lw(rng.normal(size=(300, backbone.feature_dim)), np.repeat(np.arange(30), 10), dim=16)
    x = torch.rand(2, 3, 80, 80, generator=torch.Generator().manual_seed(5))
    d = build_descriptor("gem", backbone, whitening=w, scales=(64, 80))
    plain = build_descriptor("gem", backbone, scales=(64, 80))
    with torch.no_grad():
        got = d(x)
        expected = pooling.l2n(torch.as_tensor(w.apply(plain(x).numpy())))
    assert got.shape == (2, 16) and torch.allclose(got, expected, atol=1e-5)
    assert d.label == "GeM @ 64+80 + Lw"


def test_scales_are_checked_and_parsed():
    from models.descriptors import check_scales, parse_scales

    assert parse_scales("352, 224,288") == (224, 288, 352)
    assert check_scales(None) is None
    for bad in ("224,x", "8,224", ""):
        with pytest.raises(ValueError, match="224,288,352"):
            parse_scales(bad)
