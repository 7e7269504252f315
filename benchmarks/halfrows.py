"""Scoring stored float16 rows: engine.halfrows on ONNX Runtime against its numpy path (issue 27).

A collection keeps its rows as float16; an exact search scores them (``half_scores``) and
``Collection.vectors`` converts them (``half_rows``). Each configuration runs in a fresh process (the
first call pays onnxruntime's import and the session), configurations interleaved by round; one unit
query, clustered unit rows rounded to float16.

    python benchmarks/halfrows.py                      # 100k x 1280 and 1M x 128, 2 rounds
    python benchmarks/halfrows.py --sizes 20000:256 --rounds 1

Prints a markdown table (seconds; warm: the median of 5 calls).
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
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
n, d, path = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
import numpy as np
rng = np.random.default_rng(0)
rows = rng.standard_normal((n, d), dtype=np.float32)
rows /= np.linalg.norm(rows, axis=1, keepdims=True)
rows = rows.astype(np.float16)
q = rng.standard_normal((1, d)).astype(np.float32)
q /= np.linalg.norm(q)
t0 = time.perf_counter()
import engine.halfrows as hr
if path == "numpy":
    hr._sessions.update(scores=None, cast=None)
t = time.perf_counter(); hr.half_scores(q, rows); first = time.perf_counter() - t0
def warm(f):
    ws = []
    for _ in range(5):
        t = time.perf_counter(); f(); ws.append(time.perf_counter() - t)
    return statistics.median(ws)
out = np.empty((n, d), np.float32)
t = time.perf_counter(); hr.half_rows(rows, out); rows_first = time.perf_counter() - t
print(json.dumps({"first": first, "warm": warm(lambda: hr.half_scores(q, rows)), "rows_first": rows_first,
                  "rows_warm": warm(lambda: hr.half_rows(rows, out))}))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000:1280,1000000:128", help="N:D pairs, comma-separated")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split(":")) for s in args.sizes.split(",")]
    print(f"\n### Scoring float16 rows, one query ({os.cpu_count()} cores)\n")
    print("| N x D | path | round | half_scores first call s (import, session) | half_scores warm s | "
          "half_rows first s | half_rows warm s | load |")
    print("|---|---|---|---|---|---|---|---|")
    for r in range(args.rounds):
        for n, d in sizes:
            for path in (("onnxruntime", "numpy") if r % 2 == 0 else ("numpy", "onnxruntime")):
                out = subprocess.run([sys.executable, "-c", _CHILD, str(ROOT), str(n), str(d), path],
                                     capture_output=True, text=True, cwd=ROOT)
                if out.returncode:
                    raise SystemExit(out.stderr[-3000:])
                o = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"| {n:,} x {d} | {path} | {r + 1} | {o['first']:.3f} | {o['warm']:.3f} | "
                      f"{o['rows_first']:.3f} | {o['rows_warm']:.3f} | {os.getloadavg()[0]:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
