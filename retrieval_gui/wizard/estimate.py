"""How long a training run will take, said before Start: computing the features (the step that took 95 of
a 108 s run) plus the iterations, from measured speeds.

No Qt here. The speeds come from the last run of the same backbone, image size, device and mode (the run
page remembers what its phase and iteration events measured), else from :func:`measure_rates`, which a
worker runs: a few passes of random images through the backbone itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Rates:
    """Images per second of one backbone at one image size on one device. ``features``: the forward pass
    that computes cached features (per view); ``train``: a training step, per image of the batch (for the
    head mode a step of the head alone, for tail and full the network's forward and backward);
    ``source``: where they come from, in words."""

    features: float
    train: float
    source: str


@dataclass(frozen=True)
class Estimate:
    """Seconds per part of a run and in all; ``lines``: the parts in words."""

    features_s: float
    training_s: float
    validation_s: float
    lines: tuple[str, ...]

    @property
    def total_s(self) -> float:
        return self.features_s + self.training_s + self.validation_s


def rate_key(backbone: str, weights: str, image_size: int, device: str, mode: str) -> str:
    """The key speeds are remembered under."""
    return f"{backbone}|{weights}|{int(image_size)}|{device}|{mode}"


def measure_rates(backbone: str, weights: str, image_size: int, device: str, mode: str, *,
                  batch: int = 8, repeats: int = 2, head_batch: int = 32) -> Rates:
    """Time the backbone on ``repeats`` batches of ``batch`` random (3, S, S) images after one warm-up:
    forward only (features), and for tail/full a forward + backward through the whole network (train;
    for tail an upper bound: only the last units train). For the head mode, ``train`` times a linear head's
    step on ``head_batch`` random features of the backbone's width. Loads the backbone (seconds)."""
    import torch

    from models.backbones import get_backbone

    bb = get_backbone(backbone, weights=weights, device=device)
    x = torch.randn(batch, 3, int(image_size), int(image_size), device=device)

    def timed(fn) -> float:
        fn()  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / repeats

    def forward() -> None:
        with torch.inference_mode():
            bb.forward_features(x)

    features = batch / max(timed(forward), 1e-9)
    if mode == "head":
        dim = int(getattr(bb, "feature_dim", 0) or bb.forward_features(x[:1]).shape[1])
        head = torch.nn.Linear(dim, dim).to(device)
        opt = torch.optim.SGD(head.parameters(), lr=1e-3)
        z = torch.randn(head_batch, dim, device=device)

        def head_step() -> None:
            opt.zero_grad()
            head(z).square().mean().backward()
            opt.step()

        train = head_batch / max(timed(head_step), 1e-9)
    else:
        bb.train()

        def step() -> None:
            bb.zero_grad(set_to_none=True)
            bb.forward_features(x).mean().backward()

        try:
            train = batch / max(timed(step), 1e-9)
        finally:
            bb.eval()
    return Rates(features, train, "measured now on random images")


def _clock(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def estimate_run(*, mode: str, n_train: int, n_val: int, iterations: int, val_every: int, batch: int,
                 views: int, rates: Rates) -> Estimate:
    """The run's time from ``rates``: head and tail modes compute the features of every image (training
    and validation) for ``views`` views once, then train on them (validation then reads the cache);
    the full mode computes no features but validates with a forward pass of the validation images every
    ``val_every`` iterations. Iterations take ``batch`` images each."""
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
        validation = (iterations // val_every) * n_val / rates.features
        lines.append(f"validation: {_clock(validation)} ({iterations // val_every} × {n_val:,} images)")
    return Estimate(features, training, validation, tuple(lines))


def describe(estimate: Estimate, rates: Rates) -> str:
    """One paragraph for the summary page."""
    return (f"about {_clock(estimate.total_s)} in all — " + "; ".join(estimate.lines)
            + f". Speeds {rates.source}.")
