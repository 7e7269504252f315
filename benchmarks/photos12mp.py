"""12 MP photos: `retrieval-explorer index` against an independent minimal pipeline, in one run (issue 27).

Generated photos (``--n``, default 120; 4000 x 3000 JPEGs at quality 90: colour gradients, random
shapes and sensor-like noise, every fourth one with an EXIF orientation other than 1), made once into
``--work`` and reused. Then, interleaved (``--repeats`` rounds, each round runs both in turn, so a change
of machine load falls on both):

- ``reference``: a minimal pipeline written here, in its own process: the folder listed, every JPEG
  opened with ``Image.draft`` to the smallest DCT scale whose shorter side is still >= 224, its EXIF
  orientation applied, resized (shorter side 224, bilinear) and centre-cropped, normalised in numpy;
  decoding in 2 threads beside ONNX Runtime (2 threads) running the project's own exported
  EfficientNet-Lite0 backbone (the same .onnx file `index` uses), batches of 32, then GeM pooling (p=3)
  and L2 normalisation in numpy. Nothing is stored.
- ``index``: ``python -m engine index FOLDER --cache-dir FRESH --json`` (every descriptor: one backbone
  pass, five poolings, the collection written and its graph built), a fresh collection cache each
  round whose ``runtimes/`` folder holds the already exported model (export cache warm: the backbone and
  the five descriptor heads, so that `index` runs them in ONNX Runtime without importing PyTorch, as a
  user's second `index` does). ``--variant NAME=DIR`` times another checkout's code beside it (e.g. the
  PyTorch-started path before).

Both rates are images / wall seconds of the whole process, from its start to its exit: Python start,
imports, model load (``index``: reading the six exports and checking their SHA-256, six ONNX Runtime
sessions; ``reference``: the ONNX Runtime session) are inside. Python's bytecode cache is left on
(PYTHONDONTWRITEBYTECODE removed), as an installed program has it. Each process also reports its steady rate (images / seconds after its model was
ready), printed beside. ``--profile`` runs `index` once more under cProfile (in-process, same options)
and prints the top functions by cumulative and own time.

    python benchmarks/photos12mp.py --n 120 --repeats 3 --work /tmp/photos12mp

Prints markdown tables on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
W, H = 4000, 3000
SIZE = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def eprint(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


# --- the photos ------------------------------------------------------------------------------------
def make_photos(out: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` 4000 x 3000 JPEGs (quality 90) in ``out``, made once: a two-colour gradient, 12-40 random
    ellipses and rectangles, Gaussian noise (sigma 5); every fourth with EXIF orientation 6, 3 or 8."""
    import numpy as np
    from PIL import Image, ImageDraw

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    noise = None
    yy = np.linspace(0.0, 1.0, H, dtype=np.float32)[:, None, None]
    xx = np.linspace(0.0, 1.0, W, dtype=np.float32)[None, :, None]
    made = []
    for i in range(n):
        dst = out / f"photo_{i:04d}.jpg"
        made.append(dst)
        if dst.exists():
            continue
        if noise is None:
            noise = rng.normal(0.0, 5.0, (H, W, 3)).astype(np.int16)
        a, b, c = (rng.uniform(0, 255, 3).astype(np.float32) for _ in range(3))
        base = (a * (1 - xx) + b * xx) * (1 - yy) + c * yy  # (H, W, 3)
        img = Image.fromarray(base.astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(12, 40))):
            x0, y0 = int(rng.integers(0, W)), int(rng.integers(0, H))
            x1, y1 = x0 + int(rng.integers(50, 1500)), y0 + int(rng.integers(50, 1200))
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
        shift = (int(rng.integers(0, H)), int(rng.integers(0, W)))
        px = np.asarray(img, np.int16) + np.roll(noise, shift, axis=(0, 1))
        img = Image.fromarray(np.clip(px, 0, 255).astype(np.uint8), "RGB")
        exif = Image.Exif()
        if i % 4 == 3:
            exif[0x0112] = (6, 3, 8)[(i // 4) % 3]  # Orientation
        img.save(dst, quality=90, exif=exif.tobytes())
        if i % 10 == 0:
            eprint(f"12 MP JPEGs: {i + 1}/{n}")
    return made


# --- the reference pipeline (run in its own process: --reference) ----------------------------------
def reference(folder: Path, onnx: Path, threads: int, batch: int, t0: float) -> dict:
    """The minimal pipeline of the module docstring; returns its counts and timings."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import onnxruntime as ort
    from PIL import Image, ImageOps

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(onnx.read_bytes(), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    mean = np.asarray(MEAN, np.float32) * 255
    inv_std = 1.0 / (np.asarray(STD, np.float32) * 255)
    ready = time.perf_counter()

    def prep(path: str) -> np.ndarray:
        with Image.open(path) as im:
            im.draft("RGB", (SIZE, SIZE))  # smallest scale with both sides >= 224
            im = ImageOps.exif_transpose(im).convert("RGB")
        w, h = im.size
        s = SIZE / min(w, h)
        nw, nh = max(SIZE, int(w * s)), max(SIZE, int(h * s))
        im = im.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = (nw - SIZE) // 2, (nh - SIZE) // 2
        a = np.asarray(im.crop((left, top, left + SIZE, top + SIZE)), np.float32)
        return ((a - mean) * inv_std).transpose(2, 0, 1)

    files = sorted(e.path for e in os.scandir(folder) if e.name.lower().endswith(".jpg"))
    out = []
    with ThreadPoolExecutor(threads) as pool:
        it = pool.map(prep, files)  # decodes run ahead in the pool while the network runs
        for i in range(0, len(files), batch):
            x = np.stack([next(it) for _ in files[i:i + batch]])
            f = sess.run(None, {name: x})[0]  # (B, C, h, w)
            g = np.power(np.clip(f, 1e-6, None), 3).mean(axis=(2, 3)) ** (1 / 3)
            out.append(g / np.linalg.norm(g, axis=1, keepdims=True))
    end = time.perf_counter()
    return {"images": sum(len(o) for o in out), "load_s": ready - t0, "steady_s": end - ready}


# --- the side-by-side run ---------------------------------------------------------------------------
def _env(root: Path = ROOT) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed program has its bytecode compiled
    return env


def warm_export(work: Path) -> Path:
    """Index a 2-photo folder (``work/tiny``) once, into a new cache, so that the backbone's and the heads'
    ONNX exports exist; -> its runtimes/ folder. The same folder measures each pipeline's fixed costs."""
    from PIL import Image

    tiny = work / "tiny"
    tiny.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        Image.new("RGB", (300, 240), (40 * i, 90, 160)).save(tiny / f"{i}.jpg")
    cache = work / "warm-cache"
    shutil.rmtree(cache, ignore_errors=True)  # an index that is up to date exports nothing
    subprocess.run([sys.executable, "-m", "engine", "index", str(tiny), "--cache-dir", str(cache), "--json"],
                   check=True, env=_env(), capture_output=True)
    onnx = sorted((cache / "runtimes").glob("*-224.onnx"))
    if not onnx:
        raise SystemExit(f"no ONNX export in {cache / 'runtimes'}: is onnxruntime installed?")
    eprint(f"exports: {', '.join(sorted(p.name for p in (cache / 'runtimes').glob('*.onnx')))}")
    return cache / "runtimes"


def _cpu() -> float:
    """CPU seconds (user + system) of the waited-for child processes so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_reference(folder: Path, onnx: Path, threads: int) -> dict:
    c, t = _cpu(), time.perf_counter()
    p = subprocess.run([sys.executable, __file__, "--reference", str(folder), "--onnx", str(onnx),
                        "--threads", str(threads)], check=True, env=_env(), capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t, _cpu() - c
    r = json.loads(p.stdout.strip().splitlines()[-1])
    return {"wall": wall, "cpu": cpu, "images": r["images"], "steady_rate": r["images"] / r["steady_s"]}


def run_index(folder: Path, runtimes: Path, work: Path, extra: list[str], root: Path = ROOT) -> dict:
    cache = Path(tempfile.mkdtemp(prefix="cache-", dir=work))
    shutil.copytree(runtimes, cache / "runtimes")
    c, t = _cpu(), time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "engine", "index", str(folder), "--cache-dir", str(cache),
                        "--json", *extra], env=_env(root), capture_output=True, text=True, cwd=root)
    # cwd=root: `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH (a variant run
    # from another checkout's folder would import that checkout's engine)
    wall, cpu = time.perf_counter() - t, _cpu() - c
    if p.returncode != 0:
        raise SystemExit(f"index failed (rc {p.returncode}): {p.stderr[-2000:]}")
    r = json.loads(p.stdout)
    shutil.rmtree(cache, ignore_errors=True)
    return {"wall": wall, "cpu": cpu, "images": r["kept"], "inner_rate": r["images_per_s"], "runtime": r["runtime"]}


def profile_index(folder: Path, runtimes: Path, work: Path, top: int) -> None:
    import cProfile
    import pstats

    sys.path.insert(0, str(ROOT))
    from engine.cli import main

    cache = Path(tempfile.mkdtemp(prefix="cache-prof-", dir=work))
    shutil.copytree(runtimes, cache / "runtimes")
    prof = cProfile.Profile()
    prof.enable()
    main(["index", str(folder), "--cache-dir", str(cache), "--json"])
    prof.disable()
    for key in ("cumulative", "tottime"):
        print(f"\n### cProfile of index, by {key}\n\n```")
        pstats.Stats(prof, stream=sys.stdout).sort_stats(key).print_stats(top)
        print("```")
    shutil.rmtree(cache, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "photos12mp")
    ap.add_argument("--index-args", default="", help="extra options for index, e.g. '--decode-threads 2'")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=DIR",
                    help="also time index with the code of another checkout DIR (its PYTHONPATH), each round")
    ap.add_argument("--profile", action="store_true", help="also profile one index run (cProfile)")
    ap.add_argument("--top", type=int, default=35)
    ap.add_argument("--reference", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--onnx", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference is not None:
        t0 = time.perf_counter()
        print(json.dumps(reference(args.reference, args.onnx, args.threads, 32, t0)))
        return

    folder = args.work / f"photos-{args.n}"
    make_photos(folder, args.n)
    if len(list(folder.glob("*.jpg"))) != args.n:
        raise SystemExit(f"{folder} holds other photos than the {args.n} made here: use another --work")
    runtimes = warm_export(args.work)
    onnx = sorted(runtimes.glob("*-224.onnx"))[0]
    extra = args.index_args.split()
    variants = {"index": ROOT, **{v.split("=", 1)[0]: Path(v.split("=", 1)[1]).resolve() for v in args.variant}}
    rows: dict[str, list[dict]] = {"reference": [], **{name: [] for name in variants}}
    loads = []
    for r in range(args.repeats):
        rows["reference"].append(run_reference(folder, onnx, args.threads))
        for name, root in variants.items():
            rows[name].append(run_index(folder, runtimes, args.work, extra, root))
        loads.append(os.getloadavg()[0])
        eprint(f"round {r + 1}: " + ", ".join(f"{k} {args.n / v[-1]['wall']:.1f}" for k, v in rows.items())
               + f" images/s, load {loads[-1]:.1f}")
    # fixed costs: each pipeline on the 2-photo folder, CPU seconds (less sensitive to load than wall)
    fixed = {"reference": statistics.median(run_reference(args.work / "tiny", onnx, args.threads)["cpu"]
                                            for _ in range(2))}
    for name, root in variants.items():
        fixed[name] = statistics.median(run_index(args.work / "tiny", runtimes, args.work, extra, root)["cpu"]
                                        for _ in range(2))
    rate = {k: [args.n / x["wall"] for x in v] for k, v in rows.items()}
    print(f"\n{args.n} photos 4000x3000, {args.repeats} interleaved rounds, {os.cpu_count()} cores, "
          f"load average after each round {', '.join(f'{x:.1f}' for x in loads)}, {os.getloadavg()[0]:.1f} at the "
          f"end; index {' '.join(extra) or '(defaults)'}; runtime: "
          + ", ".join(f"{k} {rows[k][0]['runtime']}" for k in variants) + "\n")
    print("| pipeline | images/s (whole process, median) | range | ratio to reference per round (median) "
          "| CPU s (median) | fixed CPU s (2 photos) | CPU ms / photo beyond the fixed |")
    print("|---|---:|---|---|---:|---:|---:|")
    for k, v in rate.items():
        ratios = [i / r for i, r in zip(v, rate["reference"], strict=True)]
        cpu = statistics.median(x["cpu"] for x in rows[k])
        label = {"reference": "reference (draft, 2 threads, ORT, GeM)"}.get(k, f"{k} (5 descriptors, stored, graph)")
        print(f"| {label} | {statistics.median(v):.1f} | {min(v):.1f}-{max(v):.1f} | "
              f"{', '.join(f'{x:.2f}' for x in ratios)} ({statistics.median(ratios):.2f}) | {cpu:.1f} | "
              f"{fixed[k]:.1f} | {1000 * (cpu - fixed[k]) / (args.n - 2):.0f} |")
    print("\nwhole process: images / wall seconds from the process's start to its exit (imports, model load, "
          "ONNX Runtime sessions; index: the exports read and their SHA-256 checked, the commits and the graph; "
          "a variant of the code before: PyTorch, the weights, the export's check). CPU: user + system seconds "
          "of the process and its threads.")
    if args.profile:
        profile_index(folder, runtimes, args.work, args.top)


if __name__ == "__main__":
    main()
