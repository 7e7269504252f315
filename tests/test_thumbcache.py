"""The thumbnail cache on disk (engine.thumbcache): a second open reads the cache and decodes no original,
a changed file gets a fresh thumbnail, a damaged entry is ignored (and made again), writes leave no
temporary file, and the module imports neither torch nor Qt."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import thumbcache

REPO = Path(__file__).resolve().parents[1]


def _decodes(monkeypatch) -> list[str]:
    """The originals engine.images.load_image opens from now on."""
    import engine.images

    opened: list[str] = []
    real = engine.images.load_image
    monkeypatch.setattr(engine.images, "load_image", lambda p, *a, **k: opened.append(str(p)) or real(p, *a, **k))
    return opened


def test_the_second_open_reads_the_cache_without_decoding(image_folder, tmp_path, monkeypatch):
    root = image_folder(n_classes=2, per_class=2, size=96)
    paths, labels = thumbcache.folder_listing(root)
    assert len(paths) == 4 and labels == ["class_00", "class_00", "class_01", "class_01"]
    cache = tmp_path / "thumbs"
    opened = _decodes(monkeypatch)
    first = [thumbcache.make_thumbnail(p, 48, cache) for p in paths]
    assert [cached for _im, cached in first] == [False] * 4 and len(opened) == 4
    assert all(max(im.size) == 48 for im, _ in first)
    second = [thumbcache.make_thumbnail(p, 48, cache) for p in paths]
    assert [cached for _im, cached in second] == [True] * 4 and len(opened) == 4  # no original decoded
    for (a, _), (b, _) in zip(first, second, strict=True):
        assert a.size == b.size and np.abs(np.asarray(a, int) - np.asarray(b, int)).mean() < 12  # JPEG once more
    assert not list(cache.rglob("*.tmp"))  # written by rename: no temporary left
    assert len(list(cache.rglob("*.jpg"))) == 4
    assert thumbcache.read_cached(cache, paths[0], 64) is None  # another size is another entry


def test_a_changed_file_gets_a_fresh_thumbnail(image_folder, tmp_path, monkeypatch):
    root = image_folder(n_classes=1, per_class=1, size=96)
    (path,), _ = thumbcache.folder_listing(root)
    cache = tmp_path / "thumbs"
    old, _ = thumbcache.make_thumbnail(path, 32, cache)
    st = os.stat(path)
    Image.new("RGB", (96, 96), (250, 10, 10)).save(path)  # new pixels, and a new mtime for certain
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    opened = _decodes(monkeypatch)
    new, cached = thumbcache.make_thumbnail(path, 32, cache)
    assert not cached and opened == [path]
    assert np.asarray(new)[..., 0].mean() > 200 and np.asarray(new)[..., 1].mean() < 40
    assert not np.array_equal(np.asarray(old), np.asarray(new))
    assert thumbcache.make_thumbnail(path, 32, cache)[1]  # and cached again


@pytest.mark.parametrize("damage", [b"", b"not a jpeg at all", "truncated", "png", "too large"])
def test_a_damaged_cache_entry_is_ignored_and_made_again(image_folder, tmp_path, monkeypatch, damage):
    root = image_folder(n_classes=1, per_class=1, size=96)
    (path,), _ = thumbcache.folder_listing(root)
    cache = tmp_path / "thumbs"
    thumbcache.make_thumbnail(path, 32, cache)
    entry = thumbcache.thumb_file(cache, path, 32)
    good = entry.read_bytes()
    if damage == "truncated":
        entry.write_bytes(good[: len(good) // 3])
    elif damage == "png":
        Image.new("RGB", (32, 32)).save(entry, "PNG")
    elif damage == "too large":
        Image.new("RGB", (300, 300)).save(entry, "JPEG")
    else:
        entry.write_bytes(damage)
    assert thumbcache.read_cached(cache, path, 32) is None
    assert not entry.exists()  # removed, so it is not read again
    opened = _decodes(monkeypatch)
    im, cached = thumbcache.make_thumbnail(path, 32, cache)
    assert not cached and opened == [path] and max(im.size) == 32
    assert entry.is_file() and thumbcache.read_cached(cache, path, 32) is not None


def test_an_unwritable_cache_costs_only_a_decode(image_folder, tmp_path):
    root = image_folder(n_classes=1, per_class=1, size=64)
    (path,), _ = thumbcache.folder_listing(root)
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("x")
    im, cached = thumbcache.make_thumbnail(path, 32, blocker / "thumbs")
    assert not cached and max(im.size) == 32
    assert thumbcache.read_cached(None, path, 32) is None and thumbcache.thumb_key(tmp_path / "gone.jpg", 32) is None


def test_imports_neither_torch_nor_qt():
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); import engine.thumbcache, engine.images; "
            "print(sorted(m for m in ('torch', 'PySide6') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
