"""Issue 26, items 5, 8 and 10 as an attacker tries them: export targets that are not regular files, whitening
files and checkpoints that claim what they are not, a JPEG with corrupt EXIF and a file name that is not UTF-8.

Each case runs the real command line in a subprocess (a hang is a failed case, not a hung pytest)."""

from __future__ import annotations

import io
import json
import os
import stat
import struct
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np

from . import SMALL, Case, make_photos, no_traceback, run_cli, scratch_env

EXPORT, WHITENING, CHECKPOINT, NAMES = "export targets", "whitening files", "checkpoint configs", "odd names"
FEATURES = 1280  # efficientnet_lite0's feature size: what a GeM whitening of the default backbone takes


def _refused(r, *said: str) -> None:
    no_traceback(r)
    assert r.rc != 0, f"accepted (rc 0): {r.said[-600:]}"
    for text in said:
        assert text in r.err, f"{text!r} not in: {r.err[-800:]}"


def _still(path: Path, check, what: str) -> None:
    assert check(os.lstat(path).st_mode), f"{path} is no longer a {what}"


def private_device(work: Path, minor: int = 3) -> Path | None:
    """A character device to attack without risk to the machine: as root, a node of the kind of /dev/null
    (1, 3) or /dev/full (1, 7) made in the scratch folder, so that a program that still replaces devices
    replaces only that copy (a first run against the unfixed program as root did replace /dev/null);
    without root, /dev/null itself, which a user cannot replace. None when root cannot make a node."""
    if os.geteuid() != 0:
        return Path("/dev/null") if minor == 3 else Path("/dev/full")
    node = work / f"device-1-{minor}"
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    except OSError:
        return None
    return node


# --- item 5: export targets ------------------------------------------------------------------------------
def _indexed(work: Path, *extra: str) -> tuple[Path, object]:
    """The campaign's photos indexed with a patient time limit: on a machine shared by eight helpers (load
    20+) a first index, which exports the runtime into the scratch cache, took 107 s."""
    folder = work / "photos"
    if not folder.exists():
        make_photos(folder, 6)
    r = run_cli(work, "index", str(folder), *SMALL, *extra, timeout=400)
    no_traceback(r)
    assert r.rc == 0, r.said[-1000:]
    return folder, r


def _map_to_special_files(work: Path) -> None:
    folder, _ = _indexed(work)
    base = ("map", str(folder), *SMALL, "--method", "pca", "--csv")
    # a FIFO nobody reads: refused at once (not a hang), still a FIFO
    fifo = work / "map.csv"
    os.mkfifo(fifo)
    _refused(run_cli(work, *base, str(fifo), timeout=200), "nobody reads the FIFO")
    _still(fifo, stat.S_ISFIFO, "FIFO")
    # a FIFO with a reader: written through
    got: list[bytes] = []

    def read() -> None:
        with open(fifo, "rb") as fh:  # blocks until the writer opens it
            got.append(fh.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    r = run_cli(work, *base, str(fifo), timeout=200)
    reader.join(30)
    no_traceback(r)
    assert r.rc == 0, r.said[-600:]
    assert got and got[0].startswith(b"path,x,y,label\n") and got[0].count(b"\n") == 7, got
    _still(fifo, stat.S_ISFIFO, "FIFO")
    # a character device (a private /dev/null) and /dev/stdout: written through, never replaced
    null = private_device(work)
    if null is not None:
        r = run_cli(work, *base, str(null), timeout=200)
        no_traceback(r)
        assert r.rc == 0, r.said[-600:]
        _still(null, stat.S_ISCHR, "character device")
    r = run_cli(work, *base, "/dev/stdout", timeout=200)
    assert r.rc == 0 and r.out.startswith("path,x,y,label\n") and r.out.count("\n") == 7, r.said[-600:]
    # a folder: refused naming the fix, before any work
    _refused(run_cli(work, *base, str(work), timeout=200), "is a folder: give a file name inside it")


def _whiten_output_folder(work: Path) -> None:
    make_photos(work / "classes" / "a", 2)
    make_photos(work / "classes" / "b", 2)
    out = work / "out"
    out.mkdir()
    r = run_cli(work, "whiten", str(work / "classes"), "-o", str(out), "--method", "pca", "--dim", "all",
                "--weights", "random", *SMALL, timeout=200)
    _refused(r, "is a folder: give a file name inside it")
    broken = work / "w.npz"
    broken.symlink_to(work / "nowhere" / "w.npz")
    r = run_cli(work, "whiten", str(work / "classes"), "-o", str(broken), "--method", "pca", "--dim", "all",
                "--weights", "random", *SMALL, timeout=200)
    _refused(r, "does not exist: remove the link")
    assert broken.is_symlink() and not (work / "nowhere").exists()


def _window_exports(work: Path) -> None:
    """The window's exports (engine.export) in a small process of their own: a FIFO nobody reads refused
    (kept), a character device (a private /dev/null) written through, a folder refused."""
    fifo = work / "gallery.csv"
    os.mkfifo(fifo)
    null = private_device(work)
    targets = [str(fifo)] + ([str(null)] if null else []) + [str(work)]
    code = f"""
import os, stat
from engine.export import QueryGallery, GalleryHit, export_csv
g = [QueryGallery("q.jpg", [GalleryHit("a.jpg", 0.9, 1)])]
for target in {targets!r}:
    try:
        export_csv(g, target)
        print("written", target)
    except ValueError as exc:
        print("refused", target, exc)
    if not stat.S_ISFIFO(os.lstat({str(fifo)!r}).st_mode):
        break  # the FIFO was replaced: the program is not fixed, attack nothing more
"""
    p = subprocess.run([sys.executable, "-c", code], env=scratch_env(work), cwd=work, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-800:]
    lines = p.stdout.splitlines()
    assert lines[0].startswith("refused") and "nobody reads the FIFO" in lines[0], lines
    _still(fifo, stat.S_ISFIFO, "FIFO")
    if null:
        assert lines[1] == f"written {null}", lines
        _still(null, stat.S_ISCHR, "character device")
    assert lines[-1].startswith("refused") and "is a folder" in lines[-1], lines


# --- item 8: whitening files and checkpoints ----------------------------------------------------------------
def _save_whitening(path: Path, zero: bool = False, **meta) -> None:
    """A whitening file as the program writes it (set-up, in this process)."""
    from engine.whitening import save_whitening
    from models.whitening import PCAWhitening

    X = np.random.default_rng(0).standard_normal((300, FEATURES))  # noqa: N806
    w = PCAWhitening.fit(X, dim=32, shrinkage=0.1, meta=meta or None)
    if zero:
        w.projection[:] = 0
    save_whitening(w, path)


def _whitening_files(work: Path) -> None:
    photos = work / "photos"
    make_photos(photos, 3)
    gem = work / "gem64.npz"
    _save_whitening(gem, descriptor="gem", sizes=[64], backbone="efficientnet_lite0")
    r = run_cli(work, "index", str(photos), *SMALL, "--descriptor", "mac", "--whitening", str(gem), timeout=300)
    _refused(r, "was learned for GeM at 64", "cannot whiten MAC at 64", "retrieval-explorer whiten DIR")
    # (GeM at other sizes, 64+96, another dimension: tests/test_whitening_fit.py, in-process)
    zero = work / "zero.npz"
    _save_whitening(zero, zero=True, descriptor="gem", sizes=[64])
    r = run_cli(work, "index", str(photos), *SMALL, "--descriptor", "gem", "--whitening", str(zero), timeout=300)
    _refused(r, "all zeros", "learn it again")
    # a header claiming a (2**20, 2**20) projection: refused from the header, nothing allocated
    huge = work / "huge.npz"
    header = json.dumps({"format": "retrieval-explorer/pca-whitening", "version": 1,
                         "meta": {"descriptor": "gem", "sizes": [64]}})
    with zipfile.ZipFile(huge, "w") as z:
        for name, arr in (("header", np.array(header)), ("mean", np.zeros(FEATURES, np.float32))):
            buf = io.BytesIO()
            np.save(buf, arr)
            z.writestr(name + ".npy", buf.getvalue())
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False,
                                                   "shape": (1 << 20, 1 << 20)})
        z.writestr("projection.npy", buf.getvalue() + b"\0" * 64)
    r = run_cli(work, "index", str(photos), *SMALL, "--descriptor", "gem", "--whitening", str(huge), timeout=300)
    _refused(r, "claims shape", "learn it again")
    assert "MemoryError" not in r.said


def _checkpoint(path: Path, **config) -> None:
    """A checkpoint in the program's format whose config says ``config`` (set-up, in this process)."""
    import torch

    from models.embedding import CHECKPOINT_FORMAT, CHECKPOINT_VERSION

    cfg = {"backbone": "efficientnet_lite0", "pooling": "gem", "embedding_dim": 0, "image_size": 64, **config}
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": cfg, "model": {}}, path)


def _checkpoint_bounds(work: Path) -> None:
    photos = work / "photos"
    make_photos(photos, 2)
    attacks = {"huge_input.pt": ({"image_size": 10 ** 6}, "image_size is 1000000, outside 16..2048"),
               "huge_head.pt": ({"embedding_dim": 400_000}, "embedding_dim is 400000, outside 0..8192"),
               "self.pt": ({"backbone": str(work / "self.pt")}, "names another trained checkpoint as its backbone")}
    for name, (config, said) in attacks.items():
        _checkpoint(work / name, **config)
        r = run_cli(work, "index", str(photos), "--backbone", str(work / name), timeout=300)
        _refused(r, said, "train the model again")


# --- item 10: odd names and metadata ----------------------------------------------------------------------
def _corrupt_exif(path: Path) -> None:
    from PIL import Image

    ifd = struct.pack(">H", 5) + struct.pack(">HHII", 0x0112, 3, 1, 0x00060000)  # 5 entries claimed, 1 held
    exif = b"Exif\x00\x00MM\x00\x2a" + struct.pack(">I", 8) + ifd
    Image.new("RGB", (64, 64), (200, 10, 10)).save(path, exif=exif, quality=90)


def _odd_names_and_exif(work: Path) -> None:
    folder = work / "photos"
    make_photos(folder, 4)
    _corrupt_exif(folder / "bad_exif.jpg")
    odd = os.fsencode(folder) + b"/caf\xe9_\xff\xfe.jpg"  # Latin-1 bytes: not UTF-8
    os.rename(folder / "photo_03.jpg", odd)
    _, r = _indexed(work, "--json")
    assert "EXIF" not in r.err and "UserWarning" not in r.err, r.err[-800:]
    summary = json.loads(r.out)
    assert summary["total"] == 5 and not summary["unreadable"], summary
    assert "\\udc" not in r.out, "a lone surrogate escape in the JSON"
    r = run_cli(work, "search", os.fsdecode(odd), "--collection", str(folder), *SMALL, "--json", "--k", "5",
                timeout=300)
    no_traceback(r)
    assert r.rc == 0, r.said[-800:]
    assert "\\udc" not in r.out, "a lone surrogate escape in the JSON"
    out = json.loads(r.out)
    assert bytes.fromhex(out["query_hex"]) == odd and out["query"].endswith("caf\\xe9_\\xff\\xfe.jpg"), out
    top = out["hits"][0]
    assert bytes.fromhex(top["path_hex"]) == odd and top["score"] > 0.99, top


CASES = [
    Case(EXPORT, "map --csv to a FIFO (with and without a reader), a device, /dev/stdout, a folder",
         _map_to_special_files, slow=True),
    Case(EXPORT, "whiten -o a folder or a broken link: refused before any work", _whiten_output_folder),
    Case(EXPORT, "the window's exports to a FIFO nobody reads, a device, a folder", _window_exports),
    Case(WHITENING, "a GeM@64 whitening applied to MAC, an all-zero one, a header claiming 2^40 values",
         _whitening_files, slow=True),
    Case(CHECKPOINT, "image_size 10^6, embedding_dim 400000, itself as backbone", _checkpoint_bounds, slow=True),
    Case(NAMES, "a JPEG with corrupt EXIF and a name that is not UTF-8 (index and search --json)",
         _odd_names_and_exif, slow=True),
]
