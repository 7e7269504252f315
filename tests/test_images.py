"""engine.images: scanning, a generated corpus of bad files, every mode to RGB, the transform."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.images import IMAGE_EXTENSIONS, ImageLoadError, _to_rgb, build_transform, load_image, scan_images


def _jpeg_bytes(size=(40, 30), color=(200, 30, 30), **kw) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", **kw)
    return buf.getvalue()


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR chunk declaring width x height, and one tiny IDAT: no real pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------------------
# scanning
def test_scan_images_sorted_recursive_skips_hidden_and_non_images(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "dir.jpg").mkdir()  # a folder named like an image
    for rel in ["b/2.PNG", "b/1.jpg", "a/z.jpeg", "top.bmp", ".secret.jpg", ".hidden/x.jpg", "notes.txt", "a/y.gif"]:
        (tmp_path / rel).write_bytes(b"x")
    got = [p.relative_to(tmp_path).as_posix() for p in scan_images(tmp_path)]
    assert got == ["a/y.gif", "a/z.jpeg", "b/1.jpg", "b/2.PNG", "top.bmp"]
    flat = [p.name for p in scan_images(tmp_path, recursive=False)]
    assert flat == ["top.bmp"]
    # stable: the same answer twice
    assert scan_images(tmp_path) == scan_images(tmp_path)
    assert ".jpg" in IMAGE_EXTENSIONS and ".png" in IMAGE_EXTENSIONS


def test_scan_images_bad_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        scan_images(tmp_path / "missing")
    f = tmp_path / "f.jpg"
    f.write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        scan_images(f)


# ---------------------------------------------------------------------------------------------------
# the corpus of bad files: each must raise ImageLoadError with a reason containing the expected words
def _make_bad_corpus(d: Path) -> dict[str, tuple[Path, str]]:
    good_jpeg = _jpeg_bytes((64, 48))
    good_png = _png_bytes(Image.new("RGB", (64, 48), (10, 200, 10)))
    corpus: dict[str, tuple[Path, str]] = {}

    def add(name: str, data: bytes, words: str) -> None:
        p = d / name
        p.write_bytes(data)
        corpus[name] = (p, words)

    add("truncated.jpg", good_jpeg[: len(good_jpeg) // 2], "truncated")
    add("truncated.png", good_png[: len(good_png) - 30], "")
    add("zero.jpg", b"", "empty")
    add("text.jpg", b"this is a text file, not a JPEG\n" * 10, "not a recognised image")
    add("random.png", np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes(), "not a recognised")
    add("huge.png", _png_header_only(100_000, 100_000), "too large")
    add("corrupt_header.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 200, "")
    add("corrupt_middle.png", good_png[:40] + b"\x00" * 100 + good_png[140:], "")
    (d / "folder.jpg").mkdir()
    corpus["folder.jpg"] = (d / "folder.jpg", "folder")
    os.symlink(d / "does-not-exist.jpg", d / "broken_link.jpg")
    corpus["broken_link.jpg"] = (d / "broken_link.jpg", "broken symbolic link")
    corpus["missing.jpg"] = (d / "missing.jpg", "not found")
    if hasattr(os, "mkfifo"):  # reading a named pipe would block forever
        os.mkfifo(d / "pipe.jpg")
        corpus["pipe.jpg"] = (d / "pipe.jpg", "not a regular file")
    return corpus


def test_bad_files_raise_image_load_error_with_reason(tmp_path: Path) -> None:
    corpus = _make_bad_corpus(tmp_path)
    assert len(corpus) >= 10
    for name, (path, words) in corpus.items():
        with pytest.raises(ImageLoadError) as info:
            load_image(path)
        err = info.value
        assert err.path == str(path), name
        assert err.reason, name
        assert words.lower() in err.reason.lower(), (name, err.reason)


def test_huge_dimensions_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the header says 100k x 100k: decoding would need 30 GB; refused from the header alone,
    # and a lower explicit limit refuses a normal image too
    p = tmp_path / "huge.png"
    p.write_bytes(_png_header_only(100_000, 100_000))
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(p)
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(p, max_pixels=None)  # without our limit PIL's bomb guard still refuses it
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # PIL's guard off: ours alone must refuse it
    with pytest.raises(ImageLoadError, match="exceeds the limit"):
        load_image(p)
    q = tmp_path / "ok.jpg"
    q.write_bytes(_jpeg_bytes((100, 100)))
    with pytest.raises(ImageLoadError, match="exceeds the limit"):
        load_image(q, max_pixels=5_000)
    assert load_image(q, max_pixels=10_000).size == (100, 100)


def test_unreadable_file(tmp_path: Path) -> None:
    p = tmp_path / "secret.jpg"
    p.write_bytes(_jpeg_bytes())
    p.chmod(0)
    try:
        if os.access(p, os.R_OK):  # root ignores permissions: nothing to test here
            pytest.skip("running with privileges that read a mode-000 file (root)")
        with pytest.raises(ImageLoadError, match="permission denied"):
            load_image(p)
    finally:
        p.chmod(0o644)


# ---------------------------------------------------------------------------------------------------
# files that must load, as RGB
def test_gif_animation_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (20, 10), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    img = load_image(p)
    assert img.mode == "RGB" and img.size == (20, 10)
    r, g, b = img.getpixel((5, 5))
    assert r > 200 and g < 50 and b < 50  # red: the first frame


def test_cmyk_jpeg(tmp_path: Path) -> None:
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(p, "JPEG", quality=95)  # pure red in CMYK
    img = load_image(p)
    assert img.mode == "RGB"
    r, g, b = img.getpixel((8, 8))
    assert r > 200 and g < 60 and b < 60


def test_16bit_png(tmp_path: Path) -> None:
    arr = np.full((8, 12), 65535 // 2, dtype=np.uint16)
    arr[:, :6] = 65535
    p = tmp_path / "deep.png"
    Image.fromarray(arr).save(p)
    assert Image.open(p).mode.startswith("I")
    img = load_image(p)
    assert img.mode == "RGB" and img.size == (12, 8)
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert abs(img.getpixel((11, 0))[0] - 127) <= 1  # half of the 16-bit range -> half of 8 bits


def test_palette_with_transparency_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("P", (10, 10), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    img.paste(1, (0, 0, 5, 10))  # left half red, right half index 0 (transparent)
    p = tmp_path / "pal.png"
    img.save(p, transparency=0)
    out = load_image(p)
    assert out.mode == "RGB"
    assert out.getpixel((1, 1)) == (255, 0, 0)
    assert out.getpixel((8, 8)) == (255, 255, 255)  # transparent -> white, not black


def test_rgba_la_onebit_float_int_ycbcr(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (6, 6), (0, 0, 255, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    rgba.save(tmp_path / "rgba.png")
    out = load_image(tmp_path / "rgba.png")
    assert out.getpixel((0, 0)) == (0, 0, 255) and out.getpixel((3, 3)) == (255, 255, 255)

    Image.new("LA", (6, 6), (0, 0)).save(tmp_path / "la.png")
    assert load_image(tmp_path / "la.png").getpixel((2, 2)) == (255, 255, 255)

    one = Image.new("1", (8, 8), 0)
    one.putpixel((1, 1), 1)
    one.save(tmp_path / "one.png")
    out = load_image(tmp_path / "one.png")
    assert out.getpixel((1, 1)) == (255, 255, 255) and out.getpixel((0, 0)) == (0, 0, 0)

    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32), "F").save(tmp_path / "f.tif")
    out = load_image(tmp_path / "f.tif")
    assert out.mode == "RGB" and abs(out.getpixel((0, 0))[0] - 127) <= 1

    Image.fromarray(np.full((4, 4), 200, dtype=np.int32), "I").save(tmp_path / "i.tif")
    assert load_image(tmp_path / "i.tif").getpixel((0, 0)) == (200, 200, 200)

    # YCbCr and HSV have no portable file form across Pillow versions: the conversion itself
    for mode in ("YCbCr", "HSV"):
        r, g, b = _to_rgb(Image.new("RGB", (8, 8), (10, 120, 240)).convert(mode)).getpixel((4, 4))
        assert abs(r - 10) <= 6 and abs(g - 120) <= 6 and abs(b - 240) <= 6, mode  # 8-bit round trips


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 20))  # white stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 clockwise to display
    p = tmp_path / "rot.jpg"
    img.save(p, "JPEG", exif=exif, quality=95)
    assert Image.open(p).size == (40, 20)
    out = load_image(p)
    assert out.size == (20, 40)  # transposed
    assert out.getpixel((10, 3))[0] > 200  # the left stripe is now at the top
    assert out.getpixel((10, 36))[0] < 50


# ---------------------------------------------------------------------------------------------------
# transform
def test_build_transform_shape_and_crop_fraction() -> None:
    img = Image.new("RGB", (227, 300), (255, 0, 0))
    t = build_transform(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), crop_fraction=224 / 227)
    x = t(img)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.ones(224, 224), atol=1e-5)  # (1 - .5) / .5
    assert torch.allclose(x[1], -torch.ones(224, 224), atol=1e-5)
    # crop_fraction 224/227 on a 227 image: resize to 227 (no-op), centre crop 224 -> exactly the middle
    arr = np.arange(227 * 227 * 3, dtype=np.uint32).reshape(227, 227, 3) % 251
    src = Image.fromarray(arr.astype(np.uint8), "RGB")
    y = build_transform(224, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), crop_fraction=224 / 227)(src)
    top = int(round((227 - 224) / 2.0))
    expect = torch.from_numpy(arr[top:top + 224, top:top + 224].astype(np.float32) / 255.0).permute(2, 0, 1)
    assert torch.allclose(y, expect, atol=1e-6)


def test_build_transform_rejects_bad_args() -> None:
    with pytest.raises(ValueError):
        build_transform(0, (0, 0, 0), (1, 1, 1))
    with pytest.raises(ValueError):
        build_transform(224, (0, 0, 0), (1, 1, 1), crop_fraction=1.5)


def test_label_of_is_the_folder_that_holds_the_image():
    from engine.images import label_of

    assert label_of("birds/robin/1.jpg") == "robin"
    assert label_of("robin/1.jpg") == "robin"
    assert label_of("1.jpg") is None
