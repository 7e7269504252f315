"""Tail mode's frozen trunk in eager PyTorch against the exported runtime, in one run (issue 27).

Tail fine-tuning caches the maps entering the trained units once per view (the views are fixed: the image, its
mirror, seeded crops; no augmentation is drawn per epoch), so the trunk runs once per image and view and the
runtime indexing uses can run it. This measures, with the runtime chosen as training chooses it
($RETRIEVAL_EXPLORER_RUNTIME: torch, then auto):

1. the cache phase alone (engine.training.trainer.compute_pooled_features with tail mode's encoder), images/s
   per runtime, alternately, and the largest difference between the two caches' maps;
2. a short tail-mode training from each cache (same seed and settings), its validation R@1 / mAP.

On cub100's training classes only (PROTOCOL.md; the test classes are not touched):

    python benchmarks/tail_cache.py --data ../shared/data/cub100 --classes 20 --iterations 60
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def _with_runtime(name: str):
    os.environ["RETRIEVAL_EXPLORER_RUNTIME"] = name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/cub100")
    ap.add_argument("--classes", type=int, default=20, help="training classes used (of the 50)")
    ap.add_argument("--tail-units", type=int, default=3)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--skip-training", action="store_true")
    args = ap.parse_args()

    import torch

    from engine.training import data as D  # noqa: N812
    from engine.training import trainer as T  # noqa: N812
    from engine.training.config import TrainConfig
    from engine.training.launch import train
    from models.embedding import build_model_from_config

    root = Path(args.data)
    classes = json.loads((root / "class_split.json").read_text())["train_classes"][: args.classes]
    work = Path(tempfile.mkdtemp(prefix="tail-cache-"))
    base = dict(data_root=str(root / "images"), train_classes=classes, mode="tail", tail_units=args.tail_units,
                head_views=args.views, iterations=args.iterations, val_every=max(1, args.iterations // 2),
                device="cpu", seed=0, target="same", classes_per_batch=4, samples_per_class=4)
    cfg = TrainConfig(**base, out_dir=str(work / "probe"))
    images = D.scan_labelled(cfg.data_root, classes)
    paths = images.paths
    model = build_model_from_config(cfg.to_dict()).eval()
    device = torch.device("cpu")
    out: dict[str, dict] = {}
    maps: dict[str, torch.Tensor] = {}
    for name in ("torch", "auto"):  # the export is made (and checked) before the timed pass
        _with_runtime(name)
        encode = T._tail_encoder(model, cfg, len(paths), device)
        encode(torch.zeros(2, 3, cfg.image_size, cfg.image_size))
        t0 = time.perf_counter()
        feats, ok, _ = T.compute_pooled_features(model, paths, image_size=cfg.image_size, views=cfg.head_views,
                                                 seed=cfg.seed, device=device, threads=2, encode=encode)
        seconds = time.perf_counter() - t0
        maps[name] = feats
        out[name] = {"images": len(ok), "seconds": seconds, "images_per_s": len(ok) / seconds}
    diff = float((maps["torch"].float() - maps["auto"].float()).abs().max())
    scale = float(maps["torch"].float().abs().max())
    load = os.getloadavg()
    print(f"tail mode ({args.tail_units} units), trunk maps of {len(paths)} cub100 training images x {args.views} "
          f"view(s), load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}, {os.cpu_count()} cores\n")
    print("| trunk on | images | seconds | images/s |")
    print("|---|---|---|---|")
    for name, r in out.items():
        print(f"| {name} | {r['images']} | {r['seconds']:.1f} | {r['images_per_s']:.1f} |")
    print(f"\nauto / torch: {out['auto']['images_per_s'] / out['torch']['images_per_s']:.2f}x; largest map difference "
          f"{diff:.3g} (maps up to {scale:.3g}; float16 caches)")
    if args.skip_training:
        return
    print("\n| trunk on | iterations | best val R@1 | best val mAP | last val R@1 |")
    print("|---|---|---|---|---|")
    for name in ("torch", "auto"):
        _with_runtime(name)
        res = train(TrainConfig(**base, out_dir=str(work / name), cache_dir=str(work / f"cache-{name}")))
        best, last = res.best_val_metrics, res.val_metrics
        print(f"| {name} | {args.iterations} | {best.get('recall@1', float('nan')):.4f} | "
              f"{best.get('map', float('nan')):.4f} | {last.get('recall@1', float('nan')):.4f} |")


if __name__ == "__main__":
    main()
