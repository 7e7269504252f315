"""Tampered graphs (issue 26 item 1): the graph file or its settings changed, with the manifest's sizes
and CRC-32 rewritten to match, as anyone who can copy a cache in could. `search` must neither crash
(nmslib segfaulted on 10 of 36 such files) nor answer differently from exact search (20 of 36 gave
wrong results with rc 0); a refusal must name its fix; the next `index` repairs what it can."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

from . import SMALL, Case, indexed_folder, make_photos, no_traceback, run_cli

K = ("--k", "3")


def _state(work: Path) -> Path:
    """The state folder whose manifest names a graph (the descriptor `index` built one for)."""
    for m in sorted((work / "cache").rglob("manifest.json")):
        if json.loads(m.read_text()).get("graph"):
            return m.parent
    raise AssertionError("no collection with a graph after `index`")


def _search(work: Path, folder: Path, query: Path, *extra: str) -> list[str] | str:
    """Hit paths of `search --json` (a list), or the refusal's text when it refused with a fix."""
    r = run_cli(work, "search", str(query), "--collection", str(folder), *SMALL, *K, "--json", *extra)
    no_traceback(r)
    if r.rc != 0:
        assert "retrieval-explorer index" in r.err, f"a refusal without its fix (rc {r.rc}): {r.err[-800:]}"
        return r.err
    return [h["relpath"] for h in json.loads(r.out)["hits"]]


def _tamper(state: Path, key: str, data: bytes) -> None:
    """Replace the graph's ``key`` file ('graph' or 'ids') and rewrite its size and CRC-32 in the manifest."""
    m = json.loads((state / "manifest.json").read_text())
    entry = m["graph"][key]
    (state / entry["file"]).write_bytes(data)
    entry.update(bytes=len(data), crc32=zlib.crc32(data))
    (state / "manifest.json").write_text(json.dumps(m))


def _setup(work: Path) -> tuple[Path, Path, Path, list[str], dict[str, bytes], str]:
    folder = indexed_folder(work, n=8)
    query = make_photos(work / "query", 9)[8]  # not in the folder
    state = _state(work)
    truth = _search(work, folder, query, "--exact")
    assert isinstance(truth, list) and len(truth) == 3, truth
    m = json.loads((state / "manifest.json").read_text())
    saved = {k: (state / m["graph"][k]["file"]).read_bytes() for k in ("graph", "ids")}
    return folder, query, state, truth, saved, (state / "manifest.json").read_text()


def _answers_as_exact(work, folder, query, truth, what: str) -> None:
    got = _search(work, folder, query, "--ef", "10")
    assert isinstance(got, str) or got == truth, f"{what}: {got}, exact search says {truth}"


def _graph_attacks(work: Path) -> None:
    """All attacks on one indexed folder (each CLI call costs seconds): three tampered graphs, two sets
    of bad settings, each searched; then one `index` must repair without --rebuild."""
    import io

    from engine.index import _HNSW_HEADER

    folder, query, state, truth, saved, manifest = _setup(work)
    good = saved["graph"]
    head = _HNSW_HEADER.unpack_from(good)
    n, per_object, off0 = head[1], head[2], head[3]
    b = bytearray(good)  # every level-0 link overwritten with 0xFF
    for i in range(n):
        at = _HNSW_HEADER.size + i * per_object + off0 + 4
        b[at:at + 4 * 8] = b"\xff" * 32
    links_ff = bytes(b)
    buf = io.BytesIO()
    np.save(buf, np.load(io.BytesIO(saved["ids"]))[::-1].copy())
    rng = np.random.default_rng(26)
    b = bytearray(good)
    at = int(rng.integers(_HNSW_HEADER.size, len(b) - 4)) // 4 * 4
    b[at:at + 4] = b"\xff\xff\xff\x7f"
    attacks = {"links overwritten with 0xFF": ("graph", links_ff), "graph ids reversed": ("ids", buf.getvalue()),
               "a random word 0x7fffffff": ("graph", bytes(b))}
    for name, (key, data) in attacks.items():
        _tamper(state, key, data)
        _answers_as_exact(work, folder, query, truth, name)
        (state / "manifest.json").write_text(manifest)
        for k, v in saved.items():
            (state / json.loads(manifest)["graph"][k]["file"]).write_bytes(v)
    for name, change in (
        ("an unknown graph setting and ef 2**40", lambda m: m["graph"]["params"].update(bogus=1, ef=2**40)),
        ("an unknown index kind and setting", lambda m: (m.update(index_kind="annoy"),
                                                         m["index_params"].update(efSearch=5))),
    ):
        m = json.loads((state / "manifest.json").read_text())
        change(m)
        (state / "manifest.json").write_text(json.dumps(m))
        _answers_as_exact(work, folder, query, truth, name)
    _tamper(state, "graph", links_ff)  # and a damaged graph on top
    r = run_cli(work, "index", str(folder), *SMALL)  # repairs without --rebuild
    no_traceback(r)
    assert r.rc == 0, f"`index` failed: {r.said[-800:]}"
    after = json.loads((state / "manifest.json").read_text())
    assert after["index_kind"] in ("hnsw", "exact") and "efSearch" not in after["index_params"], \
        f"`index` left {after['index_kind']} {after['index_params']}"
    assert after.get("graph") and "bogus" not in after["graph"]["params"] \
        and after["graph"]["params"].get("ef", 1) < 2**31, f"`index` left the graph {after.get('graph')}"
    _answers_as_exact(work, folder, query, truth, "after `index`")


CASES = [
    Case("tampered graph", "links 0xFF, ids reversed, a random word, bad settings (CRC rewritten); index repairs",
         _graph_attacks, slow=True),
]
