"""engine.index: exact and HNSW indexes against brute-force loops, removal (the graph's persistence and
damage are tested through collections: tests/test_collection.py)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.index import ExactIndex, HnswIndex, make_index


def _clustered(n: int, dim: int = 16, clusters: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, dim))
    return x.astype(np.float32)


def _brute(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int, metric: str):
    """A plain Python loop: per query, score every vector, sort, take k."""
    out_ids, out_s = [], []
    for qv in q:
        scored = []
        for xv, i in zip(x, ids, strict=True):
            if metric == "cosine":
                s = float(np.dot(qv / np.linalg.norm(qv), xv / np.linalg.norm(xv)))
            else:
                s = -float(np.linalg.norm(qv - xv))
            scored.append((-s, int(i), s))
        scored.sort()
        out_ids.append([t[1] for t in scored[:k]])
        out_s.append([t[2] for t in scored[:k]])
    return np.array(out_ids), np.array(out_s, np.float32)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_exact_matches_brute_force_loop(metric):
    x = _clustered(300, seed=1)
    ids = np.arange(1000, 1300)
    q = _clustered(7, seed=2)
    idx = make_index("exact", metric, dim=16, block_size=64)  # several blocks
    idx.add(x, ids)
    got_ids, got_s = idx.query(q, 10)
    want_ids, want_s = _brute(x, ids, q, 10, metric)
    assert got_ids.dtype == np.int64 and got_s.dtype == np.float32
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_s, want_s, atol=1e-4)
    assert np.all(np.diff(got_s, axis=1) <= 0)  # best first


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_hnsw_equals_exact_on_small_data(metric):
    x = _clustered(500, seed=3)
    ids = np.arange(500) * 3 + 7
    q = _clustered(20, seed=4)
    ex, hn = make_index("exact", metric, dim=16), make_index("hnsw", metric, dim=16, ef=200)
    ex.add(x, ids)
    hn.add(x, ids)
    e_ids, e_s = ex.query(q, 10)
    h_ids, h_s = hn.query(q, 10)
    assert hn.rebuilds == 1 and hn.pending == 0  # answered by the graph, not by the pending exact part
    np.testing.assert_array_equal(h_ids, e_ids)
    np.testing.assert_allclose(h_s, e_s, atol=1e-5)


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_empty_index_and_k_larger_than_len(kind):
    idx = make_index(kind, "cosine", dim=4)
    ids, s = idx.query(np.ones((3, 4)), 5)
    assert ids.shape == (3, 0) and s.shape == (3, 0) and len(idx) == 0
    idx.add(np.eye(4)[:2], np.array([5, 6]))
    ids, s = idx.query(np.array([1.0, 0.1, 0, 0]), 10)  # a single (D,) query works too
    assert ids.shape == (1, 2) and ids[0].tolist() == [5, 6]
    idx.remove([5, 6])
    assert len(idx) == 0 and idx.query(np.ones(4), 3)[0].shape == (1, 0)


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_remove_filters_results(kind):
    x = _clustered(200, seed=5)
    ids = np.arange(200)
    idx = make_index(kind, "cosine", dim=16, **({"ef": 200, "rebuild_share": 1.0} if kind == "hnsw" else {}))
    idx.add(x, ids)
    q = x[:5]
    first, _ = idx.query(q, 1)
    assert first[:, 0].tolist() == [0, 1, 2, 3, 4]  # each finds itself
    removed = np.arange(0, 150)  # most of the graph: forces over-fetching past the tombstones
    idx.remove(removed)
    assert len(idx) == 50
    got, _ = idx.query(q, 10)
    assert not np.isin(got, removed).any()
    keep = np.arange(150, 200)
    want, _ = _brute(x[keep], keep, q, 10, "cosine")
    np.testing.assert_array_equal(got, want)
    with pytest.raises(KeyError):
        idx.remove([3])


def test_hnsw_incremental_add_is_found_without_rebuild_and_rebuilds_past_threshold():
    x = _clustered(300, seed=6)
    idx = HnswIndex(16, "cosine", ef=200, rebuild_min=50, rebuild_share=0.2)
    idx.add(x[:200], np.arange(200))
    idx.query(x[:1], 1)
    assert idx.rebuilds == 1 and idx.pending == 0
    idx.add(x[200:240], np.arange(200, 240))  # 40 pending: below max(50, 40)
    got, _ = idx.query(x[200:240], 1)
    assert got[:, 0].tolist() == list(range(200, 240)) and idx.rebuilds == 1 and idx.pending == 40
    idx.add(x[240:300], np.arange(240, 300))  # 100 pending > 50: rebuilt lazily at the next query
    got, _ = idx.query(x[240:300], 1)
    assert got[:, 0].tolist() == list(range(240, 300)) and idx.rebuilds == 2 and idx.pending == 0
    # an id removed (tombstoned) may be added again with a new vector
    idx.remove([5])
    idx.add(x[7:8], np.array([5]))
    got, _ = idx.query(x[7:8], 2)
    assert set(got[0].tolist()) == {5, 7}


def test_bad_arguments_have_clear_messages():
    with pytest.raises(ValueError, match="valid kinds: hnsw, exact"):
        make_index("annoy", dim=4)
    with pytest.raises(ValueError, match="valid metrics: cosine, l2"):
        make_index("exact", "dot", dim=4)
    idx = ExactIndex(4)
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        idx.add(np.ones((2, 5)), [1, 2])
    with pytest.raises(ValueError, match="unique"):
        idx.add(np.ones((2, 4)), [1, 1])
    idx.add(np.ones((1, 4)), [1])
    with pytest.raises(ValueError, match="already"):
        idx.add(np.ones((1, 4)), [1])
    with pytest.raises(ValueError, match="NaN"):
        idx.query(np.full(4, np.nan), 1)
    with pytest.raises(ValueError, match="ef"):
        HnswIndex(4).ef = 0


def test_hnsw_ef_is_settable():
    idx = HnswIndex(8, ef=30)
    idx.add(_clustered(40, 8), np.arange(40))
    idx.query(np.ones(8), 3)
    idx.ef = 77
    assert idx.ef == 77 and idx.query(np.ones(8), 3)[0].shape == (1, 3)


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_many_small_additions_keep_every_row_and_still_refuse_a_known_id(kind):
    # rows added batch by batch (as a collection fed by workers adds them) grow a buffer instead of
    # copying every row each time; what is stored and found is the same as before
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1000, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = make_index(kind, "cosine", dim=8)
    for a in range(0, 1000, 7):
        index.add(x[a:a + 7], np.arange(a, min(a + 7, 1000)))
    assert len(index) == 1000 and sorted(index.ids().tolist()) == list(range(1000))
    found, _ = index.query(x[::100], 1)
    assert found[:, 0].tolist() == list(range(0, 1000, 100))
    with pytest.raises(ValueError, match="already in the index"):
        index.add(x[:1], np.array([500]))
    index.remove(np.array([500]))
    index.add(x[500:501], np.array([500]))  # an id below the highest, free again
    assert len(index) == 1000


# --- a saved graph checked before nmslib reads it (issue 26 item 1) -------------------------------------
def _saved_graph(tmp_path, n: int = 300, dim: int = 16, seed: int = 5):
    """A graph written by save_graph -> (info, x (n, dim) normalised, ids)."""
    x = _clustered(n, dim, seed=seed)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64) * 2
    idx = HnswIndex(dim, M=8, ef_construction=50)
    idx.add(x, ids, normalised=True)
    idx.rebuild()
    return idx.save_graph(tmp_path, "g"), x, ids


def _restore(tmp_path, info, x, ids):
    pos = {int(i): j for j, i in enumerate(ids)}
    return HnswIndex.restore(tmp_path, info, dim=x.shape[1], metric="cosine",
                             vectors_of=lambda g: x[[pos[int(i)] for i in g]], live_ids=ids, live_vectors=x,
                             normalised=True)


def _rewrite(tmp_path, info, data: bytes) -> dict:
    """The graph file replaced by ``data``, its size and CRC-32 rewritten in ``info`` (as an attacker would)."""
    import copy
    import zlib

    (tmp_path / info["graph"]["file"]).write_bytes(data)
    info = copy.deepcopy(info)
    info["graph"].update(bytes=len(data), crc32=zlib.crc32(data))
    return info


def test_a_saved_graph_restores_without_its_data_and_answers_as_before(tmp_path):
    info, x, ids = _saved_graph(tmp_path)
    restored = _restore(tmp_path, info, x, ids)
    fresh = HnswIndex(16, M=8, ef_construction=50)
    fresh.add(x, ids, normalised=True)
    got, want = restored.query(x[:20], 5)[0], fresh.query(x[:20], 5)[0]
    assert (got[:, 0] == ids[:20]).all() and np.mean(got == want) > 0.95


def test_tampered_graph_files_are_refused_by_their_structure(tmp_path):
    import struct

    from engine.index import _HNSW_HEADER, IndexCorruptError

    info, x, ids = _saved_graph(tmp_path)
    good = (tmp_path / info["graph"]["file"]).read_bytes()
    head = list(_HNSW_HEADER.unpack_from(good))
    per_object, off0 = head[2], head[3]
    level0 = _HNSW_HEADER.size

    def patched(offset: int, fmt: str, value) -> bytes:
        b = bytearray(good)
        struct.pack_into(fmt, b, offset, value)
        return bytes(b)

    attacks = {
        "count": (patched(4, "<I", 299), "elements"),
        "entry point": (patched(36, "<i", 10**6), "entry point"),
        "max level": (patched(32, "<i", 70), "max level"),
        "link overwritten with 0xFF": (patched(level0 + 7 * per_object + off0 + 4, "<i", -1), "neighbour id"),
        "link count": (patched(level0 + off0, "<i", 10**4), "link count"),
        "neighbour = count": (patched(level0 + 3 * per_object + off0 + 4, "<i", 300), "neighbour id"),
        "object id": (patched(level0 + 5 * per_object, "<i", 6), "ids"),
        "truncated": (good[:-4], "bytes|end after"),
        "extended": (good + b"\0" * 8, "bytes"),
        "header only": (good[:40], "header"),
        "NaN vector": (patched(level0 + 9 * per_object + 16, "<f", float("nan")), "NaN"),
    }
    other, _, _ = _saved_graph(tmp_path / "other", seed=9) if (tmp_path / "other").mkdir() is None else (None,) * 3
    attacks["another graph of the same shape"] = ((tmp_path / "other" / other["graph"]["file"]).read_bytes(),
                                                  "not the stored ones")
    for name, (data, says) in attacks.items():
        with pytest.raises(IndexCorruptError, match=says):
            _restore(tmp_path, _rewrite(tmp_path, info, data), x, ids)
        assert name


_LOAD_EACH = r"""
import sys, numpy as np
from engine.index import HnswIndex, IndexCorruptError
x = np.load(sys.argv[1]); ids = np.arange(len(x)) * 2
pos = {int(i): j for j, i in enumerate(ids)}
import json
infos = json.load(open(sys.argv[2]))
accepted = 0
for info in infos:
    try:
        idx = HnswIndex.restore(sys.argv[3], info, dim=x.shape[1], metric="cosine",
                                vectors_of=lambda g: x[[pos[int(i)] for i in g]], live_ids=ids,
                                live_vectors=x, normalised=True)
    except IndexCorruptError:
        continue
    idx.query(x[:50], 10, ef=10); idx.query(x[:5], 10, ef=200)
    accepted += 1
print("accepted", accepted)
"""


def test_random_byte_changes_never_crash_a_process(tmp_path):
    # every random change is either refused (IndexCorruptError) or loaded and searched; all of it in one
    # child process, so that a crash of nmslib (a signal) fails this test instead of killing pytest
    import json
    import os
    import subprocess
    import sys
    import zlib

    info, x, ids = _saved_graph(tmp_path)
    good = (tmp_path / info["graph"]["file"]).read_bytes()
    rng = np.random.default_rng(26)
    infos = []
    for t in range(120):
        b = bytearray(good)
        kind = t % 3
        at = int(rng.integers(0, len(b) - 4))
        if kind == 0:  # one byte
            b[at] = int(rng.integers(0, 256))
        elif kind == 1:  # one aligned word, 0xFF.. or a random id-sized value
            at -= at % 4
            b[at:at + 4] = (b"\xff" * 4) if rng.random() < 0.5 else int(rng.integers(0, 2**31)).to_bytes(4, "little")
        else:  # a few bytes in the header or the links' tail
            at = int(rng.integers(0, 68)) if rng.random() < 0.5 else int(rng.integers(len(b) - 400, len(b) - 4))
            b[at:at + 2] = rng.integers(0, 256, 2).astype(np.uint8).tobytes()
        name = f"g{t:03d}.bin"
        (tmp_path / name).write_bytes(bytes(b))
        infos.append({**info, "graph": {"file": name, "bytes": len(b), "crc32": zlib.crc32(bytes(b))}})
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "infos.json").write_text(json.dumps(infos))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(__import__("pathlib").Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", _LOAD_EACH, str(tmp_path / "x.npy"), str(tmp_path / "infos.json"),
                        str(tmp_path)], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    accepted = int(r.stdout.split()[-1])
    assert accepted < 120  # most changes are caught; the rest (a label, a spare field, a valid link) load


def test_unknown_or_absurd_graph_settings_are_refused_as_a_damaged_index(tmp_path):
    from engine.index import IndexCorruptError, IndexSettingsError

    info, x, ids = _saved_graph(tmp_path)
    for params in ({**info["params"], "bogus": 1}, {**info["params"], "ef": 2**40}, {**info["params"], "M": "16"},
                   {**info["params"], "rebuild_share": float("nan")}, ["M", 16], None):
        with pytest.raises(IndexCorruptError, match="HNSW|ef|M|rebuild_share"):
            _restore(tmp_path, {**info, "params": params}, x, ids)
    with pytest.raises(IndexCorruptError, match="missing or truncated"):
        _restore(tmp_path, {**info, "graph": {"file": "../g.bin", "bytes": 1, "crc32": 0}}, x, ids)
    for kind, params in (("annoy", {}), ("hnsw", {"efSearch": 10}), ("hnsw", {"ef": 2**40}), ("exact", {"M": 4}),
                         (["hnsw"], {})):
        with pytest.raises(IndexSettingsError):
            make_index(kind, dim=4, **params)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at most"):  # a caller's mistake is a ValueError too
        HnswIndex(4, ef=2**40)


def test_a_collection_with_bad_index_settings_searches_and_its_next_commit_repairs_them(tmp_path):
    import json

    from engine.collection import Collection, _has_uncommitted
    from engine.vocabulary import ModelSpec

    spec = ModelSpec("synthetic", "random", "spoc")
    (tmp_path / "images").mkdir()
    x = _clustered(200, 16, seed=11)
    names = [f"img/{i:04d}.jpg" for i in range(200)]
    c = Collection.open(tmp_path / "images", model_spec=spec, cache_dir=tmp_path / "cache")
    c._append(names, x, [], {p: (1000, 1) for p in names})
    c.commit(final=True)
    want = [h.relpath for h in c.search(x[3])]
    manifest = c.state_dir / "manifest.json"
    for change in (lambda m: m.update(index_kind="annoy"), lambda m: m["index_params"].update(efSearch=5),
                   lambda m: m["index_params"].update(ef=2**40), lambda m: m["graph"]["params"].update(M=10**6)):
        m = json.loads(manifest.read_text())
        change(m)
        manifest.write_text(json.dumps(m))
        c = Collection.open(tmp_path / "images", model_spec=spec, cache_dir=tmp_path / "cache")
        assert [h.relpath for h in c.search(x[3])] == want
        assert _has_uncommitted(c)  # so `index` commits, with valid settings and a graph
        c.commit(final=True)
        m = json.loads(manifest.read_text())
        assert m["index_kind"] == "hnsw" and set(m["index_params"]) <= {"threads"} | set(m["graph"]["params"])
        assert m["graph"]["params"]["M"] <= 512 and m["graph"]["params"].get("ef", 1) < 2**31


def test_the_query_ef_follows_the_graph_size_unless_set():
    """default_ef: 100 up to 100,000 points, then x3 per x10 (300 at 1M, where 100 lost recall); an index
    without an ef of its own follows it (and saves none), one with an ef keeps it."""
    from engine.index import DEFAULT_EF, EF_GROWS_FROM, default_ef

    assert default_ef(10) == default_ef(EF_GROWS_FROM) == DEFAULT_EF
    assert default_ef(1_000_000) == 300 and default_ef(300_000) < 300 < default_ef(3_000_000)
    assert default_ef(10**12) == 100_000  # within HNSW_LIMITS
    idx = HnswIndex(8)
    idx.build(np.random.default_rng(0).normal(size=(50, 8)), np.arange(50))
    assert idx.ef == DEFAULT_EF and "ef" not in idx._params()
    idx._bids = np.arange(1_000_000)  # the rule reads the graph's size
    assert idx.ef == 300
    assert HnswIndex(8, ef=30).ef == 30 and HnswIndex(8, ef=30)._params()["ef"] == 30
