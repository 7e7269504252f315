"""`retrieval-explorer eval` end to end on a generated folder, random-weight backbone (offline)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

pytest.importorskip("models.backbones")
pytest.importorskip("models.descriptors")

from engine.cli import main  # noqa: E402

BACKBONE = ["--backbone", "resnet18", "--weights", "random", "--image-size", "64", "--device", "cpu"]


@pytest.fixture
def folder(image_folder) -> Path:
    return image_folder(n_classes=3, per_class=4, size=48)


def test_eval_json_leave_one_out(folder: Path, capsys) -> None:
    (folder / "class_00" / "broken.jpg").write_text("not an image")
    rc = main(["eval", "--root", str(folder), *BACKBONE, "--descriptor", "spoc", "--json", "--batch-size", "5"])
    out, err = capsys.readouterr()
    assert rc == 0
    m = json.loads(out)  # exactly one JSON object on stdout
    for key in ("recall@1", "recall@5", "recall@10", "map"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["recall@1"] <= m["recall@5"] <= m["recall@10"]
    assert m["recall@10"] == 1.0  # 11 other images, 3 of each class among them: any 10 include one
    assert m["n_images"] == 12 and m["n_skipped"] == 1 and m["dim"] == 512
    assert m["images_per_s"] > 0
    assert "top1" not in m
    assert "broken.jpg" in err  # the skipped file is reported on stderr


def test_eval_with_split_table_and_json(folder: Path, tmp_path: Path, capsys) -> None:
    split = {"query": ["class_00/000.jpg", "class_01/000.jpg", "class_02/000.jpg"],
             "retrieval": [f"class_{c:02d}/{v:03d}.jpg" for c in range(3) for v in (1, 2)]}
    sp = tmp_path / "split.pkl"
    sp.write_bytes(pickle.dumps(split))
    rc = main(["eval", "--root", str(folder), "--split", str(sp), *BACKBONE, "--descriptor", "mac",
               "--crop-fraction", "0.875", "--json"])
    m = json.loads(capsys.readouterr().out)
    assert rc == 0 and m["n_images"] == 9 and m["n_queries"] == 3 and m["n_retrieval"] == 6
    assert 0.0 <= m["top1"] <= 1.0
    # the top-1 value is a multiple of 1/3 (three queries)
    assert abs(m["top1"] * 3 - round(m["top1"] * 3)) < 1e-9
    rc = main(["eval", "--root", str(folder), "--split", str(sp), *BACKBONE, "--descriptor", "mac"])
    out = capsys.readouterr().out
    assert rc == 0 and "R@1" in out and "mAP" in out and "top-1" in out


def test_eval_errors_are_messages(folder: Path, tmp_path: Path, capsys) -> None:
    assert main(["eval", "--root", str(tmp_path / "nope"), *BACKBONE]) == 2
    assert "not found" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"query": ["a.jpg"]}))
    assert main(["eval", "--root", str(folder), "--split", str(bad), *BACKBONE]) == 2
    assert "missing key" in capsys.readouterr().err


def test_eval_refuses_a_split_entry_outside_the_root(tmp_path, capsys):
    import json as _json

    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    split = tmp_path / "split.json"
    split.write_text(_json.dumps({"query": ["../../etc/passwd"], "retrieval": ["a/x.jpg"]}))
    code = main(["eval", "--root", str(root), "--split", str(split), "--backbone", "efficientnet_lite0",
                 "--weights", "random", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "../../etc/passwd" in err and "outside" in err
