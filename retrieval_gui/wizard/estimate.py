"""How long a training run will take, said before Start: computing the features (the step that took 95 of
a 108 s run) plus the iterations, from measured speeds.

No Qt here. The speeds come from the last run of the same backbone, image size, device and mode (the run
page remembers what its phase and iteration events measured), else from :func:`measure_rates`, which a
worker runs: a few passes of random images through the backbone itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from engine.vocabulary import fmt_clock, sizes_label


@dataclass(frozen=True)
class Rates:
    """Images per second of one backbone at one image size on one device. ``features``: the forward pass
    that computes cached features (per view); ``train``: a training step, per image of the batch (for the
    head mode a step of the head alone, for tail and full the network's forward and backward);
    ``source``: where they come from, in words."""

    features: float
    train: float
    source: str
    evaluation: float = 0.0  # images/s of the whole evaluation alike after the run (loading the networks,
    #                          describing, its whitenings) as the last run with these settings measured; 0 = unknown


@dataclass(frozen=True)
class Estimate:
    """Seconds per part of a run and in all; ``lines``: the parts in words."""

    features_s: float
    training_s: float
    validation_s: float
    lines: tuple[str, ...]
    evaluation_s: float = 0.0  # the evaluation alike after the run (engine.training.alike)

    @property
    def total_s(self) -> float:
        return self.features_s + self.training_s + self.validation_s + self.evaluation_s


def rate_key(backbone: str, weights: str, image_size: int, device: str, mode: str) -> str:
    """The key speeds are remembered under."""
    return f"{backbone}|{weights}|{int(image_size)}|{device}|{mode}"


def measure_rates(backbone: str, weights: str, image_size: int, device: str, mode: str, *,
                  batch: int = 8, repeats: int = 2, sample_root: str = "", loss: str = "triplet",
                  margin: float = 0.1, mining: str = "semihard", classes_per_batch: int = 8,
                  samples_per_class: int = 4, memory_size: int = 0) -> Rates:
    """Time the backbone on ``repeats`` batches of ``batch`` images after one warm-up.

    ``features``: decoding ``batch`` files of ``sample_root`` (the data folder, as the feature phase reads
    them; random pixels when none) and the forward pass. ``train``: for tail/full a forward + backward through the
    whole network (for tail an upper bound: only the last units train); for head, a step of a linear head on
    random features of the backbone's width with the configured loss and mining on a P x K batch, against
    ``memory_size`` stored embeddings when the memory is on. Loads the backbone (seconds)."""
    import torch

    from engine.extraction import IMAGENET_MEAN, IMAGENET_STD
    from engine.images import ImageLoadError, build_transform, load_image
    from engine.training.losses import build_loss
    from models.registry import get_backbone

    bb = get_backbone(backbone, weights=weights, device=device)
    size = int(image_size)
    tf = build_transform(size, getattr(bb, "mean", IMAGENET_MEAN), getattr(bb, "std", IMAGENET_STD))
    paths = sample_images(sample_root, batch) if sample_root else []

    def inputs() -> torch.Tensor:
        xs = []
        for p in paths:
            try:
                xs.append(tf(load_image(p, min_side=size)))
            except ImageLoadError:
                continue
        xs += [torch.randn(3, size, size) for _ in range(batch - len(xs))]
        return torch.stack(xs).to(device)

    def timed(fn) -> float:
        fn()  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / repeats

    def forward() -> None:
        x = inputs()
        with torch.inference_mode():
            bb.forward_features(x)

    features = batch / max(timed(forward), 1e-9)
    if mode == "head":
        x = inputs()
        with torch.inference_mode():
            dim = int(bb.forward_features(x[:1]).shape[1])
        n = classes_per_batch * samples_per_class
        head = torch.nn.Linear(dim, dim).to(device)
        opt = torch.optim.SGD(head.parameters(), lr=1e-3)
        criterion = build_loss(loss, margin, mining)
        z = torch.randn(n, dim, device=device)
        labels = torch.arange(classes_per_batch, device=device).repeat_interleave(samples_per_class)
        ref = torch.nn.functional.normalize(torch.randn(memory_size, dim, device=device), dim=1)
        ref_labels = torch.randint(0, max(1, classes_per_batch * 4), (memory_size,), device=device)

        def head_step() -> None:
            opt.zero_grad()
            emb = torch.nn.functional.normalize(head(z), dim=1)
            out = criterion(emb, labels).loss
            if memory_size:
                out = out + criterion(emb, labels, ref=ref, ref_labels=ref_labels,
                                      ref_ids=torch.arange(n, n + memory_size, device=device)).loss
            out.backward()
            opt.step()

        train = n / max(timed(head_step), 1e-9)
    else:
        x = inputs()
        bb.train()

        def step() -> None:
            bb.zero_grad(set_to_none=True)
            bb.forward_features(x).mean().backward()

        try:
            train = batch / max(timed(step), 1e-9)
        finally:
            bb.eval()
    return Rates(features, train, "measured now on a few of these images")


def sample_images(root: str, n: int) -> list[str]:
    """Up to ``n`` image files of ``root``'s class folders, one folder after another (a few listings only)."""
    import os

    from engine.images import IMAGE_EXTENSIONS

    out: list[str] = []
    try:
        folders = sorted(e.path for e in os.scandir(root) if e.is_dir())
    except OSError:
        return out
    for folder in folders:
        try:
            names = sorted(e.name for e in os.scandir(folder) if e.is_file())
        except OSError:
            continue
        out += [os.path.join(folder, f) for f in names if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
        if len(out) >= n:
            break
    return out[:n]


def _clock(seconds: float) -> str:
    return fmt_clock(round(seconds))  # an estimate rounds to the nearest second


def estimate_run(*, mode: str, n_train: int, n_val: int, iterations: int, val_every: int, batch: int,
                 views: int, rates: Rates, image_size: int = 224, alike_sizes: tuple[int, ...] = (),
                 alike_images: int | None = None) -> Estimate:
    """The run's time from ``rates``: head and tail modes compute the features of every image (training
    and validation) for ``views`` views once, then train on them (validation then reads the cache);
    the full mode computes no features but validates with a forward pass of the validation images every
    ``val_every`` iterations. Iterations take ``batch`` images each. ``alike_sizes``: the evaluation alike
    after the run describes every image once per size (a forward costs the pixel count: (s / image_size)^2
    of one at ``image_size``), with one backbone in head mode and two otherwise; ``alike_images``: how many
    images it describes (default all); its whitenings are not counted."""
    n = n_train + n_val
    lines = []
    features = validation = 0.0
    if mode in ("head", "tail"):
        features = n * max(1, views) / rates.features
        lines.append(f"computing features: {_clock(features)} ({n:,} images × {max(1, views)} view(s) at "
                     f"{rates.features:.1f} images/s; less when they are cached from an earlier run)")
    training = iterations * batch / rates.train
    lines.append(f"training: {_clock(training)} ({iterations:,} iterations × {batch} images at "
                 f"{rates.train:.0f} images/s)")
    if mode == "full" and n_val and val_every > 0:
        # the untrained network is validated first (iteration 0) and the last iteration always validates,
        # also when it is not a multiple of val_every (a 1-iteration run validates twice)
        passes = 1 + validations(iterations, val_every)
        validation = passes * n_val / rates.features
        lines.append(f"validation: {_clock(validation)} ({passes} × {n_val:,} images, the untrained network's "
                     "and the last iteration's included)")
    evaluation = 0.0
    if alike_sizes:
        m = n if alike_images is None else alike_images
        sizes = sizes_label(alike_sizes)
        if rates.evaluation > 0:
            evaluation = m / rates.evaluation
            lines.append(f"then the evaluation alike: {_clock(evaluation)} ({m:,} images at {sizes}, its loading "
                         "and whitenings included, as fast as in the last run with these settings)")
        else:
            backbones = 1 if mode == "head" else 2
            work = sum((s / image_size) ** 2 for s in alike_sizes) * backbones
            evaluation = m * work / rates.features
            lines.append(f"then the evaluation alike: at least {_clock(evaluation)} ({m:,} images at {sizes}, "
                         f"{backbones} network(s); its whitenings are timed by the first run and counted from "
                         "then on)")
    return Estimate(features, training, validation, tuple(lines), evaluation)


def validations(iterations: int, val_every: int) -> int:
    """How many times a run of ``iterations`` validates after iteration 0: every ``val_every`` iterations
    and at the last one."""
    return -(-int(iterations) // max(1, int(val_every))) if iterations > 0 else 0


def alike_key(sizes: tuple[int, ...], whiten: bool) -> str:
    """The key the evaluation alike's measured speed is remembered under (beside the run's rate_key)."""
    return f"alike:{sizes_label(sizes)}:{'whitened' if whiten else 'plain'}"


def describe(estimate: Estimate, rates: Rates) -> str:
    """One paragraph for the summary page."""
    return (f"about {_clock(estimate.total_s)} in all — " + "; ".join(estimate.lines)
            + f". Speeds {rates.source}.")
