"""Campaign cases of the collection's state folder (issue 26, items 1-4, 6, 7 and 10): what `search`,
`index`, `map` and `duplicates` trust in a cache.

The collections here are written in-process with stand-in vectors under the case's scratch config (its
own installation secret), so that no network runs: `search` queries an indexed image (its stored row)
and `index --descriptor gem` has nothing to extract. The commands themselves run as subprocesses (a crash
by signal or a hang fails the case without taking pytest down). Several attacks share one folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np

from . import SMALL, Case, Ran, make_photos, no_traceback, run_cli, scratch_env

#: words from a library that must never reach the user
RAW = ("Check failed", "MemoryError", "Unable to allocate", "unexpected keyword", "unexpected TypeError",
       "basic_ios", "requested and")


@contextlib.contextmanager
def _installation(work: Path):
    """In this process: the scratch tree's config folder (so the secret is the subprocesses' one)."""
    old = os.environ.get("RETRIEVAL_EXPLORER_CONFIG")
    os.environ["RETRIEVAL_EXPLORER_CONFIG"] = str(work / "home" / ".config" / "retrieval-explorer")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("RETRIEVAL_EXPLORER_CONFIG", None)
        else:
            os.environ["RETRIEVAL_EXPLORER_CONFIG"] = old


def _spec(folder: Path, descriptor: str = "gem"):
    from engine.cli import build_parser
    from engine.cli.index_cmd import spec_from_args

    return spec_from_args(build_parser().parse_args(["index", str(folder), *SMALL, "--descriptor", descriptor]))


def _crafted(work: Path, name: str = "photos", n: int = 12, descriptor: str = "gem", seed: int = 0):
    """A folder of ``n`` photos and its collection (``descriptor``), written as `index` writes it but with
    clustered stand-in vectors (4 groups): returns (folder, state folder, exact ranking of photo_00)."""
    from engine.collection import Collection

    folder = work / name
    if not folder.exists():  # a second descriptor of the same folder: the photos as they are (same mtimes)
        make_photos(folder, n)
    scratch_env(work)
    with _installation(work):
        c = Collection.open(folder, model_spec=_spec(folder, descriptor), cache_dir=work / "cache")
        current = c._scan_stats()
        changes = c._diff(current)
        c._begin(current, changes)
        paths = sorted(changes.added)
        rng = np.random.default_rng(seed)
        centres = rng.normal(size=(4, 16))
        vecs = (centres[np.arange(n) % 4] + 0.3 * rng.normal(size=(n, 16))).astype(np.float32)
        c._append(paths, vecs, [], current)
        c.commit()
        assert c._graph_info is not None
        v = c.vectors
        order = np.argsort(-(v @ v[c.relpaths.index("photo_00.jpg")]), kind="stable")
        truth = [c.relpaths[i] for i in order]
    return folder, c.state_dir, truth


def _search(work: Path, folder: Path, *extra: str) -> Ran:
    return run_cli(work, "search", str(folder / "photo_00.jpg"), "--collection", str(folder), *SMALL, "--k", "12",
                   "--json", *extra, timeout=240)


def _clean(r: Ran) -> None:
    no_traceback(r)
    for raw in RAW:
        assert raw not in r.said, f"a library's words reached the user ({raw}): {r.said[-600:]}"


def _served_right(r: Ran, truth: list[str]) -> None:
    """rc 0 with the exact ranking (scores tie-free by construction), or a refusal naming the fix."""
    _clean(r)
    if r.rc != 0:
        assert "--rebuild" in r.err or "retrieval-explorer index" in r.err, r.err[-600:]
        return
    got = [h["relpath"] for h in json.loads(r.out)["hits"]]
    assert got == truth, f"wrong results at rc 0: {got[:5]} instead of {truth[:5]}"


def _manifest(state: Path) -> dict:
    return json.loads((state / "manifest.json").read_text())


def _save_manifest(state: Path, m: dict) -> None:
    (state / "manifest.json").write_text(json.dumps(m))


def _redescribe(entry: dict, path: Path) -> None:
    """What an attacker does after changing a file: size, CRC-32 and SHA-256 recomputed in the manifest."""
    data = path.read_bytes()
    entry.update(bytes=len(data), crc32=zlib.crc32(data))
    if "sha256" in entry:
        entry["sha256"] = hashlib.sha256(data).hexdigest()


def _edit_paths(state: Path, seg: dict, edit) -> None:
    """Change a segment's stored paths with ``edit(paths)`` (in place) and its manifest entry as an attacker
    would (sizes and checksums recomputed)."""
    p = state / seg["meta"]["file"]
    with np.load(p) as z:
        d = {k: z[k] for k in z.files}
    paths = d["paths"].tolist()
    edit(paths)
    d["paths"] = np.array(paths)
    with open(p, "wb") as fh:
        np.savez(fh, **d)
    _redescribe(seg["meta"], p)


@contextlib.contextmanager
def _restored(state: Path):
    """Put the state folder back as it was after one attack."""
    keep = state.with_name(state.name + ".orig")
    shutil.copytree(state, keep, symlinks=True)
    try:
        yield
    finally:
        shutil.rmtree(state, ignore_errors=True)
        if state.exists() or state.is_symlink():
            state.unlink()
        keep.rename(state)


# --- item 1 -------------------------------------------------------------------------------------------
def _tampered_graph(work: Path) -> None:
    folder, state, truth = _crafted(work)
    _, other_state, _ = _crafted(work, descriptor="mac", seed=1)  # another descriptor's graph, same folder
    m0 = _manifest(state)
    gname, iname = m0["graph"]["graph"]["file"], m0["graph"]["ids"]["file"]

    def links_ff(data: bytes) -> bytes:
        return data[: len(data) // 3] + b"\xff" * (len(data) - len(data) // 3)

    def flips(seed: int):
        def f(data: bytes) -> bytes:
            b = bytearray(data)
            for i in np.random.default_rng(seed).integers(0, len(b), 24):
                b[i] ^= 0xFF
            return bytes(b)
        return f

    attacks = [("graph", links_ff), ("graph", flips(1)), ("graph", flips(2)), ("graph", flips(3)),
               ("ids", lambda d: None), ("graph", lambda d: None)]
    for k, (role, change) in enumerate(attacks):
        with _restored(state):
            m = _manifest(state)
            target = state / (gname if role == "graph" else iname)
            if role == "ids" and k == 4:  # reversed ids
                np.save(target, np.load(target)[::-1].copy())
            elif k == 5:  # the other descriptor's graph in its place
                shutil.copyfile(other_state / _manifest(other_state)["graph"]["graph"]["file"], target)
            else:
                target.write_bytes(change(target.read_bytes()))
            _redescribe(m["graph"][role], target)
            _save_manifest(state, m)
            for extra in ((), ("--ef", "10")):
                r = _search(work, folder, *extra)
                _served_right(r, truth)
                assert r.rc == 0 and "index" in r.err, f"no line says the graph is not used: {r.err[-400:]}"
    # the first plain `index` repairs it: a graph again, no note any more
    m = _manifest(state)
    target = state / gname
    target.write_bytes(links_ff(target.read_bytes()))
    _redescribe(m["graph"]["graph"], target)
    _save_manifest(state, m)
    r = run_cli(work, "index", str(folder), *SMALL, "--descriptor", "gem")
    _clean(r)
    assert r.rc == 0 and "repaired" in r.out, r.said[-600:]
    r = _search(work, folder, "--ef", "10")
    _served_right(r, truth)
    assert r.rc == 0 and "WARNING" not in r.err and _manifest(state)["graph"], r.err[-400:]


# --- item 2 -------------------------------------------------------------------------------------------
def _from_elsewhere(work: Path) -> None:
    folder, state, truth = _crafted(work)
    other, other_state, _ = _crafted(work, name="elsewhere", n=8, seed=3)
    with _restored(state):  # another folder's collection copied in (this installation's MACs)
        shutil.rmtree(state)
        shutil.copytree(other_state, state)
        r = _search(work, folder)
        _clean(r)
        assert r.rc != 0 and "another folder" in r.err and "--rebuild" in r.err, r.said[-600:]
        m = _manifest(state)  # ... with its folder name edited: the MAC says no
        m["folder"] = str(folder.resolve())
        _save_manifest(state, m)
        r = _search(work, folder)
        _clean(r)
        assert r.rc != 0 and "--rebuild" in r.err, r.said[-600:]
    for attack in ("nan", "inf", "duplicate"):
        with _restored(state):
            m = _manifest(state)
            seg = m["segments"][0]
            if attack in ("nan", "inf"):
                p = state / seg["vectors"]["file"]
                arr = np.load(p)
                arr[2, :] = np.nan if attack == "nan" else np.inf
                np.save(p, arr)
                _redescribe(seg["vectors"], p)
            else:
                _edit_paths(state, seg, lambda paths: paths.__setitem__(3, paths[0]))
            _save_manifest(state, m)
            r = _search(work, folder)
            _clean(r)
            assert r.rc != 0 and "--rebuild" in r.err, f"{attack}: {r.said[-600:]}"
    r = _search(work, folder)
    _served_right(r, truth)


# --- item 3 -------------------------------------------------------------------------------------------
def _outside(work: Path) -> None:
    folder, state, truth = _crafted(work)
    for signed in (True, False):
        for bad in ("../../../../etc/passwd", "/etc/hostname"):
            with _restored(state):
                m = _manifest(state)
                if not signed:  # as the previous version wrote it: no MAC at all
                    m.pop("mac")
                _edit_paths(state, m["segments"][0], lambda paths, bad=bad: paths.__setitem__(1, bad))
                _save_manifest(state, m)
                for argv in (("search", str(folder / "photo_00.jpg"), "--collection", str(folder)),
                             ("duplicates", str(folder), "--descriptor", "gem"),
                             ("map", str(folder), "--descriptor", "gem", "--csv", "-")):
                    r = run_cli(work, *argv, *SMALL, timeout=240)
                    _clean(r)
                    assert r.rc != 0 and "--rebuild" in r.err, f"{argv[0]} with {bad}: {r.said[-600:]}"
                    assert "etc" not in r.out, f"{argv[0]} listed {bad}: {r.out[-300:]}"


# --- item 4 -------------------------------------------------------------------------------------------
def _fifo_manifest(work: Path) -> None:
    folder, state, _ = _crafted(work)
    (state / "manifest.json").unlink()
    os.mkfifo(state / "manifest.json")
    for argv in (("search", str(folder / "photo_00.jpg"), "--collection", str(folder)),
                 ("index", str(folder), "--descriptor", "gem")):
        r = run_cli(work, *argv, *SMALL, timeout=240)
        _clean(r)
        assert r.rc != 0 and "not a regular file" in r.err and "--rebuild" in r.err, r.said[-600:]


def _rebuild_any_shape(work: Path) -> None:
    folder, state, _ = _crafted(work, n=4)

    def fifo():
        (state / "manifest.json").unlink()
        os.mkfifo(state / "manifest.json")

    def manifest_dir():
        (state / "manifest.json").unlink()
        (state / "manifest.json").mkdir()

    def state_file():
        shutil.rmtree(state)
        state.write_text("not a folder")

    def fifo_inside():
        os.mkfifo(state / "seg-000009-00000000.npy")

    for damage in (fifo, manifest_dir, state_file, fifo_inside):
        damage()
        r = run_cli(work, "index", str(folder), *SMALL, "--descriptor", "gem", "--rebuild", "--runtime", "torch",
                    timeout=240)
        _clean(r)
        assert r.rc == 0 and "moved aside" in r.err, f"{damage.__name__}: {r.said[-600:]}"
        r = _search(work, folder)
        _clean(r)
        assert r.rc == 0 and len(json.loads(r.out)["hits"]) == 4, f"{damage.__name__}: {r.said[-600:]}"


# --- item 6 -------------------------------------------------------------------------------------------
def _refusals(work: Path) -> None:
    folder, state, truth = _crafted(work)
    huge = [lambda m: m["segments"][0].update(rows=2 ** 50), lambda m: m.update(dim=2 ** 45)]
    for edit in huge:
        with _restored(state):
            m = _manifest(state)
            edit(m)
            _save_manifest(state, m)
            for argv in (("search", str(folder / "photo_00.jpg"), "--collection", str(folder)),
                         ("index", str(folder), "--descriptor", "gem")):
                r = run_cli(work, *argv, *SMALL, timeout=240)
                _clean(r)
                assert r.rc == 2 and "--rebuild" in r.err, r.said[-600:]
    odd = [lambda m: m["graph"]["params"].update(ef=2 ** 40), lambda m: m["graph"]["params"].update(colour=1),
           lambda m: m["index_params"].update(bogus=3), lambda m: m.update(index_kind="annoy")]
    for signed in (False, True):
        for edit in odd:
            m = _manifest(state)
            edit(m)
            if signed:  # as if this installation had written it (an other version's settings)
                with _installation(work):
                    from engine.collection import Collection

                    c = Collection(folder.resolve(), _spec(folder), state)
                    m = c._sign_manifest(m)
            _save_manifest(state, m)
            r = _search(work, folder)
            _served_right(r, truth)
            assert r.rc == 0 and "index" in r.err, r.said[-600:]
            r = run_cli(work, "index", str(folder), *SMALL, "--descriptor", "gem")  # repairs, no --rebuild
            _clean(r)
            assert r.rc == 0, r.said[-600:]
            r = _search(work, folder, "--ef", "10")
            _served_right(r, truth)
            assert r.rc == 0 and "WARNING" not in r.err, r.said[-600:]


# --- item 7 -------------------------------------------------------------------------------------------
_FULL = """
import errno, sys
import engine.atomic, engine.index, numpy
how = {how!r}
def fail(*a, **k):
    if how == "enospc":
        raise OSError(errno.ENOSPC, "No space left on device")
    if how == "edquot":
        raise OSError(errno.EDQUOT, "Disk quota exceeded")
    if how == "iostream":
        raise RuntimeError("basic_ios::clear: iostream error")
    raise OSError("12800 requested and 6080 written")
if how in ("enospc", "edquot"):
    engine.atomic.os.replace = fail  # the manifest's switch
elif how == "iostream":
    engine.index.HnswIndex.save_graph = fail  # nmslib's saveIndex
else:
    numpy.save = fail  # the graph ids' numpy write
from engine.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _disk_full(work: Path) -> None:
    folder, state, truth = _crafted(work)
    m0 = _manifest(state)
    for how in ("enospc", "edquot", "iostream", "short"):
        _save_manifest(state, dict(m0, mac="0" * 64))  # a manifest to repair: the next index must commit
        argv = ["index", str(folder), *SMALL, "--descriptor", "gem"]
        p = subprocess.run([sys.executable, "-c", _FULL.format(how=how), *argv], env=scratch_env(work),
                           cwd=work, capture_output=True, text=True, timeout=240)
        r = Ran(p.returncode, p.stdout, p.stderr)
        _clean(r)
        assert r.rc == 2 and "the disk is full" in r.err and str(state) in r.err, f"{how}: {r.said[-600:]}"
        assert "retrieval-explorer index" in r.err, f"{how}: no fix named: {r.err[-400:]}"
    _save_manifest(state, m0)
    _served_right(_search(work, folder), truth)


# --- item 10 ------------------------------------------------------------------------------------------
def _second_index(work: Path) -> None:
    from engine.collection import Collection

    folder, state, _ = _crafted(work)
    make_photos(folder / "more", 3)  # work for the second run, which must not start it
    with _installation(work):
        c = Collection.open(folder, model_spec=_spec(folder), cache_dir=work / "cache")
        with c.writing():
            t0 = time.monotonic()
            r = run_cli(work, "index", str(folder), *SMALL, "--descriptor", "gem", timeout=240)
            took = time.monotonic() - t0
    _clean(r)
    assert r.rc == 2 and f"process {os.getpid()}" in r.err and "retrieval-explorer index" in r.err, r.said[-600:]
    assert "extracting" not in r.err, f"it extracted before refusing: {r.err[-300:]}"
    assert took < 60, f"refused only after {took:.0f} s"


CASES = [
    Case("tampered graph", "graph bytes, ids, another descriptor's graph with CRCs rewritten; index repairs",
         _tampered_graph, slow=True),
    Case("collection from elsewhere", "another folder's state copied in; NaN, inf, duplicated paths",
         _from_elsewhere, slow=True),
    Case("reads outside the folder", "'../' and absolute paths in the meta, signed or not: search, map, duplicates",
         _outside, slow=True),
    Case("special files", "manifest.json a FIFO: search and index refuse without hanging", _fifo_manifest,
         slow=True),
    Case("special files", "index --rebuild recovers from a FIFO, a folder, a file, a FIFO inside",
         _rebuild_any_shape, slow=True),
    Case("refusals name their fix", "huge sizes refused; odd graph settings searched exactly, index repairs",
         _refusals, slow=True),
    Case("disk full", "ENOSPC, EDQUOT, nmslib's iostream error: the disk is full, with the fix", _disk_full,
         slow=True),
    Case("concurrent index", "a second index is refused at its start, naming the other process",
         _second_index),
]
