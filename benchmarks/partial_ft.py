"""Experiment: fine-tune only EfficientNet-Lite0's last block and head conv on the CPU, on cached inputs.

Head-only training cannot move R@1 (benchmarks/head_cv.py); full fine-tuning needs a GPU. In between:
the backbone up to its second-to-last block is frozen and run once per image (and its mirror), its
(192, 7, 7) outputs cached; the last MBConv block, the 1x1 head conv and its BatchNorm affine
parameters (running statistics frozen) are trained with triplet + cross-batch memory on GeM of the
map. The starting point is exactly the untrained GeM descriptor. Trains on cub100's classes 0-49 with
10 validation classes carved off (model selection on validation mAP, as the other benchmarks), then
reports the held-out classes 50-99. Not part of the product yet: a measurement for the next step.

    python benchmarks/partial_ft.py --data ../shared/data/cub100
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import train as bench  # noqa: E402  (benchmarks/train.py: evaluate)

from engine.training import data as D  # noqa: E402
from engine.training.losses import TripletLoss  # noqa: E402
from engine.training.metrics import retrieval_metrics  # noqa: E402
from engine.training.sampler import PKSampler  # noqa: E402
from engine.training.xbm import CrossBatchMemory, XBMLoss  # noqa: E402
from models.backbones import get_backbone  # noqa: E402
from models.pooling import gem, l2n  # noqa: E402

log = logging.getLogger("bench.partial_ft")


class Tail(nn.Module):
    """The trainable tail: last block -> head conv -> BN -> swish -> GeM -> L2. (B, 192, 7, 7) -> (B, 1280)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.block = copy.deepcopy(net._blocks[-1])
        self.conv_head, self.bn1, self.swish = copy.deepcopy(net._conv_head), copy.deepcopy(net._bn1), net._swish

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(x, drop_connect_rate=None)
        return l2n(gem(self.swish(self.bn1(self.conv_head(x)))))

    def train(self, mode: bool = True):  # BatchNorm running statistics stay frozen
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self


@torch.no_grad()
def trunk_features(net: nn.Module, paths: list[str], mean, std, views: int, threads: int) -> torch.Tensor:
    """(N, views, 192, 7, 7) float16 outputs of the frozen trunk (stem + all blocks but the last)."""
    out = []
    for s in range(0, len(paths), 64):
        imgs, _ok, sk = D.decode_all(paths[s:s + 64], 224, threads=threads)
        if sk:
            raise RuntimeError(f"unreadable images: {sk[:3]}")
        x = D.normalize(imgs, mean, std)
        per_view = []
        for v in range(views):
            xv = x.flip(-1) if v == 1 else x
            h = net._swish(net._bn0(net._conv_stem(xv)))
            for block in net._blocks[:-1]:
                h = block(h, drop_connect_rate=None)
            per_view.append(h.half())
        out.append(torch.stack(per_view, 1))
        log.warning("trunk features %d / %d", min(s + 64, len(paths)), len(paths))
    return torch.cat(out)


@torch.no_grad()
def embed(tail: Tail, feats: torch.Tensor, batch: int = 256) -> torch.Tensor:
    tail.eval()
    return torch.cat([tail(feats[s:s + batch].float()) for s in range(0, len(feats), batch)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data/cub100")
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--val-every", type=int, default=50)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--margin", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--memory-share", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default="bench_out/train/cache/partial_trunk.pt")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    root = Path(args.data)
    split = json.loads((root / "class_split.json").read_text())
    qr = json.loads((root / "query_retrieval_test.json").read_text())
    train_set = D.scan_labelled(root / "images", split["train_classes"])
    test_set = D.scan_labelled(root / "images", split["test_classes"])
    bb = get_backbone("efficientnet_lite0", "pretrained").eval()
    net = bb.net
    cache = Path(args.cache)
    t0 = time.perf_counter()
    if cache.is_file():
        c = torch.load(cache, weights_only=True)
        tr_feats, te_feats = c["train"], c["test"]
    else:
        tr_feats = trunk_features(net, train_set.paths, bb.mean, bb.std, 2, args.threads)
        te_feats = trunk_features(net, test_set.paths, bb.mean, bb.std, 1, args.threads)[:, 0]
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"train": tr_feats, "test": te_feats}, cache)
    t_cache = time.perf_counter() - t0

    # class-disjoint validation carve (the trainer's own split)
    classes = sorted(set(split["train_classes"]))
    tr_cls, val_cls = D.split_classes(classes, 0.2, 0)
    names = [Path(p).parent.name for p in train_set.paths]
    tr_idx = torch.tensor([i for i, n in enumerate(names) if n in set(tr_cls)])
    val_idx = torch.tensor([i for i, n in enumerate(names) if n in set(val_cls)])
    labels = torch.tensor(train_set.labels)
    tail = Tail(net)
    val_base = retrieval_metrics(embed(tail, tr_feats[val_idx, 0]), labels[val_idx], ks=(1,))
    test_labels = torch.tensor(test_set.labels)
    untrained = bench.evaluate(embed(tail, te_feats), test_labels, test_set.paths, qr, root)

    params = [p for n, p in tail.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    sampler = PKSampler(labels[tr_idx].tolist(), 32, 4, seed=0)
    memory = CrossBatchMemory(max(1, int(args.memory_share * len(tr_idx))), 1280, len(tr_idx))
    loss_fn = XBMLoss(TripletLoss(args.margin, "semihard"), memory, 1.0, args.warmup)
    gen = torch.Generator().manual_seed(0)
    best = {"map": val_base["map"], "it": 0, "state": copy.deepcopy(tail.state_dict()), "val": val_base}
    t1 = time.perf_counter()
    for it in range(1, args.iterations + 1):
        local = sampler.next_batch()
        view = torch.randint(0, 2, (local.numel(),), generator=gen)
        x = tr_feats[tr_idx[local], view].float()
        tail.train()
        emb = tail(x)
        loss, _b, _m = loss_fn(emb, labels[tr_idx[local]], local, it)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % args.val_every == 0 or it == args.iterations:
            v = retrieval_metrics(embed(tail, tr_feats[val_idx, 0]), labels[val_idx], ks=(1,))
            log.warning("it %d loss %.4f val R@1 %.4f mAP %.4f", it, float(loss), v["recall@1"], v["map"])
            if v["map"] > best["map"]:
                best = {"map": v["map"], "it": it, "state": copy.deepcopy(tail.state_dict()), "val": v}
    t_train = time.perf_counter() - t1
    last = bench.evaluate(embed(tail, te_feats), test_labels, test_set.paths, qr, root)
    tail.load_state_dict(best["state"])
    chosen = bench.evaluate(embed(tail, te_feats), test_labels, test_set.paths, qr, root)
    print(f"\n## Last block + head conv fine-tuned on cached trunk features, CPU ({args.threads} threads): "
          f"cache {t_cache:.0f} s, {args.iterations} iterations {t_train:.0f} s; lr {args.lr:g}, margin "
          f"{args.margin:g}, memory {args.memory_share:g} after {args.warmup}\n")
    print("| model (test classes 50-99) | val R@1 | val mAP | R@1 | R@5 | top-1 (q->r) | mAP |")
    print("|---|---|---|---|---|---|---|")
    for name, val, m in (("untrained GeM", val_base, untrained),
                         (f"tail, best on val mAP (it {best['it']})", best["val"], chosen),
                         (f"tail, last (it {args.iterations})", None, last)):
        vr = f"{val['recall@1']:.4f} | {val['map']:.4f}" if val else "- | -"
        print(f"| {name} | {vr} | {m['recall@1']:.4f} | {m['recall@5']:.4f} | {m['top1']:.4f} | {m['map']:.4f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"untrained": untrained, "chosen": chosen, "last": last,
                                               "best_it": best["it"]}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
