"""Open a big collection in a fresh process: open, the first query, the next queries, peak memory;
and the same for another code tree (the baseline) side by side, interleaved, on the same saved collection.

    # make a collection once (the engine's update path; clustered vectors of benchmarks/index.py):
    nice -n 5 python benchmarks/index_open.py make /tmp/open-100k --n 100000 --dim 1280
    # open it: this tree against a baseline worktree, 3 interleaved rounds
    nice -n 5 python benchmarks/index_open.py open /tmp/open-100k --base /work/wt/bigindex-base --rounds 3

``make`` builds through ``Collection`` commits of 50,000 rows and a final commit that builds and saves the
graph (``--ef-construction``; the file's layout and size do not depend on it, so a low value makes
collections for open timings fast; recall is then measured by ``benchmarks/index.py --sweep``). ``open``
runs a child per tree and round: Python start and imports (numpy, the engine), ``Collection.open``, the
first query (which, in the trees before the background load, checks and loads the graph), 200 queries
(p50), the time until the graph answers (``graph_s``, when the tree says), recall@10 of those queries
against exact search, and VmHWM (peak resident memory). The HMAC key and the cache are the
collection's own (``<dir>/config``, ``<dir>/cache``), so both trees trust the same files.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[1])
import numpy as np
from engine.collection import Collection
from engine.search import SearchOptions
from engine.vocabulary import ModelSpec
imported = time.perf_counter() - t0
q = np.load(sys.argv[3])
t, c0 = time.perf_counter(), time.process_time()
c = Collection.open(sys.argv[2] + "/images", model_spec=ModelSpec("synthetic", "random", "spoc"),
                    cache_dir=sys.argv[2] + "/cache")
opened, opened_cpu = time.perf_counter() - t, time.process_time() - c0
c.search(q[0], SearchOptions(k=10))
first, first_cpu = time.perf_counter() - t, time.process_time() - c0
lat = []
for v in q[1:]:
    s = time.perf_counter(); c.search(v, SearchOptions(k=10)); lat.append(time.perf_counter() - s)
wait = getattr(c, "wait_graph", None)
if wait is not None:
    wait()
graph_s = time.perf_counter() - t
got = [[h.relpath for h in c.search(v, SearchOptions(k=10))] for v in q]
lat2 = []
for v in q[1:]:
    s = time.perf_counter(); c.search(v, SearchOptions(k=10)); lat2.append(time.perf_counter() - s)
peak = [int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
exact = [[h.relpath for h in c.search(v, SearchOptions(k=10, exact=True))] for v in q]
print(json.dumps({"import_s": imported, "open_s": opened, "first_s": first, "open_cpu_s": opened_cpu,
                  "first_cpu_s": first_cpu, "graph_s": graph_s,
                  "p50_ms": 1000 * float(np.median(lat)), "p50_graph_ms": 1000 * float(np.median(lat2)),
                  "peak_mb": peak, "kind": type(c.index).__name__,
                  "recall10": float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact)]))}))
"""


def _env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["RETRIEVAL_EXPLORER_CONFIG"] = str(work / "config")
    env["RETRIEVAL_EXPLORER_CACHE"] = str(work / "cache")
    env.pop("PYTHONPATH", None)
    return env


def make(args: argparse.Namespace) -> None:
    """A saved collection of ``--n`` x ``--dim`` clustered vectors through the engine's update path."""
    sys.path.insert(0, str(ROOT))
    os.environ.update({k: v for k, v in _env(args.work).items() if k.startswith("RETRIEVAL_")})
    from benchmarks.index import _engine, sphere_mixture

    rng = np.random.default_rng(args.seed)
    x, centres = sphere_mixture(args.n, args.dim, 1000, 0.6, rng)
    q, _ = sphere_mixture(args.queries, args.dim, 1000, 0.6, rng, centres)
    args.work.mkdir(parents=True, exist_ok=True)
    np.save(args.work / "q.npy", q)
    t = time.perf_counter()
    _engine(x, args.work, argparse.Namespace(M=16, ef_construction=args.ef_construction,
                                             build_threads=os.cpu_count() or 1))
    disk = sum(f.stat().st_size for f in (args.work / "cache").rglob("*") if f.is_file())
    print(f"made {args.n:,} x {args.dim} in {time.perf_counter() - t:.1f} s, {disk / 1e6:.0f} MB on disk "
          f"(efConstruction {args.ef_construction})")


def open_runs(args: argparse.Namespace) -> None:
    """Fresh-process opens of ``args.work``'s collection, this tree and ``--base`` interleaved."""
    trees = [("this tree", ROOT)] + ([("base", Path(args.base))] if args.base else [])
    print("| tree | round | import s | open s (CPU s) | open + first query s (CPU s) | graph answers at s | "
          "query p50 ms (first 200) | query p50 ms (graph) | recall@10 | peak MB | index | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in range(args.rounds):
        for name, tree in (trees if r % 2 == 0 else trees[::-1]):
            out = subprocess.run([sys.executable, "-c", _CHILD, str(tree), str(args.work), str(args.work / "q.npy")],
                                 capture_output=True, text=True, env=_env(args.work))
            if out.returncode:
                raise SystemExit(out.stderr[-3000:])
            o = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {name} | {r + 1} | {o['import_s']:.2f} | {o['open_s']:.2f} ({o['open_cpu_s']:.2f}) | "
                  f"{o['first_s']:.2f} ({o['first_cpu_s']:.2f}) | "
                  f"{o['graph_s']:.2f} | {o['p50_ms']:.2f} | {o['p50_graph_ms']:.2f} | {o['recall10']:.3f} | "
                  f"{o['peak_mb']:.0f} | {o['kind']} | {os.getloadavg()[0]:.1f} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("make", "open"))
    p.add_argument("work", type=Path, help="the folder of the collection (made by `make`)")
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--queries", type=int, default=201)
    p.add_argument("--ef-construction", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base", help="another code tree (a git worktree of the baseline) to open with")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    make(args) if args.what == "make" else open_runs(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
