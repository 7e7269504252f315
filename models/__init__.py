"""Networks, pooling and descriptor heads (torch only; never imports engine/ or Qt)."""

from models.backbones import (
    DEFAULT_BACKBONE,
    Backbone,
    WeightsUnavailableError,
    get_backbone,
    list_backbones,
    weights_available,
)
from models.descriptors import DescriptorModel, build_descriptor, list_descriptors
from models.pooling import (
    L2N,
    MAC,
    RMAC,
    GeM,
    SPoC,
    gem,
    l2n,
    mac,
    rmac,
    rmac_region_vectors,
    rmac_regions,
    spoc,
)
from models.whitening import PCAWhitening, WhiteningFileError

__all__ = [
    "DEFAULT_BACKBONE", "Backbone", "WeightsUnavailableError", "get_backbone", "list_backbones",
    "weights_available", "DescriptorModel", "build_descriptor", "list_descriptors", "gem", "l2n", "mac",
    "rmac", "rmac_region_vectors", "rmac_regions", "spoc", "GeM", "L2N", "MAC", "RMAC", "SPoC",
    "PCAWhitening", "WhiteningFileError",
]
