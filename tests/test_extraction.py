"""engine.extraction with a tiny random-weight stand-in of the models/ contract (fast, offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from engine.callbacks import Cancelled
from engine.extraction import (
    ExtractionResult,
    SkippedImage,
    collate_drop_failures,
    extract_descriptors,
    extract_multi,
)
from engine.images import scan_images


class TinyBackbone(nn.Module):
    """The Backbone contract in miniature: (B, 3, S, S) -> (B, 8, S/4, S/4) feature map, 5-d "FC"."""

    name = "tiny"
    feature_dim = 8
    fc_dim = 5
    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)
    default_image_size = 32

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 5)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.fc(fmap.mean(dim=(2, 3)))


class TinyDescriptor(nn.Module):
    """The DescriptorModel contract: pooling of the backbone's map, L2-normalised."""

    def __init__(self, backbone: TinyBackbone, kind: str) -> None:
        super().__init__()
        self.backbone, self.kind = backbone, kind
        self.dim = 5 if kind == "fc" else 8

    def describe(self, fmap: torch.Tensor) -> torch.Tensor:
        if self.kind == "fc":
            v = self.backbone.forward_head(fmap)
        elif self.kind == "mac":
            v = fmap.amax(dim=(2, 3))
        else:
            v = fmap.mean(dim=(2, 3))
        return nn.functional.normalize(v, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.describe(self.backbone.forward_features(x))


@pytest.fixture
def files(image_folder) -> list[Path]:
    return scan_images(image_folder(n_classes=3, per_class=4, size=48))


def test_shapes_norms_order(files: list[Path]) -> None:
    model = TinyDescriptor(TinyBackbone(), "spoc")
    calls: list[tuple[int, int]] = []
    res = extract_descriptors(model, files, batch_size=5, progress=lambda d, t, m: calls.append((d, t)))
    assert isinstance(res, ExtractionResult)
    assert res.vectors.shape == (12, 8) and res.vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(res.vectors, axis=1), 1.0, atol=1e-5)
    assert res.paths == [str(p) for p in files]
    assert res.skipped == [] and res.cancelled is False
    # progress after each batch: 5, 10, 12 of 12 (and the initial 0)
    assert calls == [(0, 12), (5, 12), (10, 12), (12, 12)]
    # row i is paths[i]: the same as running the model on image i alone
    single = extract_descriptors(model, files[7:8])
    assert np.allclose(single.vectors[0], res.vectors[7], atol=1e-5)


def test_bad_files_skipped_with_reason(files: list[Path], tmp_path: Path) -> None:
    bad1 = tmp_path / "text.jpg"
    bad1.write_text("not an image")
    bad2 = tmp_path / "empty.png"
    bad2.write_bytes(b"")
    paths = [bad1, *files[:3], bad2, *files[3:5]]
    res = extract_descriptors(TinyDescriptor(TinyBackbone(), "mac"), paths, batch_size=2)
    assert res.vectors.shape == (5, 8)
    assert res.paths == [str(p) for p in [*files[:3], *files[3:5]]]
    assert [s.path for s in res.skipped] == [str(bad1), str(bad2)]
    assert all(isinstance(s, SkippedImage) and s.reason for s in res.skipped)
    assert "empty" in res.skipped[1].reason


def test_all_bad_gives_empty_result(tmp_path: Path) -> None:
    p = tmp_path / "x.jpg"
    p.write_bytes(b"junk")
    res = extract_descriptors(TinyDescriptor(TinyBackbone(), "spoc"), [p])
    assert res.vectors.shape == (0, 8) and res.paths == [] and len(res.skipped) == 1


def test_collate_drops_failures() -> None:
    t = torch.zeros(3, 4, 4)
    idx, x, bad = collate_drop_failures([(0, t), (1, "broken"), (2, t + 1)])
    assert idx == [0, 2] and x.shape == (2, 3, 4, 4) and bad == [(1, "broken")]
    assert collate_drop_failures([(5, "nope")]) == ([], None, [(5, "nope")])


def test_cancel_returns_partial(files: list[Path]) -> None:
    polls = []

    def stop() -> bool:
        polls.append(1)
        return len(polls) >= 2  # stop after the second batch

    res = extract_descriptors(TinyDescriptor(TinyBackbone(), "spoc"), files, batch_size=4, should_stop=stop)
    assert res.cancelled is True
    assert res.vectors.shape == (8, 8) and res.paths == [str(p) for p in files[:8]]


def test_workers_give_the_same_result(files: list[Path]) -> None:
    model = TinyDescriptor(TinyBackbone(), "spoc")
    a = extract_descriptors(model, files, batch_size=4, num_workers=0)
    b = extract_descriptors(model, files, batch_size=4, num_workers=2)
    assert a.paths == b.paths
    assert np.allclose(a.vectors, b.vectors, atol=1e-6)


def test_image_size_and_crop_fraction_change_the_input(files: list[Path]) -> None:
    model = TinyDescriptor(TinyBackbone(), "spoc")
    a = extract_descriptors(model, files[:2], image_size=32)
    b = extract_descriptors(model, files[:2], image_size=40)
    c = extract_descriptors(model, files[:2], image_size=32, crop_fraction=0.5)
    assert not np.allclose(a.vectors, b.vectors) and not np.allclose(a.vectors, c.vectors)


def test_extract_multi_equals_separate_extractions(files: list[Path]) -> None:
    bb = TinyBackbone()
    heads = {k: TinyDescriptor(bb, k) for k in ("fc", "spoc", "mac")}
    calls = {"n": 0}
    orig = bb.forward_features

    def counting(x):
        calls["n"] += 1
        return orig(x)

    bb.forward_features = counting  # type: ignore[method-assign]
    multi = extract_multi(bb, heads, files, batch_size=5)
    assert calls["n"] == 3  # one feature map per batch (12 images / 5), whatever the number of heads
    for name, head in heads.items():
        single = extract_descriptors(head, files, batch_size=5)
        assert multi[name].paths == single.paths
        assert multi[name].vectors.shape == (12, head.dim)
        assert np.allclose(multi[name].vectors, single.vectors, atol=1e-6), name


def test_bad_arguments(files: list[Path]) -> None:
    model = TinyDescriptor(TinyBackbone(), "spoc")
    with pytest.raises(ValueError, match="batch_size"):
        extract_descriptors(model, files, batch_size=0)
    with pytest.raises(ValueError, match="at least one"):
        extract_multi(TinyBackbone(), {}, files)


@pytest.mark.gpu
def test_cuda_matches_cpu(files: list[Path]) -> None:
    model = TinyDescriptor(TinyBackbone(), "spoc")
    a = extract_descriptors(model, files, device="cpu")
    b = extract_descriptors(model, files, device="cuda")
    assert np.allclose(a.vectors, b.vectors, atol=1e-4)


# --- with the real models/ package (imported plainly: a broken import must fail, not skip) ---------
def test_learn_whitening_rmac_on_regions(files: list[Path]) -> None:
    from whitening_helpers import learn_whitening  # tests/ is on sys.path under pytest

    from engine.extraction import whitening_training_vectors
    from models import pooling

    bb = TinyBackbone()
    X = whitening_training_vectors("rmac", bb, files, image_size=32)  # noqa: N806
    # 32 px -> an 8 x 8 map: the number of R-MAC regions times the images
    n_regions = len(pooling.rmac_regions(8, 8, L=3))
    assert X.shape == (12 * n_regions, 8)
    assert np.allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-4)
    w = learn_whitening("rmac", bb, files, image_size=32, dim=4)
    assert w is not None
    Xs = whitening_training_vectors("spoc", bb, files, image_size=32)  # noqa: N806
    assert Xs.shape == (12, 8)
    with pytest.raises(Cancelled):
        whitening_training_vectors("rmac", bb, files, image_size=32, batch_size=4, should_stop=lambda: True)


def test_no_paths_gives_an_empty_result() -> None:
    res = extract_descriptors(TinyDescriptor(TinyBackbone(), "spoc"), [])
    assert res.vectors.shape == (0, 8) and res.paths == [] and not res.cancelled


# --- multi-scale and learned whitening through the real models/ package -------------------------------
def test_multi_scale_extraction_resizes_each_image_to_every_size(files: list[Path]) -> None:
    from engine.images import build_transform, load_image
    from models import pooling
    from models.descriptors import DescriptorModel

    bb = TinyBackbone()
    model = DescriptorModel(bb, "gem", scales=(24, 32, 40))
    calls: list[tuple[int, ...]] = []
    orig = bb.forward_features

    def counting(x):
        calls.append(tuple(x.shape[-2:]))
        return orig(x)

    bb.forward_features = counting  # type: ignore[method-assign]
    res = extract_descriptors(model, files[:5], batch_size=5)
    assert sorted(calls) == [(24, 24), (32, 32), (40, 40)]  # one pass per size and batch
    single = DescriptorModel(TinyBackbone(), "gem")
    with torch.no_grad():  # by hand: each size from the decoded file, normalised, summed, normalised
        expected = []
        for f in files[:5]:
            img = load_image(f)
            parts = [single(build_transform(s, bb.mean, bb.std)(img)[None]) for s in (24, 32, 40)]
            expected.append(pooling.l2n(sum(parts))[0].numpy())
    assert np.allclose(res.vectors, np.stack(expected), atol=1e-5)
    heads = {"gem": DescriptorModel(bb, "gem"), "mac": DescriptorModel(bb, "mac")}
    multi = extract_multi(bb, heads, files[:5], image_size=(24, 32, 40), batch_size=5)
    assert np.allclose(multi["gem"].vectors, res.vectors, atol=1e-6)


def test_feature_runners_per_size_are_used(files: list[Path]) -> None:
    from models.descriptors import DescriptorModel

    bb = TinyBackbone()
    used: list[int] = []

    def runner(size):
        def run(x):
            used.append(size)
            assert x.shape[-1] == size
            return bb.forward_features(x)
        return run

    heads = {"spoc": DescriptorModel(bb, "spoc")}
    extract_multi(bb, heads, files[:3], image_size=(24, 32), features={24: runner(24), 32: runner(32)})
    assert sorted(set(used)) == [24, 32]
    with pytest.raises(ValueError, match="no feature runner for input size 32"):
        extract_multi(bb, heads, files[:3], image_size=(24, 32), features={24: runner(24)})


def test_learn_lw_whitening_from_labelled_images(files: list[Path]) -> None:
    from whitening_helpers import learn_whitening  # tests/ is on sys.path under pytest

    bb = TinyBackbone()
    labels = [p.parent.name for p in files]
    w = learn_whitening("gem", bb, files, image_size=(24, 32), method="lw", labels=labels, shrinkage=0.2, dim=6)
    assert w.method == "lw" and w.out_dim == 6 and w.meta["sizes"] == [24, 32] and w.meta["shrinkage"] == 0.2
    assert w.meta["n_classes"] == 3
    r = learn_whitening("rmac", bb, files, image_size=32, method="lw", labels=labels)
    assert r.meta["n_classes"] == 3 and r.in_dim == 8
    with pytest.raises(ValueError, match="one class label per image"):
        learn_whitening("gem", bb, files, method="lw")
    with pytest.raises(ValueError, match="pca, lw"):
        learn_whitening("gem", bb, files, method="zca")
