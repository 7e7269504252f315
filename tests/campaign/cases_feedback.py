"""Saved concepts (issue 28) under attack through `search --concept`: damaged, deeply nested and
path-traversing concepts, a concept whose images are gone. Every answer is a message, never a traceback
(foreign formats, bad settings and missing marks: tests/test_feedback.py, in-process)."""

from __future__ import annotations

import json
from pathlib import Path

from . import SMALL, Case, indexed_folder, no_traceback, run_cli


def _concepts_dir(work: Path) -> Path:
    """Where `search --concept` looks in the scratch HOME (engine.vocabulary.data_home's platform folder)."""
    d = work / "home" / ".local" / "share" / "retrieval-explorer" / "concepts"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _bad_concepts(work: Path) -> None:
    folder = indexed_folder(work)
    photos = sorted(str(p) for p in folder.glob("*.jpg"))
    cdir = _concepts_dir(work)
    good = {"format": "retrieval-explorer/concept", "version": 1, "name": "ok", "folder": str(folder),
            "queries": [photos[0]], "positives": [photos[1]], "negatives": [photos[2]], "settings": {}}
    (cdir / "ok.concept.json").write_text(json.dumps(good))
    # each attack is a program start (seconds): foreign formats and bad settings are tested in-process
    # (tests/test_feedback.py); here what only a whole run shows
    attacks = {
        "damaged": ("{not json", "damaged"),
        "nested": ("[" * 100_000 + "]" * 100_000, "damaged"),
        "gone": (json.dumps({**good, "name": "gone", "queries": [str(work / "nowhere.jpg")]}), "image not found"),
    }
    for name, (text, _) in attacks.items():
        (cdir / f"{name}.concept.json").write_text(text)
    common = ("--collection", str(folder), *SMALL)
    r = run_cli(work, "search", "--concept", "ok", *common)
    no_traceback(r)
    assert r.rc == 0 and photos[0] in r.out, r.said[-1000:]
    for name, (_, said) in attacks.items():
        r = run_cli(work, "search", "--concept", name, *common)
        no_traceback(r)
        assert r.rc != 0 and said in r.err, f"{name}: {r.said[-800:]}"
    for name in ("../../../etc/passwd",):
        r = run_cli(work, "search", "--concept", name, *common)
        no_traceback(r)
        assert r.rc != 0 and "concept name" in r.err, f"{name}: {r.said[-800:]}"


CASES = [Case("concepts", "damaged, nested, path-traversing and vanished concepts", _bad_concepts, slow=True)]
