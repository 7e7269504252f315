"""One labelling rule (issue 23): an image's class is the name of the folder that holds it, whatever reads the
folder: `index` (and `eval --collection`), `eval --root`, training, `whiten`, and the wizards' counts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from conftest import synthetic_image  # tests/ is on sys.path under pytest

from engine.cli import main
from engine.collection import Collection
from engine.images import scan_images
from engine.splits import labels_for
from engine.training.data import scan_labelled
from engine.vocabulary import ModelSpec
from engine.whitening import learn_from_folder

#: folders above the one holding the images only organise them: 2019/robin and 2020/robin are one class
LAYOUT = {"2019/robin": 2, "2020/robin": 1, "2019/wren": 2, "cats": 2}
CLASSES = {"robin": 3, "wren": 2, "cats": 2}


def _nested(root: Path) -> Path:
    for k, (folder, n) in enumerate(LAYOUT.items()):
        (root / folder).mkdir(parents=True)
        for i in range(n):
            synthetic_image(k, i, size=40).save(root / folder / f"{i:03d}.jpg")
    synthetic_image(9, 0, size=40).save(root / "loose.jpg")  # directly in the folder: no class
    return root


def test_a_nested_folder_has_the_same_classes_for_every_reader(tmp_path, monkeypatch):
    from test_cli_index import _Colours

    import engine.extraction
    import engine.runtime
    from retrieval_gui.wizard.dataset import summarize
    from retrieval_gui.wizard.whiten_page import count_folder

    root = _nested(tmp_path / "photos")
    # index, with a stand-in network; `eval --collection` scores the collection's labels
    cache = tmp_path / "cache"
    with monkeypatch.context() as m:
        m.setattr(engine.extraction, "build_model", lambda spec, device="cpu", backbone=None: _Colours(backbone))
        m.setattr(engine.runtime, "feature_runner", lambda *a, **k: None)
        assert main(["index", str(root), "--descriptor", "gem", "--image-size", "32", "--device", "cpu",
                     "--cache-dir", str(cache)]) == 0
    coll = Collection.open(root, model_spec=ModelSpec(descriptor="gem", image_size=32), cache_dir=cache)
    assert len(coll) == 8
    assert Counter(lab for lab in coll.labels if lab is not None) == CLASSES
    # eval --root: one label per scanned image ('' for the loose one)
    assert Counter(lab for lab in labels_for(scan_images(root), root) if lab) == CLASSES
    # training, and the training wizard's count (which splits what training reads)
    imgs = scan_labelled(root)
    assert Counter(imgs.classes[i] for i in imgs.labels) == CLASSES
    assert summarize(str(root), val_share=0.0).per_class == CLASSES
    # whiten, and the whitening wizard's count of what it will read
    spec = ModelSpec(backbone="resnet18", weights="random", descriptor="gem", image_size=32)
    _, rep = learn_from_folder(root, spec, method="pca", shrinkage=0.0, dim=None, runtime="torch")
    assert rep.n_classes == len(CLASSES) and rep.n_images == 8
    count = count_folder(str(root))
    assert count.classes == CLASSES and count.loose == 1
