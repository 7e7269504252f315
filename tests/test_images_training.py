"""Training reads the same files and the same pixels as indexing: engine.training.data lists images with
engine.images.scan_images and decodes them with engine.images.load_image."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.images import IMAGE_EXTENSIONS, load_image, scan_images
from engine.training import data as D


def _jpeg(path: Path, size=(40, 30), colour=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, "JPEG")
    return path


def test_the_same_files_as_indexing(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _jpeg(root / "cats" / "1.jpg")
    _jpeg(root / "cats" / ".hidden.jpg")  # hidden: indexing leaves it out, so does training
    _jpeg(root / "cats" / "2.jpe")  # an extension indexing reads
    _jpeg(root / "dogs" / "3.jpg")
    got = D.scan_labelled(root)
    assert got.classes == ["cats", "dogs"]
    assert got.paths == [str(p) for p in scan_images(root)]
    assert set(D.IMAGE_EXTENSIONS) == set(IMAGE_EXTENSIONS)


def test_symlinked_class_folders_are_read_and_problems_reported(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    _jpeg(root / "cats" / "1.jpg")
    _jpeg(elsewhere / "dogs" / "2.jpg")
    os.symlink(elsewhere / "dogs", root / "dogs")
    os.symlink(tmp_path / "gone", root / "birds")  # a class folder whose target is gone
    os.symlink(root / "cats", root / "cats" / "loop")
    got = D.scan_labelled(root)
    assert got.classes == ["cats", "dogs"]
    assert got.paths == [str(root / "cats" / "1.jpg"), str(root / "dogs" / "2.jpg")]
    reasons = dict(got.skipped)
    assert "broken symbolic link" in reasons[str(root / "birds")]
    assert "symbolic link loop" in reasons[str(root / "cats" / "loop")]


def test_transparency_on_white_like_indexing(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (32, 32), (0, 0, 255, 0))  # fully transparent
    rgba.paste((0, 0, 255, 255), (0, 0, 16, 32))  # left half opaque blue
    p = tmp_path / "t.png"
    rgba.save(p)
    t = D.decode_image(str(p), 32)
    assert t.dtype.is_floating_point is False and tuple(t.shape) == (3, 32, 32)
    assert t[:, 16, 28].tolist() == [255, 255, 255]  # white, as load_image gives (was black)
    assert t[:, 16, 4].tolist() == [0, 0, 255]
    assert np.asarray(load_image(p)).transpose(2, 0, 1)[:, 16, 28].tolist() == [255, 255, 255]


def test_16bit_scaled_like_indexing(tmp_path: Path) -> None:
    arr = np.full((32, 32), 65535 // 2, dtype=np.uint16)
    p = tmp_path / "deep.png"
    Image.fromarray(arr).save(p)
    t = D.decode_image(str(p), 32)
    assert abs(int(t[0, 10, 10]) - 127) <= 1  # half of the range, not clipped to 255


def test_bad_files_skipped_with_the_loaders_reasons(tmp_path: Path) -> None:
    good = _jpeg(tmp_path / "ok.jpg")
    huge_strip = tmp_path / "strip.jpg"
    Image.new("RGB", (20000, 1), (1, 2, 3)).save(huge_strip, "JPEG")
    paths = [str(good), str(huge_strip)]
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.jpg")
        paths.append(str(tmp_path / "pipe.jpg"))
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("out", D.decode_all(paths, 224, threads=2)), daemon=True)
    t.start()
    t.join(60)
    if t.is_alive():  # free the reader blocked on the pipe before failing
        os.close(os.open(tmp_path / "pipe.jpg", os.O_WRONLY | os.O_NONBLOCK))
        t.join(10)
        pytest.fail("decoding waited on a named pipe")
    imgs, ok, skipped = box["out"]
    assert ok == [0] and tuple(imgs.shape) == (1, 3, 224, 224)
    reasons = dict(skipped)
    assert "too elongated" in reasons[str(huge_strip)]
    if hasattr(os, "mkfifo"):
        assert reasons[str(tmp_path / "pipe.jpg")] == "not a regular file (a pipe, socket or device)"


def test_training_decode_uses_draft(tmp_path: Path, decoded_jpeg_sizes: list) -> None:
    p = _jpeg(tmp_path / "big.jpg", size=(2400, 1800))
    decoded = decoded_jpeg_sizes
    t = D.decode_image(str(p), 224)
    assert tuple(t.shape) == (3, 224, 224)
    assert decoded and max(w * h for w, h in decoded) <= 600 * 450  # 1/4 scale: 1800 / 4 = 450 >= 224
