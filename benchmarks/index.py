"""Index benchmark: HNSW (nmslib) against exact search, for growing collection sizes.

Per size: HNSW build time and memory (RSS growth while building), then for several ``ef`` values the
single-query latency (p50 / p99), queries per second (one query at a time, one thread: an interactive
search), recall@1 and recall@10 against the exact answer; and the exact search's own latency and
throughput. Prints a markdown table (and JSON with --json).

Data: ``--vectors FILE.npy`` (real descriptors, (N, D)) where given and large enough; otherwise a
structured synthetic set: a mixture of ``--clusters`` Gaussian clusters on the unit sphere (centres
uniform on the sphere, spread ``--spread``), L2-normalised, queries drawn from the same mixture (not
database points). cub100 has only 5,902 images, too few for these sizes.

    python benchmarks/index.py --sizes 10000 100000 --dim 128
    python benchmarks/index.py --sizes 1000000 --dim 64 --efs 50 100 --queries 300

``--compare-engine``: per size, the graph built over the same vectors by nmslib alone and through the
engine's own update path (rows appended to a Collection, commits of 50,000 rows, the final commit that
builds, saves and reloads the graph), interleaved (nmslib, engine, nmslib, engine...), wall and CPU
seconds of each (CPU counts both build threads), the load average, and then a fresh process's open of
the saved collection: open s, first query s (graph checked and loaded), peak memory (VmHWM):

    nice -n 5 python benchmarks/index.py --compare-engine --sizes 20000 --dim 1280 --rounds 2

``--sweep``: per size, one graph per ``--ef-constructions`` value (engine.index.HnswIndex over the rows as
a collection stores them), then every ``--efs`` value side by side, the queries interleaved (the order of
the efs rotating): build wall/CPU s, query p50/p99 ms and recall@10 per ef (how engine.index.default_ef
was chosen):

    nice -n 5 python benchmarks/index.py --sweep --sizes 1000000 --dim 128 --efs 100 150 200 300
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

# every query runs on ONE thread, exact and HNSW alike (an interactive search; and a multi-threaded BLAS
# on a busy machine is slower, not faster, for one query). Set before numpy is imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.index import DEFAULT_EF, DEFAULT_EF_CONSTRUCTION, DEFAULT_M, make_index  # noqa: E402


def rss_mb() -> float:
    """Resident memory of this process, MB (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def sphere_mixture(n: int, dim: int, clusters: int, spread: float, rng: np.random.Generator,
                   centres: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) L2-normalised points around ``clusters`` centres on the sphere; returns (points, centres)."""
    if centres is None:
        centres = rng.normal(size=(clusters, dim)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float32)
    for a in range(0, n, 100_000):
        b = min(n, a + 100_000)
        x = centres[rng.integers(0, len(centres), b - a)] + rng.normal(scale=spread / np.sqrt(dim),
                                                                        size=(b - a, dim)).astype(np.float32)
        out[a:b] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out, centres


def timed_single_queries(index, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Query one vector at a time; -> (ids (Q, k), latencies in ms (Q,))."""
    ids = np.zeros((len(q), k), np.int64)
    lat = np.zeros(len(q))
    for i in range(len(q)):
        t = time.perf_counter()
        r, _ = index.query(q[i:i + 1], k)
        lat[i] = (time.perf_counter() - t) * 1000
        ids[i, : r.shape[1]] = r[0]
    return ids, lat


def recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean share of the true top-k found in the returned top-k."""
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth, strict=True)]))


def bench_size(x: np.ndarray, q: np.ndarray, args: argparse.Namespace) -> list[dict]:
    n, dim = x.shape
    ids = np.arange(n, dtype=np.int64)
    rows = []
    # exact: the yardstick (ground truth by batch, latency one query at a time)
    ex = make_index("exact", "cosine", dim=dim)
    ex.add(x, ids)
    t = time.perf_counter()
    truth, _ = ex.query(q, args.k)
    batch_qps = len(q) / (time.perf_counter() - t)
    nq_exact = min(len(q), args.exact_latency_queries)
    _, lat = timed_single_queries(ex, q[:nq_exact], args.k)
    rows.append({"n": n, "dim": dim, "index": "exact", "ef": None, "build_s": 0.0, "mem_mb": x.nbytes / 2**20,
                 "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
                 "qps": 1000 / float(np.mean(lat)), "batch_qps": batch_qps, "r1": 1.0, "r10": 1.0})
    del ex
    gc.collect()
    if n > args.max_hnsw:
        return rows
    before = rss_mb()
    hn = make_index("hnsw", "cosine", dim=dim, M=args.M, ef_construction=args.ef_construction,
                    threads=args.build_threads)
    t = time.perf_counter()
    hn.add(x, ids)
    hn.rebuild()
    build_s = time.perf_counter() - t
    mem = rss_mb() - before
    hn.threads = 1
    for ef in args.efs:
        hn.ef = ef
        found, lat = timed_single_queries(hn, q, args.k)
        rows.append({"n": n, "dim": dim, "index": "hnsw", "ef": ef, "build_s": build_s, "mem_mb": mem,
                     "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
                     "qps": 1000 / float(np.mean(lat)), "batch_qps": None,
                     "r1": float(np.mean(found[:, 0] == truth[:, 0])), "r10": recall(found, truth, args.k)})
    del hn
    gc.collect()
    return rows


def _cpu_s() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _raw_nmslib(x: np.ndarray, args: argparse.Namespace) -> None:
    """The graph as nmslib alone builds it: same space, M, efConstruction and threads as the engine."""
    from engine.index import _import_nmslib

    nmslib = _import_nmslib()
    g = nmslib.init(method="hnsw", space="cosinesimil", data_type=nmslib.DataType.DENSE_VECTOR)
    g.addDataPointBatch(x, ids=np.arange(len(x), dtype=np.int32))
    g.createIndex({"M": args.M, "efConstruction": args.ef_construction, "post": 0,
                   "indexThreadQty": args.build_threads}, print_progress=False)


def _engine(x: np.ndarray, where: Path, args: argparse.Namespace) -> None:
    """The engine's update path: rows appended to a collection, commits of 50,000, the final commit."""
    from engine.collection import Collection
    from engine.vocabulary import ModelSpec

    (where / "images").mkdir(parents=True, exist_ok=True)
    c = Collection.open(where / "images", model_spec=ModelSpec("synthetic", "random", "spoc"),
                        cache_dir=where / "cache", rebuild=True,
                        index_params={"M": args.M, "ef_construction": args.ef_construction,
                                      "threads": args.build_threads})
    names = [f"img/{i:07d}.jpg" for i in range(len(x))]
    current = {p: (1000, 1) for p in names}
    for a in range(0, len(x), 50_000):
        c._append(names[a:a + 50_000], x[a:a + 50_000], [], current)
        c.commit(final=False)
    c.commit(final=True)


_OPEN_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[1])
import numpy as np
from engine.collection import Collection
from engine.search import SearchOptions
from engine.vocabulary import ModelSpec
q = np.load(sys.argv[3])
imported = time.perf_counter() - t0
t = time.perf_counter()
c = Collection.open(sys.argv[2] + "/images", model_spec=ModelSpec("synthetic", "random", "spoc"),
                    cache_dir=sys.argv[2] + "/cache")
opened = time.perf_counter() - t
c.search(q[0], SearchOptions(k=10))
first = time.perf_counter() - t
lat = []
for v in q[1:]:
    t = time.perf_counter(); c.search(v, SearchOptions(k=10)); lat.append(time.perf_counter() - t)
got = [[h.relpath for h in c.search(v, SearchOptions(k=10))] for v in q]
peak = [int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
exact = [[h.relpath for h in c.search(v, SearchOptions(k=10, exact=True))] for v in q]
print(json.dumps({"import_s": imported, "open_s": opened, "open_first_query_s": first,
                  "p50_ms": 1000 * float(np.median(lat)), "peak_mb": peak,
                  "recall10": float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact)]))}))
"""


def compare_engine(args: argparse.Namespace) -> None:
    """nmslib alone against the engine's update path on the same vectors, interleaved; then an open."""
    import shutil
    import subprocess
    import tempfile

    rng = np.random.default_rng(args.seed)
    print(f"Graph build, nmslib alone against the engine's update path (M={args.M}, efConstruction="
          f"{args.ef_construction}, {args.build_threads} threads; {os.cpu_count()} cores)\n")
    print("| N | D | round | what | wall s | CPU s | CPU / wall | load average (1 min) |")
    print("|---|---|---|---|---|---|---|---|")
    opens = []
    for n in args.sizes:
        x, centres = sphere_mixture(n, args.dim, args.clusters, args.spread, rng)
        work = Path(tempfile.mkdtemp(prefix="engine-vs-nmslib-"))
        try:
            for r in range(args.rounds):
                for what in ("nmslib alone", "engine"):
                    shutil.rmtree(work / "c", ignore_errors=True)
                    t, c0 = time.perf_counter(), _cpu_s()
                    _raw_nmslib(x, args) if what == "nmslib alone" else _engine(x, work / "c", args)
                    wall, cpu = time.perf_counter() - t, _cpu_s() - c0
                    print(f"| {n:,} | {args.dim} | {r + 1} | {what} | {wall:.1f} | {cpu:.1f} | {cpu / wall:.2f} "
                          f"| {os.getloadavg()[0]:.1f} |", flush=True)
                    gc.collect()
            q, _ = sphere_mixture(args.queries, args.dim, args.clusters, args.spread, rng, centres)
            np.save(work / "q.npy", q)
            disk = sum(f.stat().st_size for f in (work / "c" / "cache").rglob("*") if f.is_file())
            out = subprocess.run([sys.executable, "-c", _OPEN_CHILD, str(Path(__file__).resolve().parents[1]),
                                  str(work / "c"), str(work / "q.npy")], capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(out.stderr[-3000:])
            opens.append((n, json.loads(out.stdout.strip().splitlines()[-1]), disk, os.getloadavg()[0]))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print("\nA fresh process opens the saved collection (numpy imported before; open, then the first query, "
          f"which checks and loads the graph; {args.queries} queries k=10, ef={DEFAULT_EF})\n")
    print("| N | D | open s | open + first query s | query p50 ms | recall@10 vs exact | peak memory MB | disk MB "
          "| load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, o, disk, load in opens:
        print(f"| {n:,} | {args.dim} | {o['open_s']:.2f} | {o['open_first_query_s']:.2f} | {o['p50_ms']:.2f} "
              f"| {o['recall10']:.3f} | {o['peak_mb']:.0f} | {disk / 1e6:.0f} | {load:.1f} |")


def sweep(args: argparse.Namespace) -> None:
    """Per size and per efConstruction, one graph built through the engine's HnswIndex over the rows as
    a collection stores them (float16, normalised), then every query ``ef`` of ``--efs`` measured side by
    side: the queries interleaved (query 1 at every ef, then query 2...), so that the load hits all alike.
    Prints build wall/CPU s, and per ef the engine query's p50/p99 ms (one thread) and recall@10 against
    exact search over the same rows."""
    from engine.vectors import l2n

    rng = np.random.default_rng(args.seed)
    print(f"HNSW settings side by side (M={args.M}, {args.build_threads} build threads, queries one by one on one "
          f"thread, k={args.k}, {args.queries} queries; {os.cpu_count()} cores)\n")
    print("| N | D | efConstruction | build wall s | build CPU s | ef | query p50 ms | query p99 ms | recall@10 "
          "| load (1 min) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        x, centres = sphere_mixture(n, args.dim, args.clusters, args.spread, rng)
        x = l2n(x.astype(np.float16).astype(np.float32))  # the rows as a collection stores and searches them
        q, _ = sphere_mixture(args.queries, args.dim, args.clusters, args.spread, rng, centres)
        truth = np.zeros((len(q), args.k), np.int64)
        for a in range(0, len(q), 50):
            s = q[a:a + 50] @ x.T
            top = np.argpartition(-s, args.k, axis=1)[:, :args.k]
            order = np.argsort(-np.take_along_axis(s, top, axis=1), axis=1)
            truth[a:a + 50] = np.take_along_axis(top, order, axis=1)
        for efc in args.ef_constructions:
            hn = make_index("hnsw", "cosine", dim=args.dim, M=args.M, ef_construction=efc,
                            threads=args.build_threads)
            t, c0 = time.perf_counter(), _cpu_s()
            hn.build(x, np.arange(n, dtype=np.int64), normalised=True)
            wall, cpu = time.perf_counter() - t, _cpu_s() - c0
            hn.threads = 1
            found = {ef: np.zeros((len(q), args.k), np.int64) for ef in args.efs}
            lat = {ef: np.zeros(len(q)) for ef in args.efs}
            for i in range(len(q)):  # the order of the efs rotates: none always runs first on a cold cache
                for ef in args.efs[i % len(args.efs):] + args.efs[:i % len(args.efs)]:
                    t = time.perf_counter()
                    r, _ = hn.query(q[i:i + 1], args.k, ef=ef)
                    lat[ef][i] = (time.perf_counter() - t) * 1000
                    found[ef][i] = r[0]
            for ef in args.efs:
                print(f"| {n:,} | {args.dim} | {efc} | {wall:.1f} | {cpu:.1f} | {ef} | "
                      f"{np.percentile(lat[ef], 50):.3f} | {np.percentile(lat[ef], 99):.3f} | "
                      f"{recall(found[ef], truth, args.k):.4f} | {os.getloadavg()[0]:.1f} |", flush=True)
            del hn
            gc.collect()
        del x
        gc.collect()


def markdown(rows: list[dict]) -> str:
    head = ("| N | D | index | ef | build s | memory MB | p50 ms | p99 ms | queries/s (1 by 1) | "
            "queries/s (batch) | recall@1 | recall@10 |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        batch = "-" if r["batch_qps"] is None else f"{r['batch_qps']:.0f}"
        lines.append(
            f"| {r['n']:,} | {r['dim']} | {r['index']} | {r['ef'] or '-'} | {r['build_s']:.1f} | {r['mem_mb']:.0f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['qps']:.0f} | "
            f"{batch} | {r['r1']:.3f} | {r['r10']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--vectors", help="real descriptors (N, D) .npy, used for sizes up to N")
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--spread", type=float, default=0.6, help="cluster noise norm relative to the centre")
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--exact-latency-queries", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--efs", type=int, nargs="+", default=[10, 20, 50, DEFAULT_EF, 200])
    p.add_argument("--M", type=int, default=DEFAULT_M)
    p.add_argument("--ef-construction", type=int, default=DEFAULT_EF_CONSTRUCTION)
    p.add_argument("--build-threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--max-hnsw", type=int, default=10**9, help="only exact search above this size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p.add_argument("--compare-engine", action="store_true",
                   help="nmslib alone against the engine's update path, then a fresh process's open")
    p.add_argument("--rounds", type=int, default=1, help="--compare-engine: interleaved rounds")
    p.add_argument("--sweep", action="store_true",
                   help="one graph per --ef-constructions value, all --efs side by side (interleaved queries)")
    p.add_argument("--ef-constructions", type=int, nargs="+", default=[DEFAULT_EF_CONSTRUCTION])
    args = p.parse_args(argv)
    if args.sweep:
        sweep(args)
        return 0
    if args.compare_engine:
        compare_engine(args)
        return 0
    rng = np.random.default_rng(args.seed)
    real = np.load(args.vectors).astype(np.float32) if args.vectors else None
    rows: list[dict] = []
    for n in args.sizes:
        if real is not None and len(real) >= n + args.queries:
            x, q = real[:n], real[n:n + args.queries]
            source = f"real descriptors from {args.vectors}"
        else:
            x, centres = sphere_mixture(n, args.dim, args.clusters, args.spread, rng)
            q, _ = sphere_mixture(args.queries, args.dim, args.clusters, args.spread, rng, centres)
            source = f"synthetic: {args.clusters} Gaussian clusters on the sphere, spread {args.spread}"
        sys.stderr.write(f"N={n:,} D={x.shape[1]} ({source})\n")
        size_rows = bench_size(x, q, args)
        for r in size_rows:
            r["data"] = source
        rows.extend(size_rows)
        sys.stderr.write(markdown(size_rows) + "\n")
        del x, q
        gc.collect()
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPU threads, {platform.python_version()}; "
          f"HNSW M={args.M}, efConstruction={args.ef_construction}, built with {args.build_threads} threads, "
          f"queried with 1 thread (exact: single-threaded BLAS); k={args.k}, {args.queries} queries\n")
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
