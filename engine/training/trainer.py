"""One training run (``engine.training.launch.train`` starts it): P x K batches, triplet/contrastive loss with optional Cross-Batch Memory, in three modes.

- ``head``: backbone frozen; the pooled features of every image (and of a few augmented views) are
  computed ONCE and cached on disk (keyed by model + data); only the embedding head trains.
- ``tail``: the last ``tail_units`` feature units (efficientnet_lite0: the last blocks and the head
  conv), pooling and head train; the maps entering them are computed once per view and cached
  (float16), so a step runs only the tail: on two CPU cores 4-20x the images/s of ``full``.
- ``full``: the whole network trains (BatchNorm statistics frozen by default, backbone lr apart);
  images are decoded once into a uint8 tensor on the device and augmented there with tensor ops;
  bf16 autocast and channels_last on CUDA.

Validation (``target``): "same" holds back a share of each class's images (image-disjoint), "new" whole
classes (class-disjoint). The validation metric ``select_metric`` (mAP by default) chooses the kept
checkpoint ``best.pt``; every validation message names it, and the run's untrained descriptors (SPoC,
MAC, GeM, R-MAC) are measured on the same validation images for comparison.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.atomic import atomic_write_with
from engine.callbacks import Cancelled
from engine.evaluation import retrieval_metrics_torch as retrieval_metrics
from engine.training import data as D
from engine.training.checkpoint import load_checkpoint, save_checkpoint, write_info
from engine.training.config import TrainConfig
from engine.training.losses import build_loss
from engine.training.registry import BEST_FILE, INFO_FILE, LAST_FILE, cache_dir, models_dir, write_run_state
from engine.training.sampler import PKSampler
from engine.training.xbm import CrossBatchMemory, XBMLoss
from engine.vocabulary import DESCRIPTOR_SHORT, POOLING_DESCRIPTORS, fmt_duration, resolve_device
from models import pooling as P  # noqa: N812
from models.embedding import EmbeddingModel, build_model_from_config, freeze_batchnorm, l2n

log = logging.getLogger(__name__)


SELECT_LABELS = {"map": "mAP", "recall@1": "R@1"}
#: the untrained descriptors measured on the validation data, in the order of untrained_descriptors()
UNTRAINED = POOLING_DESCRIPTORS


@dataclass
class TrainEvent:
    """``kind``: "phase" (a preparation step: ``iteration``/``total`` count its images, with its own
    rate and ETA; ``message`` names it), "iteration", "validation" (``metrics``, ``val_score`` = the
    selection metric ``select_metric``), "untrained" (``metrics``: {descriptor: validation metrics},
    ``message`` the best of them), "checkpoint", "message" or "done" (``best_iteration``: best.pt's)."""

    kind: str
    iteration: int
    total: int
    loss: float | None = None
    loss_batch: float | None = None
    loss_memory: float | None = None
    memory_fill: int = 0
    memory_size: int = 0
    triplets_batch: int = 0
    triplets_memory: int = 0
    images_per_s: float = 0.0
    eta_s: float = 0.0
    val_recall1: float | None = None
    message: str = ""
    val_score: float | None = None       # validation: the selection metric's value
    select_metric: str = ""
    best_iteration: int = -1             # validation: the kept checkpoint's iteration after this one
    metrics: dict = field(default_factory=dict)


@dataclass
class TrainResult:
    checkpoint_path: str
    best_checkpoint_path: str
    config: TrainConfig
    history: list[dict] = field(default_factory=list)
    val_metrics: dict = field(default_factory=dict)            # the last validation (what last.pt scores)
    baseline_val_metrics: dict = field(default_factory=dict)   # untrained descriptor (config.pooling) on val
    cancelled: bool = False
    stopped_reason: str = ""
    select_metric: str = "map"                                 # what chose best.pt
    best_iteration: int = 0                                    # best.pt's iteration
    best_val_metrics: dict = field(default_factory=dict)       # what best.pt scores on the validation data
    last_iteration: int = 0                                    # last.pt's iteration
    untrained_val_metrics: dict = field(default_factory=dict)  # {spoc|mac|gem|rmac: validation metrics}
    validation: str = ""                                       # how the validation data was chosen, in words

    @property
    def best_untrained(self) -> str:
        """The untrained descriptor with the best validation score on the selection metric ('' if none)."""
        m = {k: v.get(self.select_metric) for k, v in self.untrained_val_metrics.items()}
        m = {k: v for k, v in m.items() if v is not None}
        return max(m, key=lambda k: m[k]) if m else ""


# --------------------------------------------------------------------------------------------------
# the two data paths
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def untrained_descriptors(fmap: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, 4, C): the L2-normalised SPoC, MAC, GeM (p=3) and R-MAC of a feature map."""
    f = fmap.float()
    return torch.stack([l2n(P.spoc(f)), l2n(P.mac(f)), l2n(P.gem(f)), l2n(P.rmac(f))], 1)


class _HeadData:
    """Cached pooled features (N, V, C) of every image; a batch picks one random view per sample.
    ``untrained``: (N, 4, C) untrained descriptors of view 0 (see :func:`untrained_descriptors`)."""

    def __init__(self, feats: torch.Tensor, device: torch.device, untrained: torch.Tensor | None = None) -> None:
        self.feats = feats.to(device)
        self.untrained = untrained

    def embed_train(self, model: EmbeddingModel, idx: torch.Tensor, gen: torch.Generator,
                    local: slice | None = None) -> torch.Tensor:
        """(B,) sample indices -> (B, D) embeddings; ``local``: embed only these rows of the batch (a
        data-parallel rank's share; the random draws are those of the whole batch)."""
        views = D.to_device(torch.randint(self.feats.shape[1], (idx.numel(),), generator=gen), self.feats.device)
        if local is not None:
            idx, views = idx[local], views[local]
        return model.head(self.feats[idx, views])

    @torch.no_grad()
    def embed_eval(self, model: EmbeddingModel, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings, untrained pooled descriptors) of view 0."""
        f = self.feats[idx.to(self.feats.device), 0]
        return model.head(f), l2n(f)

    def untrained_eval(self, model: EmbeddingModel, idx: torch.Tensor) -> torch.Tensor | None:
        """(n, 4, C) untrained descriptors of view 0 (None when the cache has none)."""
        return None if self.untrained is None else self.untrained[idx.cpu()].float()


def _cuda_bf16(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """fn(x); on CUDA in channels_last under bf16 autocast."""
    if x.device.type != "cuda":
        return fn(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        return fn(x.contiguous(memory_format=torch.channels_last))


class _TailData:
    """Cached trunk maps (N, V, C', h', w') float16; a batch picks one random view per sample and runs
    the last ``tail`` units, pooling and head on it."""

    def __init__(self, maps: torch.Tensor, device: torch.device, tail: int) -> None:
        self.maps = maps.to(device)
        self.tail = tail

    def _fmap(self, model: EmbeddingModel, z: torch.Tensor) -> torch.Tensor:
        return _cuda_bf16(lambda t: model.backbone.forward_tail(t, self.tail), z.float())

    def embed_train(self, model: EmbeddingModel, idx: torch.Tensor, gen: torch.Generator,
                    local: slice | None = None) -> torch.Tensor:
        """As :meth:`_HeadData.embed_train`."""
        views = D.to_device(torch.randint(self.maps.shape[1], (idx.numel(),), generator=gen), self.maps.device)
        if local is not None:
            idx, views = idx[local], views[local]
        return model.embed_fmap(self._fmap(model, self.maps[idx, views]))

    @torch.no_grad()
    def embed_eval(self, model: EmbeddingModel, idx: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings, pooled descriptors of the current tail) of view 0."""
        model.eval()
        embs, pooled = [], []
        idx = idx.to(self.maps.device)
        for s in range(0, idx.numel(), batch):
            p = model.pool(self._fmap(model, self.maps[idx[s:s + batch], 0]))
            embs.append(model.head(p))
            pooled.append(l2n(p))
        return torch.cat(embs), torch.cat(pooled)

    @torch.no_grad()
    def untrained_eval(self, model: EmbeddingModel, idx: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """(n, 4, C) untrained descriptors of view 0 (call before training: the tail must be untrained)."""
        model.eval()
        idx = idx.to(self.maps.device)
        return torch.cat([untrained_descriptors(self._fmap(model, self.maps[idx[s:s + batch], 0])).cpu()
                          for s in range(0, idx.numel(), batch)])


class _FullData:
    """uint8 images (N, 3, S, S) on the device; batches augmented with one grid_sample."""

    def __init__(self, images: torch.Tensor, device: torch.device, image_size: int, mean, std) -> None:
        self.images = images.to(device)
        self.size = image_size
        self.mean, self.std = D.channel_stats(mean, std, device)

    def _fmap(self, model: EmbeddingModel, x: torch.Tensor) -> torch.Tensor:
        """Normalised (B, 3, S, S) -> the backbone's (B, C, h, w); on CUDA channels_last under bf16 autocast."""
        return _cuda_bf16(model.backbone.forward_features, x)

    def _forward(self, model: EmbeddingModel, x: torch.Tensor) -> torch.Tensor:
        return model.embed_fmap(self._fmap(model, D.normalize(x, self.mean, self.std)))

    def embed_train(self, model: EmbeddingModel, idx: torch.Tensor, gen: torch.Generator,
                    local: slice | None = None) -> torch.Tensor:
        """As :meth:`_HeadData.embed_train`."""
        theta = D.crop_params(idx.numel(), gen)
        if local is not None:
            idx, theta = idx[local], theta[local]
        x = D.augment(self.images[idx], self.size, theta)
        return self._forward(model, x)

    @torch.no_grad()
    def embed_eval(self, model: EmbeddingModel, idx: torch.Tensor, batch: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
        model.eval()
        embs, pooled = [], []
        for s in range(0, idx.numel(), batch):
            x = D.normalize(D.resize_batch(self.images[idx[s:s + batch].to(self.images.device)], self.size),
                            self.mean, self.std)
            p = model.pool(self._fmap(model, x))
            embs.append(model.head(p))
            pooled.append(l2n(p))
        return torch.cat(embs), torch.cat(pooled)

    @torch.no_grad()
    def untrained_eval(self, model: EmbeddingModel, idx: torch.Tensor, batch: int = 128) -> torch.Tensor:
        """(n, 4, C) untrained descriptors (call before training: the backbone must be untrained)."""
        model.eval()
        out = []
        for s in range(0, idx.numel(), batch):
            x = D.normalize(D.resize_batch(self.images[idx[s:s + batch].to(self.images.device)], self.size),
                            self.mean, self.std)
            out.append(untrained_descriptors(self._fmap(model, x)).cpu())
        return torch.cat(out)


# measured on cub100 (EfficientNet-Lite0, fp32, 224 px, batch 128): 13.1 GB peak, of which ~0.9 GB
# the process and 0.6 GB the decoded images: about 90 MB of activations per image of the batch
_CPU_BYTES_PER_IMAGE_224 = 90e6


def available_memory_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (Linux), else None (unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_cpu_memory(config: TrainConfig, n_images: int) -> None:
    """Refuse full fine-tuning on the CPU that would not fit in memory (the out-of-memory killer would
    end the whole application, window included); the message says what to change."""
    avail = available_memory_bytes()
    if avail is None:
        return
    batch = config.classes_per_batch * config.samples_per_class
    size = int(round(config.image_size * 8 / 7))
    need = batch * _CPU_BYTES_PER_IMAGE_224 * (config.image_size / 224) ** 2 + n_images * 3 * size * size
    if need > avail:
        raise ValueError(
            f"full fine-tuning on the CPU with batches of {batch} images at {config.image_size} px needs about "
            f"{need / 1e9:.1f} GB of memory, and {avail / 1e9:.1f} GB are available: lower P x K (classes and "
            f"samples per batch), the image size, or train the head only")


def _file_key(paths: list[str]) -> list:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append([p, st.st_size, int(st.st_mtime)])
        except OSError:
            out.append([p, -1, -1])
    return out


@torch.no_grad()
def compute_pooled_features(model: EmbeddingModel, paths: list[str], *, image_size: int, views: int, seed: int,
                            device: torch.device, threads: int = 2, batch: int = 32,
                            progress=None, should_stop=None,
                            encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
                            untrained: list[torch.Tensor] | None = None,
                            features: Callable[[torch.Tensor], torch.Tensor] | None = None,
                            ) -> tuple[torch.Tensor, list[int], list]:
    """Pooled backbone features (N_ok, V, C) float32 on CPU: view 0 the whole image, 1 its mirror,
    >= 2 random resized crops (seeded). Returns (features, indices of readable paths, skipped).
    ``encode``: normalised (B, 3, S, S) -> what to keep per view instead (e.g. trunk maps).
    ``untrained`` (pooled features only): a list that receives, per batch, the (B, 4, C)
    :func:`untrained_descriptors` of view 0, from the same forward pass. ``features``: what computes the
    feature map of (B, 3, S, S) (an engine.runtime runner, as indexing uses; default the backbone in torch)."""
    backbone = model.backbone
    run = features or backbone.forward_features
    if untrained is not None and encode is not None:
        raise ValueError("untrained descriptors come with pooled features only")
    if encode is None:
        def encode(x: torch.Tensor) -> torch.Tensor:
            fmap = run(x)
            if untrained is not None and keep0[0]:
                untrained.append(untrained_descriptors(fmap).cpu())
            return model.pool(fmap)
    keep0 = [False]
    mean, std = backbone.mean, backbone.std
    big = int(round(image_size * 8 / 7)) if views > 2 else image_size
    gen = torch.Generator().manual_seed(int(seed) + 104729)
    feats, ok_all, skipped = [], [], []
    for s in range(0, len(paths), batch):
        if should_stop is not None and should_stop():
            raise Cancelled("feature caching cancelled")
        imgs, ok, sk = _decode_chunk(paths[s:s + batch], big, threads)
        skipped += sk
        if imgs is None:
            continue
        ok_all += [s + i for i in ok]
        imgs = imgs.to(device)
        base = D.resize_batch(imgs, image_size)
        xs = [base, base.flip(-1)][:views]
        for _ in range(2, views):
            xs.append(D.augment(imgs, image_size, D.crop_params(imgs.shape[0], gen)))
        per_view = []
        for v, x in enumerate(xs):
            keep0[0] = v == 0
            per_view.append(_cuda_bf16(encode, D.normalize(x, mean, std)).cpu())
        feats.append(torch.stack(per_view, 1))
        if progress is not None:
            progress(min(len(paths), s + batch), len(paths), "computing backbone features (once)")
    if not feats:
        raise ValueError("none of the training images could be read")
    return torch.cat(feats), ok_all, skipped


def _decode_chunk(paths: list[str], size: int, threads: int):
    try:
        imgs, ok, skipped = D.decode_all(paths, size, threads=threads)
    except ValueError:  # none readable in this chunk
        return None, [], [(p, "unreadable") for p in paths]
    return imgs, ok, skipped

# --------------------------------------------------------------------------------------------------
# which images train and which validate
# --------------------------------------------------------------------------------------------------
@dataclass
class ValidationSplit:
    """The images of a run and which of them validate (``is_val[i]`` for ``images.paths[i]``)."""

    images: D.LabelledImages
    is_val: list[bool]
    description: str                                          # how validation was chosen, in words
    no_val_classes: list[str] = field(default_factory=list)   # target "same": classes too small to validate

    def _classes(self, val: bool) -> list[str]:
        have = {lab for lab, v in zip(self.images.labels, self.is_val, strict=True) if v == val}
        return [c for i, c in enumerate(self.images.classes) if i in have]

    @property
    def train_classes(self) -> list[str]:
        return self._classes(False)

    @property
    def val_classes(self) -> list[str]:
        return self._classes(True)

    @property
    def n_val(self) -> int:
        return sum(self.is_val)

    @property
    def n_train(self) -> int:
        return len(self.is_val) - self.n_val


def validation_split(config: TrainConfig) -> ValidationSplit:
    """The images ``config`` trains on and validates on: its ``image_split`` file when given, else its
    ``target``'s carve ("same": a share of every class's images, "new": whole classes). Raises
    FileNotFoundError / ValueError with a message meant for the user."""
    if config.image_split:
        return _listed_split(config)
    imgs = D.scan_labelled(config.data_root, config.train_classes)
    if config.target == "new":
        train_cls, val_cls = D.split_classes(imgs.classes, config.val_class_share, config.seed)
        vs = set(val_cls)
        is_val = [imgs.classes[lab] in vs for lab in imgs.labels]
        n_val = sum(is_val)
        return ValidationSplit(imgs, is_val, (
            f"Target: new categories. Validation: {len(val_cls)} whole classes ({n_val} images) held back "
            f"(class-disjoint); training: {len(train_cls)} classes ({len(is_val) - n_val} images)."))
    _, val_idx = D.split_images(imgs.labels, config.val_image_share, config.seed)
    vs = set(val_idx)
    is_val = [i in vs for i in range(len(imgs.paths))]
    with_val = {imgs.labels[i] for i in val_idx}
    none = [c for i, c in enumerate(imgs.classes) if i not in with_val]
    text = (f"Target: the same categories. Validation: {len(val_idx)} images held back from {len(with_val)} "
            f"classes ({config.val_image_share:.0%} of each class's images, at least 2; never trained on); "
            f"training: {len(imgs.paths) - len(val_idx)} images of {len(imgs.classes)} classes.")
    if none and val_idx:
        text += (f" {len(none)} class(es) with fewer than 4 images are not validated: "
                 + ", ".join(none[:5]) + (" …" if len(none) > 5 else "") + ".")
    return ValidationSplit(imgs, is_val, text, none)


def _listed_split(config: TrainConfig) -> ValidationSplit:
    """``config.image_split``: JSON {"train": [...], "val": [...]} of paths relative to ``data_root``;
    label = the parent folder's name, or the path's entry in an optional "labels" mapping {path: label}
    (engine.concepts.training_split: one class per saved concept); other keys (e.g. "query",
    "retrieval") are ignored."""
    path = Path(config.image_split)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FileNotFoundError(f"cannot read the image split {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ValueError(f"{path.name} is not valid JSON: {exc}") from exc
    lists = [d.get(k) if isinstance(d, dict) else None for k in ("train", "val")]
    if not all(isinstance(v, list) and all(isinstance(p, str) for p in v) for v in lists):
        raise ValueError(f"{path.name}: expected a JSON object with lists 'train' and 'val' of image paths")
    train, val = lists
    both = set(train) & set(val)
    if both:
        raise ValueError(f"{path.name}: {len(both)} image(s) listed for training and validation, e.g. {min(both)}")
    root = Path(config.data_root)
    rows = [(rel, False) for rel in train] + [(rel, True) for rel in val]
    missing = [rel for rel, _ in rows if not (root / rel).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) of {path.name} are not under {root}, e.g. {missing[0]}")
    named = d.get("labels")
    if named is not None:
        if not isinstance(named, dict) or not all(isinstance(v, str) and v for v in named.values()):
            raise ValueError(f"{path.name}: 'labels' must map image paths to class names")
        unnamed = [rel for rel, _ in rows if rel not in named]
        if unnamed:
            raise ValueError(f"{path.name}: {len(unnamed)} image(s) have no entry in 'labels', e.g. {unnamed[0]}")
        label = [named[rel] for rel, _ in rows]
    else:
        label = [Path(rel).parent.name for rel, _ in rows]
    if config.train_classes is not None:
        keep = set(config.train_classes)
        rows, label = [r for r, c in zip(rows, label, strict=True) if c in keep], [c for c in label if c in keep]
    if not any(not v for _, v in rows):
        raise ValueError(f"{path.name} lists no training image" + (" of the chosen classes" if
                                                                    config.train_classes is not None else ""))
    classes = sorted(set(label))
    num = {c: i for i, c in enumerate(classes)}
    imgs = D.LabelledImages([str(root / rel) for rel, _ in rows], [num[c] for c in label], classes)
    is_val = [v for _, v in rows]
    n_val = sum(is_val)
    n_vc = len({lab for lab, v in zip(imgs.labels, is_val, strict=True) if v})
    return ValidationSplit(imgs, is_val, (
        f"Validation: the {n_val} images of {n_vc} classes listed as 'val' in {path.name}; training: the "
        f"{len(is_val) - n_val} listed as 'train' ({len(classes)} classes)."))


# --------------------------------------------------------------------------------------------------
# run folders and progress
# --------------------------------------------------------------------------------------------------
def _claim(folder: Path, config: TrainConfig) -> bool:
    """Make ``folder`` this run's: True when it held no run and its info.json stub was created here
    (exclusive create: of two runs claiming at once, one wins)."""
    if any((folder / f).exists() for f in (LAST_FILE, BEST_FILE)):
        return False
    stub = {"name": config.name, "status": "started", "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "data_root": config.data_root, "config": config.to_dict(), "metrics": {}}
    try:
        with open(folder / INFO_FILE, "x", encoding="utf-8") as f:
            json.dump(stub, f, indent=1, default=str)
    except FileExistsError:
        return False
    return True


def claim_run_folder(config: TrainConfig) -> Path:
    """Create and claim the folder of a new run: ``config.out_dir`` when given (refused when it already
    holds a run), else ``<models dir>/<name>``, with '-2', '-3', ... added when that exists. Sets
    ``config.name`` / ``config.out_dir`` to what was claimed."""
    if config.out_dir:
        out = Path(config.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if not _claim(out, config):
            raise ValueError(f"{out} already holds a training run: choose another output folder, or continue "
                             f"that run with --resume {out / LAST_FILE}")
        return out
    parent = models_dir()
    parent.mkdir(parents=True, exist_ok=True)
    base = config.name
    for n in range(1, 10_000):
        name = base if n == 1 else f"{base}-{n}"
        out = parent / name
        try:
            out.mkdir()
        except FileExistsError:
            continue
        config.name, config.out_dir = name, str(out)
        if _claim(out, config):
            return out
    raise RuntimeError(f"no free run folder for {base} under {parent}")


class _Phase:
    """A preparation phase's progress on its own clock: "phase" events with its rate and ETA, and the
    progress callback with them in the message."""

    def __init__(self, name: str, emit: Callable[[TrainEvent], None], progress: Callable[[int, int, str], None]
                 ) -> None:
        self.name, self.emit, self.progress = name, emit, progress
        self.t0 = time.perf_counter()

    def __call__(self, done: int, total: int, message: str = "") -> None:
        dt = time.perf_counter() - self.t0
        rate = done / dt if dt > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else 0.0
        self.emit(TrainEvent("phase", done, total, images_per_s=rate, eta_s=eta, message=self.name))
        self.progress(done, total, f"{self.name}: {done}/{total} images, {rate:.1f} images/s, "
                                   f"{fmt_duration(eta)} left")


def _fmt_metrics(m: dict, sel: str) -> str:
    """'mAP 0.6123 (selection metric), R@1 0.9010'; the selection metric first."""
    keys = [sel] + [k for k in ("map", "recall@1") if k != sel]
    return ", ".join(f"{SELECT_LABELS[k]} {m[k]:.4f}" + (" (selection metric)" if k == sel else "")
                     for k in keys if m.get(k) is not None)


@dataclass
class _Pending:
    """A step's figures, still on the device until :meth:`_Run.flush` reads them."""

    iteration: int
    batch_size: int
    with_memory: bool
    figures: torch.Tensor   # (6,): loss, batch loss, memory loss, batch tuples, memory tuples, memory fill


class _Run:
    """One training run, in the order :func:`train` calls its steps: settings (``__init__``), data and
    model (:meth:`prepare_data`), run folder (:meth:`open_folder`), loss, memory and optimizer
    (:meth:`build_optimisation`), iteration 0 (:meth:`validate_untrained`) or a resumed state
    (:meth:`restore`), the loop (:meth:`loop`: :meth:`step`, :meth:`flush`, :meth:`validation_point`),
    and the result (:meth:`finish`)."""

    def __init__(self, config: TrainConfig, progress: Callable[[int, int, str], None],
                 should_stop: Callable[[], bool], emit: Callable[[TrainEvent], None],
                 resume_from: str | os.PathLike | None) -> None:
        self.progress, self.should_stop, self.emit = progress, should_stop, emit
        self.resume_from = resume_from
        self.ckpt: dict | None = None
        if resume_from is not None:
            self.ckpt = load_checkpoint(resume_from)
            if "train_state" not in self.ckpt:
                raise ValueError(f"{resume_from} holds a model but no training state: resume from a last.pt")
            # runs from before targets were class-disjoint
            old = TrainConfig.from_dict({"target": "new"} | self.ckpt["config"])
            old.iterations, old.device = config.iterations, config.device
            old.out_dir = str(Path(resume_from).parent)
            config = old
        problems = config.validate()
        if problems:
            raise ValueError("invalid training settings: " + "; ".join(problems))
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.device = torch.device(resolve_device(config.device))
        if not config.name:
            config.name = config.default_name()
        self.config = config
        self.sel, self.sel_label = config.select_metric, SELECT_LABELS[config.select_metric]
        # the run's state: what a checkpoint keeps and a resume restores
        self.history: list[dict] = []
        self.start = 0
        self.best: dict = {self.sel: -1.0, "iteration": 0}
        self.best_metrics: dict = {}
        self.bad_vals = 0
        self.baseline: dict = {}
        self.untrained_val: dict = {}
        self.val_metrics: dict = {}
        self.val_time = [0.0, 0]   # seconds spent validating, validations timed

    def message(self, text: str, it: int = 0) -> None:
        log.info(text)
        self.emit(TrainEvent("message", it, self.config.iterations, message=text))

    # ---- 1. data, validation split, model, sampler
    def prepare_data(self) -> None:
        config, device = self.config, self.device
        self.split = split = validation_split(config)
        allimgs = split.images
        self.message(f"{len(allimgs.paths)} images in {len(allimgs.classes)} classes. {split.description}")
        torch.manual_seed(config.seed)   # seeded, so random weights are reproducible
        self.model = model = build_model_from_config(config.to_dict(), device)
        threads = max(1, config.num_threads or torch.get_num_threads())
        if config.mode in ("head", "tail"):
            feats, ok, skipped, untrained = _cached_features(model, allimgs, config, device, threads, self.progress,
                                                             self.should_stop, self.message, self.emit)
            self.source: _HeadData | _TailData | _FullData = (
                _HeadData(feats, device, untrained) if config.mode == "head"
                else _TailData(feats, device, config.tail_units))
        else:
            size = int(round(config.image_size * 8 / 7))
            if device.type == "cpu" and not config.extra.get("skip_memory_check"):
                check_cpu_memory(config, len(allimgs.paths))
            self.message(f"Phase: decoding {len(allimgs.paths)} images once ({size}x{size} uint8 on {device})")
            imgs, ok, skipped = D.decode_all(allimgs.paths, size, threads=threads, should_stop=self.should_stop,
                                             progress=_Phase("decoding images", self.emit, self.progress))
            self.source = _FullData(imgs, device, config.image_size, model.backbone.mean, model.backbone.std)
        if skipped:
            self.message(f"{len(skipped)} unreadable image(s) skipped, e.g. {skipped[0][0]}: {skipped[0][1]}")
        names = allimgs.classes
        self.labels_t = labels_t = torch.tensor([allimgs.labels[i] for i in ok], dtype=torch.long)
        is_val = torch.tensor([split.is_val[i] for i in ok], dtype=torch.bool)
        self.train_idx = train_idx = (~is_val).nonzero().squeeze(1)
        self.val_idx = val_idx = is_val.nonzero().squeeze(1)
        self.train_cls = [names[c] for c in sorted(set(labels_t[train_idx].tolist()))]
        self.val_cls = [names[c] for c in sorted(set(labels_t[val_idx].tolist()))]
        # the sampler sees only training samples; ids are positions in train_idx (0..n_train-1)
        self.train_labels = labels_t[train_idx]
        self.sampler = PKSampler(self.train_labels.tolist(), config.classes_per_batch, config.samples_per_class,
                                 config.seed)
        if self.sampler.excluded_classes:
            self.message(f"{len(self.sampler.excluded_classes)} class(es) with fewer than 2 images left out: "
                         + ", ".join(names[c] for c in self.sampler.excluded_classes[:10]))
        self.n_train = int(train_idx.numel())

    # ---- 2. the run's own folder (claimed only now: a run refused above leaves nothing behind)
    def open_folder(self) -> None:
        config = self.config
        if self.ckpt is None:
            wanted = config.out_dir or str(models_dir() / config.name)
            out = claim_run_folder(config)
            if str(out) != wanted:
                self.message(f"{wanted} holds another run: this run writes to {out}")
        else:
            out = Path(config.out_dir)
        self.out = out
        self.last_path, self.best_path = out / LAST_FILE, out / BEST_FILE
        self.message(f"run folder: {out}")

    # ---- 3. loss, memory, optimizer
    def build_optimisation(self) -> None:
        config, model, device = self.config, self.model, self.device
        loss_fn = build_loss(config.loss, config.margin, config.mining)
        self.memory = None
        if config.memory:
            mem_size = max(self.sampler.batch_size, int(round(config.memory_share * self.sampler.num_samples)))
            self.memory = CrossBatchMemory(mem_size, model.head.out_dim, self.n_train, device)
        self.xbm = XBMLoss(loss_fn, self.memory, config.memory_weight, config.warmup_iters)
        if config.mode == "head":
            model.backbone.requires_grad_(False)
            groups = [{"params": model.head.parameters(), "lr": config.lr_head}]
        elif config.mode == "tail":
            model.backbone.requires_grad_(False)
            tail = [p for m in model.backbone.tail_modules(config.tail_units) for p in m.parameters()]
            for p in tail:
                p.requires_grad_(True)
            groups = [{"params": model.head.parameters(), "lr": config.lr_head},
                      {"params": tail, "lr": config.lr_backbone}]
        else:
            groups = [{"params": model.head.parameters(), "lr": config.lr_head},
                      {"params": [p for p in model.backbone.parameters() if p.requires_grad],
                       "lr": config.lr_backbone}]
        self.opt = torch.optim.AdamW(groups, weight_decay=config.weight_decay, fused=device.type == "cuda")
        if config.mode == "full" and config.extra.get("compile"):
            model.backbone.forward_features = torch.compile(model.backbone.forward_features)
        self.aug_gen = torch.Generator().manual_seed(config.seed + 1)

    def set_train_mode(self) -> None:
        if self.config.mode == "head":
            self.model.eval()
        else:
            self.model.train()
            if self.config.freeze_bn:
                freeze_batchnorm(self.model.backbone)

    # ---- validation and checkpoints
    def validate(self) -> tuple[dict, dict]:
        """(metrics of the embedding, of the pooled descriptor it starts from) on the validation images."""
        if self.val_idx.numel() < 2:
            return {}, {}
        t = time.perf_counter()
        emb, pooled = self.source.embed_eval(self.model, self.val_idx)
        self.set_train_mode()  # eval() for validation must not leave BatchNorm un-frozen afterwards
        vl = self.labels_t[self.val_idx]
        out = retrieval_metrics(emb, vl), retrieval_metrics(pooled, vl)
        self.val_time[0] += time.perf_counter() - t
        self.val_time[1] += 1
        return out

    def payload(self, it: int, with_state: bool, val: dict) -> dict:
        p = {"config": self.config.to_dict(), "model": self.model.state_dict(),
             "metrics": {"val": val, "baseline_val": self.baseline, "untrained_val": self.untrained_val,
                         "select_metric": self.sel, "iteration": it, "best_val": dict(self.best)},
             "classes": {"train": self.train_cls, "val": self.val_cls}}
        if with_state:
            device = self.device
            p.update({"optimizer": self.opt.state_dict(), "sampler": self.sampler.state_dict(),
                      "memory": self.memory.state_dict() if self.memory is not None else None,
                      "history": self.history,
                      "train_state": {"iteration": it, "aug_rng": self.aug_gen.get_state(),
                                      "torch_rng": torch.get_rng_state(),
                                      "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                                      "best": self.best, "bad_vals": self.bad_vals}})
        return p

    def save_last(self, it: int) -> None:
        save_checkpoint(self.last_path, self.payload(it, True, self.val_metrics))
        self.last_saved = it
        self.save_state("running", it)
        self.emit(TrainEvent("checkpoint", it, self.config.iterations, message=str(self.last_path)))

    def save_best(self, it: int) -> None:
        save_checkpoint(self.best_path, self.payload(it, False, self.best_metrics))
        write_info(self.out, self.config.name, self.config.data_root, self.config.to_dict(),
                   {"val": self.best_metrics, "baseline_val": self.baseline, "untrained_val": self.untrained_val,
                    "select_metric": self.sel, "iteration": it})

    def after_validation(self, it: int, m: dict) -> bool:
        """Record a validation, say what it means for the kept checkpoint; True when early stopping says stop."""
        sel = self.sel
        self.val_metrics = m
        score = m.get(sel)
        improved = score is None or score > self.best.get(sel, -1.0)
        if improved:
            self.best = {sel: -1.0 if score is None else score, "iteration": it}
            self.best_metrics = dict(m)
            self.bad_vals = 0
        else:
            self.bad_vals += 1
        if score is None:
            text = "no validation images: best.pt follows the latest checkpoint"
        else:
            text = f"validation {_fmt_metrics(m, sel)}" + (
                " -> best so far: saved as best.pt" if improved else
                f"; best.pt stays at iteration {self.best['iteration']} ({self.sel_label} {self.best[sel]:.4f})")
        log.info("[it %d] %s", it, text)
        self.emit(TrainEvent("validation", it, self.config.iterations, val_recall1=m.get("recall@1"), message=text,
                             val_score=score, select_metric=sel, best_iteration=self.best["iteration"],
                             metrics=dict(m)))
        self.history.append({"iteration": it, "val": dict(m)})
        if improved:
            self.save_best(it)
        return self.config.patience > 0 and self.bad_vals >= self.config.patience

    # ---- 4a. a fresh run: the untrained descriptors and the untrained model are iteration 0
    def validate_untrained(self) -> None:
        config, sel = self.config, self.sel
        self.set_train_mode()
        if self.val_idx.numel() >= 2:
            u = self.source.untrained_eval(self.model, self.val_idx)
            self.set_train_mode()
            if u is not None:
                vl = self.labels_t[self.val_idx]
                self.untrained_val = {k: retrieval_metrics(u[:, j], vl) for j, k in enumerate(UNTRAINED)}
        m, self.baseline = self.validate()
        untrained_val = self.untrained_val
        if untrained_val:
            ranked = sorted(untrained_val, key=lambda k: -untrained_val[k][sel])
            self.message("untrained descriptors on the validation data: " + "; ".join(
                f"{DESCRIPTOR_SHORT[k]} {_fmt_metrics(untrained_val[k], sel).replace(' (selection metric)', '')}"
                for k in ranked) + f" (best: {DESCRIPTOR_SHORT[ranked[0]]}; training starts from "
                f"{DESCRIPTOR_SHORT[config.pooling]})")
            self.emit(TrainEvent("untrained", 0, config.iterations, select_metric=sel, metrics=dict(untrained_val),
                                 val_score=untrained_val[ranked[0]][sel], message=ranked[0]))
        elif self.baseline:
            self.message(f"untrained descriptor ({config.pooling}) on the validation data: "
                         f"R@1 {self.baseline['recall@1']:.4f}")
        self.message(f"the checkpoint kept as best.pt is the one with the best validation {self.sel_label} "
                     f"(select_metric={sel}); iteration 0 is the untrained model")
        self.after_validation(0, m)
        self.save_last(0)

    # ---- 4b. a resumed run: everything last.pt saved
    def restore(self) -> None:
        ckpt, device = self.ckpt, self.device
        st = ckpt["train_state"]
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sampler.load_state_dict(ckpt["sampler"])
        self.aug_gen.set_state(st["aug_rng"])
        torch.set_rng_state(st["torch_rng"])
        if device.type == "cuda" and st.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(st["cuda_rng"], device)
        if self.memory is not None and ckpt.get("memory") is not None:
            self.memory.load_state_dict(ckpt["memory"])
        self.history = list(ckpt.get("history", []))
        self.start = int(st["iteration"])
        self.best, self.bad_vals = dict(st["best"]), int(st["bad_vals"])
        saved = ckpt.get("metrics", {})
        self.baseline = dict(saved.get("baseline_val", {}))
        self.val_metrics = dict(saved.get("val", {}))
        self.untrained_val = dict(saved.get("untrained_val", {}))
        self.best_metrics = next((dict(h["val"]) for h in self.history
                                  if "val" in h and h["iteration"] == self.best["iteration"]), {})
        self.message(f"resumed from {self.resume_from} at iteration {self.start}", self.start)

    # ---- 5. the loop
    # Nothing in a step reads the device: the sample ids go up through pinned memory, the losses
    # and tuple counts stay on the device, and the figures of `log_every` steps are read in one go
    # (then the NaN check, events and progress). A NaN found there stops training before any
    # checkpoint is written after it, so the last good checkpoint is kept.
    def step(self, it: int) -> _Pending:
        """One optimisation step (iteration ``it`` -> ``it + 1``); its figures stay on the device."""
        memory, fdt, zero = self.memory, self.fdt, self.zero
        ids_cpu = self.sampler.next_batch()
        ids = D.to_device(ids_cpu, self.device)
        emb = self.source.embed_train(self.model, self.train_idx_d[ids], self.aug_gen)
        lab = self.train_labels_d[ids]
        loss, part_b, part_m = self.xbm(emb, lab, ids, it)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return _Pending(it + 1, int(ids_cpu.numel()), part_m is not None, torch.stack([
            loss.detach().to(fdt), part_b.loss.detach().to(fdt),
            zero if part_m is None else part_m.loss.detach().to(fdt),
            part_b.tuples.to(fdt), zero if part_m is None else part_m.tuples.to(fdt),
            zero if memory is None else memory.fill_tensor().to(fdt)]))

    def stop_requested(self) -> bool:
        """The loop's cancellation check (data-parallel ranks agree on it)."""
        return self.should_stop()

    def eta_of(self, i: int, per_it: float) -> float:
        """Seconds left after iteration i: the loop's own time per iteration, plus the validations left
        at their measured cost."""
        total, val_every = self.config.iterations, self.config.val_every
        vals_left = total // val_every - i // val_every + (1 if total % val_every else 0)
        per_val = self.val_time[0] / self.val_time[1] if self.val_time[1] else 0.0
        return (total - i) * per_it + vals_left * per_val

    def flush(self) -> str:
        """Read the pending figures (one host sync); emit their events. Returns a stop reason or ''."""
        if not self.pending:
            return ""
        total = self.config.iterations
        rows = torch.stack([p.figures for p in self.pending]).cpu().tolist()
        now = time.perf_counter()
        self.t_train += now - self.t_seg
        self.t_seg = now
        done = list(self.pending)
        self.pending.clear()
        per_it = self.t_train / max(1, done[-1].iteration - self.start)
        for p, (loss_v, lb, lm, tb, tm, fill) in zip(done, rows, strict=True):
            i = p.iteration
            if not math.isfinite(loss_v):
                msg = (f"the loss became {loss_v} at iteration {i}: training stopped; the last good "
                       f"checkpoint (iteration {self.last_saved}) is kept. Lower the learning rates.")
                self.message(msg, i - 1)
                return msg
            self.n_seen += p.batch_size
            rate = self.n_seen / self.t_train if self.t_train > 0 else 0.0
            rec = {"iteration": i, "loss": loss_v, "loss_batch": lb, "loss_memory": lm if p.with_memory else None,
                   "triplets_batch": int(tb), "triplets_memory": int(tm), "memory_fill": int(fill)}
            self.history.append(rec)
            self.emit(TrainEvent("iteration", i, total, loss=loss_v, loss_batch=lb, loss_memory=rec["loss_memory"],
                                 memory_fill=rec["memory_fill"],
                                 memory_size=0 if self.memory is None else self.memory.size,
                                 triplets_batch=rec["triplets_batch"], triplets_memory=rec["triplets_memory"],
                                 images_per_s=rate, eta_s=self.eta_of(i, per_it)))
            self.progress(i, total, f"loss {loss_v:.4f}")
        return ""

    def validation_point(self, it: int) -> str:
        """Validate, keep best.pt and last.pt; returns the early-stopping reason or ''."""
        m, _ = self.validate()
        stop = self.after_validation(it, m)
        self.save_last(it)
        self.t_seg = time.perf_counter()   # validation time is not training time
        if not stop:
            return ""
        reason = f"early stopping: no better validation {self.sel_label} in {self.config.patience} validations"
        self.message(reason, it)
        return reason

    def loop(self) -> None:
        """Steps until the last iteration, a stop, a NaN loss or early stopping; sets ``it``,
        ``cancelled``, ``reason`` and writes last.pt for a cancelled run."""
        config, device = self.config, self.device
        self.set_train_mode()
        log_every = config.log_every or (20 if device.type == "cuda" else 1)
        self.train_idx_d, self.train_labels_d = self.train_idx.to(device), self.train_labels.to(device)
        self.fdt = torch.float32 if device.type == "mps" else torch.float64   # tuple counts pass 2**24
        self.zero = torch.zeros((), device=device, dtype=self.fdt)
        self.pending: list[_Pending] = []
        cancelled, reason = False, ""
        self.last_saved = self.start
        self.t_train, self.n_seen = 0.0, 0
        it, total = self.start, config.iterations
        if self.start < total:
            self.message(f"Phase: training, iterations {self.start + 1}-{total} "
                         f"(validation every {config.val_every})", self.start)
        self.t_seg = time.perf_counter()
        while it < total:
            if self.stop_requested():
                cancelled, reason = True, "cancelled"
                break
            self.pending.append(self.step(it))
            it += 1
            validating = it % config.val_every == 0 or it == total
            if len(self.pending) >= log_every or validating:
                reason = self.flush()
                if reason:
                    break
            if validating:
                reason = self.validation_point(it)
                if reason:
                    break
        if not reason or cancelled:
            reason = self.flush() or reason
        if reason.startswith("the loss"):
            cancelled = False
        if cancelled and self.last_saved != it:
            self.save_last(it)
        self.it, self.cancelled, self.reason = it, cancelled, reason or "finished"
        # the model lists tell a run the user stopped from a finished one (registry.TrainedModelInfo.title)
        self.save_state("stopped" if cancelled else "finished", self.last_saved)

    def save_state(self, state: str, it: int) -> None:
        """The run folder's state.json (registry.write_run_state)."""
        write_run_state(self.out, state, it, self.config.iterations)

    # ---- 6. the result
    def finish(self) -> TrainResult:
        sel, best, best_metrics, it = self.sel, self.best, self.best_metrics, self.it
        if not self.best_path.exists():  # no validation ever ran (cannot happen: iteration 0 saves one)
            self.save_best(self.last_saved)
        last_val = next((h["val"] for h in reversed(self.history) if "val" in h), {})
        last_val_it = next((h["iteration"] for h in reversed(self.history) if "val" in h), 0)
        if best_metrics.get(sel) is not None:
            self.message(f"kept best.pt: iteration {best['iteration']}, validation {_fmt_metrics(best_metrics, sel)}; "
                         f"last.pt: iteration {self.last_saved}" + (
                             f", validation {_fmt_metrics(last_val, sel)}"
                             if last_val and last_val_it == self.last_saved else ""), it)
        self.emit(TrainEvent("done", it, self.config.iterations, val_recall1=best_metrics.get("recall@1"),
                             message=self.reason, val_score=best_metrics.get(sel), select_metric=sel,
                             best_iteration=best["iteration"], metrics=dict(best_metrics)))
        return TrainResult(checkpoint_path=str(self.last_path), best_checkpoint_path=str(self.best_path),
                           config=self.config, history=self.history, val_metrics=self.val_metrics,
                           baseline_val_metrics=self.baseline, cancelled=self.cancelled,
                           stopped_reason=self.reason, select_metric=sel, best_iteration=int(best["iteration"]),
                           best_val_metrics=best_metrics, last_iteration=self.last_saved,
                           untrained_val_metrics=self.untrained_val, validation=self.split.description)


def feature_cache_path(config: TrainConfig, paths: list[str]) -> Path:
    """Where head/tail mode keep the cached features of ``paths`` under ``config``: a file named by model,
    image size, pooling (head) or trained units (tail), views and the files' paths, sizes and times.
    Head-mode files hold {"feats": (N, V, C) float32, "ok": readable indices, "skipped": [[path, why]],
    "untrained": (N, 4, C) float16 :func:`untrained_descriptors` of view 0}."""
    key_src = {"backbone": config.backbone, "weights": config.weights, "image_size": config.image_size,
               "pooling": config.pooling, "views": config.head_views, "files": _file_key(paths),
               "seed": config.seed if config.weights == "random" or config.head_views > 2 else None,
               "version": 2}
    if config.mode == "tail":
        key_src.update(pooling=None, tail=config.tail_units, version=1)
    key = hashlib.sha1(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:20]
    folder = Path(config.cache_dir) if config.cache_dir else cache_dir()
    return folder / f"{'maps' if config.mode == 'tail' else 'features'}_{key}.pt"


def _cached_features(model, allimgs: D.LabelledImages, config: TrainConfig, device, threads, progress,
                     should_stop, message, emit):
    """Head mode: pooled features (N, V, C) and the (N, 4, C) untrained descriptors of view 0; tail
    mode: float16 trunk maps (N, V, C', h', w') and None. From the disk cache when model + data + views
    (+ tail) are unchanged; computing them is its own announced phase with its own rate and ETA."""
    encode = _tail_encoder(model, config, len(allimgs.paths), device) if config.mode == "tail" else None
    path = feature_cache_path(config, allimgs.paths)
    folder = path.parent
    if path.is_file():
        try:
            c = torch.load(path, map_location="cpu", weights_only=True)
            message(f"backbone features read from the cache {path}")
            return c["feats"], list(c["ok"]), [tuple(s) for s in c["skipped"]], c.get("untrained")
        except Exception as exc:  # damaged cache: recompute
            message(f"feature cache {path} unreadable ({exc}); recomputing")
    what = f"trunk maps (for the last {config.tail_units} units)" if encode else "backbone features"
    message(f"Phase: computing the {what} of {len(allimgs.paths)} images x {config.head_views} view(s), once "
            f"(kept in {folder} for later runs on the same images and model); training starts after it")
    untrained: list[torch.Tensor] | None = None if encode else []
    runner = None if encode else _feature_runner(model, config, device)
    feats, ok, skipped = compute_pooled_features(model, allimgs.paths, image_size=config.image_size,
                                                 views=config.head_views, seed=config.seed, device=device,
                                                 threads=threads, progress=_Phase(f"computing {what}", emit, progress),
                                                 should_stop=should_stop, encode=encode, untrained=untrained,
                                                 features=runner)
    base = torch.cat(untrained).half() if untrained else None
    try:
        data = {"feats": feats, "ok": ok, "skipped": [list(s) for s in skipped], "untrained": base}
        atomic_write_with(path, lambda tmp: torch.save(data, tmp))
    except OSError as exc:
        message(f"could not write the feature cache {path}: {exc}")
    return feats, ok, skipped, base


def _feature_runner(model: EmbeddingModel, config: TrainConfig, device: torch.device, trunk: int | None = None):
    """Head mode's frozen backbone (``trunk``: tail mode's frozen trunk, the maps entering the last ``trunk``
    units) on the CPU runtime indexing uses (engine.runtime; the backbone's export shared with index by its
    identity; engine.vocabulary.default_runtime); None (PyTorch) on a GPU or for random weights, which are
    drawn per run and so have no identity to cache an export under."""
    from engine.runtime import feature_runner
    from engine.vocabulary import ModelSpec, cache_root, default_runtime

    runtime = default_runtime()
    if config.weights == "random" or device.type != "cpu" or runtime == "torch":
        return None
    ident = ModelSpec(backbone=config.backbone, weights=config.weights).backbone_identity()
    return feature_runner(model.backbone, config.image_size, ident, cache_root(), runtime, trunk=trunk)


def _tail_encoder(model: EmbeddingModel, config: TrainConfig, n_images: int, device: torch.device):
    """The trunk of tail mode as an encoder to cache (float16 maps), after checking that the cache
    of every image and view fits in memory (the message says what to change)."""
    backbone, k = model.backbone, config.tail_units
    backbone.tail_modules(k)  # a backbone that cannot be split, or a bad k: ValueError with the choices
    runner = _feature_runner(model, config, device, trunk=k)  # the frozen trunk on the CPU runtime
    trunk = runner or (lambda x: backbone.forward_trunk(x, k))
    with torch.no_grad():
        shape = trunk(torch.zeros(1, 3, config.image_size, config.image_size, device=device)).shape
    need = n_images * config.head_views * math.prod(shape[1:]) * 2
    avail = available_memory_bytes()
    if avail is not None and need > 0.8 * avail:
        raise ValueError(
            f"tail mode with {config.tail_units} trained unit(s) caches {tuple(shape[1:])} maps of {n_images} images "
            f"x {config.head_views} view(s): {need / 1e9:.1f} GB, and {avail / 1e9:.1f} GB are available: train fewer "
            "units (their input maps are smaller), use fewer views, or train the head only")

    def encode(x: torch.Tensor) -> torch.Tensor:
        return trunk(x).half()
    return encode
