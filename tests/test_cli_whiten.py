"""`retrieval-explorer whiten`: a whitening learned from class sub-folders, its settings chosen on
validation classes carved from them, saved and usable by the descriptor it was learned for."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.cli import main
from models.whitening import PCAWhitening


@pytest.fixture
def folder(image_folder):
    return image_folder(n_classes=6, per_class=5, size=48)


def test_whiten_chooses_on_validation_classes_and_saves(folder, tmp_path, capsys):
    out = tmp_path / "lw.npz"
    torch.manual_seed(0)
    rc = main(["whiten", str(folder), "-o", str(out), "--backbone", "resnet18", "--weights", "random",
               "--descriptor", "gem", "--scales", "32,48", "--runtime", "torch", "--val-classes", "2",
               "--json"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["chosen"] and rep["n_classes"] == 6 and rep["n_images"] == 30 and rep["scales"] == [32, 48]
    assert rep["grid"] and all(0.0 <= g["r1"] <= 1.0 for g in rep["grid"])
    assert rep["shrinkage"] in [g["shrinkage"] for g in rep["grid"]]
    w = PCAWhitening.load(out)
    assert w.method == "lw" and w.in_dim == 512 and w.meta["sizes"] == [32, 48]
    assert w.meta["shrinkage"] == rep["shrinkage"] and w.out_dim == rep["dim"]


def test_whiten_with_given_settings_and_pca(folder, tmp_path, capsys):
    out = tmp_path / "pca.npz"
    rc = main(["whiten", str(folder), "-o", str(out), "--backbone", "resnet18", "--weights", "random",
               "--descriptor", "mac", "--image-size", "40", "--runtime", "torch", "--method", "pca",
               "--shrinkage", "0.2", "--dim", "8"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "pca whitening of mac @ 40" in text and "512 -> 8 dims" in text and "--whitening" in text
    w = PCAWhitening.load(out)
    assert w.method == "pca" and w.out_dim == 8 and np.isclose(w.meta["shrinkage"], 0.2)


def test_whiten_refusals_are_messages(folder, tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in list(folder.rglob("*.jpg"))[:4]:
        (flat / f"{p.parent.name}-{p.name}").write_bytes(p.read_bytes())
    rc = main(["whiten", str(flat), "-o", str(tmp_path / "x.npz"), "--backbone", "resnet18", "--weights", "random",
               "--runtime", "torch"])
    assert rc == 2 and "class sub-folders" in capsys.readouterr().err
    rc = main(["whiten", str(folder), "-o", str(tmp_path / "x.npz"), "--backbone", "resnet18", "--weights",
               "random", "--runtime", "torch"])  # 6 classes cannot spare 10 for validation
    assert rc == 2 and "give --shrinkage and --dim" in capsys.readouterr().err
    rc = main(["whiten", str(folder), "-o", str(tmp_path / "x.npz"), "--scales", "224,abc"])
    assert rc == 2 and "224,288,352" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["whiten", str(folder), "-o", str(tmp_path / "x.npz"), "--shrinkage", "2"])


def test_eval_uses_the_scales_and_the_whitening(folder, tmp_path, capsys):
    out = tmp_path / "lw.npz"
    base = ["--backbone", "resnet18", "--weights", "random", "--descriptor", "gem", "--scales", "32,48"]
    assert main(["whiten", str(folder), "-o", str(out), *base, "--runtime", "torch", "--shrinkage", "0.3",
                 "--dim", "12"]) == 0
    capsys.readouterr()
    assert main(["eval", "--root", str(folder), *base, "--whitening", str(out), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["dim"] == 12 and m["scales"] == [32, 48] and 0.0 <= m["recall@1"] <= 1.0
    assert main(["eval", "--root", str(folder), *base, "--image-size", "64"]) == 2
    assert "either --image-size or --scales" in capsys.readouterr().err


def test_index_and_search_with_scales_and_whitening(folder, tmp_path, capsys):
    """A multi-scale, whitened collection: index records the sizes and the whitening, search uses them
    (the query, described through the session like the window's, finds itself at cosine 1)."""
    from models.registry import get_backbone

    out = tmp_path / "lw.npz"
    weights = tmp_path / "lite0-random.pt"  # one set of random weights for every command
    torch.save(get_backbone("efficientnet_lite0", weights="random").net.state_dict(), weights)
    base = ["--backbone", "efficientnet_lite0", "--weights", str(weights), "--descriptor", "gem",
            "--scales", "32,48", "--runtime", "torch"]
    assert main(["whiten", str(folder), "-o", str(out), *base, "--shrinkage", "0.3", "--dim", "12"]) == 0
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert main(["index", str(folder), *base, "--whitening", str(out), *cache, "--json"]) == 0
    capsys.readouterr()
    query = sorted(folder.rglob("*.jpg"))[3]
    assert main(["search", str(query), "--collection", str(folder), *base, "--whitening", str(out), *cache,
                 "--k", "30", "--exact", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    own = [h for h in res["hits"] if h["path"] == str(query)]
    assert "32+48" in res["model"] and own and own[0]["score"] == pytest.approx(1.0, abs=3e-3)
    # the same folder at one size is another collection: not indexed yet
    assert main(["search", str(query), "--collection", str(folder), "--backbone", "efficientnet_lite0",
                 "--weights", str(weights), "--descriptor", "gem", "--whitening", str(out), *cache]) == 2


def test_unreadable_images_are_named_in_the_report_and_the_output(folder, tmp_path, capsys):
    bad = next(p for p in sorted(folder.iterdir()) if p.is_dir()) / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    out = tmp_path / "lw.npz"
    rc = main(["whiten", str(folder), "-o", str(out), "--backbone", "resnet18", "--weights", "random",
               "--descriptor", "gem", "--image-size", "40", "--runtime", "torch", "--shrinkage", "0.3",
               "--dim", "all"])
    assert rc == 0
    text = capsys.readouterr().out
    assert f"skipped {bad}" in text and "from 30 images" in text


def test_a_stop_while_choosing_raises_cancelled_and_returns_nothing(folder):
    from engine.callbacks import Cancelled
    from engine.vocabulary import ModelSpec
    from engine.whitening import learn_from_folder

    seen: list[str] = []

    def progress(done, total, message=""):
        seen.append(message)

    spec = ModelSpec(backbone="resnet18", weights="random", descriptor="gem", image_size=40)
    with pytest.raises(Cancelled):  # the stop arrives once the images are described, while choosing
        learn_from_folder(folder, spec, runtime="torch", n_val=2, progress=progress,
                          should_stop=lambda: any("choosing" in m for m in seen))
    assert any("choosing" in m for m in seen)
