"""engine.runtime: exported feature maps agree with PyTorch, the export cache is reused and verified,
unavailable runtimes fall back to PyTorch with a reason.

Tolerances (measured on the 2-core development machine, EfficientNet-Lite0 at 224 px on the demo images:
max |diff| about 3e-5 on maps whose values reach about 6, pooled cosines 1 - 1e-9):
- feature maps: max |runtime - torch| <= 1e-4 * max(1, max |torch map|);
- descriptors (fc, spoc, mac, gem, rmac): cosine >= 0.9999 for every image.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from engine import runtime as rt
from engine.images import build_transform, load_image
from engine.runtime import RUNTIMES, FeatureRunner, export_path, feature_runner

DEMO = Path(__file__).resolve().parents[1] / "resources" / "demo"
MAP_REL_TOL = 1e-4
MIN_COSINE = 0.9999
EXPORTED = ("onnxruntime", "openvino")


class TinyBackbone(nn.Module):
    """The Backbone contract in miniature: (B, 3, S, S) -> (B, 8, S/4, S/4); exports in about a second."""

    name = "tiny"
    feature_dim = 8

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Unexportable(TinyBackbone):
    """A feature map using an op without an ONNX translation (histc)."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y + 0.0 * torch.histc(y, bins=4).sum()


def _installed(name: str) -> bool:
    return name in rt.available_runtimes()


def _any_runtime() -> str:
    for name in EXPORTED:
        if _installed(name):
            pytest.importorskip("onnxscript")  # the exporter
            return name
    pytest.skip("neither onnxruntime nor openvino is installed")


# --- real network, real images ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lite0():
    from models.registry import get_backbone

    return get_backbone("efficientnet_lite0", weights="pretrained")


@pytest.fixture(scope="module")
def demo_batch(lite0) -> torch.Tensor:
    """One image of each demo folder (8 photographs), as the extraction would feed them: (8, 3, 224, 224)."""
    tf = build_transform(224, lite0.mean, lite0.std)
    files = [sorted(d.glob("*.jpg"))[0] for d in sorted(DEMO.iterdir()) if d.is_dir()]
    assert len(files) >= 6
    return torch.stack([tf(load_image(f)) for f in files])


@pytest.fixture(scope="module")
def lite0_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lite0-cache")


@pytest.mark.parametrize("name", EXPORTED)
def test_runtime_matches_torch_on_real_images(name, lite0, demo_batch, lite0_cache):
    pytest.importorskip(name)
    pytest.importorskip("onnxscript")
    from models.descriptors import build_descriptor, list_descriptors

    runner = feature_runner(lite0, 224, "lite0-pretrained", lite0_cache, name, threads=2)
    assert runner.name == name and runner.fallback_reason is None
    with torch.inference_mode():
        ref = lite0.forward_features(demo_batch)
    out = runner(demo_batch)
    assert out.dtype == torch.float32 and out.shape == ref.shape == (len(demo_batch), 1280, 7, 7)
    bound = MAP_REL_TOL * max(1.0, float(ref.abs().max()))
    assert float((out - ref).abs().max()) <= bound
    with torch.inference_mode():
        for kind in list_descriptors():
            head = build_descriptor(kind, lite0)
            cos = (head.describe(out) * head.describe(ref)).sum(dim=1)  # both L2-normalised
            assert float(cos.min()) >= MIN_COSINE, kind


def test_auto_prefers_the_measured_order(lite0, lite0_cache):
    _any_runtime()
    runner = feature_runner(lite0, 224, "lite0-pretrained", lite0_cache, "auto", threads=1)
    expected = next(n for n in rt.AUTO_ORDER if _installed(n))
    assert runner.name == expected and runner.threads == 1


# --- cache: reuse, damage, identities ----------------------------------------------------------------
def test_cached_export_is_reused(tmp_path, monkeypatch):
    name = _any_runtime()
    bb = TinyBackbone().eval()
    first = feature_runner(bb, 32, "tiny-a", tmp_path, name)
    assert first.name == name and first.exported
    assert first.onnx_path == tmp_path / "runtimes" / "tiny-a-32.onnx" and first.onnx_path.is_file()

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    second = feature_runner(bb, 32, "tiny-a", tmp_path, name)
    assert second.name == name and not second.exported and second.fallback_reason is None
    x = torch.randn(3, 3, 32, 32)
    assert torch.allclose(second(x), first(x))


def test_other_identity_or_size_exports_again(tmp_path):
    name = _any_runtime()
    bb = TinyBackbone().eval()
    assert feature_runner(bb, 32, "tiny-a", tmp_path, name).exported
    assert feature_runner(bb, 32, "tiny-b", tmp_path, name).exported
    other = feature_runner(bb, 48, "tiny-a", tmp_path, name)
    assert other.exported and other(torch.randn(1, 3, 48, 48)).shape == (1, 8, 12, 12)


@pytest.mark.parametrize("damage", ["flip", "truncate", "no-sidecar", "bad-sidecar"])
def test_damaged_export_is_never_loaded(tmp_path, monkeypatch, damage):
    name = _any_runtime()
    bb = TinyBackbone().eval()
    path = feature_runner(bb, 32, "tiny", tmp_path, name).onnx_path
    sidecar = path.with_name(path.name + ".json")
    data = bytearray(path.read_bytes())
    if damage == "flip":
        for i in range(len(data) // 3, len(data) // 3 + 16):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "no-sidecar":
        sidecar.unlink()
    else:
        sidecar.write_text("{not json")
    damaged = path.read_bytes()

    loaded: list[bytes] = []
    real = rt._BUILDERS[name]

    def spy(blob: bytes, threads: int):
        loaded.append(bytes(blob))
        return real(blob, threads)

    monkeypatch.setitem(rt._BUILDERS, name, spy)
    again = feature_runner(bb, 32, "tiny", tmp_path, name)
    assert again.name == name and again.exported  # exported anew
    meta = json.loads(sidecar.read_text())
    fresh = path.read_bytes()
    assert meta["size"] == len(fresh) and meta["sha256"] == hashlib.sha256(fresh).hexdigest()
    assert loaded == [fresh]
    if damage in ("flip", "truncate"):
        assert damaged not in loaded


def test_identity_that_is_not_a_file_name_is_hashed(tmp_path):
    p = export_path(tmp_path, "../../etc/checkpoint: run 3", 224)
    assert p.parent == tmp_path / "runtimes" and p.name.startswith("id") and p.name.endswith("-224.onnx")
    assert export_path(tmp_path, "lite0-0123abcd", 224).name == "lite0-0123abcd-224.onnx"
    with pytest.raises(ValueError):
        feature_runner(TinyBackbone(), 32, "", tmp_path, "torch")


# --- fallbacks and errors ----------------------------------------------------------------------------
def test_unknown_runtime_names_the_choices(tmp_path):
    with pytest.raises(ValueError) as err:
        feature_runner(TinyBackbone(), 32, "tiny", tmp_path, "tensorrt")
    for choice in RUNTIMES:
        assert choice in str(err.value)


@pytest.mark.parametrize("name", EXPORTED)
def test_missing_runtime_falls_back_to_torch(tmp_path, monkeypatch, caplog, name):
    monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    bb = TinyBackbone().eval()
    with caplog.at_level("WARNING", logger="engine.runtime"):
        runner = feature_runner(bb, 32, "tiny", tmp_path, name)
    assert runner.name == "torch" and f"{name} is not installed" in runner.fallback_reason
    assert runner.fallback_reason in caplog.text
    assert not (tmp_path / "runtimes").exists()  # nothing exported for a runtime that is not there
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(runner(x), bb.forward_features(x))


def test_auto_with_no_runtime_installed_is_torch_with_a_reason(tmp_path, monkeypatch):
    for name in EXPORTED:
        monkeypatch.setitem(sys.modules, name, None)
    runner = feature_runner(TinyBackbone().eval(), 32, "tiny", tmp_path, "auto")
    assert runner.name == "torch"
    for name in rt.AUTO_ORDER:
        assert f"{name} is not installed" in runner.fallback_reason


def test_auto_passes_over_a_runtime_that_is_not_installed(tmp_path, monkeypatch):
    first, second = rt.AUTO_ORDER
    pytest.importorskip(second)
    pytest.importorskip("onnxscript")
    monkeypatch.setitem(sys.modules, first, None)
    runner = feature_runner(TinyBackbone().eval(), 32, "tiny", tmp_path, "auto")
    assert runner.name == second and runner.fallback_reason is None


def test_export_failure_falls_back_to_torch(tmp_path):
    name = _any_runtime()
    runner = feature_runner(Unexportable().eval(), 32, "odd", tmp_path, name)
    assert runner.name == "torch" and "export failed" in runner.fallback_reason
    assert not list((tmp_path / "runtimes").glob("*.onnx"))  # no partial file left behind
    assert runner(torch.randn(1, 3, 32, 32)).shape == (1, 8, 8, 8)


def test_runtime_that_disagrees_with_torch_is_refused(tmp_path, monkeypatch):
    name = _any_runtime()
    real = rt._BUILDERS[name]

    def off_by_one(blob: bytes, threads: int):
        fn = real(blob, threads)
        return lambda x: fn(x) + 1.0

    monkeypatch.setitem(rt._BUILDERS, name, off_by_one)
    runner = feature_runner(TinyBackbone().eval(), 32, "tiny", tmp_path, name)
    assert runner.name == "torch" and "differs from PyTorch" in runner.fallback_reason


def test_auto_on_a_non_cpu_backbone_is_torch(tmp_path):
    bb = TinyBackbone().to("meta")  # stands for a GPU: no export, no CPU runtime
    runner = feature_runner(bb, 32, "tiny", tmp_path, "auto")
    assert runner.name == "torch" and runner.fallback_reason is None
    explicit = feature_runner(bb, 32, "tiny", tmp_path, "onnxruntime")
    assert explicit.name == "torch" and "CPU" in explicit.fallback_reason
    assert not (tmp_path / "runtimes").exists()


def test_runner_shapes_and_threads(tmp_path):
    bb = TinyBackbone().eval()
    runner = feature_runner(bb, 32, "tiny", tmp_path, "torch")
    assert isinstance(runner, FeatureRunner) and runner.threads == torch.get_num_threads()
    assert runner.fallback_reason is None and runner.onnx_path is None
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        runner(torch.randn(1, 3, 40, 40))


def test_exported_runner_takes_any_batch(tmp_path):
    name = _any_runtime()
    bb = TinyBackbone().eval()
    runner = feature_runner(bb, 32, "tiny", tmp_path, name, threads=1)
    for b in (1, 2, 5):
        x = torch.randn(b, 3, 32, 32)
        assert torch.allclose(runner(x), bb.forward_features(x), atol=1e-5)
    assert runner(torch.randn(0, 3, 32, 32)).shape == (0, 8, 8, 8)


class TinySplit(TinyBackbone):
    """TinyBackbone with the trunk/tail split of tail fine-tuning: its first convolution is the trunk."""

    def forward_trunk(self, x: torch.Tensor, tail: int) -> torch.Tensor:
        assert tail == 1
        return self.conv[:2](x)


def test_a_trunk_runs_exported_under_its_own_name(tmp_path):
    """Tail mode's frozen trunk (forward_trunk) on the runtime: its own export beside the backbone's."""
    name = _any_runtime()
    bb = TinySplit().eval()
    runner = feature_runner(bb, 32, "tiny", tmp_path, name, threads=1, trunk=1)
    assert runner.name == name and runner.onnx_path == tmp_path / "runtimes" / "tiny-trunk1-32.onnx"
    x = torch.randn(3, 3, 32, 32)
    assert runner(x).shape == (3, 8, 16, 16)
    assert torch.allclose(runner(x), bb.forward_trunk(x, 1), atol=1e-5)
