"""engine.splits: JSON and restricted-pickle split files, labels from folders and labels files."""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import pytest

from engine.splits import SplitFileError, labels_for, load_split, read_labels_file, resolve_split

SPLIT = {"query": ["a/1.jpg", "b/1.jpg"], "retrieval": ["a/2.jpg", "b/2.jpg", "b/3.jpg"]}


def test_json_and_pickle_round_trip(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text(json.dumps(SPLIT))
    assert load_split(tmp_path / "s.json") == SPLIT
    for proto in (0, 2, pickle.HIGHEST_PROTOCOL):
        p = tmp_path / f"s{proto}.pkl"
        p.write_bytes(pickle.dumps(SPLIT, protocol=proto))
        assert load_split(p) == SPLIT, proto
    # tuples are accepted and come back as lists
    (tmp_path / "t.pkl").write_bytes(pickle.dumps({"query": ("x.jpg",), "retrieval": ("y.jpg",)}))
    assert load_split(tmp_path / "t.pkl") == {"query": ["x.jpg"], "retrieval": ["y.jpg"]}


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_refused_and_code_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"query": [_Evil(str(marker))], "retrieval": ["x.jpg"]}))
    with pytest.raises(SplitFileError, match="refused to load .*system"):
        load_split(p)
    assert not marker.exists()  # the command never ran
    # the same payload unpickled normally WOULD run it: the test above is meaningful
    pickle.loads(p.read_bytes())
    assert marker.exists()


def test_pickle_with_other_objects_refused(tmp_path: Path) -> None:
    p = tmp_path / "obj.pkl"
    p.write_bytes(pickle.dumps({"query": [Path("a.jpg")], "retrieval": ["b.jpg"]}))
    with pytest.raises(SplitFileError, match="refused"):
        load_split(p)


@pytest.mark.parametrize(
    "obj, words",
    [
        (["a.jpg"], "mapping"),
        ({"query": ["a.jpg"]}, "missing key"),
        ({"query": "a.jpg", "retrieval": ["b.jpg"]}, "list of paths"),
        ({"query": ["a.jpg", 3], "retrieval": ["b.jpg"]}, "not a non-empty string"),
        ({"query": [], "retrieval": ["b.jpg"]}, "empty"),
        ({"query": ["a.jpg", "a.jpg"], "retrieval": ["b.jpg"]}, "twice"),
    ],
)
def test_structure_validated(tmp_path: Path, obj, words: str) -> None:
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(obj))
    with pytest.raises(SplitFileError, match=words):
        load_split(p)


def test_unreadable_split_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_split(tmp_path / "none.json")
    (tmp_path / "broken.json").write_text('{"query": [')
    with pytest.raises(SplitFileError, match="invalid JSON"):
        load_split(tmp_path / "broken.json")
    (tmp_path / "trunc.pkl").write_bytes(pickle.dumps(SPLIT)[:20])
    with pytest.raises(SplitFileError, match="not a valid pickle"):
        load_split(tmp_path / "trunc.pkl")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(SplitFileError, match="neither JSON nor a pickle"):
        load_split(tmp_path / "x.txt")


def test_deeply_nested_split_names_the_file(tmp_path: Path) -> None:
    # 100,000 levels: json raises RecursionError, which used to escape without the file's name
    p = tmp_path / "deep.json"
    p.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(SplitFileError) as info:
        load_split(p)
    assert str(p) in str(info.value) and "nested too deeply" in str(info.value)
    # a deep value inside a valid mapping: the message stays short and names the file
    q = tmp_path / "deep-entry.json"
    q.write_text('{"query": [' + "[" * 100_000 + "]" * 100_000 + '], "retrieval": ["b.jpg"]}')
    with pytest.raises(SplitFileError) as info:
        load_split(q)
    assert str(q) in str(info.value) and len(str(info.value)) < 400
    r = tmp_path / "deep-entry.pkl"
    # written by hand (pickle.dumps itself recurses): {"query": [[[...100,000 deep...]]], "retrieval": ["b.jpg"]}
    def text(s: str) -> bytes:
        return b"X" + struct.pack("<I", len(s)) + s.encode()

    n = 100_000
    r.write_bytes(b"\x80\x02}(" + text("query") + b"]" + b"]" * n + b"a" * n
                  + text("retrieval") + b"]" + text("b.jpg") + b"au.")
    with pytest.raises(SplitFileError) as info:
        load_split(r)
    assert str(r) in str(info.value) and len(str(info.value)) < 400


@pytest.mark.parametrize("entry", ["../../etc/passwd", "/etc/passwd", "a/../../x.jpg", "..", "C:\\x.jpg",
                                   "\\\\server\\share\\x.jpg"])
def test_entries_outside_the_root_refused(tmp_path: Path, entry: str) -> None:
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"query": ["a/1.jpg"], "retrieval": ["a/2.jpg", entry]}))
    assert load_split(p)["retrieval"][1] == entry  # without a root: read as written
    with pytest.raises(SplitFileError) as info:
        load_split(p, root=tmp_path / "images")
    assert repr(entry) in str(info.value) and str(p) in str(info.value)
    with pytest.raises(SplitFileError, match="root"):
        resolve_split(load_split(p), tmp_path / "images")


def test_entries_inside_the_root_resolved(tmp_path: Path) -> None:
    split = {"query": ["a/1.jpg", "./b/2.jpg"], "retrieval": ["a/../a/3.jpg", "c/4.jpg"]}
    p = tmp_path / "s.json"
    p.write_text(json.dumps(split))
    assert load_split(p, root=tmp_path) == split
    got = resolve_split(split, tmp_path)
    assert got == {"query": [tmp_path / "a/1.jpg", tmp_path / "b/2.jpg"],
                   "retrieval": [tmp_path / "a/../a/3.jpg", tmp_path / "c/4.jpg"]}


def test_labels_from_folders(tmp_path: Path) -> None:
    paths = [tmp_path / "cat" / "1.jpg", tmp_path / "dog" / "2.jpg", "cat/3.jpg"]
    assert labels_for(paths, tmp_path) == ["cat", "dog", "cat"]


def test_labels_from_text_and_json(tmp_path: Path) -> None:
    txt = tmp_path / "labels.txt"
    txt.write_text("# comment\nx/1.jpg red\nx/my file.jpg blue\n\ny/2.jpg red\n")
    paths = [tmp_path / "x" / "1.jpg", "x/my file.jpg", tmp_path / "y" / "2.jpg"]
    assert labels_for(paths, tmp_path, txt) == ["red", "blue", "red"]
    js = tmp_path / "labels.json"
    js.write_text(json.dumps({"x/1.jpg": 3, "y/2.jpg": "z"}))
    assert labels_for([tmp_path / "y" / "2.jpg", "x/1.jpg"], tmp_path, js) == ["z", "3"]
    with pytest.raises(SplitFileError, match="no label for 1 image"):
        labels_for(["x/other.jpg"], tmp_path, js)
    (tmp_path / "bad.txt").write_text("onlyonecolumn\n")
    with pytest.raises(SplitFileError, match="expected 'path label'"):
        read_labels_file(tmp_path / "bad.txt")


def test_labels_cub_layout(tmp_path: Path) -> None:
    (tmp_path / "images.txt").write_text("0, Albatross/0000.jpg\n1, Albatross/0001.jpg\n2, Ani/0000.jpg\n")
    (tmp_path / "image_class_labels.txt").write_text("0, 0\n1, 0\n2, 1\n")
    (tmp_path / "classes.txt").write_text("0, Albatross\n1, Ani\n")
    # image paths under root/images/..., as in cub100 and its split files ("images/<Species>/<n>.jpg")
    paths = [tmp_path / "images" / "Ani" / "0000.jpg", "images/Albatross/0001.jpg"]
    assert labels_for(paths, tmp_path, tmp_path / "image_class_labels.txt") == ["Ani", "Albatross"]
    (tmp_path / "classes.txt").unlink()
    assert labels_for(paths, tmp_path, tmp_path / "image_class_labels.txt") == ["1", "0"]
