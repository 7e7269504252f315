"""Shared fixtures: small generated image sets, offline and CPU-only by default."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# never touch the network or the user's caches from a test
os.environ.setdefault("TORCH_HOME", str(Path(__file__).parent / ".torch-home-unused"))


@pytest.fixture(scope="session", autouse=True)
def _private_config(tmp_path_factory):
    """The tests' own config folder, so that the installation's secret (engine.integrity) they make and
    use is never the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETRIEVAL_EXPLORER_CONFIG", str(tmp_path_factory.mktemp("config")))
        yield


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing is a broken install, other tests will say so
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def synthetic_image(label: int, variant: int, size: int = 64, seed: int = 0) -> Image.Image:  # noqa: F821
    """A small RGB image whose look depends mostly on ``label``: a coloured shape on a textured ground.

    Images of the same label share colour and shape, so even an untrained network ranks them close.
    """
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed * 100_003 + label * 1_009 + variant)
    base = np.array([(label * 67) % 256, (label * 131 + 60) % 256, (label * 199 + 120) % 256], dtype=np.float32)
    noise = rng.normal(0, 12, size=(size, size, 3))
    arr = np.clip(base * 0.5 + 60 + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    draw = ImageDraw.Draw(img)
    cx, cy = size // 2 + int(rng.integers(-6, 7)), size // 2 + int(rng.integers(-6, 7))
    r = size // 4 + int(rng.integers(-3, 4))
    fill = tuple(int(c) for c in (255 - base))
    shape = label % 3
    if shape == 0:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == 1:
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


@pytest.fixture
def image_folder(tmp_path: Path):
    """Factory: ``image_folder(n_classes=3, per_class=4, size=64)`` -> root with ``class_XX/NNN.jpg``."""

    def make(n_classes: int = 3, per_class: int = 4, size: int = 64, ext: str = "jpg", root: Path | None = None) -> Path:
        root = root or tmp_path / "images"
        for c in range(n_classes):
            d = root / f"class_{c:02d}"
            d.mkdir(parents=True, exist_ok=True)
            for v in range(per_class):
                synthetic_image(c, v, size).save(d / f"{v:03d}.{ext}")
        return root

    return make


@pytest.fixture
def decoded_jpeg_sizes(monkeypatch) -> list[tuple[int, int]]:
    """The sizes at which PIL's JPEG decoder ran in this test (after any draft scaling), in order."""
    from PIL import JpegImagePlugin

    sizes: list[tuple[int, int]] = []
    real_load = JpegImagePlugin.JpegImageFile.load

    def load(self):
        sizes.append(self.size)
        return real_load(self)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", load)
    return sizes
