"""The window's thumbnails read images through engine.images.load_image: a named pipe is refused at once
(it used to block a pool thread forever), and a large JPEG is decoded at a reduced scale."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("PySide6.QtGui")

from retrieval_gui.thumbnails import make_thumbnail  # noqa: E402


def test_named_pipe_gives_a_null_image_without_waiting(tmp_path: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this system")
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("img", make_thumbnail(str(fifo), 64, tmp_path / "c")),
                         daemon=True)
    t.start()
    t.join(30)
    if t.is_alive():  # free the blocked reader before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(10)
        pytest.fail("make_thumbnail waited on a named pipe")
    assert box["img"].isNull()


def test_large_jpeg_decoded_reduced_and_oriented(tmp_path: Path, decoded_jpeg_sizes: list) -> None:
    p = tmp_path / "big.jpg"
    img = Image.new("RGB", (3200, 2400), (30, 30, 30))
    img.paste((255, 255, 255), (0, 0, 400, 2400))  # white stripe on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = 8  # displayed rotated a quarter turn counter-clockwise: the stripe at the bottom
    img.save(p, "JPEG", exif=exif)
    decoded = decoded_jpeg_sizes
    q = make_thumbnail(str(p), 160, None)
    assert (q.width(), q.height()) == (120, 160)
    assert decoded and max(w * h for w, h in decoded) <= (3200 // 8) * (2400 // 8)
    assert q.pixelColor(60, 155).red() > 230 and q.pixelColor(60, 5).red() < 60
