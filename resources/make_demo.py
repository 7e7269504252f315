"""Render the demo collection shipped with Retrieval Explorer (resources/demo/<class>/<NN>.jpg).

Every image is drawn procedurally by this script (the project's own work, released CC0), so the
project may ship it. Deterministic: ``python -m resources.make_demo`` rewrites the same files.

A class is a *motif* (a shape family: stars, rings, arrows...); what an image shows besides it is
nuisance shared by every class: the background (gradient, stripes, speckle or grid, in random colours),
the motif's colour, scale, pose and count (:class:`Nuisance`; clutter, smaller motifs of other classes,
is a knob left off). An untrained network matches much of the nuisance, so it retrieves the right class
only part of the time (GeM R@1 about 0.67), and training on the class labels has something to learn: the
collection shows what training does (figures in docs/BENCHMARKS.md). The knobs were chosen by those
figures (untrained GeM R@1 between 0.6 and 0.8, see ``Nuisance``). 16 classes x 14 images, 192 px JPEG,
about 1.2 MB in all.
"""

from __future__ import annotations

import argparse
import colorsys
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 192
PER_CLASS = 14
DEMO_DIR = Path(__file__).parent / "demo"

Point = tuple[float, float]


def _rot(points: list[Point], cx: float, cy: float, r: float, angle: float) -> list[Point]:
    """Unit-frame points -> image points: scaled by r, rotated by angle, moved to (cx, cy)."""
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in points]


def _star(n: int, inner: float) -> list[Point]:
    return [(math.cos(k * math.pi / n - math.pi / 2) * (1.0 if k % 2 == 0 else inner),
             math.sin(k * math.pi / n - math.pi / 2) * (1.0 if k % 2 == 0 else inner)) for k in range(2 * n)]


def _regular(n: int) -> list[Point]:
    return [(math.cos(2 * math.pi * k / n - math.pi / 2), math.sin(2 * math.pi * k / n - math.pi / 2))
            for k in range(n)]


# A motif draws itself at (cx, cy) with radius r, rotation a and colour col.
Motif = Callable[[ImageDraw.ImageDraw, float, float, float, float, tuple], None]


def _polygon(points: list[Point]) -> Motif:
    def draw(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, a: float, col: tuple) -> None:
        d.polygon(_rot(points, cx, cy, r, a), fill=col)
    return draw


def _rings(d, cx, cy, r, a, col) -> None:
    d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=col, width=max(2, int(r * 0.3)))


def _crescents(d, cx, cy, r, a, col) -> None:
    pts = [(math.cos(t) , math.sin(t)) for t in np.linspace(-math.pi / 2, math.pi / 2, 24)]
    pts += [(0.45 * math.cos(t), math.sin(t)) for t in np.linspace(math.pi / 2, -math.pi / 2, 24)]
    d.polygon(_rot(pts, cx, cy, r, a), fill=col)


def _hearts(d, cx, cy, r, a, col) -> None:
    t = np.linspace(0, 2 * math.pi, 48)
    x, y = 16 * np.sin(t) ** 3, -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    d.polygon(_rot(list(zip(x / 17, y / 17, strict=True)), cx, cy, r, a * 0.3), fill=col)


def _spirals(d, cx, cy, r, a, col) -> None:
    t = np.linspace(0, 5 * math.pi, 80)
    pts = _rot([(tt / (5 * math.pi) * math.cos(tt), tt / (5 * math.pi) * math.sin(tt)) for tt in t], cx, cy, r, a)
    d.line(pts, fill=col, width=max(2, int(r * 0.14)))


def _zigzags(d, cx, cy, r, a, col) -> None:
    pts = _rot([(-1 + k / 3, -0.35 if k % 2 else 0.35) for k in range(7)], cx, cy, r, a)
    d.line(pts, fill=col, width=max(2, int(r * 0.22)), joint="curve")


def _trefoils(d, cx, cy, r, a, col) -> None:
    for px, py in _rot(_regular(3), cx, cy, r * 0.5, a):
        d.ellipse([px - r * 0.5, py - r * 0.5, px + r * 0.5, py + r * 0.5], fill=col)


def _drops(d, cx, cy, r, a, col) -> None:
    t = np.linspace(0, 2 * math.pi, 40)
    pts = [(0.7 * math.sin(tt) * math.sin(tt / 2), -math.cos(tt)) for tt in t]
    d.polygon(_rot(pts, cx, cy, r, a), fill=col)


def _bars(d, cx, cy, r, a, col) -> None:
    for k in (-0.6, 0.0, 0.6):
        d.polygon(_rot([(k - 0.18, -1), (k + 0.18, -1), (k + 0.18, 1), (k - 0.18, 1)], cx, cy, r, a), fill=col)


def _dice(d, cx, cy, r, a, col) -> None:
    for ix in (-0.6, 0.0, 0.6):
        for iy in (-0.6, 0.0, 0.6):
            (px, py), = _rot([(ix, iy)], cx, cy, r, a)
            d.ellipse([px - r * 0.2, py - r * 0.2, px + r * 0.2, py + r * 0.2], fill=col)


CLASSES: dict[str, Motif] = {
    "arrows": _polygon([(-1, -0.25), (0.2, -0.25), (0.2, -0.6), (1, 0), (0.2, 0.6), (0.2, 0.25), (-1, 0.25)]),
    "bars": _bars,
    "bursts": _polygon(_star(9, 0.55)),
    "crescents": _crescents,
    "crosses": _polygon([(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1),
                         (-0.3, 1), (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)]),
    "diamonds": _polygon([(0, -1), (0.6, 0), (0, 1), (-0.6, 0)]),
    "dice": _dice,
    "drops": _drops,
    "hearts": _hearts,
    "hexagons": _polygon(_regular(6)),
    "rings": _rings,
    "spirals": _spirals,
    "stars": _polygon(_star(5, 0.42)),
    "trefoils": _trefoils,
    "triangles": _polygon(_regular(3)),
    "zigzags": _zigzags,
}


@dataclass
class Nuisance:
    """How much an image varies besides its class (the knobs the demo was tuned with)."""

    motifs: tuple[int, int] = (2, 4)        # how many of the class's motif (min, max)
    radius: tuple[float, float] = (30, 52)  # motif radius in px
    clutter: tuple[int, int] = (0, 0)       # smaller motifs of other classes (min, max)
    clutter_scale: float = 0.4              # clutter radius relative to the motif's
    blur: float = 0.8                       # max Gaussian blur radius
    background_saturation: tuple[float, float] = (0.05, 0.35)


def _colour(rng: np.random.Generator, sat: tuple = (0.45, 0.95), val: tuple = (0.35, 0.95)) -> tuple:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*sat), rng.uniform(*val))
    return int(r * 255), int(g * 255), int(b * 255)


def _background(rng: np.random.Generator, saturation: tuple[float, float]) -> Image.Image:
    """One of four backgrounds (gradient, stripes, speckle, grid) in random colours."""
    a, b = np.array(_colour(rng, saturation), float), np.array(_colour(rng, saturation), float)
    kind = int(rng.integers(4))
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    ang = rng.uniform(0, math.pi)
    u = xx * math.cos(ang) + yy * math.sin(ang)
    if kind == 0:
        t = (u - u.min()) / (u.max() - u.min())
    elif kind == 1:
        t = (np.sin(u * rng.uniform(12, 40)) > 0).astype(float) * 0.6
    elif kind == 2:
        t = rng.random((SIZE, SIZE)) * 0.7
    else:
        v = -xx * math.sin(ang) + yy * math.cos(ang)
        f = rng.uniform(6, 14)
        t = ((np.abs(np.sin(u * f * math.pi)) < 0.12) | (np.abs(np.sin(v * f * math.pi)) < 0.12)).astype(float)
    arr = (1 - t)[..., None] * a + t[..., None] * b
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")


def draw_image(cls: str, rng: np.random.Generator, nuisance: Nuisance | None = None) -> Image.Image:
    """One image of class ``cls``: its motif a few times over a random background, plus clutter."""
    n = nuisance or Nuisance()
    im = _background(rng, n.background_saturation)
    d = ImageDraw.Draw(im)
    others = [c for c in CLASSES if c != cls]
    r_main = rng.uniform(*n.radius)
    jobs = [(CLASSES[cls], r_main * rng.uniform(0.8, 1.2)) for _ in range(int(rng.integers(n.motifs[0],
                                                                                            n.motifs[1] + 1)))]
    jobs += [(CLASSES[others[int(rng.integers(len(others)))]], r_main * n.clutter_scale * rng.uniform(0.7, 1.2))
             for _ in range(int(rng.integers(n.clutter[0], n.clutter[1] + 1)))]
    order = rng.permutation(len(jobs))
    col = _colour(rng)  # one colour for the class's motifs of this image, clutter in others
    for i in order:
        motif, r = jobs[i]
        cx, cy = rng.uniform(r, SIZE - r), rng.uniform(r, SIZE - r)
        motif(d, cx, cy, r, rng.uniform(0, 2 * math.pi), col if motif is CLASSES[cls] else _colour(rng))
    return im.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, n.blur)))


def render(out_dir: Path = DEMO_DIR, per_class: int = PER_CLASS, seed: int = 2024, quality: int = 80,
           nuisance: Nuisance | None = None) -> list[Path]:
    """Draw every class's images into ``out_dir``; returns the written files."""
    written = []
    for ci, name in enumerate(CLASSES):
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        for v in range(per_class):
            rng = np.random.default_rng(seed * 1000 + ci * 100 + v)
            path = folder / f"{v + 1:02d}.jpg"
            draw_image(name, rng, nuisance).save(path, "JPEG", quality=quality, optimize=True)
            written.append(path)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEMO_DIR)
    ap.add_argument("--per-class", type=int, default=PER_CLASS)
    args = ap.parse_args()
    files = render(args.out, args.per_class)
    total = sum(f.stat().st_size for f in files)
    print(f"{len(files)} images, {total / 1e6:.2f} MB in {args.out}")


if __name__ == "__main__":
    main()
