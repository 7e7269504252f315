"""`eval` on the eager PyTorch path against the exported runtime, in one run: seconds, images/s and metrics.

Each runtime runs `retrieval-explorer eval` in a fresh process (the first "auto" run exports the backbone
once, into a temporary cache, before the timed runs), alternately, so that both see the same load. On
cub100's test classes (read ../shared/data/cub100/PROTOCOL.md; nothing of it is written here):

    python benchmarks/eval_speed.py --root ../shared/data/cub100 --split ../shared/data/cub100/query_retrieval_test.json \
        --crop-fraction 0.986784 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _eval(argv: list[str], runtime: str, cache: str) -> tuple[float, dict]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "engine", "eval", *argv, "--runtime", runtime, "--cache-dir", cache,
                          "--json"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                         text=True)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"eval --runtime {runtime} failed: {out.stderr[-2000:]}")
    return seconds, json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--split", default=None)
    ap.add_argument("--descriptor", default="gem")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--crop-fraction", type=float, default=1.0)
    ap.add_argument("--runtimes", default="torch,auto")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    argv = ["--root", args.root, "--descriptor", args.descriptor, "--image-size", str(args.image_size),
            "--crop-fraction", str(args.crop_fraction), "--device", "cpu"]
    if args.split:
        argv += ["--split", args.split]
    runtimes = args.runtimes.split(",")
    cache = tempfile.mkdtemp(prefix="eval-speed-")
    # the export (once per cache) is not part of the timed runs: one image is enough to make it
    with tempfile.TemporaryDirectory() as one:
        first = next(Path(args.root).rglob("*.jpg"))
        for i in range(2):
            (Path(one) / f"c{i}").mkdir()
            (Path(one) / f"c{i}" / "a.jpg").write_bytes(first.read_bytes())
        _eval(["--root", one, "--descriptor", args.descriptor, "--image-size", str(args.image_size), "--device", "cpu"],
              "auto", cache)
    rows: dict[str, list[tuple[float, dict]]] = {r: [] for r in runtimes}
    for _ in range(args.repeats):
        for r in runtimes:
            rows[r].append(_eval(argv, r, cache))
    load = os.getloadavg()
    print(f"`eval` {args.descriptor} at {args.image_size}, {args.repeats} alternating repeat(s), load average "
          f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}, {os.cpu_count()} cores\n")
    print("| runtime | images | seconds (process) | images/s | R@1 | mAP | top-1 |")
    print("|---|---|---|---|---|---|---|")
    for r, runs in rows.items():
        for seconds, m in runs:
            print(f"| {r} ({m.get('runtime', '?')}) | {m['n_images']} | {seconds:.1f} | {m['n_images'] / seconds:.1f} | "
                  f"{m['recall@1']:.4f} | {m['map']:.4f} | {m.get('top1', float('nan')):.4f} |")
    if len(runtimes) == 2:
        a, b = (sum(s for s, _ in rows[r]) for r in runtimes)
        print(f"\n{runtimes[0]} / {runtimes[1]} wall time: {a / b:.2f}x")


if __name__ == "__main__":
    main()
