"""Data-parallel training throughput: 1 process against N (torchrun), interleaved repeats.

    python benchmarks/train_ddp.py --data ../shared/data/cub100 --nproc 2 [--device cpu|cuda] [--repeats 2]

Each run is ``torchrun --standalone --nproc-per-node n`` of this script's worker, which trains in full mode
(one thread per process on the CPU, one GPU per process with CUDA) on the first ``--classes`` training
classes of cub100's class_split.json, each process with the same P x K batch (weak scaling: N processes
take N times the images per step). The rate is read from the trainer's iteration events on rank 0 between
the third and the last iteration (validation excluded). Prints a markdown table: images/s in all and per
process, and the scaling efficiency rate(N) / (N * rate(1)), with the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _worker(args: argparse.Namespace) -> None:
    import torch

    from engine.training.config import TrainConfig
    from engine.training.launch import train
    from models.registry import weights_available

    classes = json.loads((Path(args.data) / "class_split.json").read_text())["train_classes"][: args.classes]
    cfg = TrainConfig(data_root=str(Path(args.data) / "images"), train_classes=classes, mode="full",
                      weights="pretrained" if weights_available("efficientnet_lite0") else "random",
                      image_size=args.image_size, iterations=args.iterations, val_every=args.iterations,
                      classes_per_batch=args.P, samples_per_class=args.K, warmup_iters=2,
                      num_threads=1 if args.device == "cpu" else 0, device=args.device, out_dir=args.run_dir,
                      cache_dir=str(Path(args.run_dir).parent / "cache"))
    ticks: list[tuple[float, int]] = []

    def on_event(e) -> None:
        if e.kind == "iteration":
            ticks.append((time.perf_counter(), e.iteration))

    train(cfg, on_event=on_event)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    world = int(os.environ.get("WORLD_SIZE", "1"))
    (t0, i0), (t1, i1) = ticks[2], ticks[-1]
    batch = args.P * args.K * world
    Path(args.result).write_text(json.dumps({
        "processes": world, "images_per_s": (i1 - i0) * batch / (t1 - t0), "global_batch": batch,
        "steps_timed": i1 - i0, "threads": torch.get_num_threads()}))


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cub100"))
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--classes", type=int, default=12, help="training classes used (the first of class_split.json)")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--P", type=int, default=4, help="classes per batch, per process")
    ap.add_argument("--K", type=int, default=4, help="images per class")
    ap.add_argument("--iterations", type=int, default=12)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args)
        return

    torchrun = Path(sys.executable).with_name("torchrun")
    rows: dict[int, list[float]] = {1: [], args.nproc: []}
    load_before = _load()
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for n in (1, args.nproc):   # interleaved: 1, N, 1, N, ...
                run = Path(tmp) / f"run_{rep}_{n}"
                result = Path(tmp) / f"result_{rep}_{n}.json"
                cmd = [str(torchrun), "--standalone", f"--nproc-per-node={n}", __file__, "--worker",
                       "--run-dir", str(run), "--result", str(result)] + [
                    f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                    if k in ("data", "device", "classes", "image_size", "P", "K", "iterations")]
                env = dict(os.environ, OMP_NUM_THREADS="1")
                subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                r = json.loads(result.read_text())
                rows[n].append(r["images_per_s"])
                print(f"repeat {rep + 1}, {n} process(es): {r['images_per_s']:.2f} images/s "
                      f"(global batch {r['global_batch']}, {r['steps_timed']} steps timed)", file=sys.stderr)
    load_after = _load()
    one = statistics.median(rows[1])
    print(f"\nFull-mode training, EfficientNet-Lite0 at {args.image_size} px, {args.P} x {args.K} images per "
          f"process per step, {args.classes} cub100 training classes, device {args.device}"
          + (" (one thread per process)" if args.device == "cpu" else "") + f"; load average before "
          f"{load_before}, after {load_after}; median of {args.repeats} interleaved repeats.\n")
    print("| processes | images/s (all) | images/s per process | scaling efficiency | repeats (images/s) | "
          "efficiency per interleaved pair |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n in (1, args.nproc):
        med = statistics.median(rows[n])
        pairs = ", ".join(f"{b / (n * a):.2f}" for a, b in zip(rows[1], rows[n], strict=True))
        print(f"| {n} | {med:.2f} | {med / n:.2f} | {med / (n * one):.2f} | "
              + ", ".join(f"{v:.2f}" for v in rows[n]) + f" | {pairs} |")


if __name__ == "__main__":
    main()
