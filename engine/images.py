"""Image files: finding them, loading them safely as RGB, and the network input transform.

Every way an image file can be bad (missing, unreadable, zero bytes, not an image, truncated, corrupt,
absurdly large) ends in :class:`ImageLoadError` with a reason meant for a person; nothing else escapes
:func:`load_image`.
"""

from __future__ import annotations

import os
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)

#: default ceiling on width x height, checked from the header before any pixel is decoded
#: (about 16k x 16k; a 12 MP photo is 12e6).
DEFAULT_MAX_PIXELS = 256_000_000

# never decode half an image silently
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageLoadError(Exception):
    """An image file that cannot be used; ``reason`` says why in plain words."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def scan_images(root: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files under ``root`` by extension (case-insensitive), sorted by path; hidden files and
    folders (names starting with '.') are skipped. Directories whose name looks like an image are not
    returned. Raises FileNotFoundError / NotADirectoryError for a bad root."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    found: list[Path] = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
            for f in filenames:
                if not _is_hidden(f) and Path(f).suffix.lower() in IMAGE_EXTENSIONS:
                    p = Path(dirpath) / f
                    if not p.is_dir():
                        found.append(p)
    else:
        for p in root.iterdir():
            if not _is_hidden(p.name) and p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir():
                found.append(p)
    # sort on the path parts so "a/b.jpg" < "a-b.jpg" orders by folder first, the same on every OS
    found.sort(key=lambda p: p.relative_to(root).parts)
    return found


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency is composited on white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("PA",):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        ground = Image.new("RGB", rgba.size, (255, 255, 255))
        ground.paste(rgba, mask=rgba.getchannel("A"))
        return ground
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        if mode != "I" or arr.max(initial=0) > 255:
            arr = arr / 257.0 if mode != "I" or arr.max(initial=0) <= 65535 else arr * 255.0 / arr.max()
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        finite = np.isfinite(arr)
        if not finite.any():
            arr = np.zeros_like(arr)
        else:
            lo, hi = float(arr[finite].min()), float(arr[finite].max())
            if lo >= 0.0 and hi <= 1.0:
                arr = arr * 255.0
            elif hi > 255.0 or lo < 0.0:
                arr = (arr - lo) * (255.0 / (hi - lo if hi > lo else 1.0))
            arr = np.where(finite, arr, 0.0)
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L").convert("RGB")
    # 1, L, CMYK, YCbCr, LAB, HSV: PIL converts directly
    return img.convert("RGB")


def load_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open ``path`` as an RGB PIL image with its EXIF orientation applied; animations give their first
    frame. ``max_pixels`` (width x height, None = no limit) is checked from the header BEFORE decoding.
    Raises :class:`ImageLoadError` for every kind of bad file."""
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise ImageLoadError(p, "broken symbolic link (its target does not exist)")
    if not p.exists():
        raise ImageLoadError(p, "file not found")
    if p.is_dir():
        raise ImageLoadError(p, "is a folder, not an image file")
    if not p.is_file():  # a FIFO, socket or device: opening it could block or never end
        raise ImageLoadError(p, "not a regular file (a pipe, socket or device)")
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise ImageLoadError(p, f"cannot read file information ({exc.strerror or exc})") from exc
    if size == 0:
        raise ImageLoadError(p, "empty file (0 bytes)")
    try:
        fh = open(p, "rb")  # noqa: SIM115 - closed below, after decoding
    except PermissionError as exc:
        raise ImageLoadError(p, "permission denied (the file cannot be read)") from exc
    except OSError as exc:
        raise ImageLoadError(p, f"cannot open file ({exc.strerror or exc})") from exc
    try:
        with fh, warnings.catch_warnings():
            # our own size check below is the guard; PIL's bomb warning becomes an error, not noise
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                img = Image.open(fh)
            except UnidentifiedImageError as exc:
                raise ImageLoadError(p, "not a recognised image format (corrupt or not an image)") from exc
            except Image.DecompressionBombError as exc:
                raise ImageLoadError(p, f"image dimensions too large ({exc})") from exc
            except Image.DecompressionBombWarning as exc:
                raise ImageLoadError(p, f"image dimensions too large ({exc})") from exc
            w, h = img.size
            if w <= 0 or h <= 0:
                raise ImageLoadError(p, f"invalid image dimensions {w}x{h}")
            if max_pixels is not None and w * h > max_pixels:
                raise ImageLoadError(
                    p, f"image too large: {w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,}"
                )
            try:
                if getattr(img, "is_animated", False):
                    img.seek(0)
                img.load()
                img = ImageOps.exif_transpose(img)
                out = _to_rgb(img)
                out.load()
            except ImageLoadError:
                raise
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise ImageLoadError(p, f"image dimensions too large ({exc})") from exc
            except MemoryError as exc:
                raise ImageLoadError(p, "not enough memory to decode this image") from exc
            except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError,
                    KeyError, ZeroDivisionError) as exc:
                msg = str(exc) or type(exc).__name__
                if "truncated" in msg.lower() or isinstance(exc, EOFError):
                    reason = f"truncated or incomplete image data ({msg})"
                else:
                    reason = f"corrupt image data ({msg})"
                raise ImageLoadError(p, reason) from exc
    except ImageLoadError:
        raise
    except Exception as exc:  # the last guard: no bad file crashes the caller
        raise ImageLoadError(p, f"cannot decode image ({type(exc).__name__}: {exc})") from exc
    return out


def build_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_fraction: float = 1.0,
):
    """PIL RGB image -> float tensor (3, image_size, image_size): resize the shorter side to
    round(image_size / crop_fraction) (bilinear, antialiased), centre-crop image_size x image_size,
    scale to [0, 1], normalise with ``mean``/``std``. ``crop_fraction=224/227`` with 224 gives the
    224 centre crop of a 227 image."""
    from torchvision import transforms as T  # noqa: N812

    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    resize = int(round(image_size / crop_fraction))
    return T.Compose(
        [
            T.Resize(resize, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(mean=list(mean), std=list(std)),
        ]
    )
