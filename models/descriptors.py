"""Descriptor heads: a backbone's feature map -> one L2-normalised vector per image.

- ``fc``: the backbone's fully connected output (ImageNet logits, or a trained embedding).
- ``spoc``: conv-average (SPoC) of the last conv map.
- ``rmac``: R-MAC, optionally with PCA-whitening of the regional vectors (Tolias et al.).
- ``mac``, ``gem``: global max and generalised mean.
For every kind but rmac a whitening, when given, is applied to the pooled vector.
"""

from __future__ import annotations

import torch
from torch import nn

from models import pooling
from models.backbones import Backbone
from models.whitening import PCAWhitening

_KINDS = ("fc", "spoc", "rmac", "mac", "gem")
LABELS = {"fc": "FC", "spoc": "conv-average (SPoC)", "rmac": "R-MAC", "mac": "MAC", "gem": "GeM"}


def list_descriptors() -> list[str]:
    """The descriptor kinds: fc, spoc, rmac, mac, gem."""
    return list(_KINDS)


class DescriptorModel(nn.Module):
    """backbone + head; ``forward(x: (B, 3, H, W)) -> (B, dim)`` L2-normalised float32."""

    def __init__(self, backbone: Backbone, kind: str, whitening: PCAWhitening | None = None,
                 rmac_levels: int = 3, gem_p: float = 3.0) -> None:
        super().__init__()
        if kind not in _KINDS:
            raise ValueError(f"unknown descriptor {kind!r}: choose one of {', '.join(_KINDS)}")
        if kind == "fc" and not backbone.fc_dim:
            raise ValueError(f"backbone {backbone.name} has no FC layer")
        in_dim = backbone.fc_dim if kind == "fc" else backbone.feature_dim
        if whitening is not None and whitening.in_dim != in_dim:
            raise ValueError(f"whitening expects {whitening.in_dim}-d vectors, the {kind} descriptor of "
                             f"{backbone.name} gives {in_dim}-d")
        self.backbone = backbone
        self.kind = kind
        self.whitening = whitening
        self.rmac_levels = rmac_levels
        self.gem_p = gem_p
        self.dim = int(whitening.out_dim if whitening is not None else in_dim)

    @property
    def label(self) -> str:
        return LABELS[self.kind] + (" + PCA-w" if self.whitening is not None else "")

    def describe(self, fmap: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) feature map -> (B, dim) descriptor."""
        fmap = fmap.float()
        if self.kind == "rmac":
            return pooling.rmac(fmap, self.rmac_levels, self.whitening)
        if self.kind == "fc":
            v = self.backbone.forward_head(fmap)
        elif self.kind == "spoc":
            v = pooling.spoc(fmap)
        elif self.kind == "mac":
            v = pooling.mac(fmap)
        else:
            v = pooling.gem(fmap, self.gem_p)
        v = v.float()
        if self.whitening is not None:
            v = self.whitening.apply_torch(pooling.l2n(v))
        return pooling.l2n(v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.describe(self.backbone.forward_features(x))

    def region_boxes(self, fmap_hw: tuple[int, int]) -> list[pooling.Region]:
        """The R-MAC regions (y, x, h, w) in feature-map cells for a map of size ``fmap_hw``: the whole
        map first, then the grid."""
        return pooling.rmac_regions(fmap_hw[0], fmap_hw[1], self.rmac_levels)

    def region_contributions(self, fmap: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """Each R-MAC region's part of the score against ``other`` (D,): (B, R).

        ``fmap`` (B, C, h, w) is the query's feature map, ``other`` the other image's final
        (L2-normalised) descriptor. With the query's regional vectors r_i (L2-normalised, whitened
        and normalised again when the model whitens): score = sum_i (r_i . other) / |sum_i r_i|,
        so region i contributes (r_i . other) / |sum_i r_i|; the parts add up to the cosine score.
        Regions in the order of :meth:`region_boxes`. Only for the rmac kind (ValueError otherwise).
        """
        if self.kind != "rmac":
            raise ValueError(f"region contributions exist for the rmac descriptor only, not {self.kind}")
        r = pooling.l2n(pooling.rmac_region_vectors(fmap.float(), self.rmac_levels))
        if self.whitening is not None:
            r = pooling.l2n(self.whitening.apply_torch(r))
        total = r.sum(dim=1)  # (B, D)
        norm = torch.linalg.vector_norm(total, dim=-1, keepdim=True).clamp_min(1e-12)
        return (r @ other.float().reshape(-1, 1)).squeeze(-1) / norm


def build_descriptor(name: str, backbone: Backbone, *, whitening: PCAWhitening | None = None,
                     rmac_levels: int = 3, gem_p: float = 3.0) -> DescriptorModel:
    """A :class:`DescriptorModel` of kind ``name`` on ``backbone`` (ValueError names the valid kinds)."""
    model = DescriptorModel(backbone, name, whitening, rmac_levels, gem_p)
    param = next(backbone.parameters(), None)
    return model.to(param.device) if param is not None else model
