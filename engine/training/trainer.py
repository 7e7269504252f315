"""train(config): P x K batches, triplet/contrastive loss with optional Cross-Batch Memory, in three modes.

- ``head``: backbone frozen; the pooled features of every image (and of a few augmented views) are
  computed ONCE and cached on disk (keyed by model + data); only the embedding head trains.
- ``tail``: the last ``tail_units`` feature units (efficientnet_lite0: the last blocks and the head
  conv), pooling and head train; the maps entering them are computed once per view and cached
  (float16), so a step runs only the tail: on two CPU cores 4-20x the images/s of ``full``.
- ``full``: the whole network trains (BatchNorm statistics frozen by default, backbone lr apart);
  images are decoded once into a uint8 tensor on the device and augmented there with tensor ops;
  bf16 autocast and channels_last on CUDA.

Validation R@1 on classes carved from the training classes selects the best checkpoint.
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

from engine.callbacks import Cancelled, resolve
from engine.training import data as D
from engine.training.checkpoint import load_checkpoint, save_checkpoint, write_info
from engine.training.config import TrainConfig
from engine.training.losses import build_loss
from engine.training.metrics import retrieval_metrics
from engine.training.registry import BEST_FILE, LAST_FILE, cache_dir, models_dir
from engine.training.sampler import PKSampler
from engine.training.xbm import CrossBatchMemory, XBMLoss
from models.embedding import EmbeddingModel, build_model_from_config, freeze_batchnorm, l2n

log = logging.getLogger(__name__)


@dataclass
class TrainEvent:
    kind: str            # "iteration" | "validation" | "checkpoint" | "message" | "done"
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


@dataclass
class TrainResult:
    checkpoint_path: str
    best_checkpoint_path: str
    config: TrainConfig
    history: list[dict] = field(default_factory=list)
    val_metrics: dict = field(default_factory=dict)
    baseline_val_metrics: dict = field(default_factory=dict)   # untrained descriptor on the val classes
    cancelled: bool = False
    stopped_reason: str = ""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but no CUDA device is available")
    return torch.device(name)


# --------------------------------------------------------------------------------------------------
# the two data paths
# --------------------------------------------------------------------------------------------------
class _HeadData:
    """Cached pooled features (N, V, C) of every image; a batch picks one random view per sample."""

    def __init__(self, feats: torch.Tensor, device: torch.device) -> None:
        self.feats = feats.to(device)

    def embed_train(self, model: EmbeddingModel, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        views = D.to_device(torch.randint(self.feats.shape[1], (idx.numel(),), generator=gen), self.feats.device)
        return model.head(self.feats[idx, views])

    @torch.no_grad()
    def embed_eval(self, model: EmbeddingModel, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings, untrained pooled descriptors) of view 0."""
        f = self.feats[idx.to(self.feats.device), 0]
        return model.head(f), l2n(f)


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

    def embed_train(self, model: EmbeddingModel, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        views = D.to_device(torch.randint(self.maps.shape[1], (idx.numel(),), generator=gen), self.maps.device)
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

    def embed_train(self, model: EmbeddingModel, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        theta = D.crop_params(idx.numel(), gen)
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
                            ) -> tuple[torch.Tensor, list[int], list]:
    """Pooled backbone features (N_ok, V, C) float32 on CPU: view 0 the whole image, 1 its mirror,
    >= 2 random resized crops (seeded). Returns (features, indices of readable paths, skipped).
    ``encode``: normalised (B, 3, S, S) -> what to keep per view instead (e.g. trunk maps)."""
    backbone = model.backbone
    if encode is None:
        def encode(x: torch.Tensor) -> torch.Tensor:
            return model.pool(backbone.forward_features(x))
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
        per_view = [_cuda_bf16(encode, D.normalize(x, mean, std)).cpu() for x in xs]
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
# train()
# --------------------------------------------------------------------------------------------------
def train(config: TrainConfig, *, progress: Callable[[int, int, str], None] | None = None,
          should_stop: Callable[[], bool] | None = None, on_event: Callable[[TrainEvent], None] | None = None,
          resume_from: str | os.PathLike | None = None) -> TrainResult:
    """Train an embedding per ``config``; see the module docstring. Raises ValueError for bad settings
    or data (the message says what to change). ``resume_from``: a ``last.pt`` to continue exactly
    (its config is used; ``iterations`` and ``device`` come from ``config``)."""
    progress, should_stop = resolve(progress, should_stop)
    emit = on_event or (lambda e: None)
    ckpt = None
    if resume_from is not None:
        ckpt = load_checkpoint(resume_from)
        if "train_state" not in ckpt:
            raise ValueError(f"{resume_from} holds a model but no training state: resume from a last.pt")
        old = TrainConfig.from_dict(ckpt["config"])
        old.iterations, old.device = config.iterations, config.device
        old.out_dir = str(Path(resume_from).parent)
        config = old
    problems = config.validate()
    if problems:
        raise ValueError("invalid training settings: " + "; ".join(problems))
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device)
    if not config.name:
        config.name = config.default_name()
    out = Path(config.out_dir) if config.out_dir else models_dir() / config.name
    config.out_dir = str(out)
    out.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out / LAST_FILE, out / BEST_FILE

    def message(text: str, it: int = 0) -> None:
        log.info(text)
        emit(TrainEvent("message", it, config.iterations, message=text))

    # ---- data and class split
    allimgs = D.scan_labelled(config.data_root, config.train_classes)
    train_cls, val_cls = D.split_classes(allimgs.classes, config.val_class_share, config.seed)
    message(f"{len(allimgs.paths)} images in {len(allimgs.classes)} classes: {len(train_cls)} for training, "
            f"{len(val_cls)} validation classes")

    # ---- model (seeded, so random weights are reproducible)
    torch.manual_seed(config.seed)
    model = build_model_from_config(config.to_dict(), device)
    threads = max(1, config.num_threads or torch.get_num_threads())
    if config.mode in ("head", "tail"):
        feats, ok, skipped = _cached_features(model, allimgs, config, device, threads, progress, should_stop, message)
        labels_all = [allimgs.labels[i] for i in ok]
        source: _HeadData | _TailData | _FullData = (
            _HeadData(feats, device) if config.mode == "head" else _TailData(feats, device, config.tail_units))
    else:
        size = int(round(config.image_size * 8 / 7))
        if device.type == "cpu" and not config.extra.get("skip_memory_check"):
            check_cpu_memory(config, len(allimgs.paths))
        message(f"decoding {len(allimgs.paths)} images once ({size}x{size} uint8 on {device})")
        imgs, ok, skipped = D.decode_all(allimgs.paths, size, threads=threads, progress=progress,
                                         should_stop=should_stop)
        labels_all = [allimgs.labels[i] for i in ok]
        source = _FullData(imgs, device, config.image_size, model.backbone.mean, model.backbone.std)
    if skipped:
        message(f"{len(skipped)} unreadable image(s) skipped, e.g. {skipped[0][0]}: {skipped[0][1]}")
    names = allimgs.classes
    labels_t = torch.tensor(labels_all, dtype=torch.long)
    val_set = set(val_cls)
    is_val = torch.tensor([names[lab] in val_set for lab in labels_all], dtype=torch.bool)
    train_idx = (~is_val).nonzero().squeeze(1)
    val_idx = is_val.nonzero().squeeze(1)
    # the sampler sees only training samples; ids are positions in train_idx (0..n_train-1)
    train_labels = labels_t[train_idx]
    sampler = PKSampler(train_labels.tolist(), config.classes_per_batch, config.samples_per_class, config.seed)
    if sampler.excluded_classes:
        message(f"{len(sampler.excluded_classes)} class(es) with fewer than 2 images left out: "
                + ", ".join(names[c] for c in sampler.excluded_classes[:10]))
    n_train = int(train_idx.numel())

    # ---- loss, memory, optimizer
    loss_fn = build_loss(config.loss, config.margin, config.mining)
    memory = None
    if config.memory:
        mem_size = max(sampler.batch_size, int(round(config.memory_share * sampler.num_samples)))
        memory = CrossBatchMemory(mem_size, model.head.out_dim, n_train, device)
    xbm = XBMLoss(loss_fn, memory, config.memory_weight, config.warmup_iters)
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
                  {"params": [p for p in model.backbone.parameters() if p.requires_grad], "lr": config.lr_backbone}]
    opt = torch.optim.AdamW(groups, weight_decay=config.weight_decay, fused=device.type == "cuda")
    if config.mode == "full" and config.extra.get("compile"):
        model.backbone.forward_features = torch.compile(model.backbone.forward_features)
    aug_gen = torch.Generator().manual_seed(config.seed + 1)

    def set_train_mode() -> None:
        if config.mode == "head":
            model.eval()
        else:
            model.train()
            if config.freeze_bn:
                freeze_batchnorm(model.backbone)

    def validate() -> tuple[dict, dict]:
        if val_idx.numel() < 2:
            return {}, {}
        emb, pooled = source.embed_eval(model, val_idx)
        set_train_mode()  # eval() for validation must not leave BatchNorm un-frozen afterwards
        vl = labels_t[val_idx]
        return retrieval_metrics(emb, vl), retrieval_metrics(pooled, vl)

    # ---- state (fresh or resumed)
    history: list[dict] = []
    start = 0
    sel = config.select_metric
    best = {sel: -1.0, "iteration": 0}
    bad_vals = 0
    baseline: dict = {}
    val_metrics: dict = {}
    if ckpt is not None:
        st = ckpt["train_state"]
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sampler.load_state_dict(ckpt["sampler"])
        aug_gen.set_state(st["aug_rng"])
        torch.set_rng_state(st["torch_rng"])
        if device.type == "cuda" and st.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(st["cuda_rng"], device)
        if memory is not None and ckpt.get("memory") is not None:
            memory.load_state_dict(ckpt["memory"])
        history = list(ckpt.get("history", []))
        start = int(st["iteration"])
        best, bad_vals = dict(st["best"]), int(st["bad_vals"])
        baseline = dict(ckpt.get("metrics", {}).get("baseline_val", {}))
        val_metrics = dict(ckpt.get("metrics", {}).get("val", {}))
        message(f"resumed from {resume_from} at iteration {start}", start)

    def payload(it: int, with_state: bool) -> dict:
        p = {"config": config.to_dict(), "model": model.state_dict(),
             "metrics": {"val": val_metrics, "baseline_val": baseline, "iteration": it,
                         "best_val": {k: v for k, v in best.items()}},
             "classes": {"train": train_cls, "val": val_cls}}
        if with_state:
            p.update({"optimizer": opt.state_dict(), "sampler": sampler.state_dict(),
                      "memory": memory.state_dict() if memory is not None else None, "history": history,
                      "train_state": {"iteration": it, "aug_rng": aug_gen.get_state(),
                                      "torch_rng": torch.get_rng_state(),
                                      "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                                      "best": best, "bad_vals": bad_vals}})
        return p

    def save_last(it: int) -> None:
        save_checkpoint(last_path, payload(it, True))
        emit(TrainEvent("checkpoint", it, config.iterations, message=str(last_path)))

    def save_best(it: int) -> None:
        save_checkpoint(best_path, payload(it, False))
        write_info(out, config.name, config.data_root, config.to_dict(),
                   {"val": val_metrics, "baseline_val": baseline, "iteration": it})

    def after_validation(it: int, m: dict) -> bool:
        """Record a validation; True when early stopping says stop."""
        nonlocal val_metrics, best, bad_vals
        val_metrics = m
        r1, score = m.get("recall@1"), m.get(sel)
        emit(TrainEvent("validation", it, config.iterations, val_recall1=r1,
                        message=f"validation R@1 {r1:.4f}, mAP {m['map']:.4f}" if r1 is not None
                        else "no validation classes"))
        history.append({"iteration": it, "val": dict(m)})
        if score is None or score > best.get(sel, -1.0):
            best = {sel: -1.0 if score is None else score, "iteration": it}
            bad_vals = 0
            save_best(it)
        else:
            bad_vals += 1
        return config.patience > 0 and bad_vals >= config.patience

    if ckpt is None:
        set_train_mode()
        m, baseline = validate()
        if baseline:
            message(f"untrained descriptor ({config.pooling}) on the validation classes: "
                    f"R@1 {baseline['recall@1']:.4f}")
        after_validation(0, m)
        save_last(0)

    # ---- the loop
    # Nothing in a step reads the device: the sample ids go up through pinned memory, the losses
    # and tuple counts stay on the device, and the figures of `log_every` steps are read in one go
    # (then the NaN check, events and progress). A NaN found there stops training before any
    # checkpoint is written after it, so the last good checkpoint is kept.
    set_train_mode()
    log_every = config.log_every or (20 if device.type == "cuda" else 1)
    train_idx_d, train_labels_d = train_idx.to(device), train_labels.to(device)
    fdt = torch.float32 if device.type == "mps" else torch.float64   # tuple counts pass 2**24
    zero = torch.zeros((), device=device, dtype=fdt)
    pending: list[tuple[int, int, bool, torch.Tensor]] = []  # (iteration, batch size, memory part?, (6,) figures)
    cancelled, reason = False, ""
    last_saved = start
    t_train, n_seen = 0.0, 0
    it = start
    total = config.iterations
    t_seg = time.perf_counter()

    def flush() -> str:
        """Read the pending figures (one host sync); emit their events. Returns a stop reason or ''."""
        nonlocal t_train, n_seen, t_seg
        if not pending:
            return ""
        rows = torch.stack([f for *_, f in pending]).cpu().tolist()
        now = time.perf_counter()
        t_train += now - t_seg
        t_seg = now
        done = list(pending)
        pending.clear()
        for (i, bsz, with_mem, _), (loss_v, lb, lm, tb, tm, fill) in zip(done, rows, strict=True):
            if not math.isfinite(loss_v):
                msg = (f"the loss became {loss_v} at iteration {i}: training stopped; the last good "
                       f"checkpoint (iteration {last_saved}) is kept. Lower the learning rates.")
                message(msg, i - 1)
                return msg
            n_seen += bsz
            rate = n_seen / t_train if t_train > 0 else 0.0
            eta = (total - i) * (t_train / max(1, done[-1][0] - start))
            rec = {"iteration": i, "loss": loss_v, "loss_batch": lb, "loss_memory": lm if with_mem else None,
                   "triplets_batch": int(tb), "triplets_memory": int(tm), "memory_fill": int(fill)}
            history.append(rec)
            emit(TrainEvent("iteration", i, total, loss=loss_v, loss_batch=lb, loss_memory=rec["loss_memory"],
                            memory_fill=rec["memory_fill"], memory_size=0 if memory is None else memory.size,
                            triplets_batch=rec["triplets_batch"], triplets_memory=rec["triplets_memory"],
                            images_per_s=rate, eta_s=eta))
            progress(i, total, f"loss {loss_v:.4f}")
        return ""

    while it < total:
        if should_stop():
            cancelled, reason = True, "cancelled"
            break
        ids_cpu = sampler.next_batch()
        ids = D.to_device(ids_cpu, device)
        emb = source.embed_train(model, train_idx_d[ids], aug_gen)
        lab = train_labels_d[ids]
        loss, part_b, part_m = xbm(emb, lab, ids, it)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        it += 1
        pending.append((it, int(ids_cpu.numel()), part_m is not None, torch.stack([
            loss.detach().to(fdt), part_b.loss.detach().to(fdt),
            zero if part_m is None else part_m.loss.detach().to(fdt),
            part_b.tuples.to(fdt), zero if part_m is None else part_m.tuples.to(fdt),
            zero if memory is None else memory.fill_tensor().to(fdt)])))
        validating = it % config.val_every == 0 or it == total
        if len(pending) >= log_every or validating:
            reason = flush()
            if reason:
                break
        if validating:
            m, _ = validate()
            stop = after_validation(it, m)
            save_last(it)
            last_saved = it
            t_seg = time.perf_counter()   # validation time is not training time
            if stop:
                reason = f"early stopping: no better validation {sel} in {config.patience} validations"
                message(reason, it)
                break
    if not reason or cancelled:
        reason = flush() or reason
    if reason.startswith("the loss"):
        cancelled = False
    if cancelled and last_saved != it:
        save_last(it)
        last_saved = it
    if not reason:
        reason = "finished"
    if not best_path.exists():  # no validation ever ran (cannot happen: iteration 0 saves one)
        save_best(last_saved)
    best_r1 = next((h["val"].get("recall@1") for h in history
                    if "val" in h and h["iteration"] == best["iteration"]), None)
    emit(TrainEvent("done", it, total, val_recall1=best_r1, message=reason))
    return TrainResult(checkpoint_path=str(last_path), best_checkpoint_path=str(best_path), config=config,
                       history=history, val_metrics=val_metrics, baseline_val_metrics=baseline,
                       cancelled=cancelled, stopped_reason=reason)


def _cached_features(model, allimgs: D.LabelledImages, config: TrainConfig, device, threads, progress,
                     should_stop, message):
    """Head mode: pooled features (N, V, C); tail mode: float16 trunk maps (N, V, C', h', w'); from the
    disk cache when model + data + views (+ tail) are unchanged."""
    key_src = {"backbone": config.backbone, "weights": config.weights, "image_size": config.image_size,
               "pooling": config.pooling, "views": config.head_views, "files": _file_key(allimgs.paths),
               "seed": config.seed if config.weights == "random" or config.head_views > 2 else None,
               "version": 1}
    encode = None
    if config.mode == "tail":
        key_src.update(pooling=None, tail=config.tail_units)
        encode = _tail_encoder(model, config, len(allimgs.paths), device)
    key = hashlib.sha1(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:20]
    folder = Path(config.cache_dir) if config.cache_dir else cache_dir()
    path = folder / f"{'maps' if encode else 'features'}_{key}.pt"
    if path.is_file():
        try:
            c = torch.load(path, map_location="cpu", weights_only=True)
            message(f"backbone features read from the cache {path}")
            return c["feats"], list(c["ok"]), [tuple(s) for s in c["skipped"]]
        except Exception as exc:  # damaged cache: recompute
            message(f"feature cache {path} unreadable ({exc}); recomputing")
    message(f"computing backbone features of {len(allimgs.paths)} images x {config.head_views} view(s) once")
    feats, ok, skipped = compute_pooled_features(model, allimgs.paths, image_size=config.image_size,
                                                 views=config.head_views, seed=config.seed, device=device,
                                                 threads=threads, progress=progress, should_stop=should_stop,
                                                 encode=encode)
    try:
        from engine.atomic import atomic_write_with

        data = {"feats": feats, "ok": ok, "skipped": [list(s) for s in skipped]}
        atomic_write_with(path, lambda tmp: torch.save(data, tmp))
    except OSError as exc:
        message(f"could not write the feature cache {path}: {exc}")
    return feats, ok, skipped


def _tail_encoder(model: EmbeddingModel, config: TrainConfig, n_images: int, device: torch.device):
    """The trunk of tail mode as an encoder to cache (float16 maps), after checking that the cache
    of every image and view fits in memory (the message says what to change)."""
    backbone, k = model.backbone, config.tail_units
    backbone.tail_modules(k)  # a backbone that cannot be split, or a bad k: ValueError with the choices
    with torch.no_grad():
        shape = backbone.forward_trunk(torch.zeros(1, 3, config.image_size, config.image_size, device=device), k).shape
    need = n_images * config.head_views * math.prod(shape[1:]) * 2
    avail = available_memory_bytes()
    if avail is not None and need > 0.8 * avail:
        raise ValueError(
            f"tail mode with {config.tail_units} trained unit(s) caches {tuple(shape[1:])} maps of {n_images} images "
            f"x {config.head_views} view(s): {need / 1e9:.1f} GB, and {avail / 1e9:.1f} GB are available: train fewer "
            "units (their input maps are smaller), use fewer views, or train the head only")

    def encode(x: torch.Tensor) -> torch.Tensor:
        return backbone.forward_trunk(x, k).half()
    return encode
