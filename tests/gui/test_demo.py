"""The shipped demo collection: present, small, labelled by folder, CC0, and drawn by its generator."""

from __future__ import annotations

from PIL import Image

from engine.session import demo_collection
from resources import make_demo


def test_demo_collection_is_small_labelled_and_licensed():
    root = demo_collection()
    files = sorted(root.rglob("*.jpg"))
    classes = {p.parent.name for p in files}
    assert classes == set(make_demo.CLASSES) and len(classes) >= 6
    assert len(files) == len(classes) * make_demo.PER_CLASS
    assert sum(p.stat().st_size for p in files) < 1.5e6
    for p in files[:: make_demo.PER_CLASS]:
        with Image.open(p) as im:
            assert im.format == "JPEG" and 160 <= im.width <= 256 and im.mode == "RGB"
    assert "CC0" in (root / "LICENSE.md").read_text(encoding="utf-8")


def test_generator_is_deterministic(tmp_path):
    a = make_demo.render(tmp_path / "a", per_class=1)
    b = make_demo.render(tmp_path / "b", per_class=1)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert len(a) == len(make_demo.CLASSES)


def test_the_shipped_demo_is_what_the_generator_draws(tmp_path):
    """The files in resources/demo are the generator's output (regenerate with python -m resources.make_demo
    after changing it): the first two images of every class, byte for byte."""
    root = demo_collection()
    for p in make_demo.render(tmp_path, per_class=2):
        assert p.read_bytes() == (root / p.parent.name / p.name).read_bytes(), p.relative_to(tmp_path)
