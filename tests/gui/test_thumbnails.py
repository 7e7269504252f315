"""Thumbnails load lazily off the GUI thread and are cached in memory (LRU) and on disk (path+mtime+size)."""

from __future__ import annotations

import os

from PySide6.QtGui import QImage

from engine.thumbcache import thumb_key
from retrieval_gui.thumbnails import ThumbnailLoader


def test_lazy_load_memory_and_disk_cache(qtbot, image_folder, tmp_path):
    root = image_folder(n_classes=1, per_class=3, size=96)
    paths = sorted(str(p) for p in root.rglob("*.jpg"))
    loader = ThumbnailLoader(48, tmp_path / "thumbs", capacity=2)
    got = []
    loader.ready.connect(lambda p, img: got.append((p, img.width(), img.height())))
    assert loader.request(paths[0]) is None  # never blocks: scheduled
    with qtbot.waitSignal(loader.ready, timeout=10_000):
        pass
    loader.wait()
    assert got[0] == (paths[0], 48, 48)
    assert loader.request(paths[0]) is not None  # now from memory
    for p in paths[1:]:
        loader.request(p)
    loader.wait()
    assert loader.cached(paths[0]) is None  # LRU capacity 2: the oldest was dropped
    files = list((tmp_path / "thumbs").rglob("*.jpg"))
    assert len(files) == 3
    # a fresh loader reads the disk cache; a changed file gets a new key
    k0 = thumb_key(paths[0], 48)
    assert (tmp_path / "thumbs" / k0[:2] / f"{k0}.jpg").is_file()
    st = os.stat(paths[0])
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    assert thumb_key(paths[0], 48) != k0


def test_unreadable_file_gives_null_image(qtbot, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    loader = ThumbnailLoader(32, None)
    with qtbot.waitSignal(loader.ready, timeout=10_000) as blocker:
        loader.request(str(bad))
    path, img = blocker.args
    assert path == str(bad) and isinstance(img, QImage) and img.isNull()
    loader.wait()
