"""Networks, pooling and descriptor heads (torch only; never imports engine/ or Qt).

Importing the package itself loads nothing heavy (models.names is torch-free); the names below are
resolved from their modules at first use."""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "DEFAULT_BACKBONE": "models.names", "list_backbones": "models.registry", "get_backbone": "models.registry",
    "weights_available": "models.registry", "Backbone": "models.backbones",
    "WeightsUnavailableError": "models.backbones", "DescriptorModel": "models.descriptors",
    "build_descriptor": "models.descriptors", "list_descriptors": "models.descriptors",
    "PCAWhitening": "models.whitening", "WhiteningFileError": "models.whitening",
    **{n: "models.pooling" for n in ("L2N", "MAC", "RMAC", "GeM", "SPoC", "gem", "l2n", "mac", "rmac",
                                     "rmac_region_vectors", "rmac_regions", "spoc")},
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
