"""The engine's vocabulary, torch-free: what the commands, the window and the engine's modules name in common.

- the model specification :class:`ModelSpec` (what turns an image into a vector; building its torch model
  is :func:`engine.extraction.build_model`), the multi-scale sizes :func:`multi_scales` and the sizes
  label :func:`sizes_label`;
- the names of models/ (backbones, descriptors and their titles, checkpoint suffixes), re-exported from
  :mod:`models.names`;
- a search result :class:`SearchHit`;
- the cache root :func:`cache_root` (the one rule for ``$RETRIEVAL_EXPLORER_CACHE``) and the config folder
  :func:`config_root` (``$RETRIEVAL_EXPLORER_CONFIG``; it holds the installation's secret, engine.integrity);
- the duration format :func:`fmt_duration` and the device rule :func:`resolve_device`.

Importing this module imports neither torch nor Qt (the window and `search` start without torch).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.atomic import sha256_file
from models.names import (
    BACKBONES,
    CHECKPOINT_SUFFIXES,
    DEFAULT_BACKBONE,
    DESCRIPTOR_SHORT,
    DESCRIPTOR_TITLES,
    DESCRIPTORS,
    MAX_IMAGE_SIZE,
    MIN_IMAGE_SIZE,
    POOLING_DESCRIPTORS,
    check_scales,
    is_checkpoint_name,
    parse_scales,
    sizes_label,
)

__all__ = [
    "APP_NAME", "BACKBONES", "CACHE_ENV", "HOME_ENV", "CHECKPOINT_SUFFIXES", "DEFAULT_BACKBONE", "DEFAULT_DESCRIPTOR",
    "DEFAULT_IMAGE_SIZE", "DESCRIPTORS", "MAX_IMAGE_SIZE", "MIN_IMAGE_SIZE", "DESCRIPTOR_SHORT", "DESCRIPTOR_TITLES",
    "MULTI_SCALE_RATIOS", "POOLING_DESCRIPTORS", "CONFIG_ENV", "RUNTIMES", "ModelSpec", "SearchHit", "cache_root",
    "config_root", "check_scales", "data_home", "default_runtime", "file_sha256", "fmt_clock",
    "fmt_duration",
    "is_checkpoint_name", "multi_scales", "parse_scales", "resolve_device", "sizes_label",
]

APP_NAME = "retrieval-explorer"
#: the environment variable that moves the cache (collections, exported runtimes, thumbnails)
CACHE_ENV = "RETRIEVAL_EXPLORER_CACHE"
#: the environment variable that moves the config folder (the installation's secret, engine.integrity)
CONFIG_ENV = "RETRIEVAL_EXPLORER_CONFIG"
#: the environment variable that moves the user's data (trained models, saved concepts)
HOME_ENV = "RETRIEVAL_EXPLORER_HOME"
#: what runs the network on the CPU (engine.runtime): "auto" takes the fastest installed
RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
#: the descriptor of a plain backbone when none is asked for: GeM, the best measured at one size (cub100
#: R@1 0.877 against SPoC's 0.865, the same pass; docs/BENCHMARKS.md, issue 12); multi-scale buys more at a price
DEFAULT_DESCRIPTOR = "gem"


def cache_root() -> Path:
    """Where the program keeps its cache: $RETRIEVAL_EXPLORER_CACHE, else the platform's user cache folder
    for retrieval-explorer. Every command and the window use this one rule."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir(APP_NAME))


def config_root() -> Path:
    """Where the program keeps what belongs to this installation and user, not to a cache (the secret
    that authenticates the caches it writes): $RETRIEVAL_EXPLORER_CONFIG, else the platform's user config
    folder for retrieval-explorer ($XDG_CONFIG_HOME/retrieval-explorer on Linux). Kept apart from
    :func:`cache_root` on purpose: whoever can write or copy a cache in must not also hold the key."""
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME))


def data_home() -> Path:
    """Where the program keeps the user's own data (trained models, saved concepts): $RETRIEVAL_EXPLORER_HOME,
    else the platform's user data folder for retrieval-explorer. The one rule of engine.training.registry's
    models folder and engine.concepts' concepts folder."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME))


def default_runtime() -> str:
    """What runs the backbone on the CPU when nobody says (one of :data:`RUNTIMES`):
    $RETRIEVAL_EXPLORER_RUNTIME, else "auto"."""
    return os.environ.get("RETRIEVAL_EXPLORER_RUNTIME", "auto")


def fmt_clock(seconds: float) -> str:
    """'0:42', '12:05', '1:02:03': a clock-style duration, whole seconds (negative counts as 0)."""
    s = max(0, int(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def fmt_duration(seconds: float) -> str:
    """'1h 02m', '3m 05s', '12s' (negative counts as 0)."""
    s = max(0, int(round(seconds)))
    if s >= 3600:
        return f"{s // 3600}h {(s % 3600) // 60:02d}m"
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when a CUDA device is available, else 'cpu'; 'cuda[:N]' when none is available ->
    RuntimeError; any other name as given. Torch is imported only for 'auto' and CUDA names."""
    if name != "auto" and not name.startswith("cuda"):
        return name
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but no CUDA device is available (use --device cpu)")
    return name


# --- model identity ------------------------------------------------------------------------------
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file (cached per path, size and mtime within the process)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        _HASH_CACHE[key] = sha256_file(p)
    return _HASH_CACHE[key]


def _file_identity(value: str, what: str) -> str:
    p = Path(value).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{what} file not found: {value}")
    return "sha256:" + file_sha256(p)


#: the input size the window and the whitening wizard name when none is given (the backbones' default)
DEFAULT_IMAGE_SIZE = 224

#: multi-scale input sizes as ratios of the single size: 224 -> 224+288+352, the best measured on cub100
#: (GeM R@1 0.899 against 0.877 at 224 alone, at about a fifth of the speed; docs/BENCHMARKS.md)
MULTI_SCALE_RATIOS = (1.0, 288 / 224, 352 / 224)


def multi_scales(size: int) -> tuple[int, ...]:
    """The multi-scale input sizes made from the single size ``size`` (224 -> (224, 288, 352)): what the
    window's Sizes choice, the wizard and the evaluation alike use."""
    return tuple(int(round(size * r)) for r in MULTI_SCALE_RATIOS)


@dataclass(frozen=True)
class ModelSpec:
    """What turns an image into a vector. ``backbone``: a name from models.names.BACKBONES or a trained
    checkpoint file; ``weights``: 'pretrained', 'random' or a weights file; ``descriptor``: fc, spoc,
    rmac, mac, gem; ``image_size``: None = the backbone's default; ``whitening``: a saved
    PCAWhitening file or None; ``crop_fraction``: centre-crop share (1.0 = whole image); ``scales``:
    input sizes of a multi-scale descriptor (e.g. (224, 288, 352); None = one size, ``image_size``).
    Its torch model: :func:`engine.extraction.build_model`."""

    backbone: str = DEFAULT_BACKBONE
    weights: str = "pretrained"
    descriptor: str = DEFAULT_DESCRIPTOR
    image_size: int | None = None
    whitening: str | None = None
    crop_fraction: float = 1.0
    scales: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.scales is not None:
            scales = check_scales(self.scales)
            if self.image_size is not None:
                raise ValueError("give either image_size or scales, not both")
            object.__setattr__(self, "scales", scales if scales and len(scales) > 1 else None)
            if scales and len(scales) == 1:
                object.__setattr__(self, "image_size", scales[0])
        if self.image_size is not None and (not isinstance(self.image_size, int) or isinstance(self.image_size, bool)
                                            or not MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE):
            raise ValueError(f"image_size must be an integer in {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE} or None, got "
                             f"{self.image_size!r}")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must be in (0, 1], got {self.crop_fraction!r}")

    def identity(self) -> dict[str, Any]:
        """What a saved state must match: names, plus content hashes of every file involved."""
        backbone = self.backbone
        if backbone.endswith(".pt") or Path(backbone).expanduser().is_file():
            backbone = "checkpoint:" + _file_identity(backbone, "backbone checkpoint")
        weights = self.weights
        if weights not in ("pretrained", "random"):
            weights = _file_identity(weights, "weights")
        whitening = _file_identity(self.whitening, "whitening") if self.whitening else None
        ident = {"backbone": backbone, "weights": weights, "descriptor": self.descriptor,
                 "image_size": self.image_size, "whitening": whitening, "crop_fraction": float(self.crop_fraction)}
        if self.scales:  # only when set: single-size collections keep their key
            ident["scales"] = list(self.scales)
        return ident

    def sizes_title(self) -> str:
        """'224+288+352' for a multi-scale spec, else its one size ('default' when the backbone's)."""
        return sizes_label(self.scales) if self.scales else str(self.image_size or "default")

    def key(self) -> str:
        """A stable folder name: readable prefix + hash of :meth:`identity`."""
        ident = self.identity()
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
        name = Path(self.backbone).stem if ident["backbone"].startswith("checkpoint:") else self.backbone
        readable = re.sub(r"[^A-Za-z0-9_.+-]+", "_", f"{name}-{self.descriptor}-{self.sizes_title()}")
        return f"{readable}-{digest}"

    def backbone_identity(self) -> str:
        """A short stable name of what computes the feature maps (backbone and weights, by content):
        collections differing only in descriptor or whitening share it (and one exported runtime)."""
        ident = self.identity()
        raw = json.dumps({"backbone": ident["backbone"], "weights": ident["weights"]}, sort_keys=True)
        name = Path(self.backbone).stem if ident["backbone"].startswith("checkpoint:") else self.backbone
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] + "-" + hashlib.sha256(raw.encode()).hexdigest()[:16]

    def with_descriptor(self, descriptor: str) -> ModelSpec:
        """The same model seen through another descriptor (no whitening: it belongs to one descriptor)."""
        return dataclasses.replace(self, descriptor=descriptor,
                                   whitening=self.whitening if descriptor == self.descriptor else None)


@dataclass
class SearchHit:
    """One result: ``path`` absolute, ``relpath`` relative to the collection folder, ``rank`` from 1."""

    path: str
    relpath: str
    score: float
    rank: int
    label: str | None
