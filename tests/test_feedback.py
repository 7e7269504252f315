"""Relevance feedback (engine.feedback), saved concepts (engine.concepts), `search --positive/--concept` and
a concept turned into a training split (issue 28)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.concepts import (
    Concept,
    ConceptError,
    check_name,
    concept_csv,
    list_concepts,
    load_concept,
    save_concept,
    training_split,
    write_training_split,
)
from engine.feedback import (
    FeedbackSettings,
    background_rows,
    feedback_weights,
    linear_scores,
    linear_svm,
    rerank,
    smooth_scores,
    top_rows,
)
from engine.vectors import l2n
from tests.test_cli_index import cli  # noqa: F401 - the in-process CLI with a stand-in model


def _vectors(n=300, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = l2n(rng.standard_normal((5, d)))
    labels = rng.integers(0, 5, n)
    return l2n(centres[labels] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)), labels


def test_svm_solves_its_objective():
    """The primal Newton solution satisfies the squared-hinge SVM's optimality condition
    w = sum_i 2 c_i max(0, 1 - y_i w.x_i) y_i x_i (balanced costs), and ranks its positives first."""
    v, labels = _vectors()
    y = np.where(labels == 2, 1.0, -1.0)
    c = 0.7
    w = linear_svm(v, y, c)
    n, npos = len(y), int((y > 0).sum())
    cost = np.where(y > 0, c * n / (2 * npos), c * n / (2 * (n - npos)))
    slack = np.maximum(0.0, 1 - y * (v @ w))
    assert np.allclose(w, (2 * cost * slack * y) @ v, atol=1e-6)
    s = v @ w  # no bias: the order matters, not the sign
    assert np.mean(s[y > 0][:, None] > s[y < 0][None, :]) > 0.85  # AUC (chance: 0.5)


def test_rerank_equals_direct_computation_on_stored_vectors():
    v, labels = _vectors()
    q, pos, neg = v[0], [1, 5, 9], [2, 3]
    s = FeedbackSettings()
    r = rerank(v, q, pos, neg, s, k=50, exclude=[0])
    bg = background_rows(len(v), pos + neg + [0], s.background, s.seed)
    assert not set(bg.tolist()) & {0, 1, 2, 3, 5, 9}
    w = feedback_weights(q, v[pos], v[neg], v[bg], s)
    direct = smooth_scores(v, v @ w, s.smooth_top, s.smooth_k, s.smooth_weight, s.smooth_steps)
    order = [i for i in np.argsort(-direct, kind="stable") if i != 0][:50]
    assert r.rows.tolist() == order and np.allclose(r.scores, direct[order], atol=1e-6)
    assert np.allclose(r.w, w)
    # float16 rows (as stored) score in blocks like a float32 matrix product
    assert np.allclose(linear_scores(v.astype(np.float16), w, block=7), v.astype(np.float16).astype(np.float32) @ w,
                       atol=1e-5)
    # marks help: the positives' class rises in the ranking
    before = (labels[top_rows(v @ q, 20, [0])] == labels[1]).mean()
    after = (labels[rerank(v, q, [i for i in range(1, 80) if labels[i] == labels[1]],
                           [i for i in range(1, 80) if labels[i] != labels[1]], s, k=20, exclude=[0]).rows]
             == labels[1]).mean()
    assert after > before


def test_smoothing_averages_each_candidate_with_its_nearest_candidates():
    """smooth_scores against its definition, written out row by row: the best ``top`` rows are the
    candidates; a candidate's score is averaged with the mean score of its k nearest other candidates (twice
    for two steps, on the same candidates); the rest keep their scores and stay below every candidate."""
    v, labels = _vectors(n=120)
    raw = v @ v[0] + 0.01 * np.arange(120, dtype=np.float32) / 120  # no ties
    top, k, a = 40, 4, 0.7
    cand = np.argsort(-raw)[:top]
    near = {i: sorted([j for j in cand if j != i], key=lambda j: -float(v[i] @ v[j]))[:k] for i in cand}
    want = raw.copy()
    for step in (1, 2):
        prev = want.copy()
        for i in cand:
            want[i] = (prev[i] + a * np.mean(prev[near[i]])) / (1 + a)
        got = smooth_scores(v, raw, top, k, a, steps=step)
        assert np.allclose(got, want, atol=1e-5)
    rest = np.setdiff1d(np.arange(120), cand)
    assert got[cand].min() >= got[rest].max()
    assert np.array_equal(smooth_scores(v, raw, top, k, 0.0), raw)  # weight 0: off
    assert np.array_equal(smooth_scores(v[:1], raw[:1], top, k, a), raw[:1])  # one row: nothing to average
    with pytest.raises(ValueError, match="smooth_k must be a non-negative integer"):
        FeedbackSettings(smooth_k=-1)


def test_settings_and_rocchio():
    with pytest.raises(ValueError, match="valid: svm, rocchio"):
        FeedbackSettings(method="magic")
    v, _ = _vectors()
    s = FeedbackSettings(method="rocchio", beta=1.0, gamma=0.3)
    w = feedback_weights(v[0], v[[1, 2]], v[[3]], None, s)
    assert np.allclose(w, l2n(v[0]) + v[[1, 2]].mean(0) - 0.3 * v[3], atol=1e-6)


# --- concepts ---------------------------------------------------------------------------------------
def test_concepts_round_trip_list_csv_and_names(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRIEVAL_EXPLORER_HOME", str(tmp_path / "home"))
    c = Concept("red birds", queries=["/a/q.jpg"], positives=["/a/1.jpg", "/a/2.jpg", "/a/1.jpg"],
                negatives=["/a/3.jpg", "/a/1.jpg"], folder="/a", settings=FeedbackSettings(c=0.5))
    path = save_concept(c)
    assert path.parent == tmp_path / "home" / "concepts"
    back = load_concept("red birds")
    assert back.positives == ["/a/1.jpg", "/a/2.jpg"] and back.negatives == ["/a/3.jpg"]  # no repeats, + wins
    assert back.queries == ["/a/q.jpg"] and back.settings == FeedbackSettings(c=0.5) and back.created
    assert [x.name for x in list_concepts()] == ["red birds"]
    assert concept_csv(back).splitlines() == ["path,mark", "/a/q.jpg,query", "/a/1.jpg,+", "/a/2.jpg,+",
                                              "/a/3.jpg,-"]
    with pytest.raises(ConceptError, match="exists already"):
        save_concept(c, overwrite=False)
    for bad in ("", "../x", "a/b", ".hidden", "x" * 81, "semi;colon"):
        with pytest.raises(ConceptError, match="name"):
            check_name(bad)
    assert check_name("  Jays (blue), 2024-05 ") == "Jays (blue), 2024-05"
    (tmp_path / "home" / "concepts" / "broken.concept.json").write_text('{"format": "x"')
    assert [x.name for x in list_concepts()] == ["red birds"]  # a damaged file is left out, not fatal
    with pytest.raises(ConceptError, match="damaged"):
        load_concept(str(tmp_path / "home" / "concepts" / "broken.concept.json"))
    with pytest.raises(ConceptError, match="saved: red birds"):
        load_concept("blue birds")
    foreign = tmp_path / "foreign.concept.json"
    for text, said in ((json.dumps({"format": "something-else"}), "not a saved concept"),
                       (json.dumps({**back.to_json(), "settings": {"method": "rm -rf"}}), "bad settings"),
                       (json.dumps({**back.to_json(), "positives": [3]}), "list of image paths"),
                       (json.dumps({**back.to_json(), "version": 99}), "version 99")):
        foreign.write_text(text)
        with pytest.raises(ConceptError, match=said):
            load_concept(str(foreign))


def test_concepts_become_a_split_the_trainer_reads(tmp_path, image_folder):
    from engine.training.config import TrainConfig
    from engine.training.trainer import validation_split

    root = image_folder(n_classes=3, per_class=6)
    imgs = sorted(str(p) for p in root.rglob("*.jpg"))
    a = Concept("mine", queries=[imgs[0]], positives=imgs[1:6] + [imgs[7]], negatives=imgs[12:15])
    b = Concept("other", positives=imgs[7:12])  # imgs[7] is in both: left out of both
    split = training_split([a, b])
    assert split.counts == {"mine": 6, "other": 4} and imgs[7] in split.left_out
    path = write_training_split(split, tmp_path / "s.json")
    vs = validation_split(TrainConfig(data_root=split.root, image_split=str(path)))
    names = [vs.images.classes[lab] for lab in vs.images.labels]
    assert sorted(vs.images.classes) == ["mine", "other"] and names.count("mine") == 6 and vs.n_val >= 2
    # one concept: its images marked - are a second class
    one = training_split([a])
    assert set(one.counts) == {"mine", "not mine"}
    with pytest.raises(ConceptError, match="at least 2 classes"):
        training_split([Concept("lonely", positives=imgs[:3])])
    bad = json.loads(path.read_text())
    bad["labels"].pop(next(iter(bad["labels"])))
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="no entry in 'labels'"):
        validation_split(TrainConfig(data_root=split.root, image_split=str(path)))


# --- the session and the CLI -----------------------------------------------------------------------
def test_cli_feedback_equals_run_feedback_and_concepts(cli, image_folder, tmp_path, monkeypatch, capsys):  # noqa: F811
    from engine.search import SearchOptions
    from engine.session import FolderIndex, ModelCache, run_feedback
    from engine.vocabulary import ModelSpec

    monkeypatch.setenv("RETRIEVAL_EXPLORER_HOME", str(tmp_path / "home"))
    root = image_folder(n_classes=4, per_class=5)
    assert cli("index", str(root), "--descriptor", "gem")[0] == 0
    q = root / "class_01" / "000.jpg"
    pos = [str(root / "class_01" / "002.jpg"), str(root / "class_02" / "001.jpg")]
    neg = [str(root / "class_03" / "000.jpg")]
    code, out, err = cli("search", str(q), "--collection", str(root), "--descriptor", "gem", "--k", "20",
                         "--positive", *pos, "--negative", *neg, "--json")
    assert code == 0, err
    cli_hits = [(h["path"], round(h["score"], 5)) for h in json.loads(out)["hits"]]
    # the same ranking, computed directly on the stored vectors
    index = FolderIndex(root, cache_dir=tmp_path / "cache")
    spec = ModelSpec(descriptor="gem", image_size=32)
    coll = index.collection(spec)
    rows = {p: i for i, p in enumerate(coll.paths)}
    s = FeedbackSettings()
    bg = background_rows(len(coll), [rows[p] for p in pos + neg] + [rows[str(q)]], s.background, s.seed)
    w = feedback_weights(coll.vectors[rows[str(q)]], coll.vectors[[rows[p] for p in pos]],
                         coll.vectors[[rows[p] for p in neg]], coll.vectors[bg], s)
    direct = smooth_scores(coll.vectors, coll.vectors @ w, s.smooth_top, s.smooth_k, s.smooth_weight,
                           s.smooth_steps)
    order = np.argsort(-direct, kind="stable")
    assert [p for p, _ in cli_hits] == [coll.paths[i] for i in order]
    assert np.allclose([sc for _, sc in cli_hits], direct[order], atol=1e-4)
    res = run_feedback(index, ModelCache(), spec, [str(q)], pos, neg, SearchOptions(k=20))
    # the window leaves the query out, the rest is the same ranking
    assert [(h.path, round(h.score, 5)) for h in res.hits] == [h for h in cli_hits if h[0] != str(q)]
    # a saved concept ranks as its marks do
    save_concept(Concept("ones", queries=[str(q)], positives=pos, negatives=neg, folder=str(root)))
    code, out2, _ = cli("search", "--concept", "ones", "--collection", str(root), "--descriptor", "gem", "--k", "20",
                        "--json")
    assert code == 0 and [(h["path"], round(h["score"], 5)) for h in json.loads(out2)["hits"]] == cli_hits
    from engine.cli import main

    assert main(["concepts"]) == 0 and "ones: 1 query, 2 +, 1 -" in capsys.readouterr().out
    assert main(["concepts", "--export", "ones", str(tmp_path / "ones.csv")]) == 0
    assert (tmp_path / "ones.csv").read_text().startswith("path,mark\n")
    code, _, err = cli("search", "--collection", str(root))
    assert code == 2 and "give the query IMAGE" in err
    code, _, err = cli("search", str(q), "--collection", str(root), "--positive", str(tmp_path / "missing.jpg"))
    assert code == 2 and "image not found" in err
    code, _, err = cli("search", "--concept", "nope", "--collection", str(root), "--descriptor", "gem")
    assert code == 2 and "no concept named 'nope'" in err


def test_region_query_and_outside_marks_go_through_the_query_path(cli, image_folder, tmp_path, monkeypatch):  # noqa: F811
    """A region query is re-ranked from the REGION's vector (never the whole image's row), and a marked image
    outside the folder is described by the same path as the query (``describe``: the CLI's engine.fastquery);
    `search IMAGE --box ... --positive ...` ranks as run_feedback with that box."""
    import shutil

    from engine.search import SearchOptions
    from engine.session import FolderIndex, ModelCache, embed_images, run_feedback
    from engine.vocabulary import ModelSpec

    monkeypatch.setenv("RETRIEVAL_EXPLORER_HOME", str(tmp_path / "home"))
    root = image_folder(n_classes=4, per_class=5)
    assert cli("index", str(root), "--descriptor", "gem")[0] == 0
    index = FolderIndex(root, cache_dir=tmp_path / "cache")
    spec = ModelSpec(descriptor="gem", image_size=32)
    models = ModelCache()
    coll = index.collection(spec)
    rows = {p: i for i, p in enumerate(coll.paths)}
    q = str(root / "class_01" / "000.jpg")
    outside = tmp_path / "elsewhere.jpg"  # a marked image the folder does not hold
    shutil.copy(root / "class_01" / "003.jpg", outside)
    pos, neg = [str(root / "class_01" / "002.jpg"), str(outside)], [str(root / "class_03" / "000.jpg")]
    box = (4, 4, 20, 16)
    calls = []

    def describe(path, b):
        calls.append((path, b))
        return embed_images(models, spec, [path], boxes=None if b is None else [b])[0]

    res = run_feedback(index, None, spec, [q], pos, neg, SearchOptions(k=20), box=box, describe=describe)
    assert sorted(calls, key=str) == sorted([(q, box), (str(outside), None)], key=str)  # no model cache needed
    assert res.box == box
    region_vec, whole_row = describe(q, box), coll.vectors[rows[q]]
    assert not np.allclose(region_vec, whole_row, atol=1e-3)  # the region is another vector than the image
    s = FeedbackSettings()
    marked = [rows[pos[0]], rows[neg[0]], rows[q]]
    bg = background_rows(len(coll), marked, s.background, s.seed)
    outside_vec = describe(str(outside), None)

    def direct(query_vec):
        w = feedback_weights(query_vec, np.stack([coll.vectors[rows[pos[0]]], outside_vec]),
                             coll.vectors[[rows[neg[0]]]], coll.vectors[bg], s)
        return w / np.linalg.norm(w)

    assert np.allclose(res.vector / np.linalg.norm(res.vector), direct(region_vec), atol=1e-4)
    assert not np.allclose(res.vector / np.linalg.norm(res.vector), direct(whole_row), atol=1e-3)
    # the window hands over the vector its region ranking was searched with: the same ranking, no network pass
    calls.clear()
    again = run_feedback(index, None, spec, [q], pos, neg, SearchOptions(k=20), box=box, query_vector=region_vec,
                         describe=describe)
    assert calls == [(str(outside), None)] and again.box == box
    assert [(h.path, round(h.score, 4)) for h in again.hits] == [(h.path, round(h.score, 4)) for h in res.hits]
    with pytest.raises(ValueError, match="query vector has 3 values"):
        run_feedback(index, None, spec, [q], pos, neg, SearchOptions(), query_vector=np.ones(3))
    # the CLI: --box with marks, the outside image described as its query would be
    code, out, err = cli("search", q, "--collection", str(root), "--descriptor", "gem", "--k", "20",
                         "--box", ",".join(map(str, box)), "--positive", *pos, "--negative", *neg, "--json")
    assert code == 0, err
    got = json.loads(out)
    assert got["box"] == list(box)
    kept = run_feedback(index, models, spec, [q], pos, neg, SearchOptions(k=20), box=box, exclude_query=False)
    assert [h["path"] for h in got["hits"]] == [h.path for h in kept.hits]
    assert [h["score"] for h in got["hits"]] == pytest.approx([h.score for h in kept.hits], abs=1e-4)
    code, _, err = cli("search", "--collection", str(root), "--descriptor", "gem", "--box", "1,1,8,8",
                       "--positive", pos[0])
    assert code == 2 and "--box is a region of the query IMAGE" in err
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a picture")
    code, _, err = cli("search", q, "--collection", str(root), "--descriptor", "gem", "--negative", str(broken))
    assert code == 2 and "cannot use the marked image" in err and "broken.jpg" in err and "Traceback" not in err
