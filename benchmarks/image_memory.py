"""Peak memory of costly images inside the pixel limit (issue 26, item 9), each in a fresh process.

The attack files of tests/campaign/cases_images.py (a 35-byte GIF with a 15000 x 15000 canvas; 16000 x
16000 PNGs: RGBA, palette with transparency, 16-bit grey), measured three ways:

- ``decode``: engine.images.load_image(file, min_side=224) alone (python + PIL + numpy, no torch), and
  the same process's peak before it (its baseline);
- ``query``: ``retrieval-explorer search FILE --collection DIR`` against a 6-photo collection;
- ``index``: ``retrieval-explorer index`` of the four files and two photos (fresh cache).

Peak resident memory is ``ru_maxrss`` of the measured child process.

    python benchmarks/image_memory.py [--work /tmp/image-memory] [--parts decode,query,index]
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from campaign import SMALL, make_photos  # noqa: E402
from campaign.cases_images import GB, costly_files, peak_run  # noqa: E402

_DECODE = """
import json, resource, sys, time
from engine.images import ImageLoadError, load_image
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
try:
    im = load_image(sys.argv[1], min_side=224)
    said = f"{im.size[0]}x{im.size[1]}"
except ImageLoadError as e:
    said = e.reason
print(json.dumps({"base": base * 1024, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "s": time.perf_counter() - t, "said": said}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "image-memory")
    ap.add_argument("--parts", default="decode,query,index")
    a = ap.parse_args()
    parts = a.parts.split(",")
    files = a.work / "files"
    if not (files / "canvas-grey16.png").exists():
        costly_files(files)
    costly = sorted(files.iterdir())
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    print(f"load {os.getloadavg()[0]:.1f}\n")
    print("| file | bytes | part | peak GB | baseline GB | s | result |")
    print("|---|---:|---|---:|---:|---:|---|")
    if "decode" in parts:
        for f in costly:
            p = subprocess.run([sys.executable, "-c", _DECODE, str(f)], env=env, capture_output=True, text=True)
            if p.returncode:
                print(f"| {f.name} | {f.stat().st_size} | decode | - | - | - | rc {p.returncode}: "
                      f"{p.stderr.strip().splitlines()[-1][:120] if p.stderr.strip() else ''} |")
                continue
            r = json.loads(p.stdout)
            print(f"| {f.name} | {f.stat().st_size} | decode | {r['peak'] / GB:.2f} | {r['base'] / GB:.2f} "
                  f"| {r['s']:.1f} | {r['said'][:100]} |", flush=True)
    if "query" in parts:
        work = a.work / "query"
        folder = work / "photos"
        if not folder.exists():
            make_photos(folder, 6)
            peak_run(work, "index", str(folder), *SMALL)
        for f in costly:
            t = time.perf_counter()
            r, peak = peak_run(work, "search", str(f), "--collection", str(folder), *SMALL)
            said = (r.err.strip().splitlines() or ["ok"])[-1][:100] if r.rc else "ok"
            print(f"| {f.name} | {f.stat().st_size} | query | {peak / GB:.2f} | | {time.perf_counter() - t:.1f} "
                  f"| rc {r.rc}: {said} |", flush=True)
    if "index" in parts:
        with tempfile.TemporaryDirectory(dir=a.work) as tmp:
            work = Path(tmp)
            folder = work / "photos"
            make_photos(folder, 2)
            for f in costly:
                os.link(f, folder / f.name)
            t = time.perf_counter()
            r, peak = peak_run(work, "index", str(folder), *SMALL, "--json", timeout=900)
            out = json.loads(r.out) if r.rc == 0 else {}
            said = f"kept {out.get('kept')}, skipped " + "; ".join(
                f"{Path(s['path']).name}: {s['reason'][:60]}" for s in out.get("skipped", [])) if out else r.err[-200:]
            print(f"| 4 files + 2 photos | | index | {peak / GB:.2f} | | {time.perf_counter() - t:.1f} "
                  f"| rc {r.rc}: {said} |")
        with tempfile.TemporaryDirectory(dir=a.work) as tmp:
            work = Path(tmp)
            make_photos(work / "photos", 6)
            r, peak = peak_run(work, "index", str(work / "photos"), *SMALL)
            print(f"| 6 photos only | | index | {peak / GB:.2f} | | | rc {r.rc} |")


if __name__ == "__main__":
    main()
