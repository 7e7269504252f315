"""engine.images.load_image(min_side=...): JPEG draft (DCT-domain) decoding, the bound on the resized
size, and the one pixel limit. Every image is generated here."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.images import (
    DEFAULT_MAX_PIXELS,
    MAX_RESIZED_PIXELS,
    ImageLoadError,
    draft_request,
    load_image,
    resized_size,
)

# A draft decode followed by the exact resize and a full decode followed by the same resize are two
# slightly different downsamplers: on these textured images they agree to within these many levels
# (of 255): on average, for 99% of the values, and at the worst pixel (on the hard white edge).
MEAN_TOLERANCE = 1.5
P99_TOLERANCE = 4
MAX_TOLERANCE = 24


def _textured(w: int, h: int, seed: int = 0) -> Image.Image:
    """Smooth random colour blobs about 40 px wide (photo-like, not noise)."""
    small = np.random.default_rng(seed).integers(0, 256, (max(2, h // 40), max(2, w // 40), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)


def _save_jpeg(path: Path, img: Image.Image, orientation: int | None = None, **kw) -> Path:
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    img.save(path, "JPEG", quality=92, exif=exif, **kw)
    return path


def _resized(img: Image.Image, min_side: int) -> Image.Image:
    return img.resize(resized_size(*img.size, min_side), Image.Resampling.BILINEAR)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG signature + IHDR declaring width x height and one tiny IDAT: no real pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("kind", ["orientation6", "orientation8", "progressive", "plain"])
@pytest.mark.parametrize("min_side", [224, 256])
def test_draft_matches_full_decode_after_the_same_resize(tmp_path: Path, kind: str, min_side: int) -> None:
    img = _textured(1600, 1200)
    # a white stripe on the stored image's left edge: it shows where the orientation put it
    img.paste((255, 255, 255), (0, 0, 60, 1200))
    if kind == "orientation6":
        p = _save_jpeg(tmp_path / "o6.jpg", img, orientation=6)
    elif kind == "orientation8":
        p = _save_jpeg(tmp_path / "o8.jpg", img, orientation=8)
    elif kind == "progressive":
        p = _save_jpeg(tmp_path / "prog.jpg", img, progressive=True)
        assert Image.open(p).info.get("progressive") or Image.open(p).info.get("progression")
    else:
        p = _save_jpeg(tmp_path / "plain.jpg", img)
    full = load_image(p)
    drafted = load_image(p, min_side=min_side)
    assert drafted.mode == "RGB"
    assert drafted.size != full.size and min(drafted.size) >= min_side  # really decoded reduced
    # the same orientation: portrait after a quarter turn, landscape otherwise
    assert (drafted.width < drafted.height) == (full.width < full.height)
    if kind in ("orientation6", "orientation8"):
        assert full.size == (1200, 1600)
    a, b = _resized(full, min_side), _resized(drafted, min_side)
    assert a.size == b.size == resized_size(*full.size, min_side)
    diff = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    assert diff.mean() <= MEAN_TOLERANCE, diff.mean()
    assert np.percentile(diff, 99) <= P99_TOLERANCE, np.percentile(diff, 99)
    assert diff.max() <= MAX_TOLERANCE, diff.max()
    # the stripe is where a full decode puts it (top for 6, bottom for 8, left otherwise)
    arr = np.asarray(b, dtype=np.float64).mean(axis=2)
    edge = {"orientation6": arr[:5, :], "orientation8": arr[-5:, :]}.get(kind, arr[:, :5])
    assert edge.mean() > 240


def test_draft_really_reduces_a_large_jpeg(tmp_path: Path) -> None:
    p = _save_jpeg(tmp_path / "big.jpg", _textured(4000, 3000))
    assert load_image(p).size == (4000, 3000)
    # 1/8 is the strongest scale that keeps 3000 / s >= 256: 500 x 375 decoded, not 12 MP
    assert load_image(p, min_side=256).size == (500, 375)
    assert load_image(p, min_side=400).size == (1000, 750)  # 3000 / 8 = 375 < 400: 1/4
    assert load_image(p, min_side=3000).size == (4000, 3000)  # nothing to spare: full size
    assert load_image(p, min_side=4500).size == (4000, 3000)  # an upscale follows: full size


def test_draft_request_keeps_the_shorter_side() -> None:
    # PIL picks the strongest s in (8, 4, 2, 1) with s <= min(W // rw, H // rh); the result is ceil(W / s)
    for w, h in [(4000, 3000), (3000, 4000), (1001, 257), (257, 1001), (100, 50), (6000, 255), (8 * 224, 8 * 224)]:
        for m in (1, 224, 256, 300):
            rw, rh = draft_request(w, h, m)
            scale = min(w // rw, h // rh)
            s = next(s for s in (8, 4, 2, 1) if scale >= s)
            assert min(-(-w // s), -(-h // s)) >= min(m, w, h), (w, h, m)


def test_non_jpeg_decoded_in_full(tmp_path: Path) -> None:
    p = tmp_path / "big.png"
    _textured(1200, 900).save(p)
    assert load_image(p, min_side=224).size == (1200, 900)


def test_elongated_image_refused_from_the_header(tmp_path: Path) -> None:
    # the bound is computed, not found by allocating: 20000 x 1 at min_side 224 would be 4,480,000 x 224
    assert resized_size(20000, 1, 224) == (4_480_000, 224)
    assert resized_size(1, 20000, 224) == (224, 4_480_000)
    assert resized_size(300, 200, 224) == (336, 224)
    p = tmp_path / "strip.png"
    p.write_bytes(_png_header_only(20000, 1))  # 141 bytes; no pixel data to decode
    with pytest.raises(ImageLoadError) as info:
        load_image(p, min_side=224)
    reason = info.value.reason
    assert "too elongated" in reason and "20000x1" in reason and "4,480,000x224" in reason
    assert f"{MAX_RESIZED_PIXELS:,}" in reason
    tall = tmp_path / "tall.png"
    tall.write_bytes(_png_header_only(2, 300_000))
    with pytest.raises(ImageLoadError, match="too elongated"):
        load_image(tall, min_side=256)
    # a real wide panorama (about 12:1) stays accepted
    pano = tmp_path / "pano.jpg"
    Image.new("RGB", (2400, 200), (20, 90, 160)).save(pano, "JPEG")
    assert load_image(pano, min_side=224).size == (2400, 200)


def test_a_108_megapixel_photo_is_accepted(tmp_path: Path) -> None:
    # 12,000 x 9,000 is under the documented 256 MP; PIL's 89 MP bomb warning used to refuse it
    p = tmp_path / "big.jpg"
    Image.new("L", (12000, 9000), 128).save(p, "JPEG", quality=50)
    img = load_image(p, min_side=256)
    assert img.size == (1500, 1125) and img.mode == "RGB"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_above_the_limit_refused_with_the_limit_named(tmp_path: Path) -> None:
    p = tmp_path / "huge.png"
    p.write_bytes(_png_header_only(20000, 15000))  # 300 MP
    with pytest.raises(ImageLoadError) as info:
        load_image(p)
    assert f"{DEFAULT_MAX_PIXELS:,}" in info.value.reason and "20000x15000" in info.value.reason


def test_min_side_must_be_positive(tmp_path: Path) -> None:
    p = _save_jpeg(tmp_path / "a.jpg", _textured(80, 60))
    with pytest.raises(ValueError):
        load_image(p, min_side=0)
