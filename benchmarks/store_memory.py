"""Peak memory of a collection's store while a big folder is indexed, without the network (issue 27).

`index` keeps every descriptor's rows in memory, hands them to the live index (whose pending part holds
every row of a new folder until the final commit) and, at the end, builds the first descriptor's graph.
This replays that pattern with synthetic clustered rows: rows appended to each collection in batches of
256 (as `update_collections` does), an intermediate commit every 2,048 rows, then the final commits (the
graph of the first collection only, efConstruction 16: the graph's memory does not depend on it). Each
code tree runs in its own fresh process (VmHWM), trees interleaved by round.

    python benchmarks/store_memory.py --n 100000 --base ../main              # five descriptors, as `index`
    python benchmarks/store_memory.py --n 100000 --dims 1280 --base ../main  # one, as `index --descriptor gem`

Prints a markdown table: the peak after the rows were appended (before the final commit) and after it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, os, pathlib, shutil, sys, tempfile, time
work = pathlib.Path(tempfile.mkdtemp(prefix="store-memory-"))
os.environ["RETRIEVAL_EXPLORER_CONFIG"] = str(work / "config")  # its own key, not the user's settings
sys.path.insert(0, sys.argv[1])
import numpy as np
from engine.collection import Collection
from engine.vocabulary import ModelSpec
n, dims = int(sys.argv[2]), [int(d) for d in sys.argv[3].split(",")]
def hwm():
    return [int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
try:
    (work / "images").mkdir()
    names_of = ("gem", "fc", "spoc", "mac", "rmac")
    cols = [Collection.open(work / "images", model_spec=ModelSpec("synthetic", "random", names_of[i]),
                            cache_dir=work / "cache", rebuild=True,
                            index_params={"M": 16, "ef_construction": 16, "threads": 2}) for i in range(len(dims))]
    rng = np.random.default_rng(0)
    centres = [rng.standard_normal((100, d)).astype(np.float32) for d in dims]
    t = time.perf_counter()
    for a in range(0, n, 256):
        m = min(256, n - a)
        names = [f"img/{i:07d}.jpg" for i in range(a, a + m)]
        lab = rng.integers(0, 100, m)
        for c, ce, d in zip(cols, centres, dims):
            c._append(names, ce[lab] + 0.5 * rng.standard_normal((m, d)).astype(np.float32), [],
                      {p: (1000, 1) for p in names})
        if (a // 256) % 8 == 7:
            for c in cols:
                c.commit(final=False)
    appended = hwm()
    for i, c in enumerate(cols):
        c.commit(final=i == 0)
    print(json.dumps({"appended_mb": appended, "final_mb": hwm(), "s": time.perf_counter() - t}))
finally:
    shutil.rmtree(work, ignore_errors=True)
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20_000, help="rows per descriptor")
    p.add_argument("--dims", default="1280,1000,1280,1280,1280",
                   help="one dimension per descriptor (default: EfficientNet-Lite0's five, GeM's first)")
    p.add_argument("--base", help="another code tree (e.g. a worktree of main) to measure beside this one")
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args(argv)
    trees = [("this tree", ROOT)] + ([("base", Path(args.base).resolve())] if args.base else [])
    print(f"\n### Store memory while indexing {args.n:,} rows x ({args.dims}) ({os.cpu_count()} cores)\n")
    print("| tree | round | peak MB, rows appended | peak MB, after the final commit (graph built) | s | load |")
    print("|---|---|---|---|---|---|")
    for r in range(args.rounds):
        for name, tree in (trees if r % 2 == 0 else trees[::-1]):
            out = subprocess.run([sys.executable, "-c", _CHILD, str(tree), str(args.n), args.dims],
                                 capture_output=True, text=True, cwd=tree)
            if out.returncode:
                raise SystemExit(out.stderr[-3000:])
            o = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {name} | {r + 1} | {o['appended_mb']:,.0f} | {o['final_mb']:,.0f} | {o['s']:.1f} | "
                  f"{os.getloadavg()[0]:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
