"""Trained embedding models: backbone -> pooling -> linear head -> L2 normalisation.

A checkpoint written by ``engine.training`` holds the whole config and the model's weights;
:func:`load_trained_backbone` rebuilds it as a ``Backbone`` whose ``forward_head(fmap)`` returns
the trained embedding, so a checkpoint path works as a backbone name everywhere.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
from torch import nn

from models import pooling as P  # noqa: N812
from models.backbones import Backbone, build_named_backbone, describe_load_error, safe_load_refusal
from models.names import BACKBONES, MAX_EMBEDDING_DIM, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, is_checkpoint_name

CHECKPOINT_FORMAT = "retrieval-explorer/trained-embedding"
CHECKPOINT_VERSION = 1


# --- pooling ---------------------------------------------------------------------------------
#: embeddings' L2 normalisation: the one torch l2n (models.pooling.l2n, x / (|x| + eps)) with eps 1e-12, so
#: that rows come out unit length even for tiny activations (an untrained head's), where the 1e-6 of pooled
#: descriptors would shorten them
l2n = functools.partial(P.l2n, eps=1e-12)


def _pool_fn(kind: str):
    fns = {"mac": P.mac, "spoc": P.spoc, "gem": P.gem}
    if kind not in fns:
        raise ValueError(f"unknown pooling {kind!r}: use one of {sorted(fns)}")
    return fns[kind]


# --- backbones ---------------------------------------------------------------------------------
def build_backbone(name: str, weights: str = "pretrained", device: str | torch.device = "cpu") -> Backbone:
    """The registered backbone a trained model's config names (models.backbones): a Backbone in eval mode.
    A trained model is always built on a registered backbone, never on another checkpoint."""
    return build_named_backbone(name, weights=weights, device=str(device))


# --- the head and the whole model ------------------------------------------------------------------
class EmbeddingHead(nn.Module):
    """Linear map of a pooled feature (B, C) to an embedding (B, D), L2-normalised.

    With D == C the weight starts as the identity (the untrained head IS the pooled descriptor);
    otherwise it starts as a random orthogonal projection.
    """

    def __init__(self, in_dim: int, out_dim: int = 0) -> None:
        super().__init__()
        out_dim = out_dim or in_dim
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        self.fc = nn.Linear(in_dim, out_dim)
        with torch.no_grad():
            if out_dim == in_dim:
                self.fc.weight.copy_(torch.eye(in_dim))
            else:
                nn.init.orthogonal_(self.fc.weight)
            self.fc.bias.zero_()

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return l2n(self.fc(pooled))


class EmbeddingModel(nn.Module):
    """backbone (Backbone contract) + pooling + EmbeddingHead. forward(x (B,3,H,W)) -> (B, D) unit rows."""

    def __init__(self, backbone: nn.Module, pooling: str = "mac", embedding_dim: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self._pool = _pool_fn(pooling)
        self.head = EmbeddingHead(int(backbone.feature_dim), embedding_dim)

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, C) in float32."""
        return self._pool(fmap.float())

    def embed_fmap(self, fmap: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, D)."""
        return self.head(self.pool(fmap))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_fmap(self.backbone.forward_features(x))


def freeze_batchnorm(module: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode (running statistics frozen; affine weights still train)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


# --- a trained checkpoint as a Backbone ----------------------------------------------------------
class TrainedBackbone(Backbone):
    """The Backbone contract around an EmbeddingModel: forward_head(fmap) is the trained embedding."""

    def __init__(self, model: EmbeddingModel, path: str, config: dict, metrics: dict | None = None) -> None:
        nn.Module.__init__(self)
        self.model = model
        base = model.backbone
        self.name = str(path)
        self.feature_dim = int(base.feature_dim)
        self.fc_dim = int(model.head.out_dim)
        self.mean = tuple(base.mean)
        self.std = tuple(base.std)
        self.default_image_size = int(config.get("image_size") or getattr(base, "default_image_size", 224))
        self.config = dict(config)
        self.metrics = dict(metrics or {})

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, h, w)."""
        return self.model.backbone.forward_features(x)

    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, D): the trained embedding (unit rows)."""
        return self.model.embed_fmap(fmap)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def activation_layers(self) -> dict[str, nn.Module]:
        return self.model.backbone.activation_layers()

    def feature_units(self) -> list:
        return self.model.backbone.feature_units()


def build_model_from_config(config: dict, device: str | torch.device = "cpu",
                            weights: str | None = None) -> EmbeddingModel:
    """The untrained EmbeddingModel a config describes (``weights`` overrides config['weights'])."""
    backbone = build_backbone(config.get("backbone", "efficientnet_lite0"),
                              weights or config.get("weights", "pretrained"), device)
    return EmbeddingModel(backbone, config.get("pooling", "mac"), int(config.get("embedding_dim", 0))).to(device)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load a training checkpoint safely (no code runs); refuse damaged or foreign files clearly."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no trained model at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # never pass on torch's advice to load with weights_only=False
        refusal = safe_load_refusal(exc)
        if refusal is not None:
            raise ValueError(f"{path} is refused: {refusal}") from None
        raise ValueError(f"{path} is not a readable trained-model checkpoint (damaged or foreign): "
                         f"{describe_load_error(exc)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a Retrieval Explorer trained-model checkpoint")
    if int(ckpt.get("version", -1)) > CHECKPOINT_VERSION:
        raise ValueError(f"{path} was written by a newer version (format {ckpt.get('version')})")
    for key in ("config", "model"):
        if key not in ckpt:
            raise ValueError(f"{path} is incomplete: it has no '{key}'")
    check_config(ckpt["config"], path)
    return ckpt


#: the poolings a trained model's head may use
POOLINGS = ("mac", "spoc", "gem")


def check_config(config: object, path: str | os.PathLike = "the checkpoint") -> None:
    """Refuse a checkpoint config that would build something absurd, before anything is built or allocated:
    the backbone must be a registered one (never a checkpoint, which could name itself), the pooling one
    of :data:`POOLINGS`, the embedding size in 0..MAX_EMBEDDING_DIM and the input size in
    MIN_IMAGE_SIZE..MAX_IMAGE_SIZE. ValueError naming the file, the value and the fix."""
    fix = "the file is damaged or was not written by this program: use another checkpoint, or train the model again"

    def refuse(why: str) -> ValueError:
        return ValueError(f"{path} is refused: {why}; {fix}")

    if not isinstance(config, dict):
        raise refuse(f"its config is a {type(config).__name__}, not a mapping")
    backbone = config.get("backbone", "efficientnet_lite0")
    if not isinstance(backbone, str) or backbone not in BACKBONES:
        what = ("another trained checkpoint" if isinstance(backbone, str) and is_checkpoint_name(backbone)
                else repr(backbone)[:80])
        raise refuse(f"its config names {what} as its backbone; a trained model is built on one of "
                     f"{', '.join(BACKBONES)}")
    pooling = config.get("pooling", "mac")
    if pooling not in POOLINGS:
        raise refuse(f"its pooling {str(pooling)[:40]!r} is none of {', '.join(POOLINGS)}")
    for key, lo, hi, default in (("embedding_dim", 0, MAX_EMBEDDING_DIM, 0),
                                 ("image_size", MIN_IMAGE_SIZE, MAX_IMAGE_SIZE, None)):
        value = config.get(key, default)
        if value is None and default is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise refuse(f"its {key} is {str(value)[:40]}, outside {lo}..{hi}")


def load_trained_backbone(path: str | os.PathLike, device: str | torch.device = "cpu") -> TrainedBackbone:
    """Rebuild backbone + pooling + embedding head from a checkpoint; eval mode, on ``device``."""
    ckpt = read_checkpoint(path)
    config = ckpt["config"]
    # every weight is in the checkpoint: build with random weights (no download, no weight file needed)
    model = build_model_from_config(config, "cpu", weights="random")
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: the weights do not fit the model its config describes: {exc}") from exc
    tb = TrainedBackbone(model, str(path), config, ckpt.get("metrics"))
    return tb.to(device).eval()
