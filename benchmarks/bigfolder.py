"""A big photo library end to end (issue 27): generated photos of mixed sizes indexed by the CLI as a user
would, then searched.

Per run: the time to the first search (the first commit: from then on `search` answers from the rows
indexed so far), the time to fully indexed with its graph (`index` returns), the `index` process's peak
memory (VmHWM, polled), then in fresh processes: the open of the collection with its first query (the
graph checked and loaded), the search p50 over stored rows (no network pass: what the index costs), and
one `search` CLI call (a query photo outside the library, the network included).

Photos: --n JPEGs of three kinds, each a smooth random scene with noise (so that they are distinct and
JPEG has work to do): 60% 1024x768, 30% 2048x1536, 10% 4000x3000 (12 MP). Generated once into --work and
reused; the generation is not timed. The collection lives in --work/cache (a scratch cache; the first
run also exports the network for the runtime, a one-time cost counted in its seconds and reported).

    nice -n 5 python benchmarks/bigfolder.py --n 2000                 # a scaled-down run
    python benchmarks/bigfolder.py --n 100000 --distinct 3000 --work /big/disk/bench  # the full library
    # then, on the library it indexed: the open and `search` of this tree against a worktree of main
    python benchmarks/bigfolder.py --n 100000 --distinct 3000 --work /big/disk/bench --reopen ../main -- --descriptor gem

Prints a markdown table on stdout, progress on stderr. Extrapolations are the reader's: the table says
what was measured at --n.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZES = ((0.6, (1024, 768)), (0.3, (2048, 1536)), (0.1, (4000, 3000)))


def eprint(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


def make_library(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` distinct JPEGs of mixed sizes in sub-folders of 1,000 (kept between runs)."""
    from PIL import Image

    done = folder / f".made-{n}"
    if done.exists():
        return
    rng = np.random.default_rng(seed)
    kinds = rng.choice(len(SIZES), n, p=[s[0] for s in SIZES])
    for i in range(n):
        w, h = SIZES[kinds[i]][1]
        small = (rng.random((12, 16, 3)) * 255).astype(np.uint8)  # a smooth scene, scaled up
        img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        noise = rng.integers(-12, 12, (h // 4, w // 4, 3), dtype=np.int16)
        arr = np.asarray(img, np.int16)
        arr[: h // 4, : w // 4] += noise  # some texture
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(sub / f"photo_{i:06d}.jpg", quality=88)
        if (i + 1) % 500 == 0:
            eprint(f"  generated {i + 1:,} / {n:,}")
    done.touch()


def link_library(folder: Path, n: int, pool: Path, distinct: int) -> None:
    """``n`` photo names, hard links to ``distinct`` generated photos (``make_library(pool, distinct)``) in
    the same sub-folder layout: the disk holds ``distinct`` photos, the engine still decodes and describes
    every one of the ``n`` files (it keys files by path and never by content)."""
    done = folder / f".linked-{n}-{distinct}"
    if done.exists():
        return
    make_library(pool, distinct)
    sources = sorted(pool.rglob("*.jpg"))
    for i in range(n):
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        target = sub / f"photo_{i:06d}.jpg"
        if not target.exists():
            os.link(sources[i % len(sources)], target)
    done.touch()


def _env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _peak_mb(pid: int) -> float:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def run_index(folder: Path, cache: Path, work: Path, extra: list[str]) -> dict:
    """`retrieval-explorer index` in a subprocess: time to the first commit, to the end, peak memory."""
    cmd = [sys.executable, "-m", "engine", "index", str(folder), "--cache-dir", str(cache), "--json", *extra]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=_env(work), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first: list[float] = []
    peak = [0.0]

    def watch() -> None:
        while p.poll() is None:
            if not first and any((cache / "collections").rglob("manifest.json")):
                first.append(time.perf_counter() - t0)
            peak[0] = max(peak[0], _peak_mb(p.pid))
            time.sleep(0.2)

    w = threading.Thread(target=watch, daemon=True)
    w.start()
    out, err = p.communicate()
    total = time.perf_counter() - t0
    w.join()
    if p.returncode:
        raise SystemExit(f"index failed (rc {p.returncode}): {err[-3000:]}")
    return {"first_search_s": first[0] if first else total, "indexed_s": total, "peak_mb": peak[0],
            "summary": json.loads(out)}


_OPEN = r"""
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[1])
import numpy as np
from engine.collection import Collection
from engine.search import SearchOptions
from engine.vocabulary import ModelSpec
d = json.loads(sys.argv[4])
d["scales"] = tuple(d["scales"]) if d.get("scales") else d.get("scales")
spec = ModelSpec(**d)
imported = time.perf_counter() - t0
t = time.perf_counter()
c = Collection.open(sys.argv[2], model_spec=spec, cache_dir=sys.argv[3])
opened = time.perf_counter() - t
rng = np.random.default_rng(1)
rows = rng.choice(len(c), min(len(c), 201), replace=False)
names = c.relpaths
v = [c.stored_vector(names[r]) for r in rows]  # the stored rows, outside the timed part (no whole-matrix copy)
t = time.perf_counter()
c.search(v[0], SearchOptions(k=10))
first = opened + time.perf_counter() - t
lat = []
for q in v[1:]:
    t = time.perf_counter(); c.search(q, SearchOptions(k=10)); lat.append(1000 * (time.perf_counter() - t))
getattr(c, "wait_graph", lambda: None)()
graph_s = time.perf_counter() - t0 - imported
lat2 = []
for q in v[1:]:
    t = time.perf_counter(); c.search(q, SearchOptions(k=10)); lat2.append(1000 * (time.perf_counter() - t))
peak = [int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print(json.dumps({"import_s": imported, "open_s": opened, "open_first_s": first, "p50_ms": float(np.median(lat)),
                  "p99_ms": float(np.percentile(lat, 99)), "graph_p50_ms": float(np.median(lat2)), "graph_s": graph_s,
                  "peak_mb": peak, "n": len(c), "dim": c.dim}))
"""


def reopen(work: Path, folder: Path, trees: list[Path], rounds: int, index_args: list[str]) -> None:
    """The open and the `search` CLI of an indexed library in fresh processes, for each code tree in turn
    (rounds interleaved, the order reversed every other round): what a user waits for once it is indexed."""
    cache = work / "cache"
    manifests = [json.loads(m.read_text()) for m in (cache / "collections").rglob("manifest.json")]
    descriptor = index_args[index_args.index("--descriptor") + 1] if "--descriptor" in index_args else "gem"
    graph = next(m for m in manifests if m["model_spec"]["descriptor"] == descriptor)  # what `search` opens
    inside = next(p for p in sorted(folder.rglob("*.jpg")))
    print(f"\n### Reopening {folder.name}: {descriptor}, {graph['count']:,} x {graph['dim']}, "
          f"{len(graph['segments'])} segments, graph {'saved' if graph.get('graph') else 'not built'}; "
          f"{os.cpu_count()} cores\n")
    print("| tree | round | open s | open + first query s | graph in use at s | p50 ms before / with the graph | "
          "peak MB | `search` CLI s, photo outside / inside | load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in range(rounds):
        for tree in (trees if r % 2 == 0 else trees[::-1]):
            env = dict(os.environ, PYTHONPATH=str(tree))
            out = subprocess.run([sys.executable, "-c", _OPEN, str(tree), str(folder), str(cache),
                                  json.dumps(graph["model_spec"])], env=env, capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(out.stderr[-3000:])
            o = json.loads(out.stdout.strip().splitlines()[-1])
            cli = []
            for q in (work / "query.jpg", inside):
                t = time.perf_counter()
                s = subprocess.run([sys.executable, "-m", "engine", "search", str(q), "--collection", str(folder),
                                    "--cache-dir", str(cache), *index_args], env=env, capture_output=True, text=True,
                                   cwd=tree)  # `-m engine` imports from the working folder first
                cli.append(time.perf_counter() - t)
                if s.returncode:
                    eprint(f"search failed (rc {s.returncode}): {s.stderr[-1000:]}")
            print(f"| {tree} | {r + 1} | {o['open_s']:.2f} | {o['open_first_s']:.2f} | {o['graph_s']:.2f} | "
                  f"{o['p50_ms']:.2f} / {o['graph_p50_ms']:.2f} | {o['peak_mb']:.0f} | {cli[0]:.2f} / {cli[1]:.2f} | "
                  f"{os.getloadavg()[0]:.1f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="photos in the library (100000 for the full run)")
    ap.add_argument("--work", default="bench_out/bigfolder")
    ap.add_argument("--distinct", type=int, default=0,
                    help="generate only this many distinct photos and hard-link them under --n names (a 100k "
                         "library of distinct 12 MP photos does not fit a small disk); 0: all distinct")
    ap.add_argument("--keep", action="store_true", help="keep the collection (default: indexed afresh)")
    ap.add_argument("--reopen", nargs="*", metavar="TREE",
                    help="only reopen the library indexed by an earlier run: the open and the `search` CLI in fresh "
                         "processes, for this code tree and each other TREE (e.g. a worktree of main), interleaved")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of --reopen")
    ap.add_argument("index_args", nargs="*", help="more `index` options after --, e.g. -- --descriptor gem")
    args = ap.parse_args()
    work = Path(args.work).resolve()
    distinct = args.distinct if 0 < args.distinct < args.n else 0
    folder = work / (f"library-{args.n}-of-{distinct}" if distinct else f"library-{args.n}")
    cache = work / "cache"
    if args.reopen is not None:
        reopen(work, folder, [ROOT, *(Path(t).resolve() for t in args.reopen)], args.rounds, args.index_args)
        return
    t = time.perf_counter()
    if distinct:
        link_library(folder, args.n, work / f"pool-{distinct}", distinct)
    else:
        make_library(folder, args.n)
    eprint(f"library of {args.n:,} photos ready ({time.perf_counter() - t:.0f} s)")
    if not args.keep:
        shutil.rmtree(cache / "collections", ignore_errors=True)
    load0 = os.getloadavg()
    r = run_index(folder, cache, work, args.index_args)
    eprint(f"index: {r['first_search_s']:.1f} s to the first commit, {r['indexed_s']:.1f} s in all")
    manifests = [json.loads(m.read_text()) for m in (cache / "collections").rglob("manifest.json")]
    graph = next((m for m in manifests if m.get("graph")), manifests[0])
    out = subprocess.run([sys.executable, "-c", _OPEN, str(ROOT), str(folder), str(cache), json.dumps(graph["model_spec"])],
                         env=_env(work), capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    o = json.loads(out.stdout.strip().splitlines()[-1])
    query = work / "query.jpg"
    if not query.exists():
        make_library(work / "query-lib", 1, seed=99)
        shutil.copy(next((work / "query-lib").rglob("*.jpg")), query)
    t = time.perf_counter()
    s = subprocess.run([sys.executable, "-m", "engine", "search", str(query), "--collection", str(folder),
                        "--cache-dir", str(cache), *args.index_args], env=_env(work), capture_output=True, text=True)
    search_cli = time.perf_counter() - t
    if s.returncode:
        eprint(f"search failed (rc {s.returncode}): {s.stderr[-1000:]}")
    load1 = os.getloadavg()
    rate = args.n / r["indexed_s"]
    made = f"{distinct:,} distinct, hard-linked under {args.n:,} names, " if distinct else ""
    print(f"\n### A library of {args.n:,} generated photos end to end ({made}60% 1024x768, 30% 2048x1536, 10% 12 MP; "
          f"`index` defaults; {os.cpu_count()} cores; load average {load0[0]:.1f} before, {load1[0]:.1f} after)\n")
    print("| photos | to the first search s | fully indexed with its graph s | images/s overall | index peak MB "
          "| open s | open + first query s | search p50 ms (stored rows) | `search` CLI s | vectors |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.n:,} | {r['first_search_s']:.1f} | {r['indexed_s']:.1f} | {rate:.1f} | {r['peak_mb']:.0f} "
          f"| {o['open_s']:.2f} | {o['open_first_s']:.2f} | {o['p50_ms']:.2f} | {search_cli:.1f} "
          f"| {o['n']:,} x {o['dim']} |")
    print(f"\n`index` said: {json.dumps(r['summary'])[:600]}")


if __name__ == "__main__":
    main()
