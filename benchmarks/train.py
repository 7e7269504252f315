"""Training benchmark on cub100, two protocols, each with every untrained descriptor beside the trained models:

- ``same`` (same categories, the question of people who train on their own labelled folders): all 100
  classes; every class's images are split into train / validation / query / retrieval by
  ``benchmarks/splits/cub100_same_categories.json`` (50 / 10 / 10 / 30%, paths only). Training sees the
  train images, validation (model selection) the validation images; R@K and mAP are leave-one-out over
  query + retrieval, top-1 is query -> retrieval.
- ``new`` (class-disjoint, as in metric-learning papers): train on classes 0-49 (10 of them carved off to
  validate), test on classes 50-99 (PROTOCOL.md).

Rows: untrained SPoC, MAC, GeM and R-MAC of the frozen ImageNet EfficientNet-Lite0, then triplet and triplet +
cross-batch memory for each mode (head, tail, full) and batch shape (P x K), per seed, with what the kept
best.pt and what last.pt score on the test images; with several seeds, mean +- std rows and the gain over the
best untrained descriptor. The test images are only touched for these numbers, never for a choice.

    python benchmarks/train.py --protocols same,new --modes head --seeds 0,1,2 --batches 32x4,8x4   # CPU
    python benchmarks/train.py --protocols new --modes tail --seeds 0,1,2 --set tail_units=3        # CPU: longer
    python benchmarks/train.py --data DIR --protocols new --modes head,full --bare-step             # one GPU

Multi-scale + learned whitening (issue 12): ``--eval-scales 224,288,352`` (protocol new, tail mode) also
evaluates every tail checkpoint the way benchmarks/descriptors.py evaluates the untrained descriptors: the
maps entering the tail are computed once per size for the train and test images (ONNX Runtime, cached),
the trained tail + pooling + head (and, for the untrained reference, the ImageNet tail + GeM) run on them,
each size's vector is normalised, the sizes summed, and an Lw is chosen on the run's own 10 validation
classes (carved by the trainer from the train classes with the run's seed, never trained on; the same
classes for the untrained reference), learned on the other 40 for that choice, then learned on all 50 and
applied to the test classes. Per seed, the evaluation (sizes, whitening) is chosen by validation R@1, ties
by validation mAP. ``--wise 0,0.25,0.5,0.75,1`` also evaluates every checkpoint as the WiSE-FT
interpolation (Wortsman et al. 2022) (1 - a) theta_0 + a theta_1 of the tail as initialised (theta_0) and
trained (theta_1), a chosen per seed on the same validation classes. ``--eval-only`` evaluates the
checkpoints of earlier runs under --out without training.

--make-split writes the same-categories split file again (deterministic). --bare-step also measures the bare
EfficientNet-Lite0 training step (fwd+bwd+AdamW) beside the full loop at the same batch: on CUDA bf16,
channels_last, batch 256, eager and torch.compile; on the CPU float32, batch 32, eager.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.evaluation import query_top1_torch as query_top1  # noqa: E402
from engine.evaluation import retrieval_metrics_torch as retrieval_metrics  # noqa: E402
from engine.training import data as D  # noqa: E402
from engine.training.config import TrainConfig  # noqa: E402
from engine.training.launch import train  # noqa: E402
from engine.training.trainer import (  # noqa: E402
    SELECT_LABELS,
    UNTRAINED,
    compute_pooled_features,
    feature_cache_path,
    validation_split,
)
from engine.vocabulary import DESCRIPTOR_SHORT as UNTRAINED_LABELS  # noqa: E402
from engine.vocabulary import resolve_device, sizes_label  # noqa: E402
from models.embedding import build_model_from_config, freeze_batchnorm, l2n, load_trained_backbone  # noqa: E402

log = logging.getLogger("bench.train")


def _resolve(root: Path, rel: str) -> str:
    p = root / rel
    if p.exists():
        return str(p)
    for ext in D.IMAGE_EXTENSIONS:  # a re-encoded copy (e.g. .webp) of the protocol's files
        q = p.with_suffix(ext)
        if q.exists():
            return str(q)
    raise FileNotFoundError(p)


SAME_SPLIT = Path(__file__).resolve().parent / "splits" / "cub100_same_categories.json"
SHARES = (("train", 0.5), ("val", 0.1), ("query", 0.1), ("retrieval", 0.3))


def make_same_split(root: Path) -> dict:
    """cub100's same-categories split: every class's images (sorted by the SHA-1 of their relative path,
    so the order is fixed and owes nothing to the file numbering) cut into train / val / query /
    retrieval at 50 / 10 / 10 / 30%. Paths relative to ``root`` (as in query_retrieval_test.json)."""
    out: dict = {"protocol": "cub100 same categories: all 100 classes; each class's images split 50% train, "
                 "10% validation, 10% query, 30% retrieval (order: SHA-1 of the relative path); written by "
                 "benchmarks/train.py --make-split", "train": [], "val": [], "query": [], "retrieval": []}
    for cls in sorted(p.name for p in (root / "images").iterdir() if p.is_dir()):
        rels = sorted((f"images/{cls}/{f.name}" for f in (root / "images" / cls).iterdir()
                       if f.suffix.lower() in D.IMAGE_EXTENSIONS), key=lambda r: hashlib.sha1(r.encode()).hexdigest())
        n, start = len(rels), 0
        for i, (key, share) in enumerate(SHARES):
            if i == 0:
                continue
            k = int(share * n + 0.5)
            out[key] += rels[n - start - k:n - start]
            start += k
        out["train"] += rels[:n - start]
    for key in ("train", "val", "query", "retrieval"):
        out[key].sort()
    return out


def peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.no_grad()
def embed_full(ckpt: str, paths: list[str], size: int, device: torch.device, threads: int) -> torch.Tensor:
    tb = load_trained_backbone(ckpt, device=str(device))
    out = []
    for s in range(0, len(paths), 64):
        imgs, ok, sk = D.decode_all(paths[s:s + 64], size, threads=threads)
        if sk:
            raise RuntimeError(f"unreadable test images: {sk[:3]}")
        x = D.normalize(imgs.to(device), tb.mean, tb.std)
        if device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                fmap = tb.forward_features(x.contiguous(memory_format=torch.channels_last))
        else:
            fmap = tb.forward_features(x)
        out.append(tb.forward_head(fmap).float().cpu())
    return torch.cat(out)


def bare_step(device: torch.device, batch: int = 256, steps: int = 20, compiled: bool = False,
              warm: int = 8) -> float:
    """images/s of the bare EfficientNet-Lite0 step: fwd + MAC + bwd + AdamW; on CUDA bf16 autocast and
    channels_last (fused AdamW), on the CPU float32. BatchNorm statistics frozen, as in the loop's
    default recipe (batch statistics would cost the bare step extra work the loop does not do)."""
    cuda = device.type == "cuda"
    model = build_model_from_config({"backbone": "efficientnet_lite0", "weights": "random"}, device)
    model.train()
    freeze_batchnorm(model.backbone)
    fwd = torch.compile(model.backbone.forward_features) if compiled else model.backbone.forward_features
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=cuda)
    x = torch.randn(batch, 3, 224, 224, device=device)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            fmap = fwd(x)
        loss = model.embed_fmap(fmap).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    for _ in range(warm):
        step()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return batch * steps / (time.perf_counter() - t)


@dataclass
class Protocol:
    """A test set: images, labels, the query and retrieval rows of top-1, and how training sees the data."""

    name: str                 # "same" | "new"
    title: str
    paths: list[str]
    labels: torch.Tensor
    query: torch.Tensor
    retrieval: torch.Tensor
    train_kw: dict            # TrainConfig fields that set the training data and target


def protocol_new(root: Path) -> Protocol:
    """Class-disjoint: train on classes 0-49 (10 carved for validation), test on 50-99 (leave-one-out R@K
    over all 2,953 test images; top-1 with query_retrieval_test.json)."""
    split = json.loads((root / "class_split.json").read_text())
    qr = json.loads((root / "query_retrieval_test.json").read_text())
    test = D.scan_labelled(root / "images", split["test_classes"])
    pos = {p: i for i, p in enumerate(test.paths)}
    q = torch.tensor([pos[_resolve(root, p)] for p in qr["query"]])
    r = torch.tensor([pos[_resolve(root, p)] for p in qr["retrieval"]])
    return Protocol("new", "new categories: train on classes 0-49 (10 of them carved off to validate), test on "
                    "classes 50-99", test.paths, torch.tensor(test.labels), q, r,
                    dict(data_root=str(root / "images"), train_classes=list(split["train_classes"]), target="new"))


def protocol_same(root: Path, split_file: Path) -> Protocol:
    """Same categories: all 100 classes; training and validation images, queries and the retrieval set are
    disjoint shares of every class (``split_file``); R@K leave-one-out over query + retrieval."""
    split = json.loads(split_file.read_text())
    rels = split["query"] + split["retrieval"]
    classes = sorted({Path(r).parent.name for r in rels})
    num = {c: i for i, c in enumerate(classes)}
    nq = len(split["query"])
    return Protocol("same", f"same categories: all {len(classes)} classes, each class's images split into train / validation "
                    f"/ query / retrieval ({split_file.name}: {len(split['train'])} / {len(split['val'])} / {nq} / "
                    f"{len(split['retrieval'])})", [_resolve(root, r) for r in rels],
                    torch.tensor([num[Path(r).parent.name] for r in rels]), torch.arange(nq),
                    torch.arange(nq, len(rels)),
                    dict(data_root=str(root), image_split=str(split_file), target="same"))


def evaluate_on(pr: Protocol, vecs: torch.Tensor) -> dict:
    """R@1/R@5/mAP leave-one-out over the test images, and the query -> retrieval top-1."""
    m = retrieval_metrics(vecs, pr.labels, ks=(1, 5))
    m["top1"] = query_top1(vecs[pr.query], pr.labels[pr.query], vecs[pr.retrieval], pr.labels[pr.retrieval])
    return m


class FeatureStore:
    """Per image and view (0 = the whole image, 1 = its mirror; views as the trainer computes them), the raw
    SPoC, MAC and GeM and the R-MAC of the frozen ImageNet Lite0 at 224 px: (4, C) each, from one forward
    pass per image and view, kept on disk. Every protocol's test images and head-mode training caches are
    read from it, so an image is never run through the network twice (both protocols share images)."""

    POOLS = ("spoc", "mac", "gem", "rmac")

    def __init__(self, folder: Path, device: torch.device, threads: int) -> None:
        self.path = folder / "store_efficientnet_lite0_224.pt"
        self.device, self.threads = device, threads
        self.rows: dict[str, int] = {}
        self.desc = torch.zeros(0, 2, 4, 1280)
        self.has_mirror = torch.zeros(0, dtype=torch.bool)
        self.seconds = 0.0                      # spent computing in this process
        self.computed = 0                       # forward passes (image x view) in this process
        if self.path.is_file():
            c = torch.load(self.path, weights_only=True)
            self.rows = {p: i for i, p in enumerate(c["paths"])}
            self.desc, self.has_mirror = c["desc"], c["has_mirror"]

    def ensure(self, paths: list[str], mirror: bool) -> None:
        """Compute what ``paths`` lack (view 0, and view 1 when ``mirror``); save."""
        paths = list(dict.fromkeys(paths))
        both = [p for p in paths if p not in self.rows and mirror]
        only0 = [p for p in paths if p not in self.rows and not mirror]
        only1 = [p for p in paths if p in self.rows and mirror and not self.has_mirror[self.rows[p]]]
        if not (both or only0 or only1):
            return
        from models import pooling as P  # noqa: N812

        model = build_model_from_config(dict(backbone="efficientnet_lite0", weights="pretrained", image_size=224),
                                         self.device)

        def describe(x: torch.Tensor) -> torch.Tensor:
            f = model.backbone.forward_features(x).float()
            return torch.stack([P.spoc(f), P.mac(f), P.gem(f), P.rmac(f)], 1)

        def run(todo: list[str], views: int, flip: bool) -> torch.Tensor:
            """(n, views, 4, C); ``flip``: view 1 alone (the mirror: flipping commutes with normalising)."""
            t = time.perf_counter()
            log.info("computing %s of %d images (once; kept in %s)", "the mirror view" if flip else f"{views} view(s)",
                     len(todo), self.path)
            got, _ok, sk = compute_pooled_features(
                model, todo, image_size=224, views=views, seed=0, device=self.device, threads=self.threads,
                encode=(lambda x: describe(x.flip(-1))) if flip else describe,
                progress=lambda d, n, m: log.info("  %d / %d images", d, n) if d % 512 < 32 or d == n else None)
            if sk:
                raise RuntimeError(f"unreadable images: {sk[:3]}")
            self.seconds += time.perf_counter() - t
            self.computed += len(todo) * views
            return got

        new = both + only0
        for p in new:
            self.rows[p] = len(self.rows)
        self.desc = torch.cat([self.desc, torch.zeros(len(new), 2, 4, self.desc.shape[-1])])
        self.has_mirror = torch.cat([self.has_mirror, torch.zeros(len(new), dtype=torch.bool)])
        for todo, views, flip in ((both, 2, False), (only0, 1, False), (only1, 1, True)):
            if not todo:
                continue
            idx = torch.tensor([self.rows[p] for p in todo])
            got = run(todo, views, flip)
            if flip:
                self.desc[idx, 1] = got[:, 0]
            else:
                self.desc[idx, :views] = got
            if views == 2 or flip:
                self.has_mirror[idx] = True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"paths": list(self.rows), "desc": self.desc, "has_mirror": self.has_mirror}, self.path)

    def pooled(self, paths: list[str], pooling: str, views: int = 1) -> torch.Tensor:
        """(N, views, C) raw pooled features (``pooling``: spoc, mac, gem)."""
        return self.desc[torch.tensor([self.rows[p] for p in paths]), :views, self.POOLS.index(pooling)].clone()

    def untrained(self, paths: list[str]) -> torch.Tensor:
        """(N, 4, C): the L2-normalised untrained SPoC, MAC, GeM and R-MAC of view 0."""
        return l2n(self.desc[torch.tensor([self.rows[p] for p in paths]), 0])

    def seed_training_cache(self, cfg: TrainConfig) -> None:
        """Write the head-mode feature cache ``train(cfg)`` will read (same features, same format), so that
        training does not run the network again over images the store already holds."""
        if cfg.mode != "head" or cfg.head_views > 2 or cfg.weights != "pretrained" or cfg.image_size != 224 \
                or cfg.backbone != "efficientnet_lite0":
            return
        paths = validation_split(cfg).images.paths
        target = feature_cache_path(cfg, paths)
        if target.is_file():
            return
        self.ensure(paths, mirror=cfg.head_views == 2)
        data = {"feats": self.pooled(paths, cfg.pooling, cfg.head_views), "ok": list(range(len(paths))),
                "skipped": [], "untrained": self.untrained(paths).half()}
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(data, target)


@torch.no_grad()
def embed_tail(pr: Protocol, ckpt: str, units: int, device: torch.device, threads: int, cache: Path) -> torch.Tensor:
    """A tail-mode model's embeddings of the test images: the trunk maps are computed once per protocol and
    unit count (float16, cached, like training), then the trained tail, pooling and head run on them."""
    path = cache / f"testmaps_{pr.name}_{units}_{device.type}.pt"
    if path.is_file():
        maps = torch.load(path, weights_only=True)
    else:
        base = build_model_from_config(dict(backbone="efficientnet_lite0", weights="pretrained", image_size=224),
                                       device)
        maps, _ok, sk = compute_pooled_features(base, pr.paths, image_size=224, views=1, seed=0, device=device,
                                                threads=threads,
                                                encode=lambda x: base.backbone.forward_trunk(x, units).half())
        if sk:
            raise RuntimeError(f"unreadable test images: {sk[:3]}")
        maps = maps[:, 0]
        torch.save(maps, path)
    tb = load_trained_backbone(ckpt, device=str(device))
    return torch.cat([tb.model.embed_fmap(tb.model.backbone.forward_tail(maps[s:s + 256].to(device).float(), units))
                      .cpu() for s in range(0, len(maps), 256)])


def embed_trained(pr: Protocol, ckpt: str, cfg: TrainConfig, feats: torch.Tensor, device: torch.device,
                  threads: int, cache: Path) -> torch.Tensor:
    """The test embeddings of a checkpoint, computed the cheapest exact way for its mode."""
    if cfg.mode == "head":
        ck = torch.load(ckpt, map_location="cpu", weights_only=True)
        w, b = ck["model"]["head.fc.weight"], ck["model"]["head.fc.bias"]
        return l2n(feats @ w.t() + b)
    if cfg.mode == "tail":
        return embed_tail(pr, ckpt, cfg.tail_units, device, threads, cache)
    return embed_full(ckpt, pr.paths, cfg.image_size, device, threads)


# --- multi-scale + Lw evaluation of tail checkpoints (issue 12) ---------------------------------------
def trunk_maps(paths: list[str], units: int, scales: tuple[int, ...], cache: Path, crop: float = 224 / 227,
               ) -> dict[int, torch.Tensor]:
    """Per size, the float16 maps (N, C, h, w) entering the last ``units`` units of the ImageNet Lite0 for
    ``paths`` (kept in ``cache``; ONNX Runtime when installed)."""
    import numpy as np

    from engine.extraction import iter_extract
    from engine.runtime import feature_runner
    from engine.vocabulary import ModelSpec
    from models.registry import get_backbone

    key = hashlib.sha1("\n".join(paths).encode()).hexdigest()[:12]
    files = {s: cache / f"trunk{units}_{s}_{crop:.4f}_{key}.npy" for s in scales}
    todo = [s for s in scales if not files[s].is_file()]
    if todo:
        bb = get_backbone("efficientnet_lite0", weights="pretrained")
        ident = ModelSpec().backbone_identity()  # the trunk's export: <identity>-trunk<units>, as training's
        runners = {s: feature_runner(bb.eval(), s, ident, cache / "runtimes", trunk=units) for s in todo}
        chunks: dict[int, list] = {s: [] for s in todo}

        def compute(xs):
            xs = xs if isinstance(xs, tuple) else (xs,)
            return {str(s): runners[s](x).half() for s, x in zip(todo, xs, strict=True)}

        t0 = time.perf_counter()
        n = 0
        for b in iter_extract(paths, compute, image_size=tuple(todo) if len(todo) > 1 else todo[0], mean=bb.mean,
                              std=bb.std, crop_fraction=crop, batch_size=32):
            if b.skipped:
                raise RuntimeError(f"unreadable images: {b.skipped[:3]}")
            for s in todo:
                chunks[s].append(b.vectors[str(s)].astype(np.float16))
            n = b.done
            if n % 512 < 32 or n == b.total:
                log.info("trunk maps at %s: %d / %d images (%.1f images/s)", todo, n, b.total,
                         n / (time.perf_counter() - t0))
        cache.mkdir(parents=True, exist_ok=True)
        for s in todo:
            np.save(files[s], np.concatenate(chunks[s]))
    return {s: torch.from_numpy(np.load(files[s])) for s in scales}


@torch.no_grad()
def tail_vectors(backbone: torch.nn.Module, units: int, maps: dict[int, torch.Tensor], describe) -> dict:
    """Per size, ``describe(fmap)`` (B, D) of the full feature maps the tail of ``backbone`` makes from
    ``maps``; L2-normalised float32 numpy (N, D)."""
    out = {}
    for s, m in maps.items():
        parts = [describe(backbone.forward_tail(m[a:a + 128].float(), units)).float()
                 for a in range(0, len(m), 128)]
        out[s] = l2n(torch.cat(parts)).numpy()
    return out


def wise_state(theta0: dict[str, torch.Tensor], theta1: dict[str, torch.Tensor], a: float) -> dict[str, torch.Tensor]:
    """WiSE-FT (Wortsman et al. 2022): the state dict (1 - a) theta0 + a theta1 for every floating-point
    tensor (weights and BatchNorm statistics); integer buffers (e.g. num_batches_tracked) come from theta1."""
    if theta0.keys() != theta1.keys():
        raise ValueError("the two state dicts have different keys: not the same model")
    return {k: (1.0 - a) * v0 + a * theta1[k] if v0.is_floating_point() else theta1[k].clone()
            for k, v0 in theta0.items()}


def run_val_classes(config: dict, root: Path) -> list[str]:
    """The validation classes a training run carved for itself (the trainer's own split of its config:
    protocol new carves whole classes with the run's seed); the model never trained on them."""
    cfg = TrainConfig.from_dict({**config, "data_root": str(root / "images")})
    split = validation_split(cfg)
    imgs = split.images
    return sorted({imgs.classes[lab] for lab, v in zip(imgs.labels, split.is_val, strict=True) if v})


def lw_eval_rows(train_v: dict, test_v: dict, train_labels, val_mask, proto: dict,
                 sets: list[tuple[int, ...]]) -> list[dict]:
    """One model's rows, per size set without and with an Lw: test figures (R@1, mAP, top-1) and validation
    figures (``val_r1``, ``val_map``) on the train rows ``val_mask`` (numpy bool (N_train,)). ``train_v`` /
    ``test_v``: per size, L2-normalised (N, D) float32. The Lw's shrinkage and dimension are chosen by
    validation R@1, then mAP, learned on the other train rows; the test rows get it learned again on all
    train rows with that choice. Nothing of the test rows chooses anything."""
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import descriptors as B  # benchmarks/descriptors.py: the same grid and figures as the untrained table

    from models.whitening import PCAWhitening

    labels = np.asarray(train_labels)
    li, vi = np.flatnonzero(~val_mask), np.flatnonzero(val_mask)
    rows = []
    for sizes in sets:
        name = sizes_label(sizes)
        comb = lambda views, idx=slice(None), sizes=sizes: B.l2n(sum(views[s][idx] for s in sizes))  # noqa: E731
        plain = comb(test_v)
        m = B.figures(plain, proto["labels"], proto)
        vn = B.figures(comb(train_v, vi), labels[vi])
        rows.append({"sizes": name, "whitening": "none", "r1": m["recall@1"], "map": m["map"], "top1": m["top1"],
                     "val_r1": vn["recall@1"], "val_map": vn["map"]})
        grid = []
        val_x = comb(train_v, vi)
        for w in PCAWhitening.fit_lw_many(comb(train_v, li), labels[li], B.SHRINKAGES):
            for d in B.DIMS:
                wd = w.truncated(d) if d else w
                g = B.figures(B.l2n(wd.apply(val_x)), labels[vi])
                grid.append({"shrinkage": w.meta["shrinkage"], "dim": wd.out_dim, "r1": g["recall@1"],
                             "map": g["map"]})
        best = max(grid, key=lambda g: (round(g["r1"], 6), g["map"]))
        full = comb(train_v)
        w = PCAWhitening.fit_lw(full, labels, dim=best["dim"] if best["dim"] < full.shape[1] else None,
                                shrinkage=best["shrinkage"])
        m = B.figures(B.l2n(w.apply(plain)), proto["labels"], proto)
        rows.append({"sizes": name, "whitening": f"Lw s={best['shrinkage']:g} d={w.out_dim}", "r1": m["recall@1"],
                     "map": m["map"], "top1": m["top1"], "val_r1": best["r1"], "val_map": best["map"]})
    return rows


def ms_lw_table(root: Path, runs: list[tuple[str, str, int]], scales: tuple[int, ...], cache: Path,
                units: int, results: dict, wise: tuple[float, ...] | None = None) -> None:
    """Untrained GeM and every tail checkpoint (label, path, seed) evaluated alike: single size and
    ``scales`` summed, without and with an Lw. Per run, the validation classes are the run's own (carved by
    the trainer, never trained on), for both models; the Lw is learned on the other train classes for the
    choice, then on all 50 for the test classes. With ``wise`` the checkpoint is also evaluated as the
    WiSE-FT interpolation theta_a = (1 - a) theta_0 + a theta_1 (theta_0: the tail as the trainer
    initialised it, theta_1: the checkpoint); a = 0 is the untrained GeM. Per seed, (a, sizes, whitening)
    is chosen by validation R@1, ties by validation mAP."""
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import descriptors as B  # benchmarks/descriptors.py: the same evaluation as the untrained table

    from models.pooling import gem
    from models.registry import get_backbone

    proto = B.load_protocol(root.resolve())
    train_labels = np.asarray(proto["train_labels"])
    t0 = time.perf_counter()
    train_maps = trunk_maps(proto["train"], units, scales, cache)
    test_maps = trunk_maps(proto["test"], units, scales, cache)
    log.info("trunk maps ready in %.0f s", time.perf_counter() - t0)
    sets = [(scales[0],), tuple(scales)] if len(scales) > 1 else [tuple(scales)]
    bb = get_backbone("efficientnet_lite0", weights="pretrained").eval()
    untrained = (tail_vectors(bb, units, train_maps, lambda f: gem(f.float())),
                 tail_vectors(bb, units, test_maps, lambda f: gem(f.float())))
    log.info("untrained GeM vectors ready")
    grid_a = tuple(sorted(set(wise or ()) | {0.0, 1.0}))
    # per label: per seed: {"seed", "val_classes", "rows": {a: rows}}; a = 0 is the untrained GeM
    per_label: dict[str, list[dict]] = {}
    for label, ckpt, seed in runs:
        tb = load_trained_backbone(ckpt)
        val_cls = run_val_classes(tb.config, root)
        val_mask = np.isin(train_labels, val_cls)
        if tb.config.get("embedding_dim", 0) not in (0, tb.model.backbone.feature_dim):
            raise SystemExit(f"{ckpt}: a random-projection head has no untrained counterpart for WiSE-FT")
        theta1 = {k: v.clone() for k, v in tb.model.state_dict().items()}
        theta0 = build_model_from_config(tb.config, "cpu", weights="pretrained").state_dict()
        trained = {id(p) for m in tb.model.backbone.tail_modules(units) for p in m.parameters()}
        trained |= {id(p) for p in tb.model.head.parameters()}
        trained_names = {n for n, p in tb.model.named_parameters() if id(p) in trained}
        moved = max(((theta0[k].float() - theta1[k].float()).abs().max().item() for k in theta0
                     if k not in trained_names and theta0[k].is_floating_point()), default=0.0)
        log.info("%s: %d validation classes of the run (%d images); frozen weights differ from the ImageNet ones "
                 "by at most %.2g", Path(ckpt).parent.name, len(val_cls), int(val_mask.sum()), moved)
        entry = {"seed": seed, "val_classes": val_cls, "rows": {}}
        for a in grid_a:
            t = time.perf_counter()
            if a == 0.0:
                tr, te = untrained
            else:
                tb.model.load_state_dict(wise_state(theta0, theta1, a))
                tb.model.eval()
                tr = tail_vectors(tb.model.backbone, units, train_maps, tb.model.embed_fmap)
                te = tail_vectors(tb.model.backbone, units, test_maps, tb.model.embed_fmap)
            entry["rows"][a] = lw_eval_rows(tr, te, train_labels, val_mask, proto, sets)
            log.info("%s a=%g: %.0f s; %s", Path(ckpt).parent.name, a, time.perf_counter() - t,
                     "; ".join(f"{r['sizes']} {r['whitening']} val {r['val_r1']:.4f}/{r['val_map']:.4f} "
                               f"test {r['r1']:.4f}" for r in entry["rows"][a]))
        per_label.setdefault(label, []).append(entry)
    print(f"\n## cub100 new categories, multi-scale + Lw: tail checkpoints and the untrained GeM evaluated alike "
          f"(sizes {sizes_label(scales)}, crop 224/227; per seed, the validation classes are the run's own "
          f"10 (carved by the trainer from classes 0-49, never trained on), for both models; the Lw is chosen "
          f"on them, learned on the other 40, and learned again on all 50 for the test classes)\n")
    for label, seeds in per_label.items():
        results[f"ms_lw/{label}"] = [{**e, "rows": {str(a): r for a, r in e["rows"].items()}} for e in seeds]
        n = len(seeds)
        print(f"### {label}, {n} seed(s) ({', '.join(str(e['seed']) for e in seeds)}): every evaluation, "
              f"test figures mean +- std over seeds (for the record), validation figures (the run's classes)\n")
        print("| WiSE a | sizes | whitening | val R@1 | val mAP | R@1 | mAP | top-1 |")
        print("|---|---|---|---|---|---|---|---|")
        for a in grid_a:
            for i, r0 in enumerate(seeds[0]["rows"][a]):
                rows = [e["rows"][a][i] for e in seeds]
                f = {k: [r[k] for r in rows] for k in ("r1", "map", "top1", "val_r1", "val_map")}
                wh = r0["whitening"] if n == 1 else ("Lw (per seed)" if r0["whitening"] != "none" else "none")
                who = " (untrained GeM)" if a == 0.0 else (" (best.pt)" if a == 1.0 else "")
                print(f"| {a:g}{who} | {r0['sizes']} | {wh} | {_mean_std(f['val_r1'])} | {_mean_std(f['val_map'])} "
                      f"| {_mean_std(f['r1'])} | {_mean_std(f['map'])} | {_mean_std(f['top1'])} |")
        print("\nchosen per seed on validation (R@1, ties by mAP):\n")
        print("| seed | model | WiSE a | sizes | whitening | val R@1 | val mAP | R@1 | mAP | top-1 |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        picks: dict[str, list[dict]] = {"untrained GeM": [], "best.pt (a = 1)": [], "WiSE-FT, a chosen": []}
        for e in seeds:
            cands = {"untrained GeM": [(0.0, r) for r in e["rows"][0.0]],
                     "best.pt (a = 1)": [(1.0, r) for r in e["rows"][1.0]],
                     "WiSE-FT, a chosen": [(a, r) for a, rs in e["rows"].items() for r in rs]}
            for who, cand in cands.items():
                if who == "WiSE-FT, a chosen" and not wise:
                    continue
                a, r = _pick_by_val(cand)
                picks[who].append({**r, "a": a})
                print(f"| {e['seed']} | {who} | {a:g} | {r['sizes']} | {r['whitening']} | {r['val_r1']:.4f} | "
                      f"{r['val_map']:.4f} | {r['r1']:.4f} | {r['map']:.4f} | {r['top1']:.4f} |")
        ref = np.array([r["r1"] for r in picks["untrained GeM"]])
        results[f"ms_lw/{label}/picked"] = picks
        for who in ("best.pt (a = 1)", "WiSE-FT, a chosen"):
            if not picks[who]:
                continue
            r1 = np.array([r["r1"] for r in picks[who]])
            mp = np.array([r["map"] for r in picks[who]])
            gain = r1.mean() - ref.mean()
            sd = r1.std(ddof=1) if len(r1) > 1 else float("nan")
            ok = gain >= 0.01 and gain > 2 * sd and r1.mean() >= 0.92
            print(f"\n{label}, {who}, evaluation chosen on validation per seed: R@1 {_mean_std(list(r1))} (mAP "
                  f"{_mean_std(list(mp))}) against the untrained GeM chosen the same way {_mean_std(list(ref))} "
                  f"(mAP {_mean_std([r['map'] for r in picks['untrained GeM']])}): R@1 gain {gain:+.4f} (2 sd = "
                  f"{2 * sd:.4f}); goal (+0.010, > 2 sd, R@1 >= 0.92) {'reached' if ok else 'NOT reached'}")
    sys.stdout.flush()


def _pick_by_val(cands: list[tuple[float, dict]]) -> tuple[float, dict]:
    """Of the candidate evaluations (WiSE a, row) of one model and seed, the one with the best VALIDATION
    R@1, ties broken by validation mAP (then the first); never a test figure."""
    return max(cands, key=lambda c: (round(c[1]["val_r1"], 6), c[1]["val_map"]))


def _mean_std(values: list[float]) -> str:
    v = torch.tensor(values, dtype=torch.float64)
    return f"{v.mean():.4f} +- {v.std(unbiased=True) if v.numel() > 1 else 0.0:.4f}"


def run_protocol(pr: Protocol, args: argparse.Namespace, device: torch.device, threads: int, out: Path,
                 overrides: dict, results: dict, store: FeatureStore) -> None:
    """Untrained rows, then every mode x batch x variant x seed; prints the protocol's tables."""
    cache = out / "cache"
    pool = args.pooling
    t0 = time.perf_counter()
    store.ensure(pr.paths, mirror=False)
    feats, untrained = store.pooled(pr.paths, pool)[:, 0], store.untrained(pr.paths)
    rows: list[tuple] = []
    best_untrained: dict[str, tuple[str, float]] = {}
    for j, k in enumerate(UNTRAINED):
        m = evaluate_on(pr, untrained[:, j])
        results[f"{pr.name}/untrained_{k}"] = m
        rows.append((f"untrained {UNTRAINED_LABELS[k]} (ImageNet)", "-", m, None, float("nan"), float("nan")))
        for key in ("recall@1", "top1", "map"):
            if key not in best_untrained or m[key] > best_untrained[key][1]:
                best_untrained[key] = (UNTRAINED_LABELS[k], m[key])
    log.info("%s: untrained descriptors in %.0f s", pr.name, time.perf_counter() - t0)
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    batches = [tuple(int(v) for v in b.split("x")) for b in args.batches.split(",") if b.strip()]
    summary: dict[str, list[dict]] = {}
    for mode in [m for m in args.modes.split(",") if m]:
        for P, K in batches:  # noqa: N806
            for variant in [v for v in args.variants.split(",") if v]:
                for seed in seeds:
                    name = f"{pr.name}_{mode}_{P}x{K}_{variant}_s{seed}"
                    what = (f"tail ({overrides.get('tail_units', TrainConfig.tail_units)} units)" if mode == "tail"
                            else mode)
                    label = f"{what}, {P} x {K}: {'triplet + memory' if variant == 'xbm' else 'triplet'}"
                    cfg = TrainConfig(**pr.train_kw, mode=mode, memory=(variant == "xbm"), pooling=pool,
                                      iterations=args.iterations, val_every=args.val_every, classes_per_batch=P,
                                      samples_per_class=K, device=str(device), out_dir=str(out / name), name=name,
                                      seed=seed, cache_dir=str(cache), num_threads=args.threads)
                    for k, v in overrides.items():
                        setattr(cfg, k, v)
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    rates: list[float] = []
                    last = out / name / "last.pt"
                    resume = args.resume and last.is_file()
                    if not resume and (out / name).exists():
                        shutil.rmtree(out / name)  # this script's own run folder of an earlier invocation
                    store.seed_training_cache(cfg)
                    t = time.perf_counter()
                    res = train(cfg, on_event=lambda e, r=rates: r.append(e.images_per_s)
                                if e.kind == "iteration" else None, resume_from=last if resume else None)
                    wall = time.perf_counter() - t
                    m = evaluate_on(pr, embed_trained(pr, res.best_checkpoint_path, cfg, feats, device, threads, cache))
                    ml = evaluate_on(pr, embed_trained(pr, res.checkpoint_path, cfg, feats, device, threads, cache))
                    m.update(best_iteration=res.best_iteration, select_metric=res.select_metric,
                             val_best=res.best_val_metrics, val_last=res.val_metrics,
                             val_untrained=res.untrained_val_metrics, last=ml, stopped=res.stopped_reason,
                             train_images_per_s=rates[-1] if rates else 0.0, wall_s=wall, peak_mb=peak_mem_mb(device))
                    results[f"{pr.name}/{name}"] = m
                    rows.append((label + (f" (seed {seed})" if len(seeds) > 1 else ""), res.best_iteration, m, ml,
                                 m["train_images_per_s"], wall))
                    summary.setdefault(label, []).append(m)
                    log.info("%s: R@1 %.4f top-1 %.4f mAP %.4f (last.pt %.4f / %.4f), best it %d, %.0f s", name,
                             m["recall@1"], m["top1"], m["map"], ml["recall@1"], ml["top1"], res.best_iteration, wall)

    print(f"\n## cub100, {pr.title}; device: {results['gpu'] or 'cpu'} ({threads} threads), torch {torch.__version__}"
          f"\n\nbest.pt: the checkpoint with the best validation "
          f"{SELECT_LABELS[overrides.get('select_metric', TrainConfig.select_metric)]}\n")
    print("| model | best.pt it | R@1 | R@5 | top-1 (q->r) | mAP | last.pt R@1 | last.pt top-1 | train img/s | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, it, m, ml, rate, wall in rows:
        lr = "-" if ml is None else f"{ml['recall@1']:.4f}"
        lt = "-" if ml is None else f"{ml['top1']:.4f}"
        print(f"| {label} | {it} | {m['recall@1']:.4f} | {m['recall@5']:.4f} | {m['top1']:.4f} | {m['map']:.4f} | "
              f"{lr} | {lt} | {'-' if rate != rate else f'{rate:.0f}'} | {'-' if wall != wall else f'{wall:.0f}'} |")
    bu = {k: v[1] for k, v in best_untrained.items()}
    print(f"\nbest untrained descriptor on these test images: R@1 {bu['recall@1']:.4f} ({best_untrained['recall@1'][0]}), "
          f"top-1 {bu['top1']:.4f} ({best_untrained['top1'][0]}), mAP {bu['map']:.4f} ({best_untrained['map'][0]})")
    if summary:
        print(f"\nmean +- std over seeds {seeds}; gain = mean minus the best untrained descriptor's figure:\n")
        print("| model | R@1 | top-1 (q->r) | mAP | R@1 gain | top-1 gain | last.pt R@1 | last.pt top-1 |")
        print("|---|---|---|---|---|---|---|---|")
        for label, ms in summary.items():
            mean = {k: sum(m[k] for m in ms) / len(ms) for k in ("recall@1", "top1", "map")}
            gains = {k: mean[k] - bu[k] for k in ("recall@1", "top1")}
            print(f"| {label} | {_mean_std([m['recall@1'] for m in ms])} | {_mean_std([m['top1'] for m in ms])} | "
                  f"{_mean_std([m['map'] for m in ms])} | {gains['recall@1']:+.4f} | {gains['top1']:+.4f} | "
                  f"{_mean_std([m['last']['recall@1'] for m in ms])} | {_mean_std([m['last']['top1'] for m in ms])} |")
            results[f"{pr.name}/mean/{label}"] = dict(mean=mean, gains=gains, n=len(ms))
        default = (f"head, {TrainConfig.classes_per_batch} x {TrainConfig.samples_per_class}: "
                   f"{'triplet + memory' if TrainConfig.memory else 'triplet'}")
        if pr.name == "same" and default in summary and not overrides \
                and pool == TrainConfig.pooling and args.iterations == TrainConfig.iterations:
            g = results[f"same/mean/{default}"]["gains"]
            ok = g["recall@1"] >= 0.05 and g["top1"] >= 0.05
            print(f"\ngoal (the default same-categories run, {default}, at least +0.05 of top-1 and of R@1 over the "
                  f"best untrained descriptor, mean over seeds): {'reached' if ok else 'NOT reached'} "
                  f"(R@1 {g['recall@1']:+.4f}, top-1 {g['top1']:+.4f})")
    sys.stdout.flush()


def _train_tail_runs(pr: Protocol, args: argparse.Namespace, device: torch.device, out: Path,
                     overrides: dict) -> None:
    """Train the tail runs of protocol ``pr`` (every batch x variant x seed) without the single-size
    evaluation of run_protocol; the checkpoints land in ``out/<run name>``."""
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    batches = [tuple(int(v) for v in b.split("x")) for b in args.batches.split(",") if b.strip()]
    for P, K in batches:  # noqa: N806
        for variant in [v for v in args.variants.split(",") if v]:
            for seed in seeds:
                name = f"{pr.name}_tail_{P}x{K}_{variant}_s{seed}"
                cfg = TrainConfig(**pr.train_kw, mode="tail", memory=(variant == "xbm"), pooling=args.pooling,
                                  iterations=args.iterations, val_every=args.val_every, classes_per_batch=P,
                                  samples_per_class=K, device=str(device), out_dir=str(out / name), name=name,
                                  seed=seed, cache_dir=str(out / "cache"), num_threads=args.threads)
                for k, v in overrides.items():
                    setattr(cfg, k, v)
                last = out / name / "last.pt"
                resume = args.resume and last.is_file()
                if not resume and (out / name).exists():
                    shutil.rmtree(out / name)
                t = time.perf_counter()
                res = train(cfg, resume_from=last if resume else None)
                log.info("%s: best it %d (val %s), %.0f s", name, res.best_iteration, res.best_val_metrics,
                         time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data/cub100")
    ap.add_argument("--protocols", default="same,new", help="comma list: same (same categories, --split), new "
                    "(class-disjoint: train 0-49, test 50-99)")
    ap.add_argument("--split", default=str(SAME_SPLIT), help="the same-categories split file (paths relative to "
                    "--data)")
    ap.add_argument("--make-split", action="store_true", help="write the same-categories split of --data to --split "
                    "and stop")
    ap.add_argument("--modes", default="head", help="comma list of head, tail, full")
    ap.add_argument("--seeds", default="0", help="comma list of training seeds; with several, each run is repeated "
                    "per seed and mean +- std rows follow (in 'new', the seed also draws the validation classes)")
    ap.add_argument("--variants", default="triplet,xbm", help="comma list of triplet, xbm")
    ap.add_argument("--batches", default=f"{TrainConfig.classes_per_batch}x{TrainConfig.samples_per_class}",
                    help="comma list of P x K batch shapes, e.g. 32x4,8x4 (default: train's)")
    ap.add_argument("--pooling", default=TrainConfig.pooling, help="pooling of the trained models (mac, gem, spoc; "
                    "default: train's); every untrained descriptor (SPoC, MAC, GeM, R-MAC) is reported beside them")
    ap.add_argument("--iterations", type=int, default=TrainConfig.iterations, help="(default: train's)")
    ap.add_argument("--val-every", type=int, default=TrainConfig.val_every, help="(default: train's)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default="bench_out/train")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="override a TrainConfig field for every run, e.g. --set head_views=4")
    ap.add_argument("--bare-step", action="store_true", help="bare step vs loop throughput (batch 256 on CUDA, 32 on the CPU)")
    ap.add_argument("--json", help="also write all results to this file")
    ap.add_argument("--eval-scales", default=None, help="protocol new, tail mode: also evaluate every checkpoint "
                    "and the untrained GeM at these sizes summed, with Lw chosen on validation classes (e.g. "
                    "224,288,352)")
    ap.add_argument("--wise", default=None, help="with --eval-scales: also evaluate each checkpoint as the WiSE-FT "
                    "interpolation (1 - a) theta_0 + a theta_1 of its initial and trained weights at these a (e.g. "
                    "0,0.25,0.5,0.75,1), a chosen per seed on the run's validation classes")
    ap.add_argument("--eval-only", action="store_true", help="with --eval-scales: evaluate the tail checkpoints "
                    "(best.pt) already under --out, without training")
    ap.add_argument("--resume", action="store_true", help="continue each run from its last.pt when there is one "
                    "(e.g. after the machine ran out of memory); rates and wall time then cover the resumed part")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    root = Path(args.data)
    if args.make_split:
        d = make_same_split(root)
        Path(args.split).parent.mkdir(parents=True, exist_ok=True)
        body = ",\n".join(f" {json.dumps(k)}: [\n" + ",\n".join(f"  {json.dumps(p)}" for p in d[k]) + "\n ]"
                          for k in ("train", "val", "query", "retrieval"))
        Path(args.split).write_text(f'{{\n "protocol": {json.dumps(d["protocol"])},\n{body}\n}}\n', encoding="utf-8")
        print(f"wrote {args.split}: " + ", ".join(f"{k} {len(d[k])}" for k in ("train", "val", "query", "retrieval")))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = args.threads or torch.get_num_threads()
    device = torch.device(resolve_device(args.device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    out = Path(args.out)
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    results: dict = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda"
                     else None, "threads": threads, "torch": torch.__version__, "overrides": overrides,
                     "load_before": os.getloadavg()}
    t_all = time.perf_counter()
    if args.eval_scales:
        from models.descriptors import parse_scales

        scales = parse_scales(args.eval_scales)
        units = int(overrides.get("tail_units", TrainConfig.tail_units))
        if not args.eval_only:
            for pr in [protocol_new(root)]:
                _train_tail_runs(pr, args, device, out, overrides)
        runs = []
        for d in sorted(out.glob("new_tail_*")):
            ck = d / "best.pt"
            if ck.is_file():
                variant = "triplet + memory" if "_xbm_" in d.name else "triplet"
                runs.append((f"tail ({units} units), {d.name.split('_')[2]}: {variant}", str(ck),
                             int(d.name.rsplit("_s", 1)[1])))
        if not runs:
            raise SystemExit(f"no tail checkpoint (new_tail_*/best.pt) under {out}")
        wise = tuple(float(x) for x in args.wise.split(",") if x.strip()) if args.wise else None
        if wise and not all(0.0 <= a <= 1.0 for a in wise):
            raise SystemExit(f"--wise: every a must lie in [0, 1], got {args.wise}")
        ms_lw_table(root, runs, scales, out / "cache", units, results, wise)
        results.update(wall_s=time.perf_counter() - t_all, load_after=os.getloadavg())
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
        print(f"\nwhole run: {results['wall_s'] / 60:.1f} min wall; load average before "
              f"{results['load_before'][0]:.2f}, after {results['load_after'][0]:.2f}")
        return 0
    store = FeatureStore(out / "cache", device, threads)
    protocols = [protocol_same(root, Path(args.split)) if name == "same" else protocol_new(root)
                 for name in args.protocols.split(",") if name]
    # every image through the network once: first both views of every image some head-mode run trains or
    # validates on, then view 0 of the remaining test images
    if "head" in args.modes.split(",") and overrides.get("head_views", TrainConfig.head_views) == 2:
        cfgs = [TrainConfig(**pr.train_kw) for pr in protocols]
        for cfg in cfgs:
            for k, v in overrides.items():
                setattr(cfg, k, v)
        store.ensure([p for cfg in cfgs for p in validation_split(cfg).images.paths], mirror=True)
    for pr in protocols:
        store.ensure(pr.paths, mirror=False)
    for pr in protocols:
        run_protocol(pr, args, device, threads, out, overrides, results, store)
        if args.json:  # a copy after each protocol
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    results.update(wall_s=time.perf_counter() - t_all, load_after=os.getloadavg(), features_s=store.seconds,
                   forward_passes=store.computed,
                   cpu_s=resource.getrusage(resource.RUSAGE_SELF).ru_utime
                   + resource.getrusage(resource.RUSAGE_SELF).ru_stime)
    print(f"\nwhole run: {results['wall_s'] / 60:.1f} min wall, {results['cpu_s'] / 60:.1f} min CPU (this process), "
          f"of which {store.seconds / 60:.1f} min wall computing {store.computed} image views once; load average "
          f"before {results['load_before'][0]:.2f}, after {results['load_after'][0]:.2f}")
    img_root = root / "images"
    split = json.loads((root / "class_split.json").read_text()) if args.bare_step else {}
    if args.bare_step:
        # CUDA: batch 256 (32 x 8), eager and compiled. CPU: batch 32 (8 x 4), eager only (a data point
        # for the loop's own cost; without a GPU there is no queue for host syncs to drain)
        cuda = device.type == "cuda"
        P, K = (32, 8) if cuda else (8, 4)  # noqa: N806
        steps, warm, loop_its, last = (20, 8, 50, 30) if cuda else (4, 1, 8, 6)
        modes = (False, True) if cuda else (False,)
        bs = {"batch": P * K}
        for compiled in modes:
            try:
                bs["compile" if compiled else "eager"] = bare_step(device, P * K, steps, compiled, warm)
            except Exception as exc:  # report, don't lose the other numbers
                bs["compile" if compiled else "eager"] = f"failed: {exc}"[:300]
        for compiled in modes:
            key = "loop_compile" if compiled else "loop_eager"
            try:
                rates = []
                if (out / key).exists():
                    shutil.rmtree(out / key)
                cfg = TrainConfig(data_root=str(img_root), train_classes=list(split["train_classes"]), mode="full",
                                  target="new", memory=True, warmup_iters=0, iterations=loop_its, val_every=10_000,
                                  classes_per_batch=P, samples_per_class=K, device=str(device),
                                  out_dir=str(out / key), name=key, extra={"compile": compiled},
                                  num_threads=args.threads)
                train(cfg, on_event=lambda e, r=rates: r.append(e.images_per_s) if e.kind == "iteration" else None)
                # steady state: images/s over the last iterations (compilation and warm-up excluded)
                bs[key] = _steady_rate(rates, P * K, last)
            except Exception as exc:
                bs[key] = f"failed: {exc}"[:300]
        results["bare_step"] = bs

    if "bare_step" in results:
        bs = results["bare_step"]
        how = "bf16, channels_last" if device.type == "cuda" else f"float32, {threads} CPU threads"
        print(f"\n| EfficientNet-Lite0, batch {bs['batch']}, {how} | eager img/s | torch.compile img/s |")
        print("|---|---|---|")
        print(f"| bare step (fwd + bwd + AdamW) | {_fmt(bs.get('eager'))} | {_fmt(bs.get('compile', '-'))} |")
        print(f"| full training loop (P x K, memory on) | {_fmt(bs.get('loop_eager'))} | "
              f"{_fmt(bs.get('loop_compile', '-'))} |")
        for k in ("eager", "compile"):
            a, b = bs.get(f"loop_{k}"), bs.get(k)
            if isinstance(a, float) and isinstance(b, float):
                print(f"\nloop / bare ({k}): {a / b:.1%}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


def _steady_rate(cumulative_rates: list[float], batch: int, last: int = 30) -> float:
    """The trainer reports cumulative images/s (one event per iteration, figures read every log_every
    iterations); recover the rate over the ``last`` iterations."""
    n = len(cumulative_rates)
    if n <= last:
        return cumulative_rates[-1]
    t_end = n * batch / cumulative_rates[-1]
    t_mid = (n - last) * batch / cumulative_rates[n - last - 1]
    return last * batch / (t_end - t_mid)


def _fmt(v) -> str:
    return f"{v:.0f}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    sys.exit(main())
