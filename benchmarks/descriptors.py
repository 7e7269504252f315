"""Untrained descriptors on cub100 (PROTOCOL.md): spoc, mac, gem, rmac at single and multiple input sizes,
without and with learned whitening (Lw), R@1, mAP, top-1 and images/s.

One pass over the train (0-49) and test (50-99) classes computes, per image and per input size, the
feature map once (ONNX Runtime through engine.runtime.feature_runner, one export per size) and pools
every descriptor from it; R-MAC also keeps its regional vectors (whole map + grid), which its
whitening is learned on and applied to. Multi-scale rows sum the L2-normalised vectors of their sizes.

Whitening (Lw: within-class covariance whitened away, PCA of the whitened data, shrinkage towards a
multiple of the identity, rank cap): its shrinkage and dimension are chosen on VALIDATION classes
carved from the train classes (learn on 40, choose by R@1 then mAP on the other 10, seeded), then it is
learned again on all 50 train classes with those settings and applied to the test classes. No figure
of the test classes chooses anything.

images/s: the network and pooling time of the sizes of a row, on the test pass (decoding runs in
threads beside it, and is shared by the sizes of one image in the pass); so a multi-scale row costs
the sum of its sizes.

    python benchmarks/descriptors.py --data ../shared/data/cub100 [--cache /tmp/views.npz]

Prints markdown tables on stdout; progress and notes on stderr. ``--cache`` keeps the extracted
vectors (rerunning the analysis costs no extraction).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.cli.common import TextProgress  # noqa: E402
from engine.evaluation import evaluate  # noqa: E402
from engine.images import scan_images  # noqa: E402
from engine.splits import load_split  # noqa: E402
from engine.vectors import l2n  # noqa: E402 - the engine's one numpy L2 normalisation (benchmarks/train.py uses B.l2n)
from engine.vocabulary import sizes_label  # noqa: E402

log = logging.getLogger("bench.descriptors")

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cub100"
KINDS = ("spoc", "mac", "gem", "rmac")
SCALES = (224, 288, 352)
SCALE_SETS = ((224,), (288,), (352,), (224, 288), (224, 288, 352))
SHRINKAGES = (0.0, 0.1, 0.3, 0.5)
DIMS = (256, 512, None)
#: the size sets an Lw is learned for (every set is measured without whitening)
WHITEN_SETS = ((224,), (224, 288, 352))
VAL_CLASSES = 10


def load_protocol(data: Path, parts: tuple[str, ...] = ("train", "test")) -> dict:
    """Paths and labels of the train and/or test classes, and the query/retrieval split (as row
    indices into the test list)."""
    classes = json.loads((data / "class_split.json").read_text())
    images = data / "images"

    def files(names: list[str]) -> tuple[list[str], list[str]]:
        paths, labels = [], []
        for name in names:
            found = scan_images(images / name)
            if not found:
                raise FileNotFoundError(f"no images for class {name} under {images}")
            paths += [str(p) for p in found]
            labels += [name] * len(found)
        return paths, labels

    out: dict = {"train": [], "train_labels": []}
    if "train" in parts:
        out["train"], out["train_labels"] = files(classes["train_classes"])
    if "test" not in parts:
        return out
    test_paths, test_labels = files(classes["test_classes"])
    split = load_split(data / "query_retrieval_test.json")
    row = {p: i for i, p in enumerate(test_paths)}
    q = [row[str(data / rel)] for rel in split["query"]]
    r = [row[str(data / rel)] for rel in split["retrieval"]]
    out.update(test=test_paths, labels=test_labels, query=q, retrieval=r)
    return out


# --- extraction ------------------------------------------------------------------------------------
def extract_views(backbone: Any, identity: str, paths: Sequence[str], *, scales: Sequence[int] = SCALES,
                  kinds: Sequence[str] = KINDS, crop_fraction: float = 224 / 227, batch_size: int = 32,
                  cache_dir: Path, runtime: str = "auto", label: str = "") -> dict:
    """Per input size, every descriptor of every image from one feature map: ``views[(kind, size)]``
    (N, C) float32 L2-normalised; ``regions[size]`` (N, R, C) float16 L2-normalised R-MAC regions
    (when rmac is asked for); ``seconds[size]`` network + pooling time; ``runtime`` used; ``wall``."""
    import torch

    from engine.extraction import iter_extract
    from engine.runtime import feature_runner
    from models import pooling
    from models.descriptors import build_descriptor

    runners = {s: feature_runner(backbone, s, identity, cache_dir, runtime) for s in scales}
    heads = {k: build_descriptor(k, backbone) for k in kinds if k != "rmac"}
    seconds = dict.fromkeys(scales, 0.0)

    def compute(xs: Any) -> dict[str, torch.Tensor]:
        xs = xs if isinstance(xs, tuple) else (xs,)
        out: dict[str, torch.Tensor] = {}
        for s, x in zip(scales, xs, strict=True):
            t0 = time.perf_counter()
            fmap = runners[s](x).float()
            for k, h in heads.items():
                out[f"{k}@{s}"] = h.describe(fmap)
            if "rmac" in kinds:
                r = pooling.l2n(pooling.rmac_region_vectors(fmap, 3))  # (B, R, C), whole map first
                out[f"rmac@{s}"] = pooling.l2n(r.sum(dim=1))
                out[f"regions@{s}"] = r.reshape(r.shape[0], -1)
            seconds[s] += time.perf_counter() - t0
        return out

    size = tuple(scales) if len(scales) > 1 else scales[0]
    chunks: dict[str, list[np.ndarray]] = {}
    kept: list[str] = []
    progress = TextProgress(label)
    start = time.perf_counter()
    for b in iter_extract(paths, compute, image_size=size, mean=backbone.mean, std=backbone.std,
                          crop_fraction=crop_fraction, batch_size=batch_size):
        if b.skipped:
            raise RuntimeError(f"{len(b.skipped)} images could not be read: {b.skipped[0]}")
        kept += b.paths
        for name, v in b.vectors.items():
            chunks.setdefault(name, []).append(v.astype(np.float16) if name.startswith("regions@") else v)
        progress(b.done, b.total, "")
    wall = time.perf_counter() - start
    views: dict = {}
    regions: dict = {}
    for name, parts in chunks.items():
        kind, s = name.split("@")
        arr = np.concatenate(parts)
        if kind == "regions":
            regions[int(s)] = arr.reshape(arr.shape[0], -1, backbone.feature_dim)
        else:
            views[(kind, int(s))] = arr
    return {"views": views, "regions": regions, "seconds": seconds, "wall": wall, "paths": kept,
            "runtime": {s: r.name for s, r in runners.items()}}


def save_views(path: Path, ext: dict) -> None:
    arrays = {f"v|{k}|{s}": v for (k, s), v in ext["views"].items()}
    arrays.update({f"r|{s}": v for s, v in ext["regions"].items()})
    meta = {"seconds": {str(k): v for k, v in ext["seconds"].items()}, "wall": ext["wall"], "paths": ext["paths"],
            "runtime": {str(k): v for k, v in ext["runtime"].items()}}
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)


def load_views(path: Path) -> dict:
    data = np.load(path, allow_pickle=False)
    meta = json.loads(str(data["meta"]))
    views, regions = {}, {}
    for name in data.files:
        if name.startswith("v|"):
            _, k, s = name.split("|")
            views[(k, int(s))] = data[name]
        elif name.startswith("r|"):
            regions[int(name.split("|")[1])] = data[name]
    return {"views": views, "regions": regions, "seconds": {int(k): v for k, v in meta["seconds"].items()},
            "wall": meta["wall"], "paths": meta["paths"], "runtime": meta["runtime"]}


# --- descriptors from the views ---------------------------------------------------------------------
def combine(views: dict, kind: str, sizes: Sequence[int], rows: np.ndarray | slice = slice(None)) -> np.ndarray:
    """The multi-scale descriptor before whitening: l2n(sum over sizes of the normalised vectors)."""
    return l2n(sum(views[(kind, s)][rows] for s in sizes))


def rmac_whitened(regions: dict, sizes: Sequence[int], w: Any, rows: np.ndarray | slice = slice(None),
                  block: int = 256) -> np.ndarray:
    """R-MAC with ``w`` applied to every region (l2n -> whiten -> l2n -> sum -> l2n), summed over sizes."""
    total = None
    for s in sizes:
        r = regions[s][rows]
        out = np.empty((r.shape[0], w.out_dim), np.float32)
        for a in range(0, r.shape[0], block):
            z = l2n(w.apply(r[a:a + block].astype(np.float32)))
            out[a:a + block] = l2n(z.sum(axis=1))
        total = out if total is None else total + out
    return l2n(total)


def region_rows(regions: dict, sizes: Sequence[int], rows: np.ndarray, labels: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Every region vector of the images ``rows`` at ``sizes`` (M, C) float32, with its image's label."""
    xs, ls = [], []
    for s in sizes:
        r = regions[s][rows]
        xs.append(r.reshape(-1, r.shape[-1]).astype(np.float32))
        ls.append(np.repeat(labels[rows], r.shape[1]))
    return np.concatenate(xs), np.concatenate(ls)


def figures(v: np.ndarray, labels: Sequence[str], proto: dict | None = None) -> dict:
    kw = {"queries": proto["query"], "retrieval": proto["retrieval"]} if proto else {}
    return evaluate(v, labels, ks=(1,), **kw)


def carve(labels: np.ndarray, n_val: int = VAL_CLASSES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row masks (learn, validate): ``n_val`` of the train classes, drawn with ``seed``, validate."""
    classes = np.unique(labels)
    val = np.random.default_rng(seed).choice(classes, size=n_val, replace=False)
    v = np.isin(labels, val)
    return ~v, v


def choose_lw(train: dict, train_labels: np.ndarray, kind: str, sizes: Sequence[int], seed: int = 0) -> dict:
    """Shrinkage and dimension of the Lw of (kind, sizes) chosen on validation classes carved from the
    train classes; returns the choice, its validation figures and the grid."""
    from models.whitening import PCAWhitening

    learn, val = carve(train_labels, seed=seed)
    li, vi = np.flatnonzero(learn), np.flatnonzero(val)
    if kind == "rmac":
        X, lab = region_rows(train["regions"], sizes, li, train_labels)  # noqa: N806
    else:
        X, lab = combine(train["views"], kind, sizes, li), train_labels[li]  # noqa: N806
    grid = []
    for w in PCAWhitening.fit_lw_many(X, lab, SHRINKAGES):
        for d in DIMS:
            wd = w.truncated(d) if d else w
            if kind == "rmac":
                v = rmac_whitened(train["regions"], sizes, wd, vi)
            else:
                v = l2n(wd.apply(combine(train["views"], kind, sizes, vi)))
            m = figures(v, train_labels[vi])
            grid.append({"shrinkage": w.meta["shrinkage"], "dim": wd.out_dim, "r1": m["recall@1"], "map": m["map"]})
    best = max(grid, key=lambda g: (round(g["r1"], 4), g["map"]))
    none = figures(combine(train["views"], kind, sizes, vi), train_labels[vi])
    return {**best, "none_r1": none["recall@1"], "none_map": none["map"], "grid": grid}


def learn_lw(train: dict, train_labels: np.ndarray, kind: str, sizes: Sequence[int], shrinkage: float,
             dim: int) -> Any:
    """The Lw of (kind, sizes) learned on all train classes with the chosen settings."""
    from models.whitening import PCAWhitening

    rows = np.arange(len(train_labels))
    if kind == "rmac":
        X, lab = region_rows(train["regions"], sizes, rows, train_labels)  # noqa: N806
    else:
        X, lab = combine(train["views"], kind, sizes), train_labels  # noqa: N806
    return PCAWhitening.fit_lw(X, lab, dim=dim if dim < X.shape[1] else None, shrinkage=shrinkage)


def bench_rows(train: dict, test: dict, proto: dict, kinds: Sequence[str], scale_sets: Sequence[Sequence[int]],
               whiten: bool = True, label: str = "", whiten_sets: Sequence[Sequence[int]] | None = None) -> list[dict]:
    """One row per (kind, sizes, whitening): test figures, and for Lw the choice made on validation."""
    train_labels = np.asarray(proto["train_labels"])
    rows = []
    for kind in kinds:
        for sizes in scale_sets:
            cost = sum(test["seconds"][s] for s in sizes)
            ips = len(test["paths"]) / cost if cost > 0 else 0.0
            plain = combine(test["views"], kind, sizes)
            m = figures(plain, proto["labels"], proto)
            base = {"model": label, "descriptor": kind, "sizes": sizes_label(sizes), "images_per_s": ips}
            rows.append({**base, "whitening": "none", "dim": plain.shape[1], "r1": m["recall@1"],
                         "map": m["map"], "top1": m["top1"]})
            if not whiten or (whiten_sets is not None and tuple(sizes) not in {tuple(w) for w in whiten_sets}):
                continue
            t0 = time.perf_counter()
            choice = choose_lw(train, train_labels, kind, sizes)
            w = learn_lw(train, train_labels, kind, sizes, choice["shrinkage"], choice["dim"])
            learn_s = time.perf_counter() - t0
            if kind == "rmac":
                v = rmac_whitened(test["regions"], sizes, w)
            else:
                v = l2n(w.apply(plain))
            m = figures(v, proto["labels"], proto)
            rows.append({**base, "whitening": f"Lw s={choice['shrinkage']:g} d={w.out_dim}", "dim": w.out_dim,
                         "r1": m["recall@1"], "map": m["map"], "top1": m["top1"], "val_r1": choice["r1"],
                         "val_none_r1": choice["none_r1"], "learn_s": learn_s})
            log.info("%s %s %s: val R@1 %.3f (none %.3f) -> test R@1 %.3f", label, kind, base["sizes"],
                     choice["r1"], choice["none_r1"], m["recall@1"])
    return rows


def markdown(rows: list[dict]) -> str:
    out = ["| model | descriptor | sizes | whitening (chosen on val) | val R@1 | R@1 | mAP | top-1 | dim | images/s |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        val = f"{r['val_r1']:.3f} ({r['val_none_r1']:.3f})" if "val_r1" in r else ""
        out.append(f"| {r['model']} | {r['descriptor']} | {r['sizes']} | {r['whitening']} | {val} | {r['r1']:.3f} | "
                   f"{r['map']:.3f} | {r['top1']:.3f} | {r['dim']} | {r['images_per_s']:.1f} |")
    return "\n".join(out)


def extract_both(backbone: Any, identity: str, proto: dict, args: argparse.Namespace, kinds: Sequence[str],
                 cache: Path | None, label: str) -> tuple[dict, dict]:
    """Train and test views, from ``cache`` (an .npz prefix) when it exists."""
    out = []
    for part in ("train", "test"):
        path = Path(f"{cache}-{part}.npz") if cache else None
        if path and path.is_file():
            ext = load_views(path)
        else:
            ext = extract_views(backbone, identity, proto[part], scales=args.scales, kinds=kinds,
                                crop_fraction=args.crop_fraction, batch_size=args.batch_size,
                                cache_dir=args.runtime_cache, runtime=args.runtime, label=f"{label} {part}")
            if path:
                save_views(path, ext)
        if ext["paths"] != list(proto[part]):
            raise RuntimeError(f"the {part} vectors do not match the {part} images (stale cache {path}?)")
        out.append(ext)
    return out[0], out[1]


def speed(bb: Any, identity: str, paths: list[str], args: argparse.Namespace, repeats: int = 2) -> str:
    """Images/s from files to vectors (decoding included) of one size against all sizes, interleaved."""
    import os

    out = {}
    load0 = os.getloadavg()[0]
    for _ in range(repeats):
        for sizes in ((args.scales[0],), tuple(args.scales)):
            t = time.perf_counter()
            ext = extract_views(bb, identity, paths, scales=sizes, crop_fraction=args.crop_fraction,
                                batch_size=args.batch_size, cache_dir=args.runtime_cache, runtime=args.runtime,
                                label="speed")
            out.setdefault(sizes, []).append((len(paths) / (time.perf_counter() - t),
                                              {s: len(paths) / v for s, v in ext["seconds"].items()}))
    lines = ["| sizes | images/s, files to all four descriptors (each repeat) | network + pooling images/s per size |",
             "|---|---|---|"]
    for sizes, runs in out.items():
        per = ", ".join(f"{s}: {runs[-1][1][s]:.0f}" for s in sizes)
        lines.append(f"| {sizes_label(sizes)} | {' / '.join(f'{r[0]:.1f}' for r in runs)} | {per} |")
    return "\n".join(lines) + f"\n\n{len(paths)} test images, load average {load0:.2f} before, " \
        f"{os.getloadavg()[0]:.2f} after.\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the cub100 folder")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--scales", default=",".join(map(str, SCALES)), help="input sizes extracted (default 224,288,352)")
    p.add_argument("--crop-fraction", type=float, default=224 / 227)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--runtime", default="auto")
    p.add_argument("--runtime-cache", type=Path, default=Path("/tmp/re-bench-runtimes"))
    p.add_argument("--cache", type=Path, default=None, help="keep the extracted vectors as CACHE-train/test.npz")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json-out", type=Path, default=None)
    p.add_argument("--speed", type=int, default=0, metavar="N",
                   help="only measure images/s on N test images: one size against all, interleaved repeats")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import torch

    from engine.vocabulary import ModelSpec
    from models.descriptors import parse_scales
    from models.registry import get_backbone

    if args.threads:
        torch.set_num_threads(args.threads)
    args.scales = parse_scales(args.scales)
    proto = load_protocol(args.data.resolve())
    bb = get_backbone(args.backbone, weights="pretrained")
    identity = ModelSpec(backbone=args.backbone).backbone_identity()
    if args.speed:
        sys.stdout.write(speed(bb, identity, proto["test"][:args.speed], args))
        return 0
    train, test = extract_both(bb, identity, proto, args, KINDS, args.cache, args.backbone)
    sets = [s for s in SCALE_SETS if set(s) <= set(args.scales)]
    rows = bench_rows(train, test, proto, KINDS, sets, label=args.backbone, whiten_sets=WHITEN_SETS)
    machine = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    import os

    notes = [f"cub100 test classes 50-99 ({len(proto['test'])} images; top-1: {len(proto['query'])} queries -> "
             f"{len(proto['retrieval'])} retrieval), crop fraction {args.crop_fraction:.4f} at every size, "
             f"{machine}, runtime {test['runtime']}, load average {os.getloadavg()[0]:.1f} at the end. "
             f"Lw chosen on {VAL_CLASSES} validation classes carved (seed 0) from the 50 train classes, "
             f"learned on 40; val R@1 in brackets: without whitening. Shrinkages {SHRINKAGES}, dims "
             f"{tuple(d or 'all' for d in DIMS)}."]
    sys.stdout.write(markdown(rows) + "\n\n" + "\n".join(notes) + "\n")
    if args.json_out:
        args.json_out.write_text(json.dumps({"rows": rows, "notes": notes}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
