"""The backbone registry: one contract for every network, offline weights, clear errors."""

from __future__ import annotations

import pytest
import torch

from models.backbones import Backbone, WeightsUnavailableError
from models.registry import get_backbone, list_backbones, weights_available


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("RETRIEVAL_EXPLORER_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def test_registry_lists_default_first_and_rejects_unknown():
    names = list_backbones()
    assert names[0] == "efficientnet_lite0"
    assert {"resnet18", "resnet50", "vgg16", "mobilenet_v2"} <= set(names)
    with pytest.raises(ValueError, match="efficientnet_lite0, resnet18"):
        get_backbone("alexnet")


@pytest.mark.parametrize("name,dim", [("efficientnet_lite0", 1280), ("resnet18", 512), ("vgg16", 512),
                                      ("mobilenet_v2", 1280)])
def test_contract_random_weights(name, dim):
    b = get_backbone(name, weights="random")
    assert isinstance(b, Backbone) and not b.training
    with torch.no_grad():
        f = b.forward_features(torch.randn(1, 3, 96, 128))
        assert f.shape[:2] == (1, dim) == (1, b.feature_dim)
        assert b.forward_head(f).shape == (1, b.fc_dim)
    layers = b.activation_layers()
    assert len(layers) >= 3 and all(isinstance(m, torch.nn.Module) for m in layers.values())


def test_default_weights_come_from_the_package_without_network():
    assert weights_available("efficientnet_lite0")
    b = get_backbone("efficientnet_lite0")
    rnd = get_backbone("efficientnet_lite0", weights="random")
    w1 = b.net._conv_stem.weight
    assert not torch.equal(w1, rnd.net._conv_stem.weight)
    # the pretrained classifier is confident on no particular class for a grey image, but it runs
    with torch.no_grad():
        logits = b(torch.zeros(1, 3, 224, 224))
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


def test_torchvision_weights_unavailable_offline_names_both_ways():
    assert not weights_available("resnet18")
    with pytest.raises(WeightsUnavailableError) as info:
        get_backbone("resnet18")
    msg = str(info.value)
    assert "--weights" in msg and "cache" in msg and "resnet18-" in msg


def test_local_weights_file(tmp_path):
    src = get_backbone("resnet18", weights="random")
    path = tmp_path / "r18.pth"
    torch.save(src.net.state_dict(), path)
    b = get_backbone("resnet18", weights=str(path))
    assert torch.equal(b.net.conv1.weight, src.net.conv1.weight)
    assert torch.equal(get_backbone("resnet18", weights=path).net.fc.weight, src.net.fc.weight)  # a Path too


def test_damaged_or_malicious_weights_file_is_refused(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match="cannot read weights file"):
        get_backbone("resnet18", weights=str(bad))

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    evil = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, evil)
    with pytest.raises(ValueError, match="cannot read weights file"):
        get_backbone("resnet18", weights=str(evil))
    assert not (tmp_path / "pwned").exists()


def test_missing_weights_file():
    with pytest.raises(FileNotFoundError):
        get_backbone("resnet18", weights="/nonexistent/file.pth")


def test_lite0_feature_map_follows_tf_same_padding_at_any_size():
    """Dynamic "same" padding: the map is ceil(H/32) x ceil(W/32), also for sizes that are not 224."""
    b = get_backbone("efficientnet_lite0", weights="random")
    with torch.no_grad():
        for h, w in [(100, 65), (33, 47), (64, 96)]:  # odd sizes on the way down, where 224's static pads differ
            f = b.forward_features(torch.randn(1, 3, h, w))
            assert f.shape == (1, 1280, -(-h // 32), -(-w // 32))


@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v2", "resnet18"])
def test_activation_layers_fire_shallow_to_deep(name):
    b = get_backbone(name, weights="random")
    layers = b.activation_layers()
    seen: list[tuple[str, int]] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: seen.append((n, out.shape[-1])))
             for n, m in layers.items()]
    try:
        with torch.no_grad():
            b.forward_features(torch.randn(1, 3, 64, 64))
    finally:
        for h in hooks:
            h.remove()
    assert [n for n, _ in seen] == list(layers)  # each fires once, in the listed order
    widths = [w for _, w in seen]
    assert widths == sorted(widths, reverse=True)  # maps shrink (or stay) with depth
    assert list(layers)[0] == "stem" and list(layers)[-1].startswith(("head conv", "layer4"))


def test_truncated_weights_file_names_the_file(tmp_path):
    src = get_backbone("mobilenet_v2", weights="random")
    good = tmp_path / "m.pth"
    torch.save(src.net.state_dict(), good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="cut.pth"):
        get_backbone("mobilenet_v2", weights=str(cut))
    with pytest.raises(ValueError, match="do not fit"):  # a readable file for another network
        get_backbone("efficientnet_lite0", weights=str(good))


def test_checkpoint_path_dispatches_to_the_trained_model_loader(tmp_path, monkeypatch):
    import models.embedding as embedding

    ckpt = tmp_path / "trained.pt"
    ckpt.write_bytes(b"stand-in")
    calls = []
    sentinel = get_backbone("resnet18", weights="random")
    monkeypatch.setattr(embedding, "load_trained_backbone",
                        lambda path, device="cpu": calls.append((path, device)) or sentinel)
    assert get_backbone(str(ckpt), device="cpu") is sentinel
    assert calls == [(str(ckpt), "cpu")]
    assert weights_available(str(ckpt))
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        get_backbone(str(tmp_path / "missing.pt"))


def test_allow_download_false_overrides_the_environment(monkeypatch):
    monkeypatch.delenv("RETRIEVAL_EXPLORER_OFFLINE")
    with pytest.raises(WeightsUnavailableError, match="downloads are off"):
        get_backbone("resnet50", allow_download=False)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v2", "resnet18"])
def test_trunk_then_tail_is_forward_features(name):
    torch.manual_seed(0)
    b = get_backbone(name, weights="random").eval()
    x = torch.randn(2, 3, 64, 48)
    n = len(b.feature_units())
    with torch.no_grad():
        want = b.forward_features(x)
        for k in (1, 3, n - 1):
            assert torch.equal(b.forward_tail(b.forward_trunk(x, k), k), want), k
    params = {id(p) for m in b.tail_modules(2) for p in m.parameters()}
    assert 0 < len(params) < len(list(b.parameters()))
    with pytest.raises(ValueError, match=f"between 1 and {n - 1}"):
        b.tail_modules(n)


def test_backbone_without_units_refuses_tail_training():
    with pytest.raises(ValueError, match="cannot be split"):
        get_backbone("vgg16", weights="random").tail_modules(1)
