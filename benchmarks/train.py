"""Training benchmark on cub100 (class-disjoint protocol): an untrained pooled descriptor (MAC, or --pooling) vs
triplet vs triplet + cross-batch memory, in head, tail and/or full mode; R@1, top-1 (query -> retrieval),
mAP on the held-out classes 50-99, training images/s, wall time, peak memory; a markdown table.

Trains on the protocol's train classes (validation classes carved from them, used for early
stopping / model selection); the test classes are only touched for the final numbers.

    python benchmarks/train.py --data ../shared/data/cub100 --modes head             # CPU: minutes
    python benchmarks/train.py --data ../shared/data/cub100 --modes tail --seeds 0,1,2 # CPU: ~25 minutes
    python benchmarks/train.py --data DIR --modes head,full --bare-step                # one GPU command

--bare-step also measures the bare EfficientNet-Lite0 training step (fwd+bwd+AdamW) beside the full
loop at the same batch: on CUDA bf16, channels_last, batch 256, eager and torch.compile; on the CPU
float32, batch 32, eager (the loop's own cost; a GPU is where host syncs matter).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.training import data as D  # noqa: E402
from engine.training.config import TrainConfig  # noqa: E402
from engine.training.metrics import query_top1, retrieval_metrics  # noqa: E402
from engine.training.trainer import compute_pooled_features, resolve_device, train  # noqa: E402
from models.embedding import build_model_from_config, freeze_batchnorm, l2n, load_trained_backbone  # noqa: E402

log = logging.getLogger("bench.train")


def _resolve(root: Path, rel: str) -> str:
    p = root / rel
    if p.exists():
        return str(p)
    for ext in D.IMAGE_EXTENSIONS:  # a re-encoded copy (e.g. .webp) of the protocol's files
        q = p.with_suffix(ext)
        if q.exists():
            return str(q)
    raise FileNotFoundError(p)


def peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def evaluate(vecs: torch.Tensor, labels: torch.Tensor, paths: list[str], qr: dict, root: Path) -> dict:
    m = retrieval_metrics(vecs, labels, ks=(1, 5))
    pos = {p: i for i, p in enumerate(paths)}
    q = torch.tensor([pos[_resolve(root, p)] for p in qr["query"]])
    r = torch.tensor([pos[_resolve(root, p)] for p in qr["retrieval"]])
    m["top1"] = query_top1(vecs[q], labels[q], vecs[r], labels[r])
    return m


def pooled_test_features(paths: list[str], pooling: str, device: torch.device, threads: int,
                         cache_dir: Path) -> torch.Tensor:
    """(N, 1280) pooled features of the frozen ImageNet Lite0 for ``paths``, cached in ``cache_dir``
    (the test images never change between runs; the model is built only when the cache is missing)."""
    cache = cache_dir / f"test_{pooling}_{device.type}.pt"
    if cache.is_file():
        return torch.load(cache, weights_only=True)[:, 0]
    model = build_model_from_config(dict(backbone="efficientnet_lite0", weights="pretrained", pooling=pooling,
                                         image_size=224), device)
    feats, _ok, sk = compute_pooled_features(model, paths, image_size=224, views=1, seed=0, device=device,
                                             threads=threads)
    if sk:
        raise RuntimeError(f"unreadable test images: {sk[:3]}")
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(feats, cache)
    return feats[:, 0]


@torch.no_grad()
def embed_full(ckpt: str, paths: list[str], size: int, device: torch.device, threads: int) -> torch.Tensor:
    tb = load_trained_backbone(ckpt, device=str(device))
    out = []
    for s in range(0, len(paths), 64):
        imgs, ok, sk = D.decode_all(paths[s:s + 64], size, threads=threads)
        if sk:
            raise RuntimeError(f"unreadable test images: {sk[:3]}")
        x = D.normalize(imgs.to(device), tb.mean, tb.std)
        if device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                fmap = tb.forward_features(x.contiguous(memory_format=torch.channels_last))
        else:
            fmap = tb.forward_features(x)
        out.append(tb.forward_head(fmap).float().cpu())
    return torch.cat(out)


def bare_step(device: torch.device, batch: int = 256, steps: int = 20, compiled: bool = False,
              warm: int = 8) -> float:
    """images/s of the bare EfficientNet-Lite0 step: fwd + MAC + bwd + AdamW; on CUDA bf16 autocast and
    channels_last (fused AdamW), on the CPU float32. BatchNorm statistics frozen, as in the loop's
    default recipe (batch statistics would cost the bare step extra work the loop does not do)."""
    cuda = device.type == "cuda"
    model = build_model_from_config({"backbone": "efficientnet_lite0", "weights": "random"}, device)
    model.train()
    freeze_batchnorm(model.backbone)
    fwd = torch.compile(model.backbone.forward_features) if compiled else model.backbone.forward_features
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=cuda)
    x = torch.randn(batch, 3, 224, 224, device=device)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            fmap = fwd(x)
        loss = model.embed_fmap(fmap).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    for _ in range(warm):
        step()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return batch * steps / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data/cub100")
    ap.add_argument("--modes", default="head", help="comma list of head, tail, full")
    ap.add_argument("--seeds", default="0", help="comma list of training seeds; with several, each run is repeated "
                    "per seed and mean +- std rows follow (the seed also draws the validation classes)")
    ap.add_argument("--variants", default="triplet,xbm", help="comma list of triplet, xbm")
    ap.add_argument("--pooling", default="mac", help="pooling of the frozen backbone and of the trained models "
                    "(mac, gem, spoc); the untrained row uses the same")
    ap.add_argument("--iterations", type=int, default=800)
    ap.add_argument("--val-every", type=int, default=100)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default="bench_out/train")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="override a TrainConfig field for every run, e.g. --set head_views=4")
    ap.add_argument("--bare-step", action="store_true", help="bare step vs loop throughput (batch 256 on CUDA, 32 on the CPU)")
    ap.add_argument("--json", help="also write all results to this file")
    ap.add_argument("--resume", action="store_true", help="continue each run from its last.pt when there is one "
                    "(e.g. after the machine ran out of memory); rates and wall time then cover the resumed part")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = args.threads or torch.get_num_threads()
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    root = Path(args.data)
    split = json.loads((root / "class_split.json").read_text())
    qr = json.loads((root / "query_retrieval_test.json").read_text())
    img_root = root / "images"
    out = Path(args.out)
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    rows, results = [], {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda"
                         else None, "threads": threads, "torch": torch.__version__, "overrides": overrides}

    # test set (classes 50-99): only for the final numbers
    test = D.scan_labelled(img_root, split["test_classes"])
    test_labels = torch.tensor(test.labels)
    pool = args.pooling
    t0 = time.perf_counter()
    test_pooled = pooled_test_features(test.paths, pool, device, threads, out / "cache")
    m = evaluate(l2n(test_pooled), test_labels, test.paths, qr, root)
    results[f"baseline_{pool}"] = m
    rows.append((f"untrained {pool.upper()} (ImageNet)", "-", m, float("nan"), time.perf_counter() - t0, peak_mem_mb(device)))
    log.info("baseline %s: %s", pool, m)

    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    summary: list[tuple[str, list[dict]]] = []
    for mode, variant, seed in [(mo, v, sd) for mo in args.modes.split(",") if mo
                                for v in args.variants.split(",") if v for sd in seeds]:
        name = f"{mode}_{variant}" + (f"_s{seed}" if len(seeds) > 1 else "")
        what = f"tail ({overrides.get('tail_units', TrainConfig.tail_units)} units)" if mode == "tail" else mode
        label = f"{what}: {'triplet + memory' if variant == 'xbm' else 'triplet'}"
        cfg = TrainConfig(data_root=str(img_root), train_classes=list(split["train_classes"]), mode=mode,
                          memory=(variant == "xbm"), pooling=pool, iterations=args.iterations, val_every=args.val_every,
                          device=str(device), out_dir=str(out / name), name=name, seed=seed,
                          cache_dir=str(out / "cache"), num_threads=args.threads)
        for k, v in overrides.items():
            setattr(cfg, k, v)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rates: list[float] = []
        t = time.perf_counter()
        last = out / name / "last.pt"
        res = train(cfg, on_event=lambda e, r=rates: r.append(e.images_per_s) if e.kind == "iteration" else None,
                    resume_from=last if args.resume and last.is_file() else None)
        wall = time.perf_counter() - t
        peak = peak_mem_mb(device)
        sel = cfg.select_metric
        best_it = max((h for h in res.history if "val" in h), key=lambda h: (h["val"].get(sel, -1), -h["iteration"]))
        if mode == "head":
            ck = torch.load(res.best_checkpoint_path, map_location="cpu", weights_only=True)
            w, b = ck["model"]["head.fc.weight"], ck["model"]["head.fc.bias"]
            vecs = l2n(test_pooled @ w.t() + b)
        else:
            vecs = embed_full(res.best_checkpoint_path, test.paths, cfg.image_size, device, threads)
        m = evaluate(vecs, test_labels, test.paths, qr, root)
        m.update(best_iteration=best_it["iteration"], val_best=best_it["val"], val_baseline=res.baseline_val_metrics,
                 stopped=res.stopped_reason, train_images_per_s=rates[-1] if rates else 0.0, wall_s=wall,
                 peak_mb=peak, val_curve=[(h["iteration"], h["val"].get("recall@1")) for h in res.history
                                          if "val" in h])
        results[name] = m
        rows.append((label + (f" (seed {seed})" if len(seeds) > 1 else ""), best_it["iteration"], m,
                     m["train_images_per_s"], wall, peak))
        if not summary or summary[-1][0] != label:
            summary.append((label, []))
        summary[-1][1].append(m)
        log.info("%s: %s", name, {k: v for k, v in m.items() if k != "val_curve"})

    print(f"\n## cub100, train classes 0-49 (val carved), test classes 50-99 — device: {results['gpu'] or 'cpu'}"
          f" ({threads} threads), torch {torch.__version__}\n")
    print("| model | best it (val) | R@1 | R@5 | top-1 (q->r) | mAP | train img/s | wall s | peak MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    sys.stdout.flush()
    for label, it, m, rate, wall, peak in rows:
        print(f"| {label} | {it} | {m['recall@1']:.4f} | {m['recall@5']:.4f} | {m['top1']:.4f} | {m['map']:.4f} | "
              f"{'-' if rate != rate else f'{rate:.0f}'} | {wall:.0f} | {peak:.0f} |")
    if len(seeds) > 1:
        print(f"\nmean +- std over seeds {seeds}:\n")
        print("| model | R@1 | R@5 | top-1 (q->r) | mAP |")
        print("|---|---|---|---|---|")
        for label, ms in summary:
            cells = []
            for key in ("recall@1", "recall@5", "top1", "map"):
                v = torch.tensor([m[key] for m in ms], dtype=torch.float64)
                cells.append(f"{v.mean():.4f} +- {v.std(unbiased=True) if v.numel() > 1 else 0.0:.4f}")
            print(f"| {label} | " + " | ".join(cells) + " |")
            results[f"mean_{label}"] = dict(zip(("recall@1", "recall@5", "top1", "map"), cells, strict=True))
    if args.json:  # early copy: the bare-step part below may be cut off
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    if args.bare_step:
        # CUDA: batch 256 (32 x 8), eager and compiled. CPU: batch 32 (8 x 4), eager only (a data point
        # for the loop's own cost; without a GPU there is no queue for host syncs to drain)
        cuda = device.type == "cuda"
        P, K = (32, 8) if cuda else (8, 4)  # noqa: N806
        steps, warm, loop_its, last = (20, 8, 50, 30) if cuda else (4, 1, 8, 6)
        modes = (False, True) if cuda else (False,)
        bs = {"batch": P * K}
        for compiled in modes:
            try:
                bs["compile" if compiled else "eager"] = bare_step(device, P * K, steps, compiled, warm)
            except Exception as exc:  # report, don't lose the other numbers
                bs["compile" if compiled else "eager"] = f"failed: {exc}"[:300]
        for compiled in modes:
            key = "loop_compile" if compiled else "loop_eager"
            try:
                rates = []
                cfg = TrainConfig(data_root=str(img_root), train_classes=list(split["train_classes"]), mode="full",
                                  memory=True, warmup_iters=0, iterations=loop_its, val_every=10_000,
                                  classes_per_batch=P, samples_per_class=K, device=str(device),
                                  out_dir=str(out / key), name=key, extra={"compile": compiled},
                                  num_threads=args.threads)
                train(cfg, on_event=lambda e, r=rates: r.append(e.images_per_s) if e.kind == "iteration" else None)
                # steady state: images/s over the last iterations (compilation and warm-up excluded)
                bs[key] = _steady_rate(rates, P * K, last)
            except Exception as exc:
                bs[key] = f"failed: {exc}"[:300]
        results["bare_step"] = bs

    if "bare_step" in results:
        bs = results["bare_step"]
        how = "bf16, channels_last" if device.type == "cuda" else f"float32, {threads} CPU threads"
        print(f"\n| EfficientNet-Lite0, batch {bs['batch']}, {how} | eager img/s | torch.compile img/s |")
        print("|---|---|---|")
        print(f"| bare step (fwd + bwd + AdamW) | {_fmt(bs.get('eager'))} | {_fmt(bs.get('compile', '-'))} |")
        print(f"| full training loop (P x K, memory on) | {_fmt(bs.get('loop_eager'))} | "
              f"{_fmt(bs.get('loop_compile', '-'))} |")
        for k in ("eager", "compile"):
            a, b = bs.get(f"loop_{k}"), bs.get(k)
            if isinstance(a, float) and isinstance(b, float):
                print(f"\nloop / bare ({k}): {a / b:.1%}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


def _steady_rate(cumulative_rates: list[float], batch: int, last: int = 30) -> float:
    """The trainer reports cumulative images/s (one event per iteration, figures read every log_every
    iterations); recover the rate over the ``last`` iterations."""
    n = len(cumulative_rates)
    if n <= last:
        return cumulative_rates[-1]
    t_end = n * batch / cumulative_rates[-1]
    t_mid = (n - last) * batch / cumulative_rates[n - last - 1]
    return last * batch / (t_end - t_mid)


def _fmt(v) -> str:
    return f"{v:.0f}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    sys.exit(main())
