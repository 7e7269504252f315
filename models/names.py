"""The names of models/, known without importing torch: backbones, descriptors and their titles, checkpoint
suffixes, input sizes. The registries (models.registry, models.descriptors) use these; engine.vocabulary
re-exports them for the engine and the window (which must know them before torch is loaded)."""

from __future__ import annotations

from collections.abc import Sequence

#: the registered backbones, the default first (models.registry builds them)
DEFAULT_BACKBONE = "efficientnet_lite0"
BACKBONES = (DEFAULT_BACKBONE, "resnet18", "resnet50", "vgg16", "mobilenet_v2")
#: a backbone name ending with one of these is a trained model's checkpoint file (models.embedding)
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")

#: the descriptor kinds (models.descriptors): the FC output, and four poolings of the last conv map
DESCRIPTORS = ("fc", "spoc", "rmac", "mac", "gem")
#: the descriptors that pool the backbone's feature map (the untrained baselines of training)
POOLING_DESCRIPTORS = ("spoc", "mac", "gem", "rmac")
#: a descriptor's title in menus
DESCRIPTOR_TITLES = {"fc": "FC", "spoc": "conv-average (SPoC)", "rmac": "R-MAC", "mac": "MAC (global max)",
                     "gem": "GeM"}
#: its short title in tables, reports and progress messages
DESCRIPTOR_SHORT = {"fc": "FC", "spoc": "SPoC", "rmac": "R-MAC", "mac": "MAC", "gem": "GeM"}


#: the input sizes a model may be asked for, in pixels: 16 up to 2,048 (a 2,048-px input already costs
#: resnet50 about a gigabyte of activations; larger sizes are refused, never tried)
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 2048
#: the largest trained embedding (the training options' own bound)
MAX_EMBEDDING_DIM = 8192


def is_checkpoint_name(backbone: str) -> bool:
    """True when ``backbone`` names a trained model's checkpoint file (by its suffix)."""
    return str(backbone).lower().endswith(CHECKPOINT_SUFFIXES)


def check_scales(scales: Sequence[int] | None) -> tuple[int, ...] | None:
    """``scales`` as a tuple of distinct input sizes >= 16 in increasing order (None stays None);
    ValueError otherwise."""
    if scales is None:
        return None
    try:
        out = tuple(sorted({int(s) for s in scales}))
    except (TypeError, ValueError):
        raise ValueError(f"scales must be input sizes in pixels, e.g. 224,288,352; got {scales!r}") from None
    if not out or any(s < MIN_IMAGE_SIZE for s in out) or any(isinstance(s, bool) for s in scales):
        raise ValueError(f"scales must be input sizes of at least {MIN_IMAGE_SIZE} pixels, e.g. 224,288,352; "
                         f"got {scales!r}")
    if out[-1] > MAX_IMAGE_SIZE:
        raise ValueError(f"scales must be input sizes of at most {MAX_IMAGE_SIZE} pixels, e.g. 224,288,352; "
                         f"got {scales!r}")
    return out


def parse_scales(text: str) -> tuple[int, ...]:
    """'224,288,352' -> (224, 288, 352) (ValueError with an example otherwise)."""
    try:
        values = [int(t) for t in str(text).replace(" ", "").split(",") if t]
    except ValueError:
        raise ValueError(f"scales must be comma-separated input sizes, e.g. 224,288,352; got {text!r}") from None
    return check_scales(values)  # type: ignore[return-value]


def sizes_label(sizes: Sequence[int]) -> str:
    """Input sizes as one label: (224, 288, 352) -> '224+288+352'; (224,) -> '224'."""
    return "+".join(str(int(s)) for s in sizes)
