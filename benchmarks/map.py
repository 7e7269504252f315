"""The map of a collection (issue 14): time to compute it and how well it keeps neighbourhoods.

For cub100 (5,902 images, EfficientNet-Lite0 ImageNet, SPoC vectors from `retrieval-explorer index`) and
for 100,000 synthetic clustered vectors, per method (UMAP, t-SNE, and the PCA plane as the baseline):

- seconds: wall time of engine.mapping.compute_map_isolated, i.e. what the window waits for: a fresh
  child process, the imports, numba's compilation (cached on disk after the first run) and the layout;
- 10-NN kept: the share of each point's 10 nearest neighbours on the map that are among its 10 nearest
  in the descriptor space (cosine), exact, over all points of cub100 / 2,000 sampled points of 100k;
- species kept (cub100): the share of each point's 10 nearest on the map that are of its species (the
  same share in the descriptor space is printed for reference).

It also draws the cub100 map coloured by species into docs/images/map_cub100.png (PIL, offscreen).

    python benchmarks/map.py --data ../shared/data/cub100 [--methods tsne,umap,pca] [--big-methods tsne,umap]

UMAP needs umap-learn, which the program does not depend on: without it its rows say so.

Markdown on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TITLES = {"tsne": "t-SNE", "umap": "UMAP", "pca": "PCA"}


def eprint(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


def cub_collection(data: Path, cache: Path, descriptor: str):
    """The cub100 collection (indexed through the CLI into ``cache`` when it is not yet)."""
    from engine.cli import main
    from engine.collection import Collection
    from engine.vocabulary import ModelSpec

    folder = data / "images"
    c = Collection.open(folder, model_spec=ModelSpec(descriptor=descriptor), cache_dir=cache)
    if not c.is_saved or c.scan():
        eprint("indexing cub100 (once)...")
        with contextlib.redirect_stdout(io.StringIO()):
            if main(["index", str(folder), "--cache-dir", str(cache), "--json"]) != 0:
                raise SystemExit("indexing cub100 failed")
        c = Collection.open(folder, model_spec=ModelSpec(descriptor=descriptor), cache_dir=cache)
    return c


def synthetic(n: int, dim: int = 1280, clusters: int = 500, seed: int = 0) -> np.ndarray:
    """(n, dim) L2-normalised vectors: clusters of different sizes and spreads around random centres, each
    spread along a few directions of its own (as descriptors of a photo collection are)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    sizes = rng.dirichlet(np.ones(clusters) * 2) * n
    sizes = np.maximum(1, np.round(sizes)).astype(int)
    sizes[-1] += n - sizes.sum()
    out = np.empty((n, dim), np.float32)
    pos = 0
    for c, m in enumerate(sizes):
        basis = rng.normal(size=(8, dim)).astype(np.float32)
        coef = rng.normal(size=(m, 8)).astype(np.float32) * rng.uniform(0.3, 1.0)
        noise = rng.normal(size=(m, dim)).astype(np.float32) * 0.5
        out[pos:pos + m] = centres[c] + coef @ basis * 0.35 + noise
        pos += m
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def label_share(xy: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Mean share of each point's k nearest on the map sharing its label."""
    n = xy.shape[0]
    shares = []
    for s in range(0, n, 512):
        d = ((xy[s:s + 512, None, :] - xy[None, :, :]) ** 2).sum(-1)
        d[np.arange(d.shape[0]), np.arange(s, s + d.shape[0])] = np.inf
        nn = np.argpartition(d, k, axis=1)[:, :k]
        shares.append((labels[nn] == labels[s:s + 512, None]).mean(1))
    return float(np.concatenate(shares).mean())


def space_label_share(x: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    shares = []
    for s in range(0, x.shape[0], 512):
        sim = x[s:s + 512] @ x.T
        sim[np.arange(sim.shape[0]), np.arange(s, s + sim.shape[0])] = -np.inf
        nn = np.argpartition(-sim, k, axis=1)[:, :k]
        shares.append((labels[nn] == labels[s:s + 512, None]).mean(1))
    return float(np.concatenate(shares).mean())


def installed(method: str) -> bool:
    import importlib.util

    return method != "umap" or importlib.util.find_spec("umap") is not None


def measure(x: np.ndarray, method: str, sample: int | None) -> tuple[np.ndarray, float, float]:
    from engine.mapping import compute_map_isolated, knn_preservation

    t = time.perf_counter()
    xy = compute_map_isolated(x, method)
    seconds = time.perf_counter() - t
    return xy, seconds, knn_preservation(x, xy, k=10, sample=sample)


def draw(xy: np.ndarray, labels: list[str | None], paths: list[str], out: Path, title: str,
         size: int = 1400, thumbs: int = 0) -> None:
    """The map as a PNG: every image a dot in its species' colour; ``thumbs`` sampled images drawn as
    thumbnails (0 for the committed figure: no part of cub100, thumbnails included, enters the repo)."""
    from PIL import Image, ImageDraw, ImageFont

    from engine.mapping import label_colours

    margin = 50
    img = Image.new("RGB", (size, size + 40), (250, 250, 250))
    d = ImageDraw.Draw(img)
    colours = label_colours(labels)
    px = ((xy + 1) / 2 * (size - 2 * margin) + margin).astype(int)
    px[:, 1] = size - px[:, 1] + 40
    for (x, y), c in zip(px.tolist(), colours.tolist(), strict=True):
        d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=tuple(c))
    rng = np.random.default_rng(0)
    for r in rng.choice(len(paths), min(thumbs, len(paths)), replace=False):
        with Image.open(paths[r]) as im:
            t = im.convert("RGB")
            t.thumbnail((44, 44))
        x, y = px[r]
        box = [x - t.width // 2 - 2, y - t.height // 2 - 2, x + t.width // 2 + 2, y + t.height // 2 + 2]
        d.rectangle(box, fill=tuple(colours[r].tolist()))
        img.paste(t, (x - t.width // 2, y - t.height // 2))
    d.text((margin, 10), title, fill=(30, 30, 30), font=ImageFont.load_default(size=20))
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, optimize=True)


def view_frame_ms(xy: np.ndarray, repeats: int = 5) -> dict[str, tuple[float, float, int]]:
    """The map view (offscreen Qt) on ``xy`` (N, 2): median (wall ms, CPU ms) of showing the map and of one
    full repaint zoomed out, and at 4x, 60x and 300x around a point, and the points drawn (thumbnails of
    files that do not exist: their placeholders). CPU time is what the frame costs; wall
    time adds the waits of a loaded machine."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    from engine.mapping import CollectionMap, label_colours
    from retrieval_gui.map_view import MapView
    from retrieval_gui.thumbnails import ThumbnailLoader

    n = xy.shape[0]
    rel = [f"g{i % 50}/missing{i}.jpg" for i in range(n)]
    tmp = Path(tempfile.mkdtemp(prefix="map-bench-"))
    loader = ThumbnailLoader(64, tmp)
    view = MapView(lambda: None, loader=loader)
    view.resize(1200, 900)
    view.show()
    app.processEvents()
    labels = [r.split("/")[0] for r in rel]
    colours = label_colours(labels)  # the worker's part
    m = CollectionMap(xy, rel, [str(tmp / r) for r in rel], labels, "tsne", None, 0.0)
    t, c = time.perf_counter(), time.process_time()
    view.set_map(m, colours)
    out = {"show the map (set_map)": ((time.perf_counter() - t) * 1000, (time.process_time() - c) * 1000, n)}
    for name, zoom in (("zoomed out", 1.0), ("4x", 4.0), ("60x", 60.0), ("300x", 300.0)):
        view.canvas.fit()
        if zoom > 1:
            view.canvas.zoom(zoom)
            view.canvas.centerOn(view.cloud.x[0], view.cloud.y[0])
        walls, cpus = [], []
        for _ in range(repeats):
            t, c = time.perf_counter(), time.process_time()
            view.canvas.viewport().repaint()
            walls.append((time.perf_counter() - t) * 1000)
            cpus.append((time.process_time() - c) * 1000)
            app.processEvents()
        out[f"repaint {name} ({view.cloud.last_mode})"] = (float(np.median(walls)), float(np.median(cpus)),
                                                           view.cloud.last_visible)
    view.close()
    loader.wait()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/cub100")
    ap.add_argument("--cache-dir", type=Path,
                    default=Path(tempfile.gettempdir()) / "retrieval-explorer-bench-map",
                    help="where cub100's collection is indexed (reused by later runs)")
    ap.add_argument("--descriptor", default="spoc")
    ap.add_argument("--methods", default="tsne,umap,pca", help="methods measured on cub100")
    ap.add_argument("--big", type=int, default=100_000, help="synthetic vectors (0: skip)")
    ap.add_argument("--big-methods", default="tsne,umap", help="methods measured on the synthetic vectors")
    ap.add_argument("--no-view", dest="view", action="store_false", help="skip the map view's frame times")
    ap.add_argument("--png", type=Path, default=ROOT / "docs/images/map_cub100.png")
    ap.add_argument("--png-method", default=None,
                    help="the method drawn (default: engine.mapping.DEFAULT_METHOD)")
    args = ap.parse_args()
    from engine.mapping import DEFAULT_METHOD

    c = cub_collection(args.data, args.cache_dir, args.descriptor)
    x = c.vectors
    labels = np.array([lab or "" for lab in c.labels])
    load = os.getloadavg()
    print(f"## Map of the collection: cub100 ({len(c):,} images, {args.descriptor}, D={x.shape[1]}) and "
          f"{args.big:,} synthetic vectors\n")
    print(f"Machine: {os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
          "at the "
          "start. Seconds: the child process the window waits for (start, imports, numba, layout).\n")
    print(f"Species kept in the descriptor space itself (10-NN of the same species): "
          f"{space_label_share(x, labels):.3f}\n")
    print("| data | method | seconds | 10-NN kept | species kept (10-NN on the map) |")
    print("|---|---|---|---|---|")
    maps = {}
    for method in args.methods.split(","):
        if not installed(method):
            print(f"| cub100 | {method} | not installed | | |")
            continue
        eprint(f"cub100: {method}...")
        xy, sec, kept = measure(x, method, sample=None)
        maps[method] = xy
        print(f"| cub100 | {method} | {sec:.1f} | {kept:.3f} | {label_share(xy, labels):.3f} |", flush=True)
    png_method = args.png_method or DEFAULT_METHOD
    if png_method in maps:
        from engine.vocabulary import DESCRIPTOR_SHORT

        descriptor = DESCRIPTOR_SHORT.get(args.descriptor, args.descriptor)
        draw(maps[png_method], list(c.labels), c.paths, args.png,
             f"cub100: {len(c):,} images, EfficientNet-Lite0 {descriptor}, "
             f"{TITLES.get(png_method, png_method)}, coloured by species")
        eprint(f"drew {args.png}")
    if args.big:
        eprint(f"synthetic: {args.big:,} vectors...")
        big = synthetic(args.big)
        big_xy = None
        for method in args.big_methods.split(","):
            if not installed(method):
                print(f"| synthetic {args.big:,} x 1280 | {method} | not installed | | |")
                continue
            eprint(f"synthetic: {method}...")
            big_xy, sec, kept = measure(big, method, sample=2000)
            print(f"| synthetic {args.big:,} x 1280 | {method} | {sec:.1f} | {kept:.3f} (2,000 sampled) "
                  "| - |", flush=True)
        if big_xy is not None and args.view:
            print(f"\nThe map view on these {args.big:,} points ({args.big_methods.split(',')[-1]} layout; "
                  "offscreen, 1200 x 900 window; median of 5 repaints):\n")
            print("| what | wall ms | CPU ms | points drawn |")
            print("|---|---|---|---|")
            for name, (wall, cpu, drawn) in view_frame_ms(big_xy).items():
                print(f"| {name} | {wall:.1f} | {cpu:.1f} | {drawn:,} |")
    load = os.getloadavg()
    print(f"\nLoad average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}. "
          + json.dumps({"default_method": DEFAULT_METHOD}))


if __name__ == "__main__":
    main()
