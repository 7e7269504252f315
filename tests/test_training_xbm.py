"""Cross-batch memory: keyed by sample, loss equal to a brute-force loop, degenerate sizes."""

from __future__ import annotations

import itertools

import pytest
import torch

from engine.training.losses import TripletLoss
from engine.training.xbm import CrossBatchMemory, XBMLoss


def _unit(n, d, g):
    x = torch.randn(n, d, generator=g)
    return x / x.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("seed", range(5))
def test_memory_never_holds_two_entries_of_one_sample(seed):
    g = torch.Generator().manual_seed(seed)
    n_samples, size, d = 30, 11, 4
    mem = CrossBatchMemory(size, d, n_samples)
    latest: dict[int, torch.Tensor] = {}
    for _ in range(60):
        b = int(torch.randint(1, 16, (1,), generator=g))
        ids = torch.randint(n_samples, (b,), generator=g)       # repeats inside a batch too
        emb = _unit(b, d, g)
        mem.enqueue(emb, ids % 3, ids)
        for i, e in zip(ids.tolist(), emb, strict=True):
            latest[i] = e
        e, lab, ids_in = mem.contents()
        assert len(set(ids_in.tolist())) == len(ids_in)           # one entry per sample
        assert len(ids_in) == mem.fill <= size
        for row, i in zip(e, ids_in.tolist(), strict=True):     # and it is the newest embedding
            assert torch.equal(row, latest[i])
        assert torch.equal(lab, ids_in % 3)
        used = (mem.slot_of >= 0).nonzero().squeeze(1)              # the id -> slot table agrees
        assert sorted(used.tolist()) == sorted(ids_in.tolist())


def test_state_round_trip():
    g = torch.Generator().manual_seed(0)
    mem = CrossBatchMemory(6, 3, 20)
    mem.enqueue(_unit(5, 3, g), torch.arange(5) % 2, torch.arange(5))
    mem.enqueue(_unit(4, 3, g), torch.arange(4) % 2, torch.arange(8, 12))
    other = CrossBatchMemory(6, 3, 20)
    other.load_state_dict(mem.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(mem.contents(), other.contents(), strict=True))
    assert torch.equal(mem.slot_of, other.slot_of) and other.ptr == mem.ptr
    with pytest.raises(ValueError, match="ids must be"):
        mem.enqueue(_unit(1, 3, g), torch.tensor([0]), torch.tensor([20]))


def test_memory_loss_equals_brute_force_loop():
    g = torch.Generator().manual_seed(3)
    margin, d, n_samples = 0.4, 4, 40
    mem = CrossBatchMemory(25, d, n_samples)
    for _ in range(4):  # fill with older batches
        ids = torch.randperm(n_samples, generator=g)[:8]
        mem.enqueue(_unit(8, d, g), ids % 4, ids)
    ids = torch.randperm(n_samples, generator=g)[:8]
    emb, labels = _unit(8, d, g), ids % 4
    xbm = XBMLoss(TripletLoss(margin, "semihard"), mem, weight=0.5, warmup_iters=0)
    total, part_b, part_m = xbm(emb, labels, ids, iteration=5)
    # brute force: anchors from the batch, positives / negatives from the memory after enqueueing
    m_emb, m_lab, m_ids = mem.contents()
    vals = []
    for a, p, n in itertools.product(range(8), range(len(m_ids)), range(len(m_ids))):
        if m_ids[p] == ids[a] or m_lab[p] != labels[a] or m_lab[n] == labels[a]:
            continue
        dap = (emb[a] - m_emb[p]).norm().item()
        dan = (emb[a] - m_emb[n]).norm().item()
        if dap < dan < dap + margin:
            vals.append(dap - dan + margin)
    assert int(part_m.tuples) == len(vals) > 0
    assert part_m.loss.item() == pytest.approx(sum(vals) / len(vals), rel=1e-5)
    assert total.item() == pytest.approx(part_b.loss.item() + 0.5 * part_m.loss.item(), rel=1e-6)


def test_memory_of_one_batch_gives_the_plain_triplet_loss():
    g = torch.Generator().manual_seed(1)
    ids = torch.arange(12)
    emb, labels = _unit(12, 5, g), ids % 3
    loss = TripletLoss(0.3, "semihard")
    plain = loss(emb, labels, ids)
    mem = CrossBatchMemory(12, 5, 12)
    _, _, part_m = XBMLoss(loss, mem, 1.0, 0)(emb, labels, ids, iteration=0)
    assert int(part_m.tuples) == int(plain.tuples) > 0
    assert part_m.loss.item() == pytest.approx(plain.loss.item(), rel=1e-6)


def test_memory_is_off_during_warmup():
    g = torch.Generator().manual_seed(2)
    mem = CrossBatchMemory(10, 3, 10)
    xbm = XBMLoss(TripletLoss(0.3), mem, 1.0, warmup_iters=5)
    ids = torch.arange(6)
    _, _, part_m = xbm(_unit(6, 3, g), ids % 2, ids, iteration=4)
    assert part_m is None and mem.fill == 0
    _, _, part_m = xbm(_unit(6, 3, g), ids % 2, ids, iteration=5)
    assert part_m is not None and mem.fill == 6
