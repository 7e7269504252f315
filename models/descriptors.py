"""Descriptor heads: a backbone's feature map -> one L2-normalised vector per image.

- ``fc``: the backbone's fully connected output (ImageNet logits, or a trained embedding).
- ``spoc``: conv-average (SPoC) of the last conv map.
- ``rmac``: R-MAC, optionally with PCA-whitening of the regional vectors (Tolias et al.).
- ``mac``, ``gem``: global max and generalised mean.
For every kind but rmac a whitening, when given, is applied to the pooled vector.

Multi-scale (``scales``, e.g. (224, 288, 352)): the image is resized to every size, each size's
descriptor is pooled and L2-normalised, the vectors are summed and L2-normalised, then whitened (for
rmac every region is whitened inside each scale, as R-MAC does).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from models import pooling
from models.backbones import Backbone
from models.names import (
    DESCRIPTOR_TITLES,
    DESCRIPTORS,
    check_scales,
    parse_scales,  # noqa: F401 - re-exported: the scales parser beside the heads
    sizes_label,
)
from models.whitening import PCAWhitening


def list_descriptors() -> list[str]:
    """The descriptor kinds: fc, spoc, rmac, mac, gem."""
    return list(DESCRIPTORS)


def resize_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, size, size), bilinear with antialiasing (as PIL's resize)."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class DescriptorModel(nn.Module):
    """backbone + head; ``forward(x: (B, 3, H, W)) -> (B, dim)`` L2-normalised float32."""

    def __init__(self, backbone: Backbone, kind: str, whitening: PCAWhitening | None = None,
                 rmac_levels: int = 3, gem_p: float = 3.0, scales: Sequence[int] | None = None) -> None:
        super().__init__()
        if kind not in DESCRIPTORS:
            raise ValueError(f"unknown descriptor {kind!r}: choose one of {', '.join(DESCRIPTORS)}")
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
        self.scales = check_scales(scales)
        self.dim = int(whitening.out_dim if whitening is not None else in_dim)

    @property
    def label(self) -> str:
        w = self.whitening
        scales = f" @ {sizes_label(self.scales)}" if self.scales and len(self.scales) > 1 else ""
        tag = "" if w is None else " + Lw" if getattr(w, "method", "pca") == "lw" else " + PCA-w"
        return DESCRIPTOR_TITLES[self.kind] + scales + tag

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, C) pooled and L2-normalised, not whitened (rmac: whitened per region
        when the model whitens, as R-MAC is)."""
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
        return pooling.l2n(v.float())

    def finish(self, v: torch.Tensor) -> torch.Tensor:
        """(B, C) L2-normalised pooled vector -> (B, dim): whitened (all kinds but rmac) and normalised."""
        if self.whitening is not None and self.kind != "rmac":
            v = self.whitening.apply_torch(v)
        return pooling.l2n(v)

    def describe(self, fmap: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) feature map -> (B, dim) descriptor (one scale)."""
        return self.finish(self.pool(fmap))

    def describe_scales(self, fmaps: Sequence[torch.Tensor]) -> torch.Tensor:
        """The feature maps of one batch at every scale [(B, C, h_s, w_s)] -> (B, dim): each scale
        pooled and L2-normalised, summed, normalised, then whitened and normalised."""
        if not fmaps:
            raise ValueError("describe_scales needs the feature map of at least one scale")
        total = self.pool(fmaps[0])
        for f in fmaps[1:]:
            total = total + self.pool(f)
        return self.finish(pooling.l2n(total))

    def forward(self, x: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, 3, S, S) -> (B, dim); multi-scale: a list of (B, 3, S_s, S_s), one per scale, or one
        tensor resized to every scale here."""
        if not self.scales or len(self.scales) == 1:
            if isinstance(x, (list, tuple)):
                (x,) = x
            return self.describe(self.backbone.forward_features(x))
        xs = list(x) if isinstance(x, (list, tuple)) else [resize_to(x, s) for s in self.scales]
        if len(xs) != len(self.scales):
            raise ValueError(f"{len(xs)} input sizes for a model of {len(self.scales)} scales {self.scales}")
        return self.describe_scales([self.backbone.forward_features(t) for t in xs])

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
                     rmac_levels: int = 3, gem_p: float = 3.0,
                     scales: Sequence[int] | None = None) -> DescriptorModel:
    """A :class:`DescriptorModel` of kind ``name`` on ``backbone`` (ValueError names the valid kinds);
    ``scales``: input sizes of a multi-scale descriptor (None: one, the extraction's image size)."""
    model = DescriptorModel(backbone, name, whitening, rmac_levels, gem_p, scales)
    param = next(backbone.parameters(), None)
    return model.to(param.device) if param is not None else model
