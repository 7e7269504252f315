"""Image files: finding them, loading them safely as RGB, and the network input transform.

Every way an image file can be bad (missing, unreadable, zero bytes, not an image, truncated, corrupt,
absurdly large) ends in :class:`ImageLoadError` with a reason meant for a person; nothing else escapes
:func:`load_image`.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)

#: default ceiling on width x height, checked from the header before any pixel is decoded
#: (about 16k x 16k; a 12 MP photo is 12e6). This is the one limit a header meets: PIL's own
#: decompression-bomb guard (89 MP by default) is raised to it below.
DEFAULT_MAX_PIXELS = 256_000_000

#: ceiling on width x height of the image AFTER the caller's resize of the shorter side to ``min_side``
#: (see :func:`load_image`), checked from the header before anything is allocated. Resizing the short
#: side of a 20000 x 1 image to 224 would make it 4,480,000 x 224 (1e9 pixels, gigabytes); 32 MP
#: (96 MB as 8-bit RGB) allows an aspect ratio of about 488:1 at ``min_side`` 256 (637:1 at 224, 30:1
#: at 1024), and an upscale of a 12 MP photo to a shorter side of 4,800.
MAX_RESIZED_PIXELS = 32_000_000

# PIL turns sizes above Image.MAX_IMAGE_PIXELS into a warning (and twice that into an error) before our
# check sees the header, which made the real limit 89 MP. It stays as a backstop for sizes that only
# appear while decoding (an embedded frame, an icon), no lower than our documented limit.
# Its warning (between the guard and twice it) says nothing our own check does not: silenced.
if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < DEFAULT_MAX_PIXELS:
    Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def quiet_pil_warnings() -> None:
    """PIL's warnings about damaged metadata ("Corrupt EXIF data", "Tag data larger than file", a malformed
    MPO...) come while an image whose pixels are fine is read: the image is used (oriented as far as its
    metadata tells) and the raw warning is not printed on the user's terminal (issue 26, item 10). A
    process-wide filter, set once at import: ``warnings.catch_warnings`` around each decode would not be
    thread-safe (decoding runs in threads)."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


quiet_pil_warnings()

#: PIL formats whose decoder can scale down by 1/2, 1/4, 1/8 while decoding (``Image.draft``)
_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})

#: ceiling on the memory one image's decoded pixels may take (PIL's own buffer, in the file's mode at the
#: size it is decoded at: after a JPEG's draft), estimated from the header before any pixel is decoded.
#: A file inside the pixel limit can still ask for gigabytes: a 35-byte GIF declaring a 15000 x 15000
#: canvas, a 1 MB PNG of 16000 x 16000 RGBA (1 GB as PIL holds it: 4 bytes a pixel for every
#: multi-band mode). 0.5 GB lets through every palette or 8-bit grey image up to the pixel limit, 16-bit
#: grey up to 250 MP and RGB(A) up to 125 MP (JPEGs of any size: they are decoded reduced). With
#: :data:`COSTLY_BYTES` it keeps `index` within 2 GB whatever the folder holds (issue 26: a normal index
#: peaks at about 1.1 GB; measured by benchmarks/image_memory.py).
DECODE_BUDGET_BYTES = 500_000_000

#: images whose decoded pixels take more than this are "costly": decoded one at a time in the process
#: (a lock shared by every decoding thread), converted to RGB and reduced in strips of rows, never whole
#: (the full-size RGB copy, the RGBA copy and the white ground of a transparent image each cost as much as
#: the decoded image again, or 4x for a palette image).
COSTLY_BYTES = 64 * 1024 ** 2
#: bytes of one strip of rows converted at a time on the costly path
_STRIP_BYTES = 16 * 1024 ** 2
_costly_lock = threading.Lock()

# never decode half an image silently
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageLoadError(Exception):
    """An image file that cannot be used; ``reason`` says why in plain words."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def file_stamp(path: str | os.PathLike) -> tuple[int, int]:
    """What says a file has changed since it was read: (size in bytes, mtime in ns); OSError when it
    cannot be stat'ed."""
    st = os.stat(path)
    return int(st.st_size), int(st.st_mtime_ns)


def label_of(relpath: str | os.PathLike) -> str | None:
    """The one label rule of the program: an image's class is the name of the folder that holds it
    (``birds/robin/1.jpg`` -> ``robin``; None for an image at the top of the folder). Collections, search,
    `eval`, training (engine.training.data.scan_labelled), `whiten` and the wizards' counts all use it:
    folders above the one holding the images only organise them, and two folders of one name are one class."""
    parts = os.fspath(relpath).replace(os.sep, "/").split("/")
    return parts[-2] if len(parts) > 1 else None


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _skip(skipped: list[tuple[str, str]] | None, path: str | os.PathLike, reason: str) -> None:
    if skipped is not None:
        skipped.append((str(path), reason))


def _link_problem(path: str) -> str | None:
    """Why a symbolic link cannot be followed (None when it can)."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return "broken symbolic link (its target does not exist)"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return "symbolic link to a place that cannot be read (permission denied)"
        return f"symbolic link cannot be followed ({exc.strerror or exc})"
    return None


def scan_images(root: str | os.PathLike, recursive: bool = True,
                skipped: list[tuple[str, str]] | None = None) -> list[Path]:
    """Image files under ``root`` by extension (case-insensitive), sorted by path; hidden files and
    folders (names starting with '.') are left out. Directories whose name looks like an image are not
    returned. Symbolic links to folders are followed (each real folder is read once: a link back to a
    folder being read is a loop and is skipped); files are returned under their path inside ``root``.

    ``skipped``: when given, every file or folder left out for a problem gets a ``(path, reason)`` row
    appended: broken symbolic links, symbolic link loops, folders that cannot be read, folders already
    read through another path. Raises FileNotFoundError / NotADirectoryError for a bad root."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    found: list[Path] = []
    root_st = root.stat()
    seen: dict[tuple[int, int], Path] = {(root_st.st_dev, root_st.st_ino): root}
    # depth-first in name order; each entry carries the (dev, inode) of the folders above it
    stack: list[tuple[Path, frozenset[tuple[int, int]]]] = [(root, frozenset(seen))]
    while stack:
        folder, above = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except PermissionError:
            _skip(skipped, folder, "folder cannot be read (permission denied)")
            continue
        except OSError as exc:
            _skip(skipped, folder, f"folder cannot be read ({exc.strerror or exc})")
            continue
        subfolders: list[tuple[Path, frozenset[tuple[int, int]]]] = []
        for e in entries:
            if _is_hidden(e.name):
                continue
            p = folder / e.name
            try:
                is_link = e.is_symlink()
            except OSError:
                is_link = False
            try:
                is_dir = e.is_dir()  # follows links
            except OSError:  # a link loop (ELOOP) among others
                is_dir = False
            if is_link and not is_dir:
                problem = _link_problem(e.path)
                if problem is not None:
                    if recursive or p.suffix.lower() in IMAGE_EXTENSIONS:
                        _skip(skipped, p, problem)
                    continue
            if is_dir:
                if not recursive:
                    continue
                try:
                    st = os.stat(e.path)
                except OSError as exc:
                    _skip(skipped, p, f"folder cannot be read ({exc.strerror or exc})")
                    continue
                key = (st.st_dev, st.st_ino)
                if key in above:
                    _skip(skipped, p, "symbolic link loop (it leads back to a folder above it)")
                elif key in seen:
                    _skip(skipped, p, f"the same folder as {seen[key]}, already read")
                else:
                    seen[key] = p
                    subfolders.append((p, above | {key}))
                continue
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                found.append(p)
        stack.extend(reversed(subfolders))
    # sort on the path parts so "a/b.jpg" < "a-b.jpg" orders by folder first, the same on every OS
    found.sort(key=lambda p: p.relative_to(root).parts)
    return found


def _grey_range(img: Image.Image, rows: int | None = None) -> tuple[bool, float, float]:
    """(any finite value, finite min, finite max) of an I / I;16* / F image, read ``rows`` rows at a time
    (all at once when None): the scale :func:`_to_rgb` gives such an image, the same for every strip."""
    import numpy as np

    w, h = img.size
    step = rows or h
    found, lo, hi = False, 0.0, 0.0
    for y in range(0, h, step):
        arr = np.asarray(img.crop((0, y, w, min(h, y + step))) if step < h else img)
        vals = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr.ravel()
        if vals.size:
            a, b = float(vals.min()), float(vals.max())
            lo, hi = (min(lo, a), max(hi, b)) if found else (a, b)
            found = True
    return found, lo, hi


def _to_rgb(img: Image.Image, grey_range: tuple[bool, float, float] | None = None) -> Image.Image:
    """Any PIL mode -> RGB; transparency is composited on white. ``grey_range``: for I / I;16* / F
    images, the range of the whole image (:func:`_grey_range`) when ``img`` is one strip of it."""
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
        top = max(0.0, grey_range[2]) if grey_range else arr.max(initial=0)
        if mode != "I" or top > 255:
            arr = arr / 257.0 if mode != "I" or top <= 65535 else arr * 255.0 / top
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        finite = np.isfinite(arr)
        any_finite, lo, hi = grey_range if grey_range else (bool(finite.any()), 0.0, 0.0)
        if not any_finite:
            arr = np.zeros_like(arr)
        else:
            if grey_range is None:
                lo, hi = float(arr[finite].min()), float(arr[finite].max())
            if lo >= 0.0 and hi <= 1.0:
                arr = arr * 255.0
            elif hi > 255.0 or lo < 0.0:
                arr = (arr - lo) * (255.0 / (hi - lo if hi > lo else 1.0))
            arr = np.where(finite, arr, 0.0)
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L").convert("RGB")
    # 1, L, CMYK, YCbCr, LAB, HSV: PIL converts directly
    return img.convert("RGB")


def decoded_bytes(mode: str, width: int, height: int) -> int:
    """Bytes PIL holds for a ``width`` x ``height`` image of ``mode``: 1 a pixel for 1, L and P, 2 for
    16-bit grey, 4 for every other mode (PIL keeps RGB, LA and the like in 4 bytes a pixel)."""
    per = 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4
    return width * height * per


def _strip_rgb(img: Image.Image, min_side: int | None) -> Image.Image:
    """The costly path: ``img`` (loaded, any mode) -> RGB, converted a strip of rows at a time and each
    strip reduced (box filter, ``Image.reduce``) by the largest whole factor that keeps the shorter side
    >= ``min_side`` (no reduction when None), so that no full-size copy of the image is ever made."""
    w, h = img.size
    factor = max(1, min(w, h) // min_side) if min_side else 1
    rows = max(factor, _STRIP_BYTES // (4 * w) // factor * factor)
    grey = _grey_range(img, rows) if img.mode.startswith("I") or img.mode == "F" else None
    out = Image.new("RGB", (-(-w // factor), -(-h // factor)))
    for y in range(0, h, rows):
        part = _to_rgb(img.crop((0, y, w, min(h, y + rows))), grey)
        out.paste(part.reduce(factor) if factor > 1 else part, (0, y // factor))
    exif = img.getexif()
    if exif.get(0x0112, 1) != 1:  # the orientation, applied to the small image by PIL's own table
        out.info["exif"] = exif.tobytes()
        ImageOps.exif_transpose(out, in_place=True)
    return out


def resized_size(width: int, height: int, min_side: int) -> tuple[int, int]:
    """(width, height) after resizing the shorter side to ``min_side``, aspect kept (as torchvision's
    Resize(min_side) computes it: the long side truncated)."""
    if width <= height:
        return min_side, max(1, int(min_side * height / width))
    return max(1, int(min_side * width / height)), min_side


def draft_request(width: int, height: int, min_side: int) -> tuple[int, int]:
    """The size to give ``Image.draft`` so that the JPEG decoder's scaling (1/2, 1/4, 1/8: it picks the
    strongest whose result is still >= the request on both sides) keeps the shorter side >= min_side."""
    return min(width, min_side), min(height, min_side)


def load_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               min_side: int | None = None) -> Image.Image:
    """Open ``path`` as an RGB PIL image with its EXIF orientation applied; animations give their first
    frame. ``max_pixels`` (width x height, None = no limit of ours) is checked from the header BEFORE
    decoding.

    ``min_side``: the caller will resize the shorter side to this many pixels. A JPEG is then decoded at a
    reduced scale (DCT-domain 1/2, 1/4 or 1/8) whose shorter side is still >= ``min_side``, so the result
    may be smaller than the file's size (other formats are decoded in full); and an image whose size after
    that resize would exceed :data:`MAX_RESIZED_PIXELS` (a 20000 x 1 strip) is refused from the header.

    Memory: an image whose decoded pixels (:func:`decoded_bytes`, after a JPEG's draft) would take more
    than :data:`DECODE_BUDGET_BYTES` is refused from the header ("too large to decode within ..."); one
    over :data:`COSTLY_BYTES` is decoded one at a time in the process and converted in strips of rows,
    each reduced by a whole factor keeping the shorter side >= ``min_side`` (box filter), so it too may come
    back smaller than the file. Raises :class:`ImageLoadError` for every kind of bad file."""
    p = Path(path)
    if min_side is not None and (not isinstance(min_side, int) or min_side <= 0):
        raise ValueError(f"min_side must be a positive int or None, got {min_side!r}")
    if p.is_symlink() and not p.exists():
        raise ImageLoadError(p, _link_problem(str(p)) or "broken symbolic link (its target does not exist)")
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
        with fh:
            try:
                img = Image.open(fh)
            except UnidentifiedImageError as exc:
                raise ImageLoadError(p, "not a recognised image format (corrupt or not an image)") from exc
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise ImageLoadError(p, f"image dimensions too large ({exc})") from exc
            w, h = img.size
            if w <= 0 or h <= 0:
                raise ImageLoadError(p, f"invalid image dimensions {w}x{h}")
            if max_pixels is not None and w * h > max_pixels:
                raise ImageLoadError(
                    p, f"image too large: {w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,}"
                )
            if min_side is not None:
                rw, rh = resized_size(w, h, min_side)
                if rw * rh > MAX_RESIZED_PIXELS:
                    raise ImageLoadError(
                        p, f"too elongated: {w}x{h} would be {rw:,}x{rh:,} after resizing its shorter side to "
                           f"{min_side}; the limit is {MAX_RESIZED_PIXELS:,} pixels after resizing")
            try:
                if getattr(img, "is_animated", False):
                    img.seek(0)  # the first frame only: no other frame is decoded
                if min_side is not None and img.format in _DRAFT_FORMATS:
                    img.draft("RGB", draft_request(w, h, min_side))  # before load: decode at reduced scale
                cost = decoded_bytes(img.mode, *img.size)
                if cost > DECODE_BUDGET_BYTES:
                    raise ImageLoadError(
                        p, f"too large to decode within {DECODE_BUDGET_BYTES / 1e9:.1f} GB: {w}x{h} "
                           f"{img.mode} takes {cost / 1e9:.2f} GB decoded (save a smaller copy of it, "
                           "or as JPEG: JPEGs are decoded reduced)")
                if cost > COSTLY_BYTES:
                    with _costly_lock:  # one costly image at a time in the process, whatever the threads
                        img.load()
                        out = _strip_rgb(img, min_side)
                        del img
                else:
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


def resize_side(image_size: int, crop_fraction: float = 1.0) -> int:
    """The shorter side an image is resized to before the centre crop (see :func:`resize_crop`)."""
    return int(round(image_size / crop_fraction))


def resize_crop(img: Image.Image, image_size: int, crop_fraction: float = 1.0) -> Image.Image:
    """The image as the network sees it, before normalisation: the shorter side resized to
    :func:`resize_side` (bilinear, antialiased), then the centre ``image_size`` x ``image_size`` crop.

    torchvision's Resize + CenterCrop on a PIL image, number for number (its rounding of the longer side
    and of the crop offsets); the one resize-and-crop of indexing, search, training and the window's
    activation view."""
    new_w, new_h, left, top = crop_geometry(img.width, img.height, image_size, crop_fraction)
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    s = int(image_size)
    return img.crop((left, top, left + s, top + s))


def crop_geometry(width: int, height: int, image_size: int, crop_fraction: float = 1.0) -> tuple[int, int, int, int]:
    """Where :func:`resize_crop` takes the network input from a ``width`` x ``height`` image:
    (resized width, resized height, left, top) of the ``image_size`` square in the resized image."""
    resize = resize_side(image_size, crop_fraction)
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = resize, int(resize * long / short)  # torchvision's rounding
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    s = int(image_size)
    return new_w, new_h, int(round((new_w - s) / 2.0)), int(round((new_h - s) / 2.0))


#: a rectangle of an image, (x, y, width, height) in the pixels of the image as shown (EXIF orientation applied)
Box = tuple[int, int, int, int]


def parse_box(text: str) -> Box:
    """'X,Y,W,H' (pixels of the image as shown) -> Box; ValueError with an example when malformed."""
    parts = [t.strip() for t in str(text).split(",")]
    try:
        x, y, w, h = (int(round(float(t))) for t in parts)
    except (ValueError, OverflowError):  # not four numbers, NaN, infinite
        raise ValueError(f"a box is X,Y,W,H in pixels of the image, e.g. 40,30,200,150; got {text!r}") from None
    if w <= 0 or h <= 0 or x < 0 or y < 0:
        raise ValueError(f"a box needs X, Y >= 0 and a positive width and height, e.g. 40,30,200,150; got {text!r}")
    return x, y, w, h


def clip_box(box: Box, width: int, height: int) -> Box:
    """``box`` clipped to a ``width`` x ``height`` image; ValueError when nothing of it lies inside."""
    x, y, w, h = (int(v) for v in box)
    x0, y0, x1, y1 = max(0, x), max(0, y), min(width, x + w), min(height, y + h)
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise ValueError(f"the box {x},{y},{w},{h} lies outside the {width}x{height} image")
    return x0, y0, x1 - x0, y1 - y0


def crop_to_box(img: Image.Image, box: Box) -> Image.Image:
    """The part of ``img`` inside ``box`` (clipped to the image; ValueError when outside it)."""
    x, y, w, h = clip_box(box, img.width, img.height)
    return img.crop((x, y, x + w, y + h))


def shown_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of the image file as shown (EXIF orientation applied), from its header alone.
    Raises :class:`ImageLoadError` when it cannot be read."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)  # 5-8: rotated a quarter turn
    except Exception as exc:
        raise ImageLoadError(path, f"cannot read the image header ({type(exc).__name__}: {exc})") from None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def network_array(img: Image.Image, image_size: int, mean: Sequence[float], std: Sequence[float],
                  crop_fraction: float = 1.0):
    """An RGB PIL image -> the network's input (3, S, S) float32 numpy array, without torch: :func:`resize_crop`,
    scaled to [0, 1], normalised with ``mean``/``std`` (float32 arithmetic, the numbers of torchvision's
    ToTensor + Normalize). :func:`build_transform` and the torch-free query (engine.fastquery) both use it."""
    import numpy as np

    a = np.array(resize_crop(img, image_size, crop_fraction), np.uint8, copy=True)  # (S, S, 3)
    x = a.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    x -= np.asarray(mean, np.float32).reshape(-1, 1, 1)
    x /= np.asarray(std, np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray(x)


def build_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_fraction: float = 1.0,
):
    """PIL RGB image -> float tensor (3, image_size, image_size): :func:`resize_crop` (the shorter side to
    round(image_size / crop_fraction), centre crop image_size x image_size), scale to [0, 1], normalise
    with ``mean``/``std``. ``crop_fraction=224/227`` with 224 gives the 224 centre crop of a 227 image.

    The steps of torchvision's Resize + CenterCrop + ToTensor + Normalize on a PIL image, number for number
    (tests/test_session.py compares them), without importing torchvision: its import costs seconds that a
    one-image `search` would otherwise pay."""
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    return _InputTransform(int(image_size), float(crop_fraction), mean, std)


class _InputTransform:
    """See :func:`build_transform`."""

    def __init__(self, image_size: int, crop_fraction: float, mean: Sequence[float], std: Sequence[float]) -> None:
        self.image_size, self.crop_fraction = image_size, crop_fraction
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]

    def __call__(self, img: Image.Image):
        import torch

        if not isinstance(img, Image.Image) or img.mode != "RGB":
            return self._torchvision()(img)  # anything else: torchvision's own steps
        a = network_array(img, self.image_size, self.mean, self.std, self.crop_fraction)
        return torch.from_numpy(a).to(dtype=torch.get_default_dtype())

    def _torchvision(self):
        from torchvision import transforms as T  # noqa: N812

        return T.Compose([
            T.Resize(resize_side(self.image_size, self.crop_fraction), interpolation=T.InterpolationMode.BILINEAR,
                     antialias=True),
            T.CenterCrop(self.image_size),
            T.ToTensor(),
            T.Normalize(mean=self.mean, std=self.std),
        ])
