"""A training step never reads the device: no op that makes the host wait for the GPU.

On CUDA every ``.item()``, ``nonzero``, boolean-mask index or ``unique`` blocks Python until the
GPU has caught up, so the GPU idles while Python queues the next kernels. The check runs on the
CPU (CI has no GPU): it records every aten op of a step and looks for the ones that sync.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from engine.training.losses import ContrastiveLoss, TripletLoss
from engine.training.trainer import _FullData, _HeadData, _TailData
from engine.training.xbm import CrossBatchMemory, XBMLoss
from models.embedding import EmbeddingHead, build_model_from_config

SYNC_OPS = {"aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::nonzero", "aten::nonzero_numpy",
            "aten::masked_select", "aten::_unique", "aten::_unique2", "aten::unique_dim",
            "aten::unique_consecutive", "aten::repeat_interleave"}


class SyncRecorder(TorchDispatchMode):
    """Names of the host-syncing ops run under it (boolean-mask indexing counted as nonzero)."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[str] = []
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        self.ops += 1
        if name in SYNC_OPS:
            self.syncs.append(name)
        elif name in ("aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"):
            idx = args[1] if len(args) > 1 else []
            if any(t is not None and t.dtype == torch.bool for t in idx):
                self.syncs.append(name + " (boolean mask)")
        return func(*args, **(kwargs or {}))


def _recorder_sees_syncs() -> None:
    rec = SyncRecorder()
    with rec:
        x = torch.randn(5)
        x[x > 0].sum()
        float(x.sum())
    assert "aten::index (boolean mask)" in rec.syncs and "aten::_local_scalar_dense" in rec.syncs


def test_the_recorder_sees_syncs():
    _recorder_sees_syncs()


@pytest.mark.parametrize("loss", [TripletLoss(0.2, "semihard"), TripletLoss(0.2, "all"), TripletLoss(0.2, "hard"),
                                  ContrastiveLoss(0.0, 0.6)], ids=["semihard", "all", "hard", "contrastive"])
def test_head_step_with_memory_has_no_host_sync(loss):
    g = torch.Generator().manual_seed(0)
    n, c = 40, 16
    feats = torch.randn(n, 2, c, generator=g)
    labels = torch.arange(n) % 8
    source = _HeadData(feats, torch.device("cpu"))
    head = EmbeddingHead(c)
    model = torch.nn.Module()
    model.head = head
    memory = CrossBatchMemory(24, c, n)
    xbm = XBMLoss(loss, memory, 1.0, warmup_iters=1)
    rec = SyncRecorder()
    for it in range(4):
        ids = torch.randperm(n, generator=g)[:12]
        with rec:
            emb = source.embed_train(model, ids, g)
            total, part_b, part_m = xbm(emb, labels[ids], ids, it)
            total.backward()
            torch.stack([total.detach(), part_b.tuples.float(), memory.fill_tensor().float()])
    assert rec.ops > 100 and rec.syncs == []
    assert memory.fill > 0 and part_m is not None and torch.isfinite(total)


def _record_memory_step(model, source) -> SyncRecorder:
    """One step of ``source`` (6 samples of 3 classes) with a memory, recorded."""
    memory = CrossBatchMemory(8, model.head.out_dim, 10)
    xbm = XBMLoss(TripletLoss(0.2), memory, 1.0, warmup_iters=0)
    g = torch.Generator().manual_seed(1)
    rec = SyncRecorder()
    ids = torch.tensor([0, 1, 2, 3, 4, 5])
    with rec:
        emb = source.embed_train(model, ids, g)
        total, _, _ = xbm(emb, ids % 3, ids, 0)
        total.backward()
    return rec


def _lite0():
    torch.manual_seed(0)
    model = build_model_from_config({"backbone": "efficientnet_lite0", "weights": "random", "pooling": "gem"})
    model.train()
    return model


def test_full_mode_augmented_step_has_no_host_sync():
    model = _lite0()
    images = torch.randint(0, 256, (10, 3, 40, 40), dtype=torch.uint8)
    rec = _record_memory_step(model, _FullData(images, torch.device("cpu"), 32, model.backbone.mean,
                                               model.backbone.std))
    assert rec.ops > 200 and rec.syncs == []


def test_tail_mode_step_has_no_host_sync():
    model = _lite0()
    with torch.no_grad():
        maps = model.backbone.forward_trunk(torch.randn(20, 3, 32, 32), 3).half().view(10, 2, -1, 1, 1)
    rec = _record_memory_step(model, _TailData(maps, torch.device("cpu"), 3))
    assert rec.ops > 50 and rec.syncs == []
