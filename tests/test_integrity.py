"""engine.integrity and what a collection trusts (issue 26): MACs keyed by the installation, tampered or
copied caches, special files in the state folder, sizes and settings from a manifest, a full disk, and a
second update refused at its start. In-process, with stand-in vectors (no network): fast."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest

from engine import integrity
from engine.atomic import DiskFullError, atomic_write_bytes, disk_full, read_regular
from engine.collection import Collection, CollectionBusyError, CollectionError
from engine.index import HnswIndex
from engine.search import SearchOptions
from engine.vocabulary import ModelSpec

SPEC = ModelSpec(backbone="stand-in", weights="random", descriptor="gem", image_size=32)
DIM = 8


def _fill(c: Collection, seed: int = 0) -> None:
    """What an update does after extraction, with random vectors for every file (no network)."""
    current = c._scan_stats()
    changes = c._diff(current)
    c._begin(current, changes)
    todo = sorted(set(changes.added) | set(changes.changed))
    vecs = np.random.default_rng(seed).normal(size=(len(todo), DIM)).astype(np.float32)
    c._append(todo, vecs, [], current)
    c.commit()


def _folder(root: Path, n: int = 40) -> Path:
    for i in range(n):
        p = root / f"class_{i % 4}" / f"{i:03d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"not decoded here %d" % i)
    return root


def _open(folder: Path, cache: Path, **kw) -> Collection:
    return Collection.open(folder, model_spec=SPEC, cache_dir=cache, **kw)


@pytest.fixture
def made(tmp_path):
    folder, cache = _folder(tmp_path / "photos"), tmp_path / "cache"
    c = _open(folder, cache)
    _fill(c)
    assert c._graph_info is not None  # a graph was written
    return folder, cache, c


def _manifest(c: Collection) -> dict:
    return json.loads((c.state_dir / "manifest.json").read_text())


def _rewrite(c: Collection, m: dict) -> None:
    (c.state_dir / "manifest.json").write_text(json.dumps(m))


def _describe(entry: dict, path: Path) -> None:
    """What an attacker does after changing a file: its size, CRC-32 and SHA-256 recomputed."""
    data = path.read_bytes()
    entry.update(bytes=len(data), crc32=zlib.crc32(data), sha256=hashlib.sha256(data).hexdigest())


def _exact_top(c: Collection) -> list[str]:
    return [h[0].relpath for h in c.search_many(c.vectors, SearchOptions(k=1, exact=True))]


def _never_restored(monkeypatch) -> None:
    def refuse(*a, **k):
        raise AssertionError("nmslib was given a graph that is not authenticated")

    monkeypatch.setattr(HnswIndex, "restore", classmethod(refuse))


# --- the key -----------------------------------------------------------------------------------------
def test_the_key_is_made_once_private_and_outside_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRIEVAL_EXPLORER_CONFIG", str(tmp_path / "config"))
    k = integrity.key()
    path = integrity.key_path()
    assert path == tmp_path / "config" / "cache-key" and len(k) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    integrity._keys.clear()
    assert integrity.key() == k  # read back, not made again
    mac = integrity.sign({"b": 1, "a": [1, 2]})
    assert integrity.verify({"a": [1, 2], "b": 1}, mac) and not integrity.verify({"a": [1, 2], "b": 2}, mac)
    assert not integrity.verify({"b": 1}, None) and not integrity.verify({"b": 1}, "0" * 64)
    path.write_text("short\n")
    integrity._keys.clear()
    with pytest.raises(integrity.InstallationKeyError, match="damaged; delete it"):
        integrity.key()
    integrity._keys.clear()


# --- item 1: a tampered graph never reaches nmslib ------------------------------------------------------
def test_a_graph_changed_with_its_checksums_rewritten_is_searched_exactly_then_rebuilt(made, monkeypatch):
    folder, cache, c = made
    truth = _exact_top(c)
    m = _manifest(c)
    gpath = c.state_dir / m["graph"]["graph"]["file"]
    data = bytearray(gpath.read_bytes())
    data[len(data) // 2:] = b"\xff" * (len(data) - len(data) // 2)  # links overwritten with 0xFF
    gpath.write_bytes(bytes(data))
    _describe(m["graph"]["graph"], gpath)
    _rewrite(c, m)
    with monkeypatch.context() as mp:
        _never_restored(mp)
        c2 = _open(folder, cache)
        assert c2.repair and any("authentication" in n for n in c2.notes)
        hits = c2.search_many(c2.vectors, SearchOptions(k=1, ef=10))
        assert [h[0].relpath for h in hits] == truth
    # the next update repairs it without --rebuild: a fresh graph, a signed manifest, no note any more
    _fill(c2)
    c3 = _open(folder, cache)
    assert not c3.repair and not c3.notes
    assert [h[0].relpath for h in c3.search_many(c3.vectors, SearchOptions(k=1, ef=10))] == truth
    assert isinstance(c3.index, HnswIndex) and c3.index._graph is not None


def test_a_graph_file_swapped_behind_the_manifest_fails_its_digest(made, monkeypatch):
    folder, cache, c = made
    m = _manifest(c)
    ids = c.state_dir / m["graph"]["ids"]["file"]
    np.save(ids, np.load(ids)[::-1].copy())  # reversed ids, the manifest untouched
    c2 = _open(folder, cache)
    with monkeypatch.context() as mp:
        _never_restored(mp)
        hits = c2.search_many(c2.vectors, SearchOptions(k=1))
    assert [h[0].relpath for h in hits] == c2.relpaths and c2.repair
    assert any("damaged" in n and "rebuilt" in n for n in c2.notes)


def test_vectors_changed_with_their_checksums_rewritten_are_refused_naming_the_fix(made):
    folder, cache, c = made
    m = _manifest(c)
    vpath = c.state_dir / m["segments"][0]["vectors"]["file"]
    data = bytearray(vpath.read_bytes())
    data[-2:] = b"\x00\x3c"  # one value changed to 1.0
    vpath.write_bytes(bytes(data))
    _describe(m["segments"][0]["vectors"], vpath)
    _rewrite(c, m)
    with pytest.raises(CollectionError, match="changed outside this program.*index .* --rebuild"):
        _open(folder, cache)


# --- item 2: a collection from elsewhere ---------------------------------------------------------------
def test_a_collection_copied_from_another_folder_is_recognised(made, tmp_path):
    folder, cache, c = made
    other = _folder(tmp_path / "other", n=5)
    target = _open(other, cache).state_dir
    shutil.copytree(c.state_dir, target)
    with pytest.raises(CollectionError, match=f"another folder \\({folder}\\).*--rebuild"):
        _open(other, cache)
    # with the folder name edited to this one, the MACs fail: refused too, never served
    m = json.loads((target / "manifest.json").read_text())
    m["folder"] = str(other.resolve())
    (target / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CollectionError, match="changed outside this program"):
        _open(other, cache)
    fresh = _open(other, cache, rebuild=True)
    _fill(fresh)
    assert sorted(_open(other, cache).relpaths) == sorted(p.relative_to(other).as_posix()
                                                         for p in other.rglob("*.jpg"))


def test_a_collection_signed_by_another_installation_is_not_trusted(made, tmp_path, monkeypatch):
    folder, cache, c = made
    monkeypatch.setenv("RETRIEVAL_EXPLORER_CONFIG", str(tmp_path / "elsewhere"))
    with pytest.raises(CollectionError, match="changed outside this program.*--rebuild"):
        _open(folder, cache)


def _legacy(c: Collection, edit=None) -> dict:
    """The manifest as the previous version wrote it (no MACs, no SHA-256), after ``edit(manifest)``."""
    m = _manifest(c)
    m.pop("mac")
    for seg in m["segments"]:
        for role in ("meta", "vectors"):
            seg[role] = {k: seg[role][k] for k in ("file", "bytes", "crc32")}
    if m["graph"]:
        for role in ("graph", "ids"):
            m["graph"][role] = {k: m["graph"][role][k] for k in ("file", "bytes", "crc32")}
    if edit:
        edit(m)
    _rewrite(c, m)
    return m


def test_a_cache_of_the_previous_version_is_used_and_its_graph_rebuilt(made, monkeypatch):
    folder, cache, c = made
    truth = _exact_top(c)
    _legacy(c)
    with monkeypatch.context() as mp:
        _never_restored(mp)
        c2 = _open(folder, cache)
        assert any("earlier version" in n for n in c2.notes)
        assert [h[0].relpath for h in c2.search_many(c2.vectors, SearchOptions(k=1))] == truth
    _fill(c2)
    m = _manifest(c2)
    assert "mac" in m and all("sha256" in s["meta"] for s in m["segments"])
    assert not _open(folder, cache).notes


@pytest.mark.parametrize("attack, match", [
    ("nan", "NaN or an infinite"),
    ("inf", "NaN or an infinite"),
    ("duplicate", "twice"),
    ("parent", "leaves the folder"),
    ("absolute", "leaves the folder"),
    ("hidden", "hidden file"),
])
def test_unauthenticated_rows_are_checked_on_their_own(made, attack, match):
    """Even where no MAC speaks (a previous version's cache): finite vectors, unique paths inside the folder."""
    folder, cache, c = made
    m = _legacy(c)
    seg = m["segments"][0]
    if attack in ("nan", "inf"):
        vpath = c.state_dir / seg["vectors"]["file"]
        arr = np.load(vpath)
        arr[3, 1] = np.nan if attack == "nan" else np.inf
        np.save(vpath, arr)
        entry, path = seg["vectors"], vpath
    else:
        mpath = c.state_dir / seg["meta"]["file"]
        with np.load(mpath) as z:
            d = {k: z[k] for k in z.files}
        paths = d["paths"].tolist()
        paths[1] = {"duplicate": paths[0], "parent": "../../../../etc/passwd", "absolute": "/etc/hostname",
                    "hidden": "class_0/.ssh/id_rsa"}[attack]
        d["paths"] = np.array(paths)
        with open(mpath, "wb") as fh:
            np.savez(fh, **d)
        entry, path = seg["meta"], mpath
    data = path.read_bytes()
    entry.update(bytes=len(data), crc32=zlib.crc32(data))
    _rewrite(c, m)
    with pytest.raises(CollectionError, match=f"{match}.*--rebuild"):
        _open(folder, cache)


# --- item 6: sizes and settings a manifest claims ----------------------------------------------------------
@pytest.mark.parametrize("edit", [
    lambda m: m["segments"][0].update(rows=10 ** 15),
    lambda m: m.update(dim=2 ** 40),
    lambda m: m.update(next_id=2 ** 70),
])
def test_huge_sizes_are_refused_before_any_allocation(made, edit):
    folder, cache, c = made
    _legacy(c, edit)
    with pytest.raises(CollectionError, match="damaged.*--rebuild"):
        _open(folder, cache)


@pytest.mark.parametrize("edit, said", [
    (lambda m: m["graph"]["params"].update(ef=2 ** 40), "graph settings"),
    (lambda m: m["graph"]["params"].update(colour="blue"), "graph settings"),
    (lambda m: m["index_params"].update(unknown=1), "graph settings"),
    (lambda m: m.update(index_kind="faiss"), "unknown index kind"),
])
def test_unknown_settings_are_rebuilt_by_the_next_update(made, monkeypatch, edit, said):
    """Settings this program cannot use, even in a manifest that passes its MAC (written by another version
    of this installation): searched exactly, rebuilt with the defaults by the next update."""
    folder, cache, c = made
    m = _manifest(c)
    edit(m)
    _rewrite(c, c._sign_manifest(m))
    with monkeypatch.context() as mp:
        _never_restored(mp)
        c2 = _open(folder, cache)
        assert any(said in n for n in c2.notes), c2.notes
        assert [h[0].relpath for h in c2.search_many(c2.vectors, SearchOptions(k=1))] == c2.relpaths
    _fill(c2)
    c3 = _open(folder, cache)
    assert not c3.notes and c3.index_kind == "hnsw" and isinstance(c3.index, HnswIndex)


# --- item 4: special files ---------------------------------------------------------------------------------
def _within(seconds: float, fn):
    out: list = []
    t = threading.Thread(target=lambda: out.append(_catch(fn)), daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "hung on a special file"
    return out[0]


def _catch(fn):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - returned for the test to look at
        return exc


def test_a_fifo_never_hangs_and_rebuild_recovers_from_any_shape(made):
    folder, cache, c = made
    state = c.state_dir
    (state / "manifest.json").unlink()
    os.mkfifo(state / "manifest.json")
    got = _within(10, lambda: _open(folder, cache))
    assert isinstance(got, CollectionError) and "not a regular file" in str(got) and "--rebuild" in str(got)
    got = _within(10, lambda: read_regular(state / "manifest.json"))
    assert isinstance(got, OSError) and "not a regular file" in str(got)

    def rebuilt() -> Collection:
        fresh = _within(10, lambda: _open(folder, cache, rebuild=True))
        assert isinstance(fresh, Collection), fresh
        _fill(fresh)
        assert len(_open(folder, cache)) == 40
        return fresh

    assert any("moved aside" in n for n in rebuilt().notes)
    shutil.rmtree(state / "manifest.json", ignore_errors=True)
    (state / "manifest.json").unlink()
    (state / "manifest.json").mkdir()  # a manifest that is a folder
    rebuilt()
    shutil.rmtree(state)
    state.write_text("a file where the state folder belongs")
    got = _within(10, lambda: _open(folder, cache))
    assert isinstance(got, CollectionError) and "--rebuild" in str(got)
    rebuilt()
    os.mkfifo(state / "seg-000001-00000000.npy")  # a FIFO among the files
    rebuilt()
    os.unlink(state / ".lock")
    os.mkfifo(state / ".lock")
    rebuilt()
    assert len(list(state.parent.glob("*.damaged-*"))) == 5  # each damaged state kept aside
    shutil.rmtree(state.parent)
    state.parent.write_text("the folder's own directory replaced by a file")
    rebuilt()
    assert len(list(state.parent.parent.glob("*.damaged-*"))) == 1


# --- item 7: a full disk says so ------------------------------------------------------------------------
@pytest.mark.parametrize("where, error", [
    ("vectors", OSError("12800 requested and 6080 written")),
    ("graph", RuntimeError("basic_ios::clear: iostream error")),
    ("manifest", OSError(errno.ENOSPC, "No space left on device")),
    ("manifest", OSError(errno.EDQUOT, "Disk quota exceeded")),
])
def test_a_full_disk_always_says_so(made, monkeypatch, where, error):
    import engine.collection as mod

    folder, cache, c = made
    (folder / "class_0" / "new.jpg").write_bytes(b"new")

    def fail(*a, **k):
        raise error

    if where == "vectors":
        monkeypatch.setattr(mod.np, "save", fail)
    elif where == "graph":
        monkeypatch.setattr(HnswIndex, "save_graph", fail)
        c._rebuild_graph = True  # so that this commit writes a graph
    else:
        monkeypatch.setattr("engine.atomic.os.replace", fail)
    before = {p.name for p in c.state_dir.iterdir()}
    with pytest.raises(CollectionError, match=f"the disk is full: cannot write in {c.state_dir}.*free some space"
                       f".*index {folder}` again"):
        _fill(c)
    monkeypatch.undo()
    assert {p.name for p in c.state_dir.iterdir()} == before
    assert len(_open(folder, cache)) == 40  # the last commit is intact


def test_the_disk_full_mapping(tmp_path, monkeypatch):
    assert disk_full(ValueError("bad value"), tmp_path) is None
    assert disk_full(OSError(errno.EACCES, "Permission denied"), tmp_path) is None
    full = disk_full(OSError(errno.ENOSPC, "No space left on device"), tmp_path / "x.bin", fix="retry")
    assert isinstance(full, DiskFullError) and str(full).startswith(f"the disk is full: cannot write in {tmp_path}")

    def no_room(*a):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("engine.atomic.os.replace", no_room)
    with pytest.raises(DiskFullError, match="the disk is full"):
        atomic_write_bytes(tmp_path / "f.bin", b"data")
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_the_cli_says_the_disk_is_full_whatever_raised_it(monkeypatch, capsys):
    from engine import cli
    from engine.cli import index_cmd

    def full(args):
        raise RuntimeError("basic_ios::clear: iostream error")

    monkeypatch.setattr(index_cmd, "run_index", full)
    assert cli.main(["index", "."]) == 2
    err = capsys.readouterr().err
    assert "the disk is full" in err and "Traceback" not in err


# --- item 10: a second update is refused at its start --------------------------------------------------------
def test_a_second_update_is_refused_before_it_reads_anything(made):
    folder, cache, c = made
    (folder / "class_0" / "new.jpg").write_bytes(b"new")
    other = _open(folder, cache)
    with c.writing():
        with pytest.raises(CollectionBusyError, match=f"process {os.getpid()}.*index {folder}"):
            other.update(object())  # no model is ever asked for
    assert len(_open(folder, cache)) == 40  # nothing of the refused update was written
