"""Render the demo collection shipped with Retrieval Explorer (resources/demo/<class>/<NN>.jpg).

Every image is drawn procedurally by this script (the project's own work, released CC0), so the
project may ship it. Deterministic: ``python -m resources.make_demo`` rewrites the same files.
8 visually distinct classes x 7 images, 192 px JPEG, well under 1.5 MB in all.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 192
PER_CLASS = 7
DEMO_DIR = Path(__file__).parent / "demo"


def _gradient(top: tuple, bottom: tuple, size: int = SIZE) -> Image.Image:
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    arr = (1 - t) * np.array(top, float) + t * np.array(bottom, float)
    return Image.fromarray(np.repeat(arr, size, axis=1).astype(np.uint8), "RGB")


def _jit(rng: np.random.Generator, colour: tuple, amount: int = 25) -> tuple:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def sunset(rng: np.random.Generator) -> Image.Image:
    im = _gradient(_jit(rng, (250, 120, 40)), _jit(rng, (120, 30, 90)))
    d = ImageDraw.Draw(im)
    horizon = int(SIZE * rng.uniform(0.55, 0.7))
    cx, r = int(rng.uniform(0.25, 0.75) * SIZE), int(rng.uniform(18, 34))
    d.ellipse([cx - r, horizon - r - int(rng.uniform(0, 30)), cx + r, horizon + r - int(rng.uniform(0, 30))],
              fill=_jit(rng, (255, 220, 90), 10))
    d.rectangle([0, horizon, SIZE, SIZE], fill=_jit(rng, (40, 30, 80), 15))
    for y in range(horizon + 4, SIZE, 7):  # reflections on the water
        w = int(rng.uniform(10, 40))
        d.line([cx - w, y, cx + w, y], fill=(240, 160, 80), width=2)
    return im


def forest(rng: np.random.Generator) -> Image.Image:
    im = _gradient(_jit(rng, (150, 200, 240)), _jit(rng, (210, 230, 200)))
    d = ImageDraw.Draw(im)
    d.rectangle([0, int(SIZE * 0.8), SIZE, SIZE], fill=_jit(rng, (70, 110, 40)))
    for _ in range(int(rng.integers(6, 11))):
        x, h = rng.uniform(0, SIZE), rng.uniform(50, 120)
        base = SIZE * rng.uniform(0.82, 0.98)
        w = h * 0.35
        d.rectangle([x - 3, base - 12, x + 3, base], fill=(90, 60, 30))
        d.polygon([(x, base - h), (x - w, base - 10), (x + w, base - 10)], fill=_jit(rng, (30, 100, 45), 20))
    return im


def night_sky(rng: np.random.Generator) -> Image.Image:
    im = _gradient(_jit(rng, (5, 10, 40), 8), _jit(rng, (30, 30, 80), 10))
    d = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(80, 140))):
        x, y, s = rng.uniform(0, SIZE), rng.uniform(0, SIZE * 0.8), rng.uniform(0.5, 2.0)
        d.ellipse([x - s, y - s, x + s, y + s], fill=(255, 255, int(rng.uniform(180, 255))))
    cx, cy, r = rng.uniform(40, 150), rng.uniform(30, 80), rng.uniform(14, 24)
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(245, 240, 210))
    d.ellipse([cx - r + r * 0.6, cy - r, cx + r + r * 0.6, cy + r], fill=_jit(rng, (10, 15, 50), 5))
    d.polygon([(0, SIZE), (SIZE * 0.3, SIZE * rng.uniform(0.7, 0.85)), (SIZE * 0.6, SIZE),
               (SIZE * 0.8, SIZE * rng.uniform(0.75, 0.9)), (SIZE, SIZE)], fill=(5, 5, 15))
    return im


def bubbles(rng: np.random.Generator) -> Image.Image:
    im = _gradient(_jit(rng, (20, 120, 180)), _jit(rng, (10, 40, 110)))
    d = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(12, 22))):
        x, y, r = rng.uniform(0, SIZE), rng.uniform(0, SIZE), rng.uniform(5, 24)
        d.ellipse([x - r, y - r, x + r, y + r], outline=(220, 245, 255), width=2)
        d.ellipse([x - r * 0.5, y - r * 0.6, x - r * 0.2, y - r * 0.3], fill=(240, 250, 255))
    return im


def checkers(rng: np.random.Generator) -> Image.Image:
    n = int(rng.integers(5, 9))
    a, b = _jit(rng, (230, 230, 220), 15), _jit(rng, (200, 30, 40), 30)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    ang = rng.uniform(-0.4, 0.4)
    u = (xx * math.cos(ang) + yy * math.sin(ang)) * n / SIZE
    v = (-xx * math.sin(ang) + yy * math.cos(ang)) * n / SIZE
    mask = ((np.floor(u) + np.floor(v)) % 2).astype(bool)
    arr = np.where(mask[..., None], np.array(a), np.array(b)).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def bricks(rng: np.random.Generator) -> Image.Image:
    im = Image.new("RGB", (SIZE, SIZE), _jit(rng, (200, 195, 185), 10))
    d = ImageDraw.Draw(im)
    bh, bw = int(rng.integers(14, 22)), int(rng.integers(34, 50))
    for row, y in enumerate(range(0, SIZE, bh)):
        off = (bw // 2) * (row % 2)
        for x in range(-off, SIZE, bw):
            d.rectangle([x + 2, y + 2, x + bw - 2, y + bh - 2], fill=_jit(rng, (150, 60, 40), 25))
    return im


def flowers(rng: np.random.Generator) -> Image.Image:
    im = Image.new("RGB", (SIZE, SIZE), _jit(rng, (60, 140, 50), 20))
    d = ImageDraw.Draw(im)
    petal = _jit(rng, (240, 200, 40), 15) if rng.random() < 0.5 else _jit(rng, (235, 90, 160), 15)
    for _ in range(int(rng.integers(4, 8))):
        cx, cy, r = rng.uniform(20, SIZE - 20), rng.uniform(20, SIZE - 20), rng.uniform(12, 24)
        for k in range(6):
            a = k * math.pi / 3 + rng.uniform(0, 0.5)
            px, py = cx + r * math.cos(a), cy + r * math.sin(a)
            d.ellipse([px - r * 0.55, py - r * 0.55, px + r * 0.55, py + r * 0.55], fill=petal)
        d.ellipse([cx - r * 0.45, cy - r * 0.45, cx + r * 0.45, cy + r * 0.45], fill=(120, 70, 20))
    return im


def mountains(rng: np.random.Generator) -> Image.Image:
    im = _gradient(_jit(rng, (170, 210, 250)), _jit(rng, (235, 240, 250), 10))
    d = ImageDraw.Draw(im)
    for layer, colour in enumerate([(120, 120, 140), (90, 95, 110), (60, 70, 80)]):
        pts = [(0, SIZE)]
        x = 0.0
        while x < SIZE:
            pts.append((x, SIZE * (0.35 + 0.15 * layer) + rng.uniform(-30, 25)))
            x += rng.uniform(25, 55)
        pts += [(SIZE, SIZE * (0.4 + 0.15 * layer)), (SIZE, SIZE)]
        d.polygon(pts, fill=_jit(rng, colour, 12))
        if layer == 0:  # snow caps
            for px, py in pts[1:-2]:
                d.polygon([(px, py), (px - 9, py + 12), (px + 9, py + 12)], fill=(250, 250, 255))
    return im


CLASSES: dict[str, Callable[[np.random.Generator], Image.Image]] = {
    "sunset": sunset, "forest": forest, "night_sky": night_sky, "bubbles": bubbles,
    "checkers": checkers, "bricks": bricks, "flowers": flowers, "mountains": mountains,
}


def render(out_dir: Path = DEMO_DIR, per_class: int = PER_CLASS, seed: int = 2024, quality: int = 80) -> list[Path]:
    """Draw every class's images into ``out_dir``; returns the written files."""
    written = []
    for ci, (name, fn) in enumerate(CLASSES.items()):
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        for v in range(per_class):
            rng = np.random.default_rng(seed * 1000 + ci * 100 + v)
            im = fn(rng)
            if rng.random() < 0.5:
                im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 0.8)))
            path = folder / f"{v + 1:02d}.jpg"
            im.save(path, "JPEG", quality=quality, optimize=True)
            written.append(path)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEMO_DIR)
    args = ap.parse_args()
    files = render(args.out)
    total = sum(f.stat().st_size for f in files)
    print(f"{len(files)} images, {total / 1e6:.2f} MB in {args.out}")


if __name__ == "__main__":
    main()
