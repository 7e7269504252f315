"""Region queries on generated composites (issue 28): a cub100 bird pasted into another photo or a texture.

Composites are generated at run time into a temporary folder (never kept, never committed): for each
species of a half of cub100 (train classes 0-49, test classes 50-99; PROTOCOL.md), ``--per-class``
composites of ``--side`` pixels, each a centre crop (``--bird-crop`` of the side: cub100's images are
already cropped to the bird, it has no boxes) of a photo of that species, resized to 30-55% of the side and
pasted at a random place into either another cub100 photo of the same half (a different species; its own
bird stays as a distractor) or a generated texture (half each). The folder is indexed by the engine
(engine.session.FolderIndex.update, the runtime of engine.runtime), then:

- **whole-image query**: each composite's stored vector against all the others;
- **region query, crop**: the box around the pasted bird described through engine.session.embed_images with
  the box (the one image->vector path: the region cropped from the decoded image);
- **region query, pooled**: the descriptor's head applied to the composite's feature map inside the box;

relevant = the other composites holding a bird of the same species; mAP over the whole ranking
(engine.evaluation.mean_average_precision, the query composite left out). Then the region query as shipped:
its first K hits re-ordered by their best region (engine.regions.rerank_hits over the candidate regions of
each hit's feature map at the detail size, engine.regions.region_size), for K = engine.regions.RERANK_DEPTH
and deeper, and every image scored by its best region; and the share of the relevant hits of its top
``--top`` whose best region overlaps the bird pasted in that hit with IoU >= 0.3.

Settings are chosen on the TRAINING classes only (crop or pooled by mAP; the candidate regions of
engine.regions by the overlap share; the detail size and the copy level of engine.regions by mAP) and
reported on the test classes.

    python benchmarks/regions.py [--data ../shared/data/cub100] [--per-class 8] [--side 448]

Markdown tables on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.descriptors import DEFAULT_DATA, load_protocol  # noqa: E402
from engine.evaluation import mean_average_precision  # noqa: E402
from engine.images import Box, load_image  # noqa: E402
from engine.regions import (  # noqa: E402
    COPY_SCORE,
    DETAIL_SCALE,
    REGION_LEVELS,
    RERANK_DEPTH,
    SLIDING_SIDES,
    RegionMatch,
    best_regions,
    box_iou,
    box_to_cells,
    candidate_regions,
    cells_to_box,
    region_descriptors,
    region_size,
    rerank_hits,
)
from engine.session import FolderIndex, ModelCache, embed_images  # noqa: E402
from engine.vocabulary import ModelSpec  # noqa: E402

log = logging.getLogger("bench.regions")

#: the candidate-region settings tried on the training classes: (R-MAC grid levels, sliding window sides)
REGION_CHOICES: tuple[tuple[int, tuple[float, ...]], ...] = (
    (3, ()), (0, (0.4, 0.6)), (0, (0.3, 0.5, 0.7)), (3, (0.4, 0.6)),
)
#: re-ranking depths printed beside the shipped one (engine.regions.RERANK_DEPTH)
DEPTHS = (20, 50, 100, 200)
IOU = 0.3


# --- composites ------------------------------------------------------------------------------------
def texture(rng: np.random.Generator, side: int) -> np.ndarray:
    """A coloured texture (side, side, 3) uint8: a few random gratings over smooth noise."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    out = np.zeros((side, side, 3), np.float32)
    for _ in range(3):
        f, a = rng.uniform(2, 14), rng.uniform(0, np.pi)
        wave = np.sin(2 * np.pi * f * (np.cos(a) * xx + np.sin(a) * yy) + rng.uniform(0, 6.3))
        out += wave[..., None] * rng.uniform(0.2, 1.0, 3)[None, None, :]
    coarse = rng.normal(0, 1, (8, 8, 3)).astype(np.float32)
    out += np.kron(coarse, np.ones((side // 8 + 1, side // 8 + 1, 1), np.float32))[:side, :side]
    out = (out - out.min()) / max(float(out.max() - out.min()), 1e-6)
    base = rng.uniform(40, 200, 3)
    return np.clip(base + (out - 0.5) * 160, 0, 255).astype(np.uint8)


def make_composites(paths: list[str], labels: list[str], folder: Path, per_class: int, side: int,
                    bird_crop: float, seed: int) -> dict[str, tuple[str, Box]]:
    """Write ``per_class`` composites per species into ``folder/<species>/NNN.jpg``; -> path -> (species,
    pasted box)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pick = random.Random(seed)
    by_class: dict[str, list[str]] = {}
    for p, lab in zip(paths, labels, strict=True):
        by_class.setdefault(lab, []).append(p)
    species = sorted(by_class)
    truth: dict[str, tuple[str, Box]] = {}
    for lab in species:
        (folder / lab).mkdir(parents=True, exist_ok=True)
        birds = pick.sample(by_class[lab], min(per_class, len(by_class[lab])))
        for i, bird_path in enumerate(birds):
            bird = load_image(bird_path)
            cw, ch = int(bird.width * bird_crop), int(bird.height * bird_crop)
            left, top = (bird.width - cw) // 2, (bird.height - ch) // 2
            bird = bird.crop((left, top, left + cw, top + ch))
            if rng.random() < 0.5:
                other = pick.choice([s for s in species if s != lab])
                ground = load_image(pick.choice(by_class[other])).resize((side, side), Image.Resampling.BILINEAR)
            else:
                ground = Image.fromarray(texture(rng, side), "RGB")
            bs = int(side * rng.uniform(0.30, 0.55))
            bh = max(1, int(round(bs * bird.height / bird.width)))
            bird = bird.resize((bs, bh), Image.Resampling.BILINEAR)
            x, y = int(rng.integers(0, side - bs + 1)), int(rng.integers(0, side - bh + 1))
            ground.paste(bird, (x, y))
            out = folder / lab / f"{i:03d}.jpg"
            ground.save(out, quality=92)
            truth[str(out)] = (lab, (x, y, bs, bh))
    return truth


# --- measuring -------------------------------------------------------------------------------------
def feature_maps(models: ModelCache, spec: ModelSpec, paths: list[str], size: int | None = None) -> np.ndarray:
    """(N, C, h, w) float32: the feature maps at input ``size`` (None: the index's, the maps the index saw),
    computed again on the runtime."""
    from dataclasses import replace

    from engine.extraction import IMAGENET_MEAN, IMAGENET_STD, feature_fn, iter_extract

    model = models.get(spec)
    size = size or models.image_size(spec)
    run = feature_fn(model.backbone, models.features(replace(spec, image_size=size)))
    bb = model.backbone
    rows: dict[str, np.ndarray] = {}
    for batch in iter_extract(paths, lambda x: {"f": run(size, x)}, image_size=size,
                              mean=getattr(bb, "mean", IMAGENET_MEAN), std=getattr(bb, "std", IMAGENET_STD),
                              crop_fraction=spec.crop_fraction, batch_size=32, device=models.device):
        rows.update(zip(batch.paths, batch.vectors["f"], strict=True))
    return np.stack([rows[p] for p in paths])


def pooled_queries(models: ModelCache, spec: ModelSpec, maps: np.ndarray, boxes: list[Box], side: int) -> np.ndarray:
    """The descriptor's head on each map inside its box: (N, D)."""
    import torch

    model = models.get(spec)
    size = models.image_size(spec)
    out = []
    with torch.inference_mode():
        for fmap, box in zip(maps, boxes, strict=True):
            y, x, h, w = box_to_cells(box, (side, side), fmap.shape[-2:], size, spec.crop_fraction)
            sub = torch.from_numpy(fmap[None, :, y:y + h, x:x + w])
            out.append(model.describe(sub)[0].float().numpy())
    return np.stack(out)


def all_region_descriptors(models: ModelCache, spec: ModelSpec, maps: np.ndarray,
                           regions: list) -> np.ndarray:
    """(N, R, D): every map's candidate regions pooled by the head (engine.regions.region_descriptors)."""
    import torch

    model = models.get(spec)
    with torch.inference_mode():
        return np.concatenate([region_descriptors(model, torch.from_numpy(maps[k:k + 32]), regions).numpy()
                               for k in range(0, len(maps), 32)])


def overlap_share(models: ModelCache, spec: ModelSpec, maps: np.ndarray, queries: np.ndarray, db: np.ndarray,
                  labels: list[str], boxes: list[Box], side: int, top: int, levels: int,
                  sliding: tuple[float, ...]) -> tuple[float, int]:
    """Share of the relevant hits among each region query's ``top`` whose best region (engine.regions'
    candidates, pooled by the head, scored against the query) overlaps the hit's pasted bird (IoU >= 0.3);
    and the number of such hits."""
    size = region_size(models, spec)  # the maps are the detail maps (engine.regions.best_regions)
    lab = np.asarray(labels)
    sims = queries @ db.T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1)[:, :top]
    hw = maps.shape[-2:]
    regions = candidate_regions(hw[0], hw[1], levels, sliding)
    d = all_region_descriptors(models, spec, maps, regions)
    good = total = 0
    for i, row in enumerate(order):
        for j in row:
            if lab[j] == lab[i]:
                best = int((d[j] @ queries[i]).argmax())
                box = cells_to_box(regions[best], hw, (side, side), size, spec.crop_fraction)
                good += box_iou(box, boxes[j]) >= IOU
                total += 1
    return (good / total if total else float("nan")), total


@dataclass
class _Hit:
    """What engine.regions.rerank_hits needs of an engine.vocabulary.SearchHit."""

    path: str
    score: float
    rank: int


def region_rerank(models: ModelCache, spec: ModelSpec, maps: np.ndarray, queries: np.ndarray, db: np.ndarray,
                  depths: tuple[int, ...], levels: int, sliding: tuple[float, ...]) -> dict[str, np.ndarray]:
    """(N, N) scores per depth K: each query's K first hits by the whole-image vectors re-ordered as a region
    query's are (engine.regions.rerank_hits: copies first, then by the best region over the same candidate
    regions of the detail ``maps``), above the rest; also "all": every image scored by its best region."""
    hw = maps.shape[-2:]
    d = all_region_descriptors(models, spec, maps, candidate_regions(hw[0], hw[1], levels, sliding))
    sims = queries @ db.T
    np.fill_diagonal(sims, -np.inf)
    n, r, dim = d.shape
    best = (d.reshape(n * r, dim) @ queries.T).reshape(n, r, -1).max(1).T  # (query, image)
    out = {"all": best}
    for k in depths:
        scores = sims.copy()
        for i in range(len(queries)):
            shown = np.argsort(-sims[i], kind="stable")[:k]
            hits = [_Hit(str(j), float(sims[i, j]), r + 1) for r, j in enumerate(shown)]
            matches = [RegionMatch(str(j), (0, 0, 1, 1), (1, 1), float(best[i, j])) for j in shown]
            for r, h in enumerate(rerank_hits(hits, matches, depth=k)):
                scores[i, int(h.path)] = 10.0 + k - r
        out[str(k)] = scores
    return out


def _describe(models: ModelCache, spec: ModelSpec, maps: np.ndarray) -> np.ndarray:
    """(N, D): the descriptor's head on each whole map."""
    import torch

    model = models.get(spec)
    with torch.inference_mode():
        return np.concatenate([model.describe(torch.from_numpy(maps[k:k + 32])).float().numpy()
                               for k in range(0, len(maps), 32)])


def run_half(name: str, paths: list[str], labels: list[str], args: argparse.Namespace, models: ModelCache,
             spec: ModelSpec, work: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    folder = work / name
    truth = make_composites(paths, labels, folder, args.per_class, args.side, args.bird_crop, args.seed)
    log.info("%s: %d composites in %.0f s", name, len(truth), time.perf_counter() - t0)
    index = FolderIndex(folder, cache_dir=work / "cache")
    t1 = time.perf_counter()
    index.update(models, spec, descriptors=[spec.descriptor])
    log.info("%s: indexed in %.0f s", name, time.perf_counter() - t1)
    found = index.vectors(spec)
    assert found is not None
    db_paths, db = found
    db = np.asarray(db, np.float32)
    comp = [truth[p] for p in db_paths]
    labs, boxes = [c[0] for c in comp], [c[1] for c in comp]
    t2 = time.perf_counter()
    crop = embed_images(models, spec, db_paths, boxes=boxes)
    crop_s = time.perf_counter() - t2
    pooled = pooled_queries(models, spec, feature_maps(models, spec, db_paths), boxes, args.side)
    maps = feature_maps(models, spec, db_paths, region_size(models, spec))  # the detail maps best regions use
    res = {"n": len(db_paths), "whole": mean_average_precision(db, labs),
           "crop": mean_average_precision(db, labs, queries=crop),
           "pooled": mean_average_precision(db, labs, queries=pooled), "crop_ms": 1000 * crop_s / len(db_paths),
           "maps": maps, "db": db, "labels": labs, "boxes": boxes, "crop_q": crop, "pooled_q": pooled,
           "paths": db_paths}
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the cub100 folder")
    ap.add_argument("--per-class", type=int, default=8, help="composites per species (default 8)")
    ap.add_argument("--side", type=int, default=448, help="composite side in pixels (default 448)")
    ap.add_argument("--bird-crop", type=float, default=0.8, help="centre share of a cub100 photo pasted (0.8)")
    ap.add_argument("--top", type=int, default=10, help="hits per query whose drawn region is checked (10)")
    ap.add_argument("--descriptor", default="gem")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="where composites go (default: a temporary folder)")
    ap.add_argument("--cache", type=Path, default=None,
                    help="an .npz keeping the extracted arrays: a second run with it measures without extracting")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    proto = load_protocol(args.data.resolve())
    spec = ModelSpec(descriptor=args.descriptor, image_size=args.image_size)
    models = ModelCache()
    keys = ("maps", "db", "labels", "boxes", "crop_q", "pooled_q", "whole", "crop", "pooled", "crop_ms", "n")
    with tempfile.TemporaryDirectory(prefix="regions-bench-") as tmp:
        work = args.work or Path(tmp)
        if args.cache is not None and args.cache.exists():
            z = np.load(args.cache)
            train, test = ({k: (z[f"{h}_{k}"].tolist() if z[f"{h}_{k}"].ndim <= 1 and k != "boxes" else z[f"{h}_{k}"])
                            for k in keys} for h in ("train", "test"))
            for h in (train, test):
                h["boxes"] = [tuple(int(v) for v in b) for b in h["boxes"]]
            test["paths"] = []
        else:
            train = run_half("train", proto["train"], proto["train_labels"], args, models, spec, work)
            test = run_half("test", proto["test"], proto["labels"], args, models, spec, work)
            if args.cache is not None:
                np.savez(args.cache, **{f"{h}_{k}": np.asarray(r[k]) for h, r in (("train", train), ("test", test))
                                        for k in keys})
        better = "crop" if train["crop"] >= train["pooled"] else "pooled"
        method = "crop"  # what engine.session.run_query ships (the one image->vector path): the analyses below use it
        shares = {}
        for levels, sliding in REGION_CHOICES:
            shares[(levels, sliding)] = overlap_share(models, spec, train["maps"], train[f"{method}_q"], train["db"],
                                                      train["labels"], train["boxes"], args.side, args.top, levels,
                                                      sliding)
        chosen = max(REGION_CHOICES, key=lambda c: shares[c][0])
        test_share = {c: overlap_share(models, spec, test["maps"], test[f"{method}_q"], test["db"], test["labels"],
                                       test["boxes"], args.side, args.top, *c) for c in REGION_CHOICES}
        reranked = {h: {k: mean_average_precision(r["db"], r["labels"], scores=v) for k, v in region_rerank(
            models, spec, r["maps"], r[f"{method}_q"], r["db"], DEPTHS, REGION_LEVELS, SLIDING_SIDES).items()}
            for h, r in (("train", train), ("test", test))}
        detail = {h: mean_average_precision(_describe(models, spec, r["maps"]), r["labels"], queries=r[f"{method}_q"])
                  for h, r in (("train", train), ("test", test))}
        # the cost a region query pays: best regions of RERANK_DEPTH results at the detail size, decoding included
        t = time.perf_counter()
        if test["paths"]:
            best_regions(models, spec, test["paths"][:RERANK_DEPTH], test["crop_q"][0])
        best_ms = 1000 * (time.perf_counter() - t)
    runner = models.features(spec)
    print(f"## Region queries on composites ({spec.backbone}, {args.descriptor} at {args.image_size}, "
          f"{args.per_class} composites per species of {args.side} px, runtime {getattr(runner, 'name', 'torch')})\n")
    print("| classes | composites | whole-image query mAP | region query mAP (crop) | region query mAP (pooled map) |")
    print("|---|---|---|---|---|")
    for name, r in (("train 0-49 (choice)", train), ("test 50-99 (report)", test)):
        print(f"| {name} | {r['n']} | {r['whole']:.4f} | {r['crop']:.4f} | {r['pooled']:.4f} |")
    print(f"\nThe better on the training classes: **{better}**, by {abs(train['crop'] - train['pooled']):.4f} mAP "
          f"(engine.session.run_query describes a box by the crop path; the rows below use crop queries).\n")
    size = region_size(models, spec)
    print(f"Region query with its first K hits re-ordered by their best region (engine.regions.rerank_hits: whole-image "
          f"score >= {COPY_SCORE} first, then the best of the sliding windows {list(SLIDING_SIDES)} of the result's "
          f"map at {size} px, {DETAIL_SCALE:g} x the index's size); K = {RERANK_DEPTH} is what `search --box` and "
          "the window do; 'every image' = each image scored by its best region (no first stage); 'whole at detail' = the "
          f"region query against each image's whole-image vector at {size} px:\n")
    cols = [str(k) for k in DEPTHS] + ["all"]
    print("| classes | whole-image query | region query | " + " | ".join(
        ("every image by its best region" if c == "all" else f"re-ranked K={c}")
        + (" (shipped)" if c == str(RERANK_DEPTH) else "") for c in cols) + " | whole at detail |")
    print("|---|---|---|" + "---|" * len(cols) + "---|")
    for name, h in (("train 0-49 (choice)", "train"), ("test 50-99 (report)", "test")):
        r = train if h == "train" else test
        print(f"| {name} | {r['whole']:.4f} | {r[method]:.4f} | " + " | ".join(
            f"{reranked[h][c]:.4f} ({reranked[h][c] - r['whole']:+.3f})" for c in cols) + f" | {detail[h]:.4f} |")
    print()
    print(f"| candidate regions (R-MAC levels, sliding sides) | train: IoU >= {IOU} share | test: IoU >= {IOU} share |")
    print("|---|---|---|")
    for c in REGION_CHOICES:
        mark = " (chosen)" if c == chosen else ""
        print(f"| L={c[0]}, {list(c[1]) or 'none'}{mark} | {shares[c][0]:.3f} ({shares[c][1]} hits) | "
              f"{test_share[c][0]:.3f} ({test_share[c][1]} hits) |")
    cost = f"{best_ms:.0f} ms" if test["paths"] else "not measured (arrays from --cache)"
    print(f"\nengine.regions defaults: L={REGION_LEVELS}, sliding {list(SLIDING_SIDES)}; "
          f"region query description {test['crop_ms']:.0f} ms/query (crop path, batched); best regions of "
          f"{RERANK_DEPTH} results at {size} px (the re-ranking's cost) {cost} (one call, decoding included); {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
