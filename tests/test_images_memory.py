"""Costly images inside the pixel limit (issue 26, item 9): decoded within a memory bound or refused
from the header, converted in strips the same as whole; JPEGs decoded reduced (the draft path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from campaign.cases_images import gif_canvas, png_canvas
from PIL import Image

import engine.images as images
from engine.images import ImageLoadError, decoded_bytes, load_image, resize_crop

ROOT = Path(__file__).resolve().parents[1]

_PEAK = """
import json, resource, sys
from engine.images import load_image
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
im = load_image(sys.argv[1], min_side=int(sys.argv[2]))
print(json.dumps({"grown": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024, "size": im.size}))
"""


def _grown(path: Path, min_side: int = 224) -> dict:
    """Decode ``path`` in a fresh process: -> how much its peak resident memory grew, and the size."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", _PEAK, str(path), str(min_side)], env=env, capture_output=True,
                       text=True, timeout=120, check=True)
    return json.loads(p.stdout)


def test_transparent_palette_png_costs_about_its_decoded_size(tmp_path):
    # 9000 x 9000 palette with transparency: 81 MB decoded; converted whole it made an RGBA copy, the white
    # ground and the result (4 bytes a pixel each: over 1 GB); in strips it stays near the 81 MB
    f = png_canvas(tmp_path / "p.png", 9000, 9000, kind="P")
    native = decoded_bytes("P", 9000, 9000)
    assert native > images.COSTLY_BYTES
    r = _grown(f)
    assert r["grown"] < 1.6 * native, f"grew {r['grown'] / 1e6:.0f} MB for {native / 1e6:.0f} MB of pixels"
    assert min(r["size"]) >= 224 and max(r["size"]) < 9000 / 2


def test_gif_with_a_huge_canvas_and_one_tiny_frame_is_cheap(tmp_path):
    f = gif_canvas(tmp_path / "c.gif", 15000, 15000)
    assert f.stat().st_size == 35
    r = _grown(f)
    assert r["grown"] < 300e6, f"a 35-byte GIF grew the process by {r['grown'] / 1e6:.0f} MB"  # was 1.9 GB
    assert min(r["size"]) >= 224


def test_refused_from_the_header_before_decoding(tmp_path, monkeypatch):
    f = tmp_path / "big.png"
    Image.new("RGBA", (300, 200), (1, 2, 3, 4)).save(f)
    monkeypatch.setattr(images, "DECODE_BUDGET_BYTES", decoded_bytes("RGBA", 300, 200) - 1)
    with pytest.raises(ImageLoadError, match=r"too large to decode within .* GB: 300x200 RGBA"):
        load_image(f, min_side=64)
    monkeypatch.setattr(images, "DECODE_BUDGET_BYTES", decoded_bytes("RGBA", 300, 200))
    assert load_image(f, min_side=64).size == (300, 200)


def test_the_draft_path_decodes_a_big_jpeg_reduced_and_turned(tmp_path):
    f = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter
    Image.new("RGB", (2000, 1600), (90, 120, 30)).save(f, quality=90, exif=exif.tobytes())
    im = load_image(f, min_side=224)
    assert im.size == (400, 500)  # 1/4 while decoding (the strongest scale keeping 224), then turned
    assert decoded_bytes("RGB", 500, 400) < images.COSTLY_BYTES  # never the costly path for a photo


def _both(path: Path, monkeypatch, min_side: int | None, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """The network crop of ``path`` decoded the normal way and the costly way (strips of a few rows)."""
    whole = load_image(path, min_side=min_side)
    monkeypatch.setattr(images, "COSTLY_BYTES", 0)
    monkeypatch.setattr(images, "_STRIP_BYTES", 4 * 700 * 7)  # strips of 7 rows at 700 pixels wide
    strips = load_image(path, min_side=min_side)
    monkeypatch.undo()
    if min_side is None:
        assert strips.size == whole.size
    return (np.asarray(resize_crop(whole, size), np.float32), np.asarray(resize_crop(strips, size), np.float32))


@pytest.mark.parametrize("mode", ["P", "RGBA", "LA", "I;16", "F"])
def test_strips_give_the_image_of_the_whole(tmp_path, monkeypatch, mode):
    yy, xx = np.mgrid[0:500, 0:700]
    rgb = np.stack([xx * 255 // 700, yy * 255 // 500, (xx + yy) % 256], -1).astype(np.uint8)
    if mode == "P":
        img = Image.fromarray(rgb).quantize(64)
        img.info["transparency"] = 3
    elif mode in ("RGBA", "LA"):
        alpha = ((xx + 2 * yy) % 256).astype(np.uint8)
        img = Image.fromarray(np.dstack([rgb, alpha]), "RGBA").convert(mode)
    elif mode == "I;16":
        img = Image.fromarray((xx * 60 + yy * 7).astype(np.uint16))  # values up to 45,000: scaled as a whole
    else:
        arr = (xx * 3.5 - yy * 1.25).astype(np.float32)
        arr[10, 10] = np.nan
        img = Image.fromarray(arr, "F")
    f = tmp_path / ("x.tif" if mode == "F" else "x.png")
    img.save(f, transparency=3) if mode == "P" else img.save(f)
    for min_side in (None, 100):
        a, b = _both(f, monkeypatch, min_side)
        # reduced by 5 in boxes before the bilinear resize against the resize alone: a few levels at edges
        assert np.abs(a - b).mean() < (0.01 if min_side is None else 2.0), (mode, min_side)


def test_strips_apply_the_exif_orientation(tmp_path, monkeypatch):
    arr = np.zeros((300, 500, 3), np.uint8)
    arr[:, :250] = 255  # white on the left
    exif = Image.Exif()
    exif[0x0112] = 6
    f = tmp_path / "turned.png"
    Image.fromarray(arr).save(f, exif=exif.tobytes())
    a, b = _both(f, monkeypatch, 64)
    assert a.shape == b.shape and np.abs(a - b).mean() < 2.0
    assert b[:20].mean() > 200 and b[-20:].mean() < 50  # turned: the white half is now on top
