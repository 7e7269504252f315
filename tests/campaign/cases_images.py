"""Costly images inside the pixel limit (issue 26, item 9): tiny files that declare huge canvases.

The attack files are written here byte by byte (nothing large is ever held in memory to make them):
a 35-byte GIF whose logical screen is 15000 x 15000 with a 1 x 1 frame, and PNGs of 16000 x 16000
(RGBA, palette, 16-bit grey) whose rows of zeros compress about 1000:1. Each case runs the CLI in a
subprocess and checks its peak resident memory (``ru_maxrss`` of the child) against the goal of the
issue: one image at most 1.5 GB as a query; `index` of four such files and two photos at most 2 GB,
the photos indexed and every costly file either indexed or skipped with a reason.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

from . import SMALL, Case, Ran, indexed_folder, make_photos, no_traceback, scratch_env

GB = 1e9  # decimal: the stricter reading of the limits
QUERY_LIMIT = 1.5 * GB
INDEX_LIMIT = 2.0 * GB


def gif_canvas(path: Path, width: int = 15000, height: int = 15000) -> Path:
    """A 35-byte GIF: a ``width`` x ``height`` logical screen, a 2-colour table and one 1 x 1 frame."""
    data = (b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0)  # global table of 2 colours
            + bytes((0, 0, 0, 255, 255, 255))
            + b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0)  # the frame: 1 x 1 at the origin
            + bytes((2, 2, 0x44, 0x01, 0))  # LZW minimum code size 2: clear, 0, end
            + b";")
    path.write_bytes(data)
    return path


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_canvas(path: Path, width: int = 16000, height: int = 16000, kind: str = "RGBA") -> Path:
    """A PNG of ``width`` x ``height`` zero pixels (a few MB of memory and well under a second to make).
    ``kind``: "RGBA" (8-bit, about 1 MB at 16000 x 16000), "P" (palette of 2 colours, the second one
    transparent) or "I;16" (16-bit grey).

    The rows are deflated a block at a time with a full flush after each block, which resets the
    compressor: every block of zero rows then compresses to the same bytes, written again and again."""
    colour, depth, bpp = {"RGBA": (6, 8, 4), "P": (3, 8, 1), "I;16": (0, 16, 2)}[kind]
    row = bytes(1 + width * bpp)  # filter byte 0, then the pixels
    block_rows = max(1, min(height, (4 << 20) // len(row)))
    block = row * block_rows
    zc = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: the zlib header and checksum written here
    same = zc.compress(block) + zc.flush(zlib.Z_FULL_FLUSH)
    full, rest = divmod(height, block_rows)
    adler = 1
    for _ in range(full):
        adler = zlib.adler32(block, adler)
    tail = zc.compress(row * rest) + zc.flush() if rest else zc.flush()
    adler = zlib.adler32(row * rest, adler)
    idat = b"\x78\xda" + same * full + tail + struct.pack(">I", adler)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)))
        if kind == "P":
            f.write(_chunk(b"PLTE", bytes((30, 60, 90, 200, 10, 10))) + _chunk(b"tRNS", b"\xff\x00"))
        f.write(_chunk(b"IDAT", idat) + _chunk(b"IEND", b""))
    return path


def costly_files(folder: Path, scale: float = 1.0) -> list[Path]:
    """The four costly files of the campaign in ``folder`` (``scale`` < 1 makes them smaller)."""
    folder.mkdir(parents=True, exist_ok=True)
    g, p = int(15000 * scale), int(16000 * scale)
    return [gif_canvas(folder / "canvas.gif", g, g), png_canvas(folder / "canvas-rgba.png", p, p, "RGBA"),
            png_canvas(folder / "canvas-palette.png", p, p, "P"), png_canvas(folder / "canvas-grey16.png", p, p, "I;16")]


def peak_run(work: Path, *argv: str, timeout: float = 300) -> tuple[Ran, int]:
    """``python -m engine ARGV`` in a subprocess; -> (its result, its peak resident memory in bytes).
    The peak is measured by a wrapper process of its own (ru_maxrss of its only child)."""
    wrapper = ("import resource, subprocess, sys\n"
               "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
               "sys.stdout.write(p.stdout); sys.stderr.write(p.stderr)\n"
               "sys.stderr.write('\\nPEAK %d\\n' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
               "sys.exit(p.returncode)\n")
    try:
        p = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "engine", *argv],
                           env=scratch_env(work), cwd=work, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"hung for more than {timeout:.0f} s: {' '.join(argv)}") from e
    err, _, peak = p.stderr.rpartition("\nPEAK ")
    return Ran(p.returncode, p.stdout, err), int(peak) * 1024  # Linux: ru_maxrss in kilobytes


def _queries(work: Path) -> None:
    folder = indexed_folder(work)
    attack = work / "attack"
    attack.mkdir()
    for query in (gif_canvas(attack / "canvas.gif"), png_canvas(attack / "palette.png", kind="P"),
                  png_canvas(attack / "rgba.png")):
        r, peak = peak_run(work, "search", str(query), "--collection", str(folder), *SMALL)
        no_traceback(r)
        assert peak <= QUERY_LIMIT, f"{query.name} as a query peaked at {peak / GB:.2f} GB"
        assert r.rc == 0 or "too large to decode" in r.err, r.said[-800:]


def _index_four(work: Path) -> None:
    folder = work / "photos"
    make_photos(folder, 2)
    costly = costly_files(folder)
    r, peak = peak_run(work, "index", str(folder), *SMALL, "--json", timeout=600)
    no_traceback(r)
    assert r.rc == 0, r.said[-1000:]
    out = json.loads(r.out)
    assert peak <= INDEX_LIMIT, f"index of 4 costly files and 2 photos peaked at {peak / GB:.2f} GB"
    skipped = {Path(s["path"]).name: s["reason"] for s in out["skipped"]}
    assert out["kept"] + len(skipped) == 6, out
    assert not {"photo_00.jpg", "photo_01.jpg"} & set(skipped), skipped
    for f in costly:
        assert f.name not in skipped or "too large to decode" in skipped[f.name], skipped


CASES = [
    Case("costly images", "as queries: a 35-byte GIF with a 15000x15000 canvas, 16000x16000 palette and RGBA "
         "PNGs (1 MB)", _queries, slow=True),
    Case("costly images", "index of four costly files and two photos", _index_four, slow=True),
]
