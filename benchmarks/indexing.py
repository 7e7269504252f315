"""Indexing speed and storage, side by side in one run (issue 11).

Speed (``--part speed``): the pipeline from JPEG files to stored descriptors, per runtime and path,
on two folders:

- ``12mp``: 12-megapixel JPEGs made from cub100 images (scaled up to 4000 x 3000, with a fine texture
  and noise so that they compress like photographs, quality 90; generated once into --work);
- ``cub100``: the cub100 images themselves (227 x 227).

Paths:

- ``today``: what the program did before this change: every file decoded in full, in line, then
  PyTorch eager, one descriptor;
- ``draft+threads/<runtime>``: JPEG DCT-scaled decoding (engine.images.load_image min_side) in
  threads beside the network, the network in <runtime> (torch, onnxruntime, openvino), one descriptor;
- ``.../all heads``: the same, all five descriptors from the one backbone pass.

Per row: decode ms/image (single thread, alone), end-to-end images/s (files -> vectors, the engine's
iter_extract), the bare inference images/s of that runtime on ready tensors (batch 32), and their
ratio. Rounds are interleaved (every path once per round, in turn) and the median is reported.
R@1 (leave-one-out, cub100 test classes 50-99, SPoC and GeM) per runtime, and the R@1 cost of storing
float16 vectors.

Storage (``--part storage``): a collection of N synthetic vectors (clustered, D dims), built through
the engine's own commits: time to add 100 vectors and commit, time to open and to answer the first
query, resident memory after the first query, bytes on disk, HNSW recall@10 against exact search.

    python benchmarks/indexing.py --data ../shared/data/cub100 --part speed
    python benchmarks/indexing.py --part storage --sizes 100000:1280,1000000:128

Prints markdown tables on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

log = logging.getLogger("bench.indexing")
ROOT = Path(__file__).resolve().parents[1]


def eprint(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


# --- data ------------------------------------------------------------------------------------------
def cub_files(data: Path) -> tuple[list[Path], list[Path], list[str]]:
    """(all images, test-class images 50-99, their labels) of cub100 (PROTOCOL.md)."""
    split = json.loads((data / "class_split.json").read_text())
    test_names = set(split.get("test") or split.get("test_classes") or [])
    files = sorted((data / "images").glob("*/*.jpg"))
    test = [f for f in files if f.parent.name in test_names]
    return files, test, [f.parent.name for f in test]


def make_12mp(sources: list[Path], out: Path, n: int) -> list[Path]:
    """``n`` 4000 x 3000 JPEGs from ``sources`` (cached in ``out``): scaled up, a fine texture and noise."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    made = []
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:3000, 0:4000]
    texture = (6 * np.sin(xx * 0.9) * np.sin(yy * 1.3)).astype(np.float32)[..., None]
    for i, src in enumerate(sources[:n]):
        dst = out / f"{i:04d}_{src.stem}.jpg"
        if not dst.exists():
            big = np.asarray(Image.open(src).convert("RGB").resize((4000, 3000), Image.BICUBIC), np.float32)
            big = big + texture + rng.normal(0, 4, big.shape).astype(np.float32)
            Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)).save(dst, quality=90)
        made.append(dst)
        if i % 16 == 0:
            eprint(f"12 MP JPEGs: {i + 1}/{n}")
    return made


# --- speed -----------------------------------------------------------------------------------------
def decode_ms(files: list[Path], draft: bool, size: int, norm: tuple) -> float:
    """Median ms to load one file and make the network input, one thread."""
    from engine.images import build_transform, load_image

    tf = build_transform(size, *norm)
    times = []
    for f in files:
        t = time.perf_counter()
        tf(load_image(f, min_side=size if draft else None))
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def bare_rate(run, size: int, batch: int = 32, repeats: int = 3) -> float:
    import torch

    x = torch.randn(batch, 3, size, size)
    run(x[:2])  # warm up
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        run(x)
        best = max(best, batch / (time.perf_counter() - t))
    return best


def e2e_rate(files: list[Path], compute, *, size: int, norm: tuple, draft: bool, threads: int, batch: int = 32,
             crop: float = 1.0) -> tuple[float, dict[str, np.ndarray]]:
    """Images/s from files to vectors through engine.extraction.iter_extract; and the vectors."""
    from engine.extraction import iter_extract

    t = time.perf_counter()
    chunks: dict[str, list[np.ndarray]] = {}
    for b in iter_extract(files, compute, image_size=size, mean=norm[0], std=norm[1], crop_fraction=crop,
                          batch_size=batch, decode_threads=threads, draft=draft):
        for k, v in b.vectors.items():
            chunks.setdefault(k, []).append(v)
    rate = len(files) / (time.perf_counter() - t)
    return rate, {k: np.concatenate(v) for k, v in chunks.items()}


def r_at_1(x: np.ndarray, labels: list[str]) -> float:
    from engine.evaluation import evaluate

    return float(evaluate(x, labels, ks=(1,))["recall@1"])


def part_speed(args: argparse.Namespace) -> None:
    import torch

    from engine.runtime import available_runtimes, feature_runner
    from models.descriptors import build_descriptor, list_descriptors
    from models.registry import get_backbone

    torch.set_num_threads(args.threads)
    size = 224
    data = Path(args.data)
    files, test, labels = cub_files(data)
    rng = np.random.default_rng(1)
    sample = [files[i] for i in sorted(rng.choice(len(files), args.cub_n, replace=False))]
    big = make_12mp([files[i] for i in rng.choice(len(files), args.n12, replace=False)], Path(args.work) / "12mp",
                    args.n12)
    bb = get_backbone("efficientnet_lite0", weights="pretrained")
    norm = (tuple(bb.mean), tuple(bb.std))  # the backbone's own input normalisation
    heads = {k: build_descriptor(k, bb).eval() for k in list_descriptors()}
    runtimes = ["torch"] + [r for r in ("onnxruntime", "openvino") if r in available_runtimes()]
    runners = {}
    cache = Path(args.work) / "runtimes"
    for r in runtimes:
        runners[r] = feature_runner(bb, size, "bench-efficientnet_lite0", cache, r, threads=args.threads)
        if runners[r].name != r:
            eprint(f"{r}: fell back to {runners[r].name} ({runners[r].fallback_reason})")
    runtimes = [r for r in runtimes if runners[r].name == r]

    def compute_for(r: str, names: list[str]):
        run = runners[r]

        def compute(x):
            fmap = run(x)
            return {n: heads[n].describe(fmap) for n in names}
        return compute

    paths = [("today", "torch", False, 0, ["spoc"])]
    for r in runtimes:
        paths.append((f"draft+threads/{r}", r, True, args.decode_threads, ["spoc"]))
    best = runtimes[-1] if args.best is None else args.best
    paths.append((f"draft+threads/{best}/all heads", best, True, args.decode_threads, list(heads)))

    eprint(f"decode timings (load {len(big[:8])} 12 MP and {len(sample[:40])} cub100 files) ...")
    dec = {(name, draft): decode_ms(fl, draft, size, norm)
           for name, fl in (("12mp", big[:8]), ("cub100", sample[:40])) for draft in (False, True)}
    bare = {r: [] for r in runtimes}
    rates: dict[tuple[str, str], list[float]] = {}
    load = [os.getloadavg()[0]]
    for rnd in range(args.rounds):
        order = paths if rnd % 2 == 0 else paths[::-1]
        for r in (runtimes if rnd % 2 == 0 else runtimes[::-1]):
            bare[r].append(bare_rate(runners[r], size))
        for folder, fl in (("12mp", big), ("cub100", sample)):
            for name, r, draft, threads, names in order:
                rate, _ = e2e_rate(fl, compute_for(r, names), size=size, norm=norm, draft=draft, threads=threads)
                rates.setdefault((folder, name), []).append(rate)
                eprint(f"round {rnd + 1}: {folder:7s} {name:38s} {rate:6.1f} images/s")
        load.append(os.getloadavg()[0])

    print(f"\n### Indexing speed (2 threads for the network, {args.decode_threads} decoding threads; "
          f"{args.n12} 12 MP JPEGs, {args.cub_n} cub100 images; median of {args.rounds} interleaved rounds; "
          f"load average {min(load):.1f}-{max(load):.1f} on {os.cpu_count()} cores)\n")
    print("| folder | path | decode ms/image | end-to-end images/s | bare inference images/s | e2e / bare "
          "| vs today |")
    print("|---|---|---|---|---|---|---|")
    for folder in ("12mp", "cub100"):
        today = statistics.median(rates[(folder, "today")])
        for name, r, draft, _threads, _names in paths:
            e2e = statistics.median(rates[(folder, name)])
            b = statistics.median(bare[r])
            print(f"| {folder} | {name} | {dec[(folder, draft)]:.1f} | {e2e:.1f} | {b:.1f} | {e2e / b:.2f} "
                  f"| {e2e / today:.2f}x |")

    if args.r1:
        eprint(f"R@1 on {len(test)} test-class images per runtime ...")
        print(f"\n### R@1 per runtime (cub100 test classes 50-99, {len(test)} images, leave-one-out; "
              "PROTOCOL.md's 224 centre crop of the 227 image)\n")
        print("| runtime | SPoC R@1 | GeM R@1 | SPoC R@1, float16 storage | GeM R@1, float16 storage |")
        print("|---|---|---|---|---|")
        ref = None
        for r in runtimes:
            _, vec = e2e_rate(test, compute_for(r, ["spoc", "gem"]), size=size, norm=norm, draft=True,
                              threads=args.decode_threads, crop=224 / 227)
            row = [r1 for k in ("spoc", "gem") for r1 in [r_at_1(vec[k], labels)]]
            half = [r_at_1(vec[k].astype(np.float16).astype(np.float32), labels) for k in ("spoc", "gem")]
            ref = ref or row
            print(f"| {r} | {row[0]:.4f} ({row[0] - ref[0]:+.4f}) | {row[1]:.4f} ({row[1] - ref[1]:+.4f}) "
                  f"| {half[0]:.4f} | {half[1]:.4f} |")


# --- storage ---------------------------------------------------------------------------------------
def mixture(n: int, d: int, rng: np.random.Generator, centres: np.ndarray | None = None):
    """benchmarks/index.py's clustered set (1,000 Gaussian clusters on the sphere, spread 0.6): its defaults."""
    from benchmarks.index import sphere_mixture

    return sphere_mixture(n, d, 1000, 0.6, rng, centres)


_CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r})


def peak_mb():  # this process's own peak (VmHWM: ru_maxrss would carry the parent's over fork and exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


import numpy as np
from engine.collection import Collection
from engine.vocabulary import ModelSpec
from engine.search import SearchOptions
spec = ModelSpec(backbone="synthetic", weights="random", descriptor="spoc")
t = time.perf_counter()
c = Collection.open({folder!r}, model_spec=spec, cache_dir={cache!r})
opened = time.perf_counter() - t
q = np.load({queries!r})
t = time.perf_counter()
c.search(q[0], SearchOptions(k=10))
first = time.perf_counter() - t
t = time.perf_counter()
got = [[h.relpath for h in hits] for hits in c.search_many(q, SearchOptions(k=10))]
per_query = (time.perf_counter() - t) / len(q)
rss = peak_mb()  # open + HNSW queries: what a user pays
exact = [[h.relpath for h in hits] for hits in c.search_many(q, SearchOptions(k=10, exact=True))]
recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact)]))
rss_exact = peak_mb()  # + the exact index of the check
# what an update of 100 new images costs beyond their extraction: append them and commit, three times
extra = np.load({extra!r})
adds = []
for k in range(3):
    names = [f"new/{{k}}-{{i:03d}}.jpg" for i in range(100)]
    t = time.perf_counter()
    c._append(names, extra[100 * k:100 * (k + 1)], [], {{p: (1000, 1) for p in names}})
    c.commit(final=True)
    adds.append(time.perf_counter() - t)
print(json.dumps({{"open_s": opened, "first_query_s": first, "query_ms": 1000 * per_query, "recall10": recall,
                  "peak_rss_mb": rss, "peak_rss_exact_mb": rss_exact, "add100_s": adds}}))
"""


def build(n: int, d: int, where: Path) -> tuple[float, float, np.ndarray, np.ndarray]:
    """A collection of n vectors in ``where`` (kept for later runs); (fill s, graph s, centres, extra)."""
    from engine.collection import Collection
    from engine.vocabulary import ModelSpec

    spec = ModelSpec(backbone="synthetic", weights="random", descriptor="spoc")
    x, centres = mixture(n + 300, d, np.random.default_rng(0))
    done = where / "built.json"
    if done.exists():
        info = json.loads(done.read_text())
        return info["fill_s"], info["graph_s"], centres, x[n:]
    folder = where / "images"
    folder.mkdir(parents=True, exist_ok=True)
    c = Collection.open(folder, model_spec=spec, cache_dir=where / "cache", rebuild=True)
    # the rows an update would append (no image files: the folder stays empty and is never scanned)
    names = [f"img/{i:07d}.jpg" for i in range(n)]
    current = {p: (1000, 1) for p in names}
    t = time.perf_counter()
    for s in range(0, n, 50_000):
        c._append(names[s:min(n, s + 50_000)], x[s:min(n, s + 50_000)], [], current)
        c.commit(final=False)
    fill = time.perf_counter() - t
    t = time.perf_counter()
    c.commit(final=True)  # builds the graph
    graph = time.perf_counter() - t
    done.write_text(json.dumps({"fill_s": fill, "graph_s": graph}))
    return fill, graph, centres, x[n:]


def part_storage(args: argparse.Namespace) -> None:
    rows = []
    for item in args.sizes.split(","):
        n, d = (int(v) for v in item.split(":"))
        where = Path(args.work) / f"storage-{n}-{d}"
        eprint(f"storage: {n:,} x {d} ...")
        fill, graph, centres, extra = build(n, d, where)
        gc.collect()
        with tempfile.TemporaryDirectory(dir=args.work) as tmp:
            # measure on a copy: the add-100 commits must not grow the kept collection
            import shutil

            shutil.copytree(where / "cache", Path(tmp) / "cache")
            q, e = Path(tmp) / "q.npy", Path(tmp) / "extra.npy"
            np.save(q, mixture(200, d, np.random.default_rng(7), centres)[0])
            np.save(e, extra)
            disk = sum(p.stat().st_size for p in (where / "cache").rglob("*") if p.is_file())
            out = subprocess.run([sys.executable, "-c", _CHILD.format(
                root=str(ROOT), folder=str(where / "images"), cache=str(Path(tmp) / "cache"), queries=str(q),
                extra=str(e))], capture_output=True, text=True, timeout=3600)
        if out.returncode:
            eprint(out.stderr[-3000:])
            raise SystemExit(1)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append((n, d, fill, graph, r, disk))
        eprint(f"  fill {fill:.1f} s, graph {graph:.1f} s, {r}")
    print(f"\n### Collection storage (benchmarks/index.py's clustered vectors, 1,000 clusters, float16 segments + "
          f"HNSW M=16, efConstruction=200, ef=100; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f})\n")
    print("| vectors | dims | commits of 50k s | graph build s | open s | first query s | query ms "
          "| recall@10 vs exact | peak memory MB (open + HNSW queries; + exact check) | add 100 + commit s (3 times) "
          "| disk MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n, d, fill, build_s, r, disk in rows:
        adds = ", ".join(f"{a:.2f}" for a in r["add100_s"])
        print(f"| {n:,} | {d} | {fill:.1f} | {build_s:.1f} | {r['open_s']:.2f} | {r['first_query_s']:.2f} "
              f"| {r['query_ms']:.2f} | {r['recall10']:.3f} | {r['peak_rss_mb']:.0f}; {r['peak_rss_exact_mb']:.0f} | {adds} "
              f"| {disk / 1e6:.0f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=("speed", "storage", "all"), default="all")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cub100"))
    p.add_argument("--work", default=str(ROOT / "bench_out" / "indexing"), help="generated files (ignored by git)")
    p.add_argument("--n12", type=int, default=64, help="12 MP JPEGs to generate and index")
    p.add_argument("--cub-n", type=int, default=320, help="cub100 images for the speed rows")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="threads of the network")
    p.add_argument("--decode-threads", type=int, default=2)
    p.add_argument("--best", default=None, help="runtime of the all-heads row (default: the last available)")
    p.add_argument("--r1", action="store_true", help="also R@1 per runtime on the cub100 test classes")
    p.add_argument("--sizes", default="100000:1280,1000000:128", help="storage rows, N:D,...")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.part in ("speed", "all"):
        part_speed(args)
    if args.part in ("storage", "all"):
        part_storage(args)
    eprint(f"peak memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
