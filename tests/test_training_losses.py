"""Miners and losses against brute-force loops over every (a, p, n) on tiny inputs."""

from __future__ import annotations

import itertools

import pytest
import torch

from engine.training.losses import ContrastiveLoss, TripletLoss, build_loss
from engine.training.miners import _defaults, check_triplet_mining, pair_masks, pairwise_distance


class TripletMiner:
    """The oracle the losses are checked against (it lists every tuple). Returns (a, p, n): anchor rows
    of ``emb``; positive and negative rows of ``ref``.

    - ``semihard``: every (a, p, n) with d(a,p) < d(a,n) < d(a,p) + margin
      (i.e. 0 < d(a,p) - d(a,n) + margin < margin).
    - ``hard`` (batch-hard): per anchor, its farthest positive and nearest negative (one triplet).
    - ``all``: every triplet violating the margin, d(a,n) < d(a,p) + margin (the only ones with a
      non-zero loss; the others would add nothing).
    """

    def __init__(self, kind: str = "semihard", margin: float = 0.1) -> None:
        self.kind = check_triplet_mining(kind)
        self.margin = float(margin)

    @torch.no_grad()
    def __call__(self, emb: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor | None = None,
                 ref: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None,
                 ref_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids, ref, ref_labels, ref_ids = _defaults(emb, labels, ids, ref, ref_labels, ref_ids)
        pos, neg = pair_masks(labels, ref_labels, ids, ref_ids)
        return self.mine(pairwise_distance(emb.float(), ref.float()), pos, neg)

    @torch.no_grad()
    def mine(self, dist: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The same on a distance matrix (N, M) and positive / negative masks (N, M)."""
        dist = dist.detach()
        if self.kind == "hard":
            valid = pos.any(1) & neg.any(1)
            d_pos = dist.masked_fill(~pos, float("-inf"))
            d_neg = dist.masked_fill(~neg, float("inf"))
            a = valid.nonzero().squeeze(1)
            return a, d_pos.argmax(1)[a], d_neg.argmin(1)[a]
        a, p = pos.nonzero(as_tuple=True)                  # every (anchor, positive) pair
        d_ap = dist[a, p][:, None]                          # (pairs, 1)
        d_an = dist[a]                                      # (pairs, M)
        ok = neg[a] & (d_an < d_ap + self.margin)
        if self.kind == "semihard":
            ok &= d_an > d_ap
        pair_i, n = ok.nonzero(as_tuple=True)
        return a[pair_i], p[pair_i], n


def _data(n=12, d=5, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    x = x / x.norm(dim=1, keepdim=True)
    labels = torch.arange(n) % classes
    return x, labels


def _brute_triplets(x, labels, margin, kind):
    n = len(x)
    d = torch.cdist(x.double(), x.double())
    out = set()
    for a, p, q in itertools.product(range(n), repeat=3):
        if a == p or labels[a] != labels[p] or labels[a] == labels[q]:
            continue
        dap, dan = d[a, p].item(), d[a, q].item()
        if kind == "semihard" and 0 < dap - dan + margin < margin:
            out.add((a, p, q))
        if kind == "all" and dap - dan + margin > 0:
            out.add((a, p, q))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("margin", [0.1, 0.5])
def test_semihard_equals_brute_force(seed, margin):
    x, labels = _data(seed=seed)
    a, p, n = TripletMiner("semihard", margin)(x, labels)
    got = set(zip(a.tolist(), p.tolist(), n.tolist(), strict=True))
    want = _brute_triplets(x, labels, margin, "semihard")
    assert want, "the example should contain semi-hard triplets"
    assert got == want


def test_all_equals_brute_force_margin_violators():
    x, labels = _data(seed=3)
    a, p, n = TripletMiner("all", 0.2)(x, labels)
    assert set(zip(a.tolist(), p.tolist(), n.tolist(), strict=True)) == _brute_triplets(x, labels, 0.2, "all")


@pytest.mark.parametrize("seed", [0, 4])
def test_batch_hard_equals_brute_force(seed):
    x, labels = _data(n=10, seed=seed)
    a, p, n = TripletMiner("hard", 0.1)(x, labels)
    d = torch.cdist(x.double(), x.double())
    want = []
    for i in range(len(x)):
        pos = [j for j in range(len(x)) if j != i and labels[j] == labels[i]]
        neg = [j for j in range(len(x)) if labels[j] != labels[i]]
        want.append((i, max(pos, key=lambda j: d[i, j].item()), min(neg, key=lambda j: d[i, j].item())))
    assert list(zip(a.tolist(), p.tolist(), n.tolist(), strict=True)) == want


def test_triplet_loss_value_equals_loop():
    x, labels = _data(seed=5)
    margin = 0.3
    out = TripletLoss(margin, "semihard")(x, labels)
    trip = _brute_triplets(x, labels, margin, "semihard")
    d = torch.cdist(x.double(), x.double())
    losses = [max(0.0, d[a, p].item() - d[a, n].item() + margin) for a, p, n in trip]
    losses = [v for v in losses if v > 0]
    assert int(out.tuples) == len(trip)
    assert out.loss.item() == pytest.approx(sum(losses) / len(losses), rel=1e-5)


def test_loss_has_gradients_and_zero_when_nothing_mined():
    x, labels = _data(seed=6)
    x.requires_grad_(True)
    out = TripletLoss(0.1, "hard")(x, labels)
    out.loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # two tight, far-apart clusters: no semi-hard triplet, loss 0 but still differentiable
    y = torch.tensor([[1.0, 0.0], [1.0, 0.001], [0.0, 1.0], [0.001, 1.0]], requires_grad=True)
    out = TripletLoss(0.1, "semihard")(y, torch.tensor([0, 0, 1, 1]))
    assert int(out.tuples) == 0 and out.loss.item() == 0.0
    out.loss.backward()


def test_contrastive_equals_loop():
    x, labels = _data(seed=7)
    out = ContrastiveLoss(0.0, 1.0)(x, labels)
    d = torch.cdist(x.double(), x.double())
    vals = []
    for a, b in itertools.product(range(len(x)), repeat=2):
        if a == b:
            continue
        if labels[a] == labels[b]:
            vals.append(d[a, b].item())
        elif d[a, b] < 1.0:
            vals.append(1.0 - d[a, b].item())
    vals = [v for v in vals if v > 0]
    assert int(out.tuples) == len(vals)
    assert out.loss.item() == pytest.approx(sum(vals) / len(vals), rel=1e-5)


def test_pairwise_distance_matches_cdist():
    x, _ = _data(n=7)
    y, _ = _data(n=5, seed=9)
    assert torch.allclose(pairwise_distance(x, y), torch.cdist(x, y), atol=1e-5)


def test_bad_shapes_are_refused_with_a_message():
    loss = TripletLoss()
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        loss(torch.randn(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        loss(torch.randn(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="mining"):
        TripletMiner("hardest")
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("arcface", 0.1, "semihard")


def _tuple_mean(x, labels, ref, ref_labels, margin, kind):
    """The loss the miner's tuples give, through plain indexing (the definition the losses follow)."""
    m = TripletMiner(kind, margin)
    a, p, n = m(x, labels, torch.arange(len(x)), ref, ref_labels, torch.arange(len(ref)) + 1000)
    d = pairwise_distance(x, ref)
    per = torch.relu(d[a, p] - d[a, n] + margin)
    per = per[per > 0]
    return per.mean() if per.numel() else x.sum() * 0.0, len(a)


@pytest.mark.parametrize("kind", ["semihard", "all", "hard"])
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_value_and_gradient_equal_the_tuple_definition(kind, seed):
    """Against a separate reference set with empty slots (label -1), as the memory passes it."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(10, 6, generator=g), dim=1).requires_grad_(True)
    ref = torch.nn.functional.normalize(torch.randn(30, 6, generator=g), dim=1)
    labels = torch.arange(10) % 4
    ref_labels = torch.arange(30) % 4
    ref_labels[::7] = -1                          # empty slots: neither positive nor negative
    ref_ids = torch.arange(30) + 1000
    got = TripletLoss(0.4, kind)(x, labels, torch.arange(10), ref, ref_labels, ref_ids)
    (gx,) = torch.autograd.grad(got.loss, x)
    keep = ref_labels >= 0
    want, n_tuples = _tuple_mean(x, labels, ref[keep], ref_labels[keep], 0.4, kind)
    (wx,) = torch.autograd.grad(want, x)
    assert n_tuples > 0 and int(got.tuples) == n_tuples
    assert got.loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert torch.allclose(gx, wx, atol=1e-6)
