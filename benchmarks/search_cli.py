"""Wall time of one `retrieval-explorer search` command, as a user runs it (a fresh process each time).

Compares the code in this checkout with another copy of the project (``--before DIR``, e.g. made with
``git archive <commit> | tar -x -C DIR``), interleaved repeat by repeat so that both see the same load;
the collection is indexed first by this checkout (both read the same cache, and this checkout's `index`
exports the descriptor heads that let `search` run without torch). Two queries: the image inside the
collection (its stored row) and a copy of it outside (described by the network). Prints a markdown table.

    python benchmarks/search_cli.py --folder resources/demo --query resources/demo/rings/03.jpg \
        --before /tmp/before --repeats 3
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CPU_SECONDS: list[float] = []  # per command run, in order: a load-independent proxy of a quiet machine's wall time


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _run(code_dir: Path, argv: list[str], env: dict) -> float:
    """The command's wall time (its CPU time, user + system, is added to CPU_SECONDS)."""
    t0, c0 = time.perf_counter(), _cpu()
    out = subprocess.run([sys.executable, "-m", "engine", *argv], cwd=code_dir, env={**env, "PYTHONPATH": str(code_dir)},
                         capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    CPU_SECONDS.append(_cpu() - c0)
    if out.returncode != 0:
        raise SystemExit(f"{code_dir}: search failed: {out.stderr[-2000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, default=REPO / "resources" / "demo")
    ap.add_argument("--query", type=Path, default=None, help="default: the folder's first image")
    ap.add_argument("--before", type=Path, required=True, help="another copy of the project to compare with")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=None, help="cache folder (default: a temporary one)")
    args = ap.parse_args()
    folder = args.folder.resolve()
    query = (args.query or sorted(p for p in folder.rglob("*.jpg"))[0]).resolve()
    cache = args.cache or Path(tempfile.mkdtemp(prefix="search-cli-"))
    env = dict(os.environ)
    subprocess.run([sys.executable, "-m", "engine", "index", str(folder), "--cache-dir", str(cache)],
                   cwd=REPO, env={**env, "PYTHONPATH": str(REPO)}, check=True, capture_output=True)
    outside = Path(tempfile.mkdtemp(prefix="search-cli-query-")) / f"outside{query.suffix}"
    shutil.copyfile(query, outside)
    queries = {"inside": query, "outside": outside}
    argvs = {k: ["search", str(q), "--collection", str(folder), "--cache-dir", str(cache), "--k", "5"]
             for k, q in queries.items()}
    _run(REPO, argvs["outside"], env)  # the first search after indexing checks the runtime once and remembers it
    times: dict[tuple[str, str], list[float]] = {(c, k): [] for k in queries for c in ("before", "after")}
    cpu: dict[tuple[str, str], list[float]] = {key: [] for key in times}
    for _ in range(args.repeats):
        for k in queries:
            for name, code in (("before", args.before.resolve()), ("after", REPO)):
                times[(name, k)].append(_run(code, argvs[k], env))
                cpu[(name, k)].append(CPU_SECONDS[-1])
    load = os.getloadavg()
    print(f"`search` of {folder.name} ({query.name} inside, a copy outside), {args.repeats} interleaved repeats, "
          f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}, {os.cpu_count()} cores\n")
    print("| code | query | wall, runs (s) | wall, median (s) | CPU user+sys, median (s) |")
    print("|---|---|---|---|---|")
    for (name, k), ts in times.items():
        print(f"| {name} | {k} | {', '.join(f'{t:.2f}' for t in ts)} | {statistics.median(ts):.2f} | "
              f"{statistics.median(cpu[(name, k)]):.2f} |")
    for k in queries:
        ratios = [b / a for b, a in zip(times[("before", k)], times[("after", k)], strict=True)]
        print(f"\n{k}: before / after per repeat: {', '.join(f'{r:.2f}' for r in ratios)} "
              f"(median {statistics.median(ratios):.2f})")

if __name__ == "__main__":
    main()
