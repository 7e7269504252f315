"""The thumbnail cache on disk: one small JPEG per image and thumbnail size, torch-free.

An entry's name is a hash of the image's absolute path, its size and modification time (ns) and the
thumbnail size (:func:`thumb_key`): a changed file gets a new name, so a stale thumbnail is never shown
(the old entry is simply not read again). Entries live under ``<cache root>/thumbnails/<2 hex>/<key>.jpg``.
An entry is written atomically through engine.atomic (a temporary file renamed over the name, so no
half-written file is ever read under it), without fsync: a cache entry lost in a crash is made again. A damaged entry is
ignored (and removed) and the original decoded again.

This module imports neither torch nor Qt, so that the window can show a folder's cached thumbnails
before the network is loaded (retrieval_gui.thumbnails.prefill).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
from pathlib import Path

from PIL import Image

from engine.atomic import atomic_write_bytes

log = logging.getLogger(__name__)

#: JPEG quality of the cached thumbnails
QUALITY = 85


def thumb_key(path: str | os.PathLike, size: int) -> str | None:
    """The cache name of ``path``'s thumbnail at ``size``: changes with the file's mtime and size; None
    when the file cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    raw = f"{os.path.abspath(path)}|{st.st_mtime_ns}|{st.st_size}|{size}"
    return hashlib.sha1(raw.encode()).hexdigest()


def thumb_file(cache_dir: str | os.PathLike, path: str | os.PathLike, size: int) -> Path | None:
    """Where ``path``'s thumbnail at ``size`` is cached under ``cache_dir`` (None: the file is gone)."""
    key = thumb_key(path, size)
    return Path(cache_dir) / key[:2] / f"{key}.jpg" if key else None


def read_cached(cache_dir: str | os.PathLike | None, path: str | os.PathLike, size: int) -> Image.Image | None:
    """``path``'s cached thumbnail (RGB, fitted into size x size) without touching the original's pixels;
    None when there is none, when the file changed since, or when the entry is damaged (then removed)."""
    if not cache_dir:
        return None
    entry = thumb_file(cache_dir, path, size)
    if entry is None:
        return None
    try:
        with Image.open(entry) as im:
            im.load()
            if im.format != "JPEG" or max(im.size) > size or min(im.size) < 1:
                raise OSError(f"not a thumbnail of size {size}: {im.format} {im.size}")
            return im.convert("RGB")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        log.debug("damaged thumbnail cache entry %s: %s", entry, exc)
        with contextlib.suppress(OSError):
            entry.unlink()
        return None


def write_cached(cache_dir: str | os.PathLike, path: str | os.PathLike, size: int, thumb: Image.Image) -> Path | None:
    """Store ``thumb`` as ``path``'s thumbnail at ``size`` (atomically); returns the entry, None on failure
    (a full or read-only disk only costs a decode next time)."""
    entry = thumb_file(cache_dir, path, size)
    if entry is None:
        return None
    buf = io.BytesIO()
    thumb.convert("RGB").save(buf, "JPEG", quality=QUALITY)
    try:  # a cache that is rebuilt on a miss: atomic, not fsynced
        atomic_write_bytes(entry, buf.getvalue(), durable=False)
    except OSError as exc:
        log.debug("thumbnail cache write failed: %s", exc)
        return None
    return entry


def make_thumbnail(path: str | os.PathLike, size: int, cache_dir: str | os.PathLike | None = None
                   ) -> tuple[Image.Image, bool]:
    """(``path``'s thumbnail fitted into size x size, whether it came from the cache). The original is
    read by the program's one safe loader (engine.images.load_image, at a reduced JPEG scale) only when
    the cache has no valid entry; the new thumbnail is then cached. Raises engine.images.ImageLoadError
    for an unreadable image."""
    from engine.images import load_image

    cached = read_cached(cache_dir, path, size)
    if cached is not None:
        return cached, True
    im = load_image(path, min_side=max(1, int(size)))
    im.thumbnail((size, size), Image.Resampling.BILINEAR)
    if cache_dir:
        write_cached(cache_dir, path, size, im)
    return im, False


def folder_listing(folder: str | os.PathLike) -> tuple[list[str], list[str | None]]:
    """The image files of ``folder`` (as the collection lists them: engine.images.scan_images) and their
    labels (sub-folder names), without opening any image: what the window shows before indexing."""
    from engine.images import label_of, scan_images

    root = Path(folder)
    paths = scan_images(root)
    return [str(p) for p in paths], [label_of(p.relative_to(root)) for p in paths]
