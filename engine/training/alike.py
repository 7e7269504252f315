"""A finished run's kept model (best.pt) and the untrained descriptors, evaluated alike.

The trainer's own validation compares best.pt with the untrained descriptors at the run's one input
size, without whitening. Issue 12 showed that an untrained backbone with a multi-scale GeM and a learned
whitening (Lw) is a much stronger bar; :func:`evaluate_alike` holds the kept model to it, both sides
evaluated the same way:

- the run's training and validation images (``validation_split`` of its saved config) are described by
  the untrained descriptors (GeM and the run's best untrained one by default) and by the kept model
  (its embedding, the ``fc`` descriptor of a checkpoint), at the first input size alone and at all
  ``sizes`` (each size's vector L2-normalised, summed, normalised: ``DescriptorModel.describe_scales``).
  One pass over the files: one forward per image, size and backbone; in head mode the kept model's
  backbone is the untrained one, so its maps serve both.
- an Lw is learned per descriptor and size set on the TRAINING images only, its shrinkage and dimension
  chosen by ``engine.whitening.choose_whitening`` on classes carved from the training classes when there
  are enough of them, else :data:`DEFAULT_SHRINKAGE` with every dimension (what benchmarks chose on the
  cub100 validation classes); the report says which.
- every evaluation (descriptor x {first size, all sizes} x {none, Lw}) is scored on the VALIDATION images
  with the project's one metric (``engine.evaluation.evaluate``: R@1, mAP, leave-one-out).

The images are read through the engine's extraction (engine.extraction.iter_extract: whole image,
shorter side to the size, centre crop), not the trainer's decoding, so the single-size figures differ a
little from the trainer's validation figures; what matters is that both models go through one path.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.callbacks import Cancelled, ProgressFn, ShouldStopFn, resolve
from engine.evaluation import evaluate
from engine.extraction import build_model, feature_fn, iter_extract
from engine.runtime import feature_runners
from engine.training.checkpoint import load_checkpoint
from engine.training.config import TrainConfig
from engine.training.registry import BEST_FILE
from engine.training.trainer import validation_split
from engine.vectors import l2n
from engine.vocabulary import (
    DESCRIPTOR_SHORT,
    POOLING_DESCRIPTORS,
    ModelSpec,
    cache_root,
    check_scales,
    default_runtime,
    sizes_label,
)
from engine.whitening import VAL_CLASSES, choose_whitening
from models.descriptors import build_descriptor
from models.registry import get_backbone
from models.whitening import PCAWhitening

log = logging.getLogger(__name__)

DEFAULT_SIZES = (224, 288, 352)
#: the Lw settings when too few training classes can be carved for choosing them: shrinkage 0.5 and every
#: dimension, what the benchmarks chose on validation classes carved from cub100's training classes
DEFAULT_SHRINKAGE = 0.5
#: the whitenings learn from at most this many training images (evenly over the classes): enough for a
#: 1280-d within-class covariance with shrinkage, and it keeps the pass short on a big folder
MAX_TRAIN_IMAGES = 4000
TRAINED = "trained"
#: the titles of the rows: the untrained descriptors' short titles, and the kept model
LABELS = {**DESCRIPTOR_SHORT, TRAINED: "kept model"}
UNTRAINED_KINDS = POOLING_DESCRIPTORS


@dataclass(frozen=True)
class Evaluation:
    """How vectors are made: the input sizes summed and whether an Lw is applied."""

    sizes: tuple[int, ...]
    whitened: bool

    @property
    def label(self) -> str:
        """'224 none', '224+288+352 Lw'."""
        return f"{sizes_label(self.sizes)} {'Lw' if self.whitened else 'none'}"

    @property
    def words(self) -> str:
        """'224+288+352 + learned whitening', '224 alone, no whitening'."""
        alone = len(self.sizes) == 1
        return sizes_label(self.sizes) + (" + learned whitening" if self.whitened
                                          else (" alone" if alone else "") + ", no whitening")


@dataclass
class AlikeRow:
    """One descriptor under one evaluation, scored on the validation images. ``metrics``: recall@1, map
    (and the counts of engine.evaluation.evaluate). For Lw rows: the settings and how they were chosen
    (``val_r1`` / ``val_none_r1``: R@1 with and without it on the classes carved from training)."""

    model: str                      # spoc | mac | gem | rmac | "trained"
    evaluation: Evaluation
    metrics: dict
    shrinkage: float | None = None
    dim: int | None = None
    chosen: bool = False
    val_r1: float | None = None
    val_none_r1: float | None = None


@dataclass
class AlikeReport:
    """What :func:`evaluate_alike` measured. ``rows``: every (descriptor, evaluation); ``best_untrained``
    and ``best_evaluation``: the untrained descriptor and evaluation with the best validation ``metric``
    (the run's selection metric); ``whitening``: how the Lw settings were found, in words."""

    run_dir: str
    checkpoint: str
    mode: str
    sizes: tuple[int, ...]
    metric: str
    descriptors: tuple[str, ...]
    evaluations: list[Evaluation]
    rows: list[AlikeRow]
    best_untrained: str
    best_evaluation: Evaluation
    whitening: str
    n_train: int
    n_val: int
    n_train_classes: int
    train_paths: list[str] = field(default_factory=list)
    val_paths: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def row(self, model: str, evaluation: Evaluation) -> AlikeRow | None:
        return next((r for r in self.rows if r.model == model and r.evaluation == evaluation), None)

    def score(self, model: str, evaluation: Evaluation, metric: str | None = None) -> float | None:
        r = self.row(model, evaluation)
        v = None if r is None else r.metrics.get(metric or self.metric)
        return float(v) if isinstance(v, (int, float)) else None

    def table(self) -> list[dict]:
        """One dict per evaluation: the best untrained descriptor, the kept model and the difference in
        R@1 and mAP ({"evaluation", "untrained": {...}, "trained": {...}, "diff": {...}})."""
        out = []
        for ev in self.evaluations:
            u = self.row(self.best_untrained, ev)
            t = self.row(TRAINED, ev)
            if u is None or t is None:
                continue
            um = {k: u.metrics[k] for k in ("recall@1", "map")}
            tm = {k: t.metrics[k] for k in ("recall@1", "map")}
            out.append({"evaluation": ev, "untrained": um, "trained": tm,
                        "diff": {k: tm[k] - um[k] for k in um}})
        return out

    def sentence(self) -> str:
        """The comparison in one plain sentence, at the best untrained descriptor's best evaluation."""
        ev = self.best_evaluation
        t, u = self.score(TRAINED, ev, "recall@1"), self.score(self.best_untrained, ev, "recall@1")
        tm, um = self.score(TRAINED, ev, "map"), self.score(self.best_untrained, ev, "map")
        if t is None or u is None:
            return "The kept model could not be compared with the untrained descriptors."
        name = LABELS.get(self.best_untrained, self.best_untrained)
        r1 = round(abs(t - u) * 100, 1)
        text = f"Evaluated the same way ({ev.words}), the kept model is " + (
            f"level with the untrained {name} on R@1" if r1 == 0 else
            f"{r1:.1f} R@1 points {'above' if t > u else 'below'} the untrained {name}")
        if tm is not None and um is not None:
            m = round(abs(tm - um) * 100, 1)
            text += " (mAP: level)" if m == 0 else f" (mAP: {m:.1f} points {'above' if tm > um else 'below'})"
        return text + "."

    def lines(self) -> list[str]:
        """A plain-text table for a terminal (the CLI)."""
        name = LABELS.get(self.best_untrained, self.best_untrained)
        head = f"{'evaluation':<24} {'untrained ' + name:>16} {'kept model':>11} {'diff':>8}"
        out = [f"evaluated alike on the validation images ({self.n_val}; whitening learned on the {self.n_train} "
               f"training images: {self.whitening})", "  R@1 / mAP", "  " + head]
        for r in self.table():
            u, t, d = r["untrained"], r["trained"], r["diff"]
            out.append(f"  {r['evaluation'].label:<24} {u['recall@1']:>7.4f}/{u['map']:.4f} "
                       f"{t['recall@1']:>6.4f}/{t['map']:.4f} {d['recall@1']:+.4f}/{d['map']:+.4f}")
        out.append(self.sentence())
        return out

    def to_dict(self) -> dict:
        """JSON-able."""
        return {"run_dir": self.run_dir, "checkpoint": self.checkpoint, "sizes": list(self.sizes),
                "metric": self.metric, "best_untrained": self.best_untrained,
                "best_evaluation": self.best_evaluation.label, "whitening": self.whitening,
                "n_train": self.n_train, "n_val": self.n_val, "sentence": self.sentence(),
                "rows": [{"model": r.model, "evaluation": r.evaluation.label,
                          **{k: r.metrics[k] for k in ("recall@1", "map")},
                          "shrinkage": r.shrinkage, "dim": r.dim, "chosen": r.chosen} for r in self.rows]}


def _run_best_untrained(metrics: dict) -> str:
    """The run's best untrained descriptor by its selection metric (from best.pt's metrics), '' if none."""
    sel = metrics.get("select_metric", "map")
    u = metrics.get("untrained_val") or {}
    scores = {k: v.get(sel) for k, v in u.items() if isinstance(v, dict) and k in UNTRAINED_KINDS}
    scores = {k: v for k, v in scores.items() if isinstance(v, (int, float))}
    return max(scores, key=lambda k: scores[k]) if scores else ""


def _untrained_backbone(config: Any, device: str) -> Any:
    """The backbone the run started from (random weights drawn as the trainer drew them)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return get_backbone(config.backbone, weights=config.weights, device=device)


def _even_sample(items: list[int], labels: list[int], n: int, seed: int) -> list[int]:
    """``n`` of ``items`` drawn evenly over their ``labels`` (round-robin over the classes, each class in a
    seeded random order), returned in their original order."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for it, lab in zip(items, labels, strict=True):
        by_class.setdefault(lab, []).append(it)
    queues = [list(rng.permutation(v)) for _, v in sorted(by_class.items())]
    picked: list[int] = []
    while len(picked) < n:
        for q in queues:
            if q and len(picked) < n:
                picked.append(int(q.pop()))
    keep = set(picked)
    return [i for i in items if i in keep]


def _fit_lw(X: np.ndarray, labels: np.ndarray, *, choose: bool, seed: int) -> tuple[Any, dict]:  # noqa: N803
    """An Lw learned on (X (N, D), labels (N,)); its settings chosen on carved classes when ``choose``."""
    info: dict = {"chosen": False, "shrinkage": DEFAULT_SHRINKAGE, "dim": None}
    if choose:
        c = choose_whitening(X, np.arange(len(X)), labels, method="lw", seed=seed)
        info.update(chosen=True, shrinkage=c["shrinkage"], dim=c["dim"], val_r1=c["r1"], val_none_r1=c["none_r1"])
    dim = info["dim"] if info["dim"] is not None and info["dim"] < X.shape[1] else None
    w = PCAWhitening.fit_lw(X, labels, dim=dim, shrinkage=float(info["shrinkage"]))
    info["dim"] = w.out_dim
    return w, info


def evaluate_alike(run_dir: str | os.PathLike, *, sizes: Sequence[int] = DEFAULT_SIZES, whiten: bool = True,
                   whiten_first_size: bool = True, descriptors: Sequence[str] | None = None, device: str = "cpu",
                   runtime: str | None = None, cache_dir: str | os.PathLike | None = None, batch_size: int = 32,
                   max_train_images: int | None = MAX_TRAIN_IMAGES, progress: ProgressFn | None = None,
                   should_stop: ShouldStopFn | None = None) -> AlikeReport:
    """Evaluate the kept model of the finished run in ``run_dir`` (its best.pt) and the untrained
    ``descriptors`` (default: GeM and the run's best untrained one) alike: at ``sizes[0]`` alone and at
    all ``sizes`` summed, without and (``whiten``) with an Lw learned on the run's training images
    (``whiten_first_size`` False: at all sizes only, one Lw fewer per descriptor); every evaluation
    scored on the run's validation images. ``runtime``: what runs the backbones on the CPU
    (engine.runtime; default $RETRIEVAL_EXPLORER_RUNTIME, else "auto"). ``max_train_images``: the whitenings
    learn from at most this many training images, drawn evenly over the classes with the run's seed (None =
    all): the training images only feed the whitening, and a big folder would otherwise make this pass
    longer than the run. Raises ValueError for a folder
    without a usable best.pt or data, Cancelled when ``should_stop()`` says so."""
    report, stop = resolve(progress, should_stop)
    start = time.perf_counter()
    folder = Path(run_dir).expanduser()
    if not folder.exists():
        raise ValueError(f"run folder not found: {folder}")
    best = folder / BEST_FILE if folder.is_dir() else folder
    if not best.is_file():
        raise ValueError(f"{folder} holds no kept model ({BEST_FILE}): choose the folder of a finished training run")
    try:
        sizes = tuple(int(s) for s in sizes)
        sizes = (sizes[0],) + tuple(s for s in dict.fromkeys(sizes[1:]) if s != sizes[0])
        check_scales(sizes)
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"sizes must be input sizes of at least 16 pixels, e.g. 224,288,352; got {sizes!r}") from None
    ckpt = load_checkpoint(best)  # ValueError / FileNotFoundError with a message
    try:
        config = TrainConfig.from_dict({"target": "new"} | dict(ckpt["config"]))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{best}: its training settings cannot be read: {exc}") from None
    metrics = dict(ckpt.get("metrics") or {})
    del ckpt
    try:
        split = validation_split(config)
    except (FileNotFoundError, ValueError) as exc:
        raise ValueError(f"the run's images cannot be read again: {exc}") from None
    imgs = split.images
    val_i = [i for i, v in enumerate(split.is_val) if v]
    train_i = [i for i, v in enumerate(split.is_val) if not v]
    n_train_all = len(train_i)
    if whiten and max_train_images is not None and len(train_i) > max_train_images:
        train_i = _even_sample(train_i, [imgs.labels[i] for i in train_i], max_train_images, config.seed)
    elif not whiten:
        train_i = []  # nothing to learn: only the validation images are described
    if len(val_i) < 2:
        raise ValueError("the run has fewer than two validation images: there is nothing to evaluate on")
    if whiten and len(train_i) < 2:
        raise ValueError("the run has fewer than two training images: no whitening can be learned")

    sel = str(metrics.get("select_metric") or config.select_metric)
    if descriptors is None:
        descriptors = tuple(dict.fromkeys(["gem", _run_best_untrained(metrics) or "gem"]))
    descriptors = tuple(dict.fromkeys(descriptors))
    bad = [d for d in descriptors if d not in UNTRAINED_KINDS]
    if bad or not descriptors:
        raise ValueError(f"unknown untrained descriptor(s) {bad}: choose among {', '.join(UNTRAINED_KINDS)}")

    # the models: the kept one through ModelSpec (a checkpoint's fc descriptor), the untrained heads
    runtime = runtime or default_runtime()
    cache = Path(cache_dir) if cache_dir else cache_root()
    kept_spec = ModelSpec(backbone=str(best), descriptor="fc")
    kept = build_model(kept_spec, device)
    # head mode: the backbone stayed frozen, so the kept model's maps are the untrained ones (one forward)
    shared = config.mode == "head"
    base = kept.backbone.model.backbone if shared else _untrained_backbone(config, device)
    heads = {d: build_descriptor(d, base).to(device).eval() for d in descriptors}
    # an exported runtime is cached by identity: none for random weights, which are drawn per run
    base_id = (None if config.weights == "random"
               else ModelSpec(backbone=config.backbone, weights=config.weights).backbone_identity())
    if shared:
        run_kept = run_base = feature_fn(base, feature_runners(base, sizes, base_id, cache, runtime, device))
    else:
        run_kept = feature_fn(kept.backbone, feature_runners(kept.backbone, sizes, kept_spec.backbone_identity(),
                                                             cache, runtime, device))
        run_base = feature_fn(base, feature_runners(base, sizes, base_id, cache, runtime, device))

    def describe(fmaps: list[torch.Tensor], head: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return head.describe(fmaps[0]), head.describe_scales(fmaps) if len(fmaps) > 1 else head.describe(fmaps[0])

    def compute(x: Any) -> dict[str, torch.Tensor]:
        xs = x if isinstance(x, tuple) else (x,)
        fk = [run_kept(s, t) for s, t in zip(sizes, xs, strict=True)]
        fb = fk if shared else [run_base(s, t) for s, t in zip(sizes, xs, strict=True)]
        out = {}
        for name, head, maps in [(TRAINED, kept, fk)] + [(d, h, fb) for d, h in heads.items()]:
            first, whole = describe(maps, head)
            out[f"{name}|first"], out[f"{name}|all"] = first, whole
        return out

    order = [imgs.paths[i] for i in val_i] + [imgs.paths[i] for i in train_i]
    is_val = {imgs.paths[i]: True for i in val_i} | {imgs.paths[i]: False for i in train_i}
    label_of = {imgs.paths[i]: imgs.classes[imgs.labels[i]] for i in val_i + train_i}
    chunks: dict[str, list[np.ndarray]] = {}
    kept_paths: list[str] = []
    skipped: list[tuple[str, str]] = []
    total = len(order)
    what = f"describing the images at {sizes_label(sizes)} (untrained {', '.join(LABELS[d] for d in descriptors)} " \
           f"and the kept model)"
    report(0, total, what)
    dev = torch.device(device)
    with torch.inference_mode():
        for b in iter_extract(order, compute, image_size=sizes if len(sizes) > 1 else sizes[0],
                              mean=kept.backbone.mean, std=kept.backbone.std, batch_size=batch_size, device=dev):
            skipped += [(s.path, s.reason) for s in b.skipped]
            for k, v in b.vectors.items():
                chunks.setdefault(k, []).append(v)
            kept_paths += b.paths
            report(b.done, total, f"{what}: {b.done} / {total} images")
            if b.done < total and stop():
                raise Cancelled("the evaluation alike was cancelled")
    if stop():
        raise Cancelled("the evaluation alike was cancelled")
    vecs = {k: np.concatenate(v) for k, v in chunks.items()}
    val_rows = np.array([is_val[p] for p in kept_paths], dtype=bool)
    labels = np.array([label_of[p] for p in kept_paths])
    if val_rows.sum() < 2:
        raise ValueError("fewer than two validation images could be read: there is nothing to evaluate on")
    train_rows = ~val_rows
    train_labels = labels[train_rows]
    n_train_classes = len(np.unique(train_labels))
    choose = n_train_classes >= VAL_CLASSES + 2
    can_whiten = whiten and train_rows.sum() >= 2 and n_train_classes >= 2 and \
        np.unique(train_labels, return_counts=True)[1].max() >= 2
    if not whiten:
        how = "not asked for"
    elif not can_whiten:
        how = "not learned: the training images need two classes and a class with two images or more"
    elif choose:
        how = (f"shrinkage and dimension chosen on {VAL_CLASSES} of the {n_train_classes} training classes "
               "carved off for validation")
    else:
        how = (f"shrinkage {DEFAULT_SHRINKAGE:g} and every dimension (a fixed default: {n_train_classes} training "
               f"classes are too few to carve {VAL_CLASSES} off for choosing them)")
    if can_whiten and len(train_i) < n_train_all:
        how += f"; learned on {len(train_i)} of the {n_train_all} training images, drawn evenly over the classes"

    evaluations = [Evaluation(sizes[:1], False)]
    if len(sizes) > 1:
        evaluations.append(Evaluation(sizes, False))
    if can_whiten:
        if whiten_first_size or len(sizes) == 1:
            evaluations.append(Evaluation(sizes[:1], True))
        if len(sizes) > 1:
            evaluations.append(Evaluation(sizes, True))
    models = [*descriptors, TRAINED]
    fits = [(m, ev) for ev in evaluations if ev.whitened for m in models]
    rows: list[AlikeRow] = []
    vl = labels[val_rows]
    done_fits = 0
    for ev in evaluations:
        key = "first" if len(ev.sizes) == 1 else "all"
        for m in models:
            X = vecs[f"{m}|{key}"]  # noqa: N806
            extra: dict = {}
            if ev.whitened:
                report(done_fits, len(fits), f"learning a whitening on the training images: {LABELS[m]} at "
                                             f"{sizes_label(ev.sizes)} ({done_fits + 1} / {len(fits)})")
                w, extra = _fit_lw(X[train_rows], train_labels, choose=choose, seed=config.seed)
                done_fits += 1
                v = l2n(w.apply(X[val_rows]))
                if stop():
                    raise Cancelled("the evaluation alike was cancelled")
            else:
                v = X[val_rows]
            rows.append(AlikeRow(m, ev, evaluate(v, vl, ks=(1,)), **extra))
    if fits:
        report(len(fits), len(fits), "whitenings learned")

    def score(r: AlikeRow) -> tuple:
        return (r.metrics.get(sel, float("-inf")), r.metrics.get("recall@1", 0.0), r.metrics.get("map", 0.0))

    best_u = max((r for r in rows if r.model != TRAINED), key=score)
    seconds = time.perf_counter() - start
    log.info("evaluated alike in %.1f s: best untrained %s at %s", seconds, best_u.model, best_u.evaluation.label)
    return AlikeReport(
        run_dir=str(best.parent), checkpoint=str(best), mode=config.mode, sizes=sizes, metric=sel,
        descriptors=tuple(descriptors), evaluations=evaluations, rows=rows, best_untrained=best_u.model,
        best_evaluation=best_u.evaluation, whitening=how, n_train=int(train_rows.sum()), n_val=int(val_rows.sum()),
        n_train_classes=n_train_classes, train_paths=[p for p, v in zip(kept_paths, val_rows, strict=True) if not v],
        val_paths=[p for p, v in zip(kept_paths, val_rows, strict=True) if v], skipped=skipped, seconds=seconds)
