"""Pooling functions against brute-force loops, and the R-MAC grid against hand-computed regions."""

from __future__ import annotations

import math

import pytest
import torch

from models import pooling as P  # noqa: N812


def brute_pool(x, fn):
    B, C, H, W = x.shape  # noqa: N806
    out = torch.zeros(B, C, dtype=torch.float64)
    for b in range(B):
        for c in range(C):
            vals = [float(x[b, c, i, j]) for i in range(H) for j in range(W)]
            out[b, c] = fn(vals)
    return out


@pytest.fixture
def fmap():
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 4, 5, generator=g, dtype=torch.float64)


def test_spoc_mac_gem_equal_loops(fmap):
    assert torch.allclose(P.spoc(fmap), brute_pool(fmap, lambda v: sum(v) / len(v)))
    assert torch.allclose(P.mac(fmap), brute_pool(fmap, max))
    p = 3.0
    expected = brute_pool(fmap, lambda v: (sum(max(t, 1e-6) ** p for t in v) / len(v)) ** (1 / p))
    assert torch.allclose(P.gem(fmap, p), expected)


def test_gem_limits(fmap):
    assert torch.allclose(P.gem(fmap, 1.0), P.spoc(fmap.clamp(min=1e-6)))
    assert torch.allclose(P.gem(fmap, 200.0), P.mac(fmap), atol=0.03)


def test_l2n_unit_norm():
    x = torch.randn(5, 7)
    n = P.l2n(x).norm(dim=-1)
    assert torch.allclose(n, torch.ones(5), atol=1e-5)


def test_modules_wrap_functions(fmap):
    assert torch.equal(P.SPoC()(fmap), P.spoc(fmap))
    assert torch.equal(P.MAC()(fmap), P.mac(fmap))
    assert torch.allclose(P.GeM(p=2.0)(fmap), P.gem(fmap, 2.0))
    assert torch.allclose(P.RMAC(L=2)(fmap.float()), P.rmac(fmap.float(), 2))
    assert isinstance(P.GeM(learn_p=True).p, torch.nn.Parameter)


# Worked by hand with the rule in rmac_regions' docstring:
# side_l = floor(2 * short / (l + 1)); starts = floor(half + i * stride) - half, half = floor(side/2 - 1),
# stride = (extent - side) / (count - 1); extra regions on the long side make consecutive
# regions overlap by the share closest to 40%.
def test_rmac_regions_square_7x7():
    # l=1: side 7, one region; l=2: side 4, stride 3 -> starts 0, 3; l=3: side 3, stride 2 -> 0, 2, 4
    expected = [(0, 0, 7, 7)]
    expected += [(y, x, 4, 4) for y in (0, 3) for x in (0, 3)]
    expected += [(y, x, 3, 3) for y in (0, 2, 4) for x in (0, 2, 4)]
    assert P.rmac_regions(7, 7, 3, whole_map=False) == expected


def test_rmac_regions_wide_5x10():
    # short 5, long 10: with 3 regions at level 1 the stride is 2.5 -> overlap 1 - 2.5/5 = 0.5 (|0.1| from 0.4),
    # better than 2 regions (overlap 0) or 4 (0.67): extra = 2.
    # l=1: side 5, half 1, x: stride 2.5 -> floor(1, 3.5, 6) - 1 = 0, 2, 5 ; y: 0
    # l=2: side 3, half 0, x: 4 regions, stride 7/3 -> 0, 2, 4, 7 ; y: 2 regions, stride 2 -> 0, 2
    # l=3: side 2, half 0, x: 5 regions, stride 2 -> 0, 2, 4, 6, 8 ; y: 3 regions, stride 1.5 -> 0, 1, 3
    expected = [(0, x, 5, 5) for x in (0, 2, 5)]
    expected += [(y, x, 3, 3) for y in (0, 2) for x in (0, 2, 4, 7)]
    expected += [(y, x, 2, 2) for y in (0, 1, 3) for x in (0, 2, 4, 6, 8)]
    assert P.rmac_regions(5, 10, 3, whole_map=False) == expected


def test_rmac_regions_wide_5x9():
    # short 5, long 9: level-1 stride with 2 regions is 4 (overlap 1 - 4/5 = 0.2), with 3 regions 2
    # (overlap 0.6): both exactly 0.2 from 0.4. The tie goes to the fewer regions (extra = 1), as
    # cnnimageretrieval-pytorch's float32 argmin picks (the Matlab code's doubles round to 3).
    # l=1: side 5, half 1, x: 2 regions, stride 4 -> 0, 4 ; y: 0
    # l=2: side 3, half 0, x: 3 regions, stride 3 -> 0, 3, 6 ; y: 2 regions, stride 2 -> 0, 2
    # l=3: side 2, half 0, x: 4 regions, stride 7/3 -> 0, 2, 4, 7 ; y: 3 regions, stride 1.5 -> 0, 1, 3
    expected = [(0, 0, 5, 5), (0, 4, 5, 5)]
    expected += [(y, x, 3, 3) for y in (0, 2) for x in (0, 3, 6)]
    expected += [(y, x, 2, 2) for y in (0, 1, 3) for x in (0, 2, 4, 7)]
    assert P.rmac_regions(5, 9, 3, whole_map=False) == expected


def test_rmac_regions_tall_9x5():
    # the 5x9 case on its side: the extra regions go down the long (vertical) side
    expected = [(0, 0, 5, 5), (4, 0, 5, 5)]
    expected += [(y, x, 3, 3) for y in (0, 3, 6) for x in (0, 2)]
    expected += [(y, x, 2, 2) for y in (0, 2, 4, 7) for x in (0, 1, 3)]
    assert P.rmac_regions(9, 5, 3, whole_map=False) == expected


def test_rmac_regions_wide_7x10_levels_1_and_2():
    # short 7, long 10: 2 regions at level 1 (stride 3, overlap 4/7 = 0.57) beat 3 (stride 1.5, 0.79)
    # l=1: side 7, half 2, x: floor(2 + 0) - 2 = 0, floor(2 + 3) - 2 = 3
    # l=2: side 4, half 1, x: 3 regions, stride 3 -> 0, 3, 6 ; y: 2 regions, stride 3 -> 0, 3
    expected = [(0, 0, 7, 7), (0, 3, 7, 7)]
    expected += [(y, x, 4, 4) for y in (0, 3) for x in (0, 3, 6)]
    assert P.rmac_regions(7, 10, 2, whole_map=False) == expected


def test_rmac_regions_skip_levels_without_cells():
    # a 1x1 map: level 1 is the map, levels 2 and 3 would have side floor(2/3) = floor(2/4) = 0
    assert P.rmac_regions(1, 1, 3, whole_map=False) == [(0, 0, 1, 1)]
    with pytest.raises(ValueError, match="positive"):
        P.rmac_regions(0, 4)


def test_rmac_regions_tall_is_wide_transposed():
    wide = P.rmac_regions(5, 10, 3)
    tall = P.rmac_regions(10, 5, 3)
    assert sorted(tall) == sorted((x, y, w, h) for (y, x, h, w) in wide)


@pytest.mark.parametrize("H,W", [(1, 1), (3, 17), (17, 3), (7, 7), (12, 9), (30, 40)])
def test_rmac_regions_inside_map_and_square(H, W):  # noqa: N803
    regions = P.rmac_regions(H, W, 3, whole_map=False)
    assert regions
    for y, x, h, w in regions:
        assert h == w and h >= 1
        assert 0 <= y and y + h <= H and 0 <= x and x + w <= W
    assert P.rmac_regions(H, W, 3) == [(0, 0, H, W)] + regions  # the whole-map term comes first


def _published_rmac(x: torch.Tensor, L: int = 3, eps: float = 1e-6) -> torch.Tensor:  # noqa: N803
    """Tolias et al.'s R-MAC written out as cnnimageretrieval-pytorch's ``rmac`` computes it
    (cirtorch/layers/functional.py), then L2-normalised as its network does: the global MAC, l2n,
    plus every region's MAC, l2n. Independent of models.pooling's grid code."""
    ovr = 0.4
    steps = torch.tensor([2, 3, 4, 5, 6, 7], dtype=torch.float32)
    H, W = x.size(2), x.size(3)  # noqa: N806
    w = min(W, H)
    b = (max(H, W) - w) / (steps - 1)
    _, idx = torch.min(torch.abs(((w ** 2 - w * b) / w ** 2) - ovr), 0)
    Wd = idx.item() + 1 if H < W else 0  # noqa: N806
    Hd = idx.item() + 1 if H > W else 0  # noqa: N806
    v = x.amax(dim=(2, 3))
    v = v / (v.norm(dim=1, keepdim=True) + eps)
    for level in range(1, L + 1):
        wl = math.floor(2 * w / (level + 1))
        wl2 = math.floor(wl / 2 - 1)
        bw = 0 if level + Wd == 1 else (W - wl) / (level + Wd - 1)
        cen_w = [math.floor(wl2 + i * bw) - wl2 for i in range(level + Wd)]
        bh = 0 if level + Hd == 1 else (H - wl) / (level + Hd - 1)
        cen_h = [math.floor(wl2 + i * bh) - wl2 for i in range(level + Hd)]
        for i_ in cen_h:
            for j_ in cen_w:
                if wl == 0:
                    continue
                vt = x[:, :, i_:i_ + wl, j_:j_ + wl].amax(dim=(2, 3))
                v = v + vt / (vt.norm(dim=1, keepdim=True) + eps)
    return v / (v.norm(dim=1, keepdim=True) + eps)


@pytest.mark.parametrize("H,W", [(7, 7), (5, 10), (5, 9), (10, 5), (8, 11), (11, 11), (2, 2), (3, 17), (9, 12)])
def test_rmac_matches_the_published_formula(H, W):  # noqa: N803
    g = torch.Generator().manual_seed(H * 100 + W)
    x = torch.rand(3, 6, H, W, generator=g, dtype=torch.float64)
    assert torch.allclose(P.rmac(x, L=3), _published_rmac(x, L=3), atol=1e-9)
    # the grid alone (the old descriptor) is not it: the whole-map term changes the vector
    grid = P.l2n(P.l2n(P.rmac_region_vectors(x, 3, whole_map=False)).sum(dim=1))
    assert not torch.allclose(grid, _published_rmac(x, L=3), atol=1e-4)


def test_rmac_equals_loop():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 4, 5, 10, generator=g, dtype=torch.float64)
    out = P.rmac(x, L=3)
    for b in range(2):
        total = torch.zeros(4, dtype=torch.float64)
        for (y, xx, h, w) in P.rmac_regions(5, 10, 3):
            v = torch.tensor([max(float(x[b, c, i, j]) for i in range(y, y + h) for j in range(xx, xx + w))
                              for c in range(4)], dtype=torch.float64)
            total += v / (math.sqrt(float((v * v).sum())) + 1e-6)
        total /= math.sqrt(float((total * total).sum())) + 1e-6
        assert torch.allclose(out[b], total, atol=1e-9)


def test_rmac_with_whitening_equals_loop():
    """Per region: MAC -> l2n -> whiten -> l2n; then sum -> l2n (a stand-in linear whitening)."""
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 4, 6, 6, generator=g, dtype=torch.float64)
    A = torch.randn(3, 4, generator=g, dtype=torch.float64)  # noqa: N806
    m = torch.randn(4, generator=g, dtype=torch.float64)

    class Lin:
        def apply_torch(self, v):
            return (v - m) @ A.T

    out = P.rmac(x, L=2, whitening=Lin())
    total = torch.zeros(3, dtype=torch.float64)
    for (y, xx, h, w) in P.rmac_regions(6, 6, 2):
        v = torch.tensor([max(float(x[0, c, i, j]) for i in range(y, y + h) for j in range(xx, xx + w))
                          for c in range(4)], dtype=torch.float64)
        v = v / (v.norm() + 1e-6)
        wv = (v - m) @ A.T
        total += wv / (wv.norm() + 1e-6)
    assert out.shape == (1, 3)
    assert torch.allclose(out[0], total / (total.norm() + 1e-6), atol=1e-9)


def test_learnable_gem_p_gets_a_gradient():
    pool = P.GeM(p=3.0, learn_p=True)
    x = torch.rand(2, 3, 4, 4) + 0.1
    pool(x).sum().backward()
    assert pool.p.grad is not None and torch.isfinite(pool.p.grad)
