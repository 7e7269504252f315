"""A folder of 10,000 indexed images through `retrieval-explorer duplicates` (issue 29: "keep a folder of
10,000 images under a minute once it is indexed").

The folder (generated once into --work, never committed): ``--distinct`` pictures that share no pixel, the
left or right halves of cub100 photos (JPEG 92, in folders of 500), and ``--copies`` edited copies of them,
the seven edits of benchmarks/duplicates.py in turn (copies/<stem>_<edit>.<ext>). It is indexed once with
one descriptor (`index --descriptor`; not timed here). Then `duplicates DIR --json` runs twice in a fresh
process: first with no evidence kept (the kept evidence file removed), then again (the evidence kept by
the first run: only pairs whose files changed are checked). Per run: wall seconds, CPU seconds of the
process and its workers (getrusage of the children), the load average, candidate pairs, groups of copies,
the planted copies found (grouped with the picture they were made from) per edit, and the groups joining
two different pictures (cub100's own copies, CUB_COPIES, saved as two halves, are counted apart: they are
true copies).

    nice -n 5 python benchmarks/duplicates_folder.py --data ../shared/data/cub100 --work /tmp/dupes10k

Markdown on stdout, progress on stderr. Indexing 10,000 images takes ~20 minutes on 2 busy cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def eprint(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


def make_folder(data: Path, out: Path, distinct: int, copies: int, seed: int) -> Path:
    """Write the folder once (a marker file says it is complete); returns its path."""
    from duplicates import KINDS, edit  # benchmarks/duplicates.py: the same edits as the protocol
    from PIL import Image

    folder = out / "images"
    if (out / "made.json").is_file():
        return folder
    src = sorted((data / "images").glob("*/*.jpg"))
    rng = np.random.default_rng(seed)
    halves = [(p, s) for p in src for s in (0, 1)]
    if distinct > len(halves):
        raise SystemExit(f"--distinct {distinct}: cub100 has {len(halves)} halves")
    made = []
    for n, i in enumerate(rng.permutation(len(halves))[:distinct].tolist()):
        p, side = halves[i]
        with Image.open(p) as im:
            im = im.convert("RGB")
            w, h = im.size
            im = im.crop((0, 0, w // 2, h) if side == 0 else (w // 2, 0, w, h))
        d = folder / f"d{n // 500:02d}"
        d.mkdir(parents=True, exist_ok=True)
        f = d / f"{p.parent.name}_{p.stem}_{side}.jpg"
        im.save(f, quality=92)
        made.append(f)
        if n % 1000 == 0:
            eprint(f"distinct pictures: {n}")
    (folder / "copies").mkdir(exist_ok=True)
    for n, i in enumerate(rng.choice(len(made), copies, replace=False).tolist()):
        with Image.open(made[i]) as im:
            kind = KINDS[n % len(KINDS)]
            e, save, _ = edit(im.convert("RGB"), kind, rng)
        e.save(folder / "copies" / f"{made[i].stem}_{kind}.{'jpg' if save['format'] == 'JPEG' else 'png'}", **save)
    (out / "made.json").write_text(json.dumps({"distinct": distinct, "copies": copies, "seed": seed}))
    return folder


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine", *args]


def timed(cmd: list[str], env: dict) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``cmd``; (result, wall seconds, CPU seconds of it and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if res.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
    return res, wall, cpu


def score(report: dict, folder: Path) -> dict:
    """Planted copies found per edit, groups joining two pictures (cub100's own copies apart)."""
    from duplicates import CUB_COPIES

    def picture(path: str) -> str:
        stem = Path(path).stem
        return stem.rsplit("_", 1)[0] if Path(path).parent.name == "copies" else stem

    def photo(pic: str) -> str:  # "Species_0012_1" -> "Species/0012.jpg"
        name, side = pic.rsplit("_", 1)
        species, number = name.rsplit("_", 1)
        return f"{species}/{number}.jpg"

    same_photo = {frozenset(p) for p in CUB_COPIES}
    planted = {f.stem: f.stem.rsplit("_", 1)[1] for f in (folder / "copies").iterdir()}
    found: Counter = Counter()
    mixed = cub = 0
    for g in report["copies"]:
        pics = {picture(it["path"]) for it in g["images"]}
        if len(pics) > 1:
            photos = {photo(p) for p in pics}
            if len(photos) == 2 and frozenset(photos) in same_photo or len(photos) == 1:
                cub += 1
            else:
                mixed += 1
        for it in g["images"]:
            p = Path(it["path"])
            if p.parent.name == "copies" and picture(it["path"]) in {picture(x["path"]) for x in g["images"]
                                                                    if Path(x["path"]).parent.name != "copies"}:
                found[planted[p.stem]] += 1
    total = Counter(planted.values())
    return {"found": found, "total": total, "mixed": mixed, "cub": cub, "groups": len(report["copies"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/cub100")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "retrieval-explorer-bench-dupes10k")
    ap.add_argument("--distinct", type=int, default=9_000)
    ap.add_argument("--copies", type=int, default=1_000)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--descriptor", default="gem", help="the one descriptor indexed (default gem)")
    args = ap.parse_args()
    folder = make_folder(args.data, args.work, args.distinct, args.copies, args.seed)
    cache = args.work / "cache"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    base = ["--cache-dir", str(cache), "--descriptor", args.descriptor]
    eprint("indexing (once; not timed)")
    subprocess.run(cli("index", str(folder), *base, "--json"), env=env, check=True, capture_output=True)
    for kept in cache.glob("collections/*/duplicate-evidence.npz"):
        kept.unlink()
    rows = []
    for run in ("first run (nothing kept)", "second run (evidence kept)"):
        eprint(run)
        load0 = os.getloadavg()[0]
        res, wall, cpu = timed(cli("duplicates", str(folder), *base, "--json"), env)
        load1 = os.getloadavg()[0]
        report = json.loads(res.stdout)
        rows.append((run, wall, cpu, load0, load1, report["candidates_checked"], score(report, folder)))
    print(f"\n`duplicates --json` on {args.distinct + args.copies:,} indexed images ({args.descriptor}; "
          f"{os.cpu_count()} cores):\n")
    print("| run | wall s | CPU s | load before / after | candidate pairs | groups of copies | planted copies "
          "found | groups joining two pictures (cub100's own copies apart) |")
    print("|---|---|---|---|---|---|---|---|")
    for run, wall, cpu, l0, l1, cand, sc in rows:
        print(f"| {run} | {wall:.1f} | {cpu:.1f} | {l0:.1f} / {l1:.1f} | {cand:,} | {sc['groups']:,} | "
              f"{sum(sc['found'].values())} of {sum(sc['total'].values())} | {sc['mixed']} ({sc['cub']}) |")
    sc = rows[0][-1]
    print("\nPlanted copies found per edit (first run): " + ", ".join(
        f"{k} {sc['found'][k]} of {sc['total'][k]}" for k in sorted(sc["total"])) + ".")


if __name__ == "__main__":
    main()
