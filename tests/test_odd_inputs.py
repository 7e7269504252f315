"""Two small inputs of issue 26, item 10: file names that are not UTF-8 in --json outputs (one rule,
engine.cli.common.json_ready), and PIL's "Corrupt EXIF data" warning never printed raw."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

from PIL import Image

from engine.cli.common import dumps_json, shown

REPO = Path(__file__).resolve().parents[1]


def test_undecodable_names_are_escaped_and_given_exactly_in_hex():
    raw = b"/photos/\xff\xfe caf\xc3\xa9.jpg"
    name = os.fsdecode(raw)
    text = dumps_json({"path": name, "hits": [{"path": name, "score": 0.5}], "notes": [f"left out {name}"],
                       "plain": "café"})
    text.encode("utf-8")  # valid UTF-8: no lone surrogate escapes
    assert "\\udc" not in text
    out = json.loads(text)
    assert out["path"] == "/photos/\\xff\\xfe café.jpg" == shown(name)
    assert bytes.fromhex(out["path_hex"]) == raw and bytes.fromhex(out["hits"][0]["path_hex"]) == raw
    assert out["notes"] == ["left out /photos/\\xff\\xfe café.jpg"] and out["plain"] == "café"
    assert "plain_hex" not in out


def corrupt_exif_jpeg(path) -> None:
    """A good 64 x 64 JPEG whose EXIF block claims 5 entries and holds 1 (PIL: "Corrupt EXIF data")."""
    ifd = struct.pack(">H", 5) + struct.pack(">HHII", 0x0112, 3, 1, 0x00060000)
    exif = b"Exif\x00\x00MM\x00\x2a" + struct.pack(">I", 8) + ifd
    Image.new("RGB", (64, 64), (200, 10, 10)).save(path, exif=exif, quality=90)


def test_a_jpeg_with_corrupt_exif_is_read_without_a_raw_warning(tmp_path):
    """In a fresh process (pytest resets warning filters set while collecting, so in-process the import-time
    filter of engine.images would not be what is tested)."""
    path = tmp_path / "bad_exif.jpg"
    corrupt_exif_jpeg(path)
    code = f"from engine.images import load_image; print(load_image({str(path)!r}).size)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0 and p.stdout.strip() == "(64, 64)", p.stderr
    assert p.stderr == "", p.stderr  # no "UserWarning: Corrupt EXIF data" on the terminal
