"""Global pooling of convolutional feature maps into image descriptors.

Pure functions on feature maps ``x`` of shape (B, C, H, W) returning (B, C), and one-line
``nn.Module`` wrappers. None of them normalise unless the name says so (``l2n``, ``rmac``).

- ``spoc``: sum-pooling of convolutions (Babenko & Lempitsky 2015), here the average.
- ``mac``: maximum activation of convolutions (global max).
- ``gem``: generalised mean, ((1/HW) sum x^p)^(1/p) (Radenović et al. 2018); p=1 is spoc, p->inf mac.
- ``rmac``: regional MAC (Tolias, Sicre & Jégou 2016) as published and as cnnimageretrieval-pytorch
  computes it: the MAC of the whole map plus the MAC of every square region of a multi-scale grid,
  each L2-normalised, optionally whitened and normalised again, summed, L2-normalised.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

Region = tuple[int, int, int, int]  # (y, x, h, w) in feature-map cells


class _Whitening(Protocol):  # models.whitening.PCAWhitening, or anything with this method
    def apply_torch(self, x: torch.Tensor) -> torch.Tensor: ...


def l2n(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x (..., D) divided by its L2 norm along the last axis (plus ``eps``)."""
    return x / (torch.linalg.vector_norm(x, dim=-1, keepdim=True) + eps)


def spoc(x: torch.Tensor) -> torch.Tensor:
    """Average pooling: (B, C, H, W) -> (B, C)."""
    return x.mean(dim=(-2, -1))


def mac(x: torch.Tensor) -> torch.Tensor:
    """Global max pooling: (B, C, H, W) -> (B, C)."""
    return x.amax(dim=(-2, -1))


def gem(x: torch.Tensor, p: float | torch.Tensor = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised-mean pooling: (B, C, H, W) -> (B, C); activations are clamped to >= eps."""
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


_OVERLAP = 0.4
_MAX_STEPS = 7


def _extra_regions(long: int, short: int) -> int:
    """How many extra regions the long side gets at the coarsest level (Tolias et al.).

    Chosen so that consecutive regions of side ``short`` overlap by the share closest to 40%.
    """
    if long == short:
        return 0
    best, best_err = 0, math.inf
    for steps in range(2, _MAX_STEPS + 1):
        stride = (long - short) / (steps - 1)
        err = abs((short * short - short * stride) / (short * short) - _OVERLAP)
        if err < best_err - 1e-12:  # the first of (numerically) equal errors wins
            best, best_err = steps - 1, err
    return best


def _starts(extent: int, side: int, count: int) -> list[int]:
    """``count`` start positions of windows of ``side`` cells spread evenly over ``extent`` cells."""
    if count == 1:
        return [0]
    half = math.floor(side / 2 - 1)
    stride = (extent - side) / (count - 1)
    return [math.floor(half + i * stride) - half for i in range(count)]


def rmac_regions(H: int, W: int, L: int = 3, whole_map: bool = True) -> list[Region]:  # noqa: N803
    """The R-MAC regions (y, x, h, w) of an H x W feature map: the whole map (``whole_map``, first),
    then the square regions of the grid over L levels.

    Level l (1..L) has regions of side floor(2 min(H, W) / (l + 1)); along the short side l of them,
    along the long side l + extra, where ``extra`` (the same at every level) makes consecutive
    regions of level 1 overlap by the share closest to 40% (2 to 7 regions tried; of exactly equal
    shares the fewer regions win, as cnnimageretrieval-pytorch's float32 arithmetic picks, e.g. for
    5x9). Level 1 of a square map is the whole map. A level whose side would be 0 cells (maps only
    1 or 2 cells high) is left out, as in the reference code. Every region lies inside the map.
    Ordered by level, then top to bottom, then left to right. The whole-map term is the global MAC
    that Tolias et al. and cnnimageretrieval-pytorch add to the regions (on a square map it repeats
    level 1, which the reference code counts twice too).
    """
    if H < 1 or W < 1 or L < 1:
        raise ValueError(f"rmac_regions needs a positive map size and level count, got {H}x{W}, L={L}")
    short = min(H, W)
    extra = _extra_regions(max(H, W), short)
    extra_w, extra_h = (extra, 0) if W > H else (0, extra)
    regions: list[Region] = [(0, 0, H, W)] if whole_map else []
    for level in range(1, L + 1):
        side = math.floor(2 * short / (level + 1))
        if side < 1:
            continue
        ys = _starts(H, side, level + extra_h)
        xs = _starts(W, side, level + extra_w)
        regions.extend((y, x, side, side) for y in ys for x in xs)
    return regions


def rmac_region_vectors(x: torch.Tensor, L: int = 3, whole_map: bool = True) -> torch.Tensor:  # noqa: N803
    """MAC of every R-MAC region (the whole map first), not normalised: (B, C, H, W) -> (B, R, C)."""
    H, W = x.shape[-2:]  # noqa: N806
    vecs = [x[..., y : y + h, xx : xx + w].amax(dim=(-2, -1))
            for (y, xx, h, w) in rmac_regions(H, W, L, whole_map)]
    return torch.stack(vecs, dim=1)


def rmac(x: torch.Tensor, L: int = 3, whitening: _Whitening | None = None, eps: float = 1e-6) -> torch.Tensor:  # noqa: N803
    """R-MAC: (B, C, H, W) -> (B, D), L2-normalised; D = C, or the whitening's output size.

    whole map + grid regions -> MAC -> l2n -> [whitening -> l2n] -> sum over regions -> l2n.
    """
    r = l2n(rmac_region_vectors(x, L), eps)
    if whitening is not None:
        r = l2n(whitening.apply_torch(r), eps)
    return l2n(r.sum(dim=1), eps)


class L2N(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2n(x)


class SPoC(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spoc(x)


class MAC(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mac(x)


class GeM(nn.Module):
    """GeM with a fixed exponent, or a learnable one (``learn_p=True``)."""

    def __init__(self, p: float = 3.0, learn_p: bool = False, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p))) if learn_p else float(p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gem(x, self.p, self.eps)


class RMAC(nn.Module):
    def __init__(self, L: int = 3, whitening: _Whitening | None = None) -> None:  # noqa: N803
        super().__init__()
        self.L = L
        self.whitening = whitening

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rmac(x, self.L, self.whitening)


def adaptive_avg(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 1, 1) average, as classifier heads expect."""
    return F.adaptive_avg_pool2d(x, 1)
