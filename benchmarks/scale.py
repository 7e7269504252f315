"""What docs/SCALE.md derives its figures from (issue 17 item 3): extraction on Ray against the local
path, and how fast the single writer absorbs rows.

``--part extract``: the same folder of cub100 images (train classes, copied into --work) indexed with
every descriptor (as `retrieval-explorer index` does), EfficientNet-Lite0 at 224 px, ONNX Runtime:

- ``local``: engine.collection.update_collections in this process (2 decoding threads, 2 runtime threads);
- ``ray``: engine.cluster.index_on_ray on a local Ray cluster of the machine's cores (``ray.init(num_cpus=N)``,
  one worker per core, one decoding thread and one runtime thread each, batches of --batch files).

Per run: seconds to the first batch stored (Ray: the workers start, build the model and load the
export), the steady rate after it (images/s from the first batch to the last), and the whole run.
Rounds are interleaved (local, ray, local, ray...), medians reported, with ray/local ratios.

``--part writer``: the driver alone: --rows rows of the five descriptors of EfficientNet-Lite0 (fc 1000,
spoc/rmac/mac/gem 1280: 6,120 floats a row) streamed through update_collections' ``extract`` source in
batches of --batch, as the workers' rows arrive, with its commits every 2,000 rows / 30 s (exact index:
no graph build); also one 128-d descriptor. Rows per second is the ceiling of one writer.

    python benchmarks/scale.py --data ../shared/data/cub100 --part extract --images 512 --rounds 2
    python benchmarks/scale.py --part writer --rows 20000

Prints markdown tables on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.collection import Collection, update_collections  # noqa: E402
from engine.decoding import ExtractedBatch  # noqa: E402
from engine.extraction import build_model  # noqa: E402
from engine.vocabulary import ModelSpec  # noqa: E402

DESCRIPTORS = ("spoc", "fc", "rmac", "mac", "gem")


def _load() -> str:
    return os.getloadavg().__repr__() if hasattr(os, "getloadavg") else "n/a"


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "n/a"


def prepare(data: Path, work: Path, n: int) -> Path:
    """The first ``n`` images of cub100's train classes (class_split.json), copied into ``work``."""
    split = json.loads((data / "class_split.json").read_text())
    train = sorted(split["train_classes"])
    folder = work / f"cub100_{n}"
    if folder.is_dir() and sum(1 for _ in folder.rglob("*.jpg")) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    done = 0
    for cls in train:
        for f in sorted((data / "images" / str(cls)).glob("*.jpg")):
            if done == n:
                return folder
            (folder / str(cls)).mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, folder / str(cls) / f.name)
            done += 1
    return folder


class Timer:
    """A progress callback noting when the first batch and the last one were stored."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: tuple[float, int] | None = None
        self.last: tuple[float, int] | None = None

    def __call__(self, done: int, total: int, message: str = "") -> None:
        if done <= 0 or message.startswith("updating"):
            return
        now = time.perf_counter() - self.start
        if self.first is None:
            self.first = (now, done)
        self.last = (now, done)


def one_run(kind: str, folder: Path, cache: Path, runtime_cache: Path, batch: int, cores: int) -> dict:
    from engine.runtime import feature_runner

    specs = [ModelSpec("efficientnet_lite0", "pretrained", d) for d in DESCRIPTORS]
    t0 = time.perf_counter()
    cols = [Collection.open(folder, model_spec=s, cache_dir=cache) for s in specs]
    first = build_model(specs[0])
    models = [first] + [build_model(s, backbone=first.backbone) for s in specs[1:]]
    features = feature_runner(first.backbone, 224, specs[0].backbone_identity(), runtime_cache, "onnxruntime",
                              threads=cores)
    setup = time.perf_counter() - t0
    timer = Timer()
    pairs = list(zip(cols, models, strict=True))
    if kind == "local":
        reports = update_collections(pairs, features=features, batch_size=batch, decode_threads=cores,
                                     progress=timer)
    else:
        from engine.cluster import index_on_ray

        reports = index_on_ray(pairs, features=features, batch_size=batch, cpus_per_worker=1, progress=timer)
    total = time.perf_counter() - timer.start
    n = reports[0].extracted
    assert timer.first is not None and timer.last is not None and n == len(cols[0]) + len(cols[0].skipped)
    (t1, d1), (t2, d2) = timer.first, timer.last
    steady = (d2 - d1) / (t2 - t1) if t2 > t1 else float("nan")
    return {"kind": kind, "images": n, "setup_s": setup, "first_batch_s": t1, "steady": steady,
            "extract_s": t2, "total_s": total, "overall": n / total}


def part_extract(args: argparse.Namespace) -> None:
    import ray

    work = Path(args.work)
    folder = prepare(Path(args.data), work, args.images)
    cores = args.cores or os.cpu_count() or 1
    runtime_cache = work / "runtimes"
    t0 = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    ray_init = time.perf_counter() - t0
    loads = [_load()]
    rows: list[dict] = []
    try:
        for r in range(args.rounds):
            for kind in ("local", "ray"):
                cache = Path(tempfile.mkdtemp(dir=work, prefix=f"cache-{kind}-"))
                print(f"round {r + 1}: {kind}", file=sys.stderr, flush=True)
                res = one_run(kind, folder, cache, runtime_cache, args.batch, cores)
                print(f"  {res}", file=sys.stderr, flush=True)
                rows.append(res)
                shutil.rmtree(cache, ignore_errors=True)
                loads.append(_load())
    finally:
        ray.shutdown()

    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["kind"] == kind)

    print(f"\nExtraction on Ray against the local path ({args.images} cub100 images, all five descriptors, "
          f"EfficientNet-Lite0 224 px, ONNX Runtime; {cores} cores: local 2 decoding + {cores} runtime "
          f"threads, Ray {cores} workers x 1 CPU, batches of {args.batch}; median of {args.rounds} "
          f"interleaved rounds; ray.init {ray_init:.1f} s once; load averages {', '.join(loads)})\n")
    print("| path | to the first batch s | steady images/s | extraction s | whole run s | images/s overall |")
    print("|---|---|---|---|---|---|")
    for kind in ("local", "ray"):
        print(f"| {kind} | {med(kind, 'first_batch_s'):.1f} | {med(kind, 'steady'):.1f} | "
              f"{med(kind, 'extract_s'):.1f} | {med(kind, 'total_s'):.1f} | {med(kind, 'overall'):.1f} |")
    print(f"| ray / local | {med('ray', 'first_batch_s') / med('local', 'first_batch_s'):.2f}x | "
          f"{med('ray', 'steady') / med('local', 'steady'):.2f}x | "
          f"{med('ray', 'extract_s') / med('local', 'extract_s'):.2f}x | "
          f"{med('ray', 'total_s') / med('local', 'total_s'):.2f}x | "
          f"{med('ray', 'overall') / med('local', 'overall'):.2f}x |")
    print("\nPer run: " + "; ".join(
        f"{r['kind']} first {r['first_batch_s']:.1f} s, steady {r['steady']:.1f}/s" for r in rows))


def part_writer(args: argparse.Namespace) -> None:
    work = Path(args.work)
    folder = work / f"empty_{args.rows}"
    if not folder.is_dir() or sum(1 for _ in folder.rglob("*.jpg")) != args.rows:
        shutil.rmtree(folder, ignore_errors=True)
        for i in range(args.rows):
            d = folder / f"{i // 1000:04d}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{i:07d}.jpg").touch()
    rng = np.random.default_rng(0)
    loads = [_load()]
    print(f"\nThe single writer (update_collections with an extract source; {args.rows:,} rows, batches of "
          f"{args.batch}, commits every 2,000 rows / 30 s, exact index; load {_uptime()})\n")
    print("| descriptors | floats a row | rows/s absorbed | commits | MB/s of float16 rows |")
    print("|---|---|---|---|---|")
    for name, dims in (("fc+spoc+rmac+mac+gem (EfficientNet-Lite0)", (1000, 1280, 1280, 1280, 1280)),
                       ("one 128-d (PCA or trained embedding)", (128,))):
        cache = Path(tempfile.mkdtemp(dir=work, prefix="writer-"))
        kinds = DESCRIPTORS[: len(dims)] if len(dims) > 1 else ("gem",)
        cols = [Collection.open(folder, model_spec=ModelSpec("efficientnet_lite0", "random", k), cache_dir=cache,
                                index="exact") for k in kinds]
        blocks = [rng.standard_normal((args.batch, d)).astype(np.float32) for d in dims]

        def extract(files, blocks=blocks):
            paths = [str(f) for f in files]
            for a in range(0, len(paths), args.batch):
                part = paths[a:a + args.batch]
                yield ExtractedBatch(part, {i: b[: len(part)] for i, b in enumerate(blocks)}, [],
                                     a + len(part), len(paths))

        t0 = time.perf_counter()
        update_collections([(c, torch.nn.Identity()) for c in cols], extract=extract)  # models unused
        seconds = time.perf_counter() - t0
        commits = cols[0].generation
        rate = args.rows / seconds
        print(f"| {name} | {sum(dims):,} | {rate:,.0f} | {commits} | {rate * sum(dims) * 2 / 1e6:.1f} |")
        shutil.rmtree(cache, ignore_errors=True)
        loads.append(_load())
    print(f"\nload averages: {', '.join(loads)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("extract", "writer"), required=True)
    ap.add_argument("--data", default="../shared/data/cub100")
    ap.add_argument("--work", default="bench_out/scale")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cores", type=int, default=None)
    args = ap.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    (part_extract if args.part == "extract" else part_writer)(args)


if __name__ == "__main__":
    main()
