"""Bare inference of the backbone's feature map per runtime, side by side in one run (issue 11, item 2).

PyTorch eager, ONNX Runtime and OpenVINO (f32, as engine.runtime runs them) run
``forward_features`` on the same real images (the demo photographs, 224 px), interleaved: every round
times each batch size for each runtime in turn, so a change of machine load falls on all of them.
Reported per runtime and batch size: median images/s over the rounds (and the range), and the max
absolute difference of its feature map from PyTorch's (the map's own max |value| is printed too).

Variants timed beside them, not used by the engine: OpenVINO with bf16 inference precision, and
ONNX Runtime with its worker threads spinning between operators (its default; the engine turns it
off). int8 is not measured (it needs a calibrated post-training quantisation, NNCF, and an R@1
measurement on cub100).

    python benchmarks/runtimes.py                        # 5 rounds, batches 8 16 32, 2 threads
    python benchmarks/runtimes.py --rounds 5 --batches 32 --threads 1
    python benchmarks/runtimes.py --r1 ../shared/data/cub100      # + R@1 per runtime on cub100 test classes

``--r1``: cub100 test classes 50-99 (PROTOCOL.md: 224 centre crop of the 227 image, cosine,
leave-one-out R@1 and query -> retrieval top-1) through every runtime and variant (PyTorch itself only
with ``--r1-torch``: slow on 2 cores), each image decoded once and fed to all of them.

Prints a markdown table on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine.images import build_transform, load_image, scan_images  # noqa: E402
from engine.runtime import available_runtimes, export_onnx, feature_runner  # noqa: E402
from models.registry import get_backbone  # noqa: E402

log = logging.getLogger("bench.runtimes")
DEMO = Path(__file__).resolve().parents[1] / "resources" / "demo"


def load_batch(n: int, size: int, mean, std) -> torch.Tensor:
    """The first ``n`` demo photographs (repeated if there are fewer) as a (n, 3, size, size) batch."""
    files = scan_images(DEMO)
    tf = build_transform(size, mean, std)
    imgs = [tf(load_image(f)) for f in files[:n]]
    while len(imgs) < n:
        imgs += imgs[: n - len(imgs)]
    return torch.stack(imgs)


def variant_openvino_bf16(data: bytes, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    import openvino as ov

    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
              "INFERENCE_PRECISION_HINT": "bf16"}
    request = core.compile_model(core.read_model(io.BytesIO(data)), "CPU", config).create_infer_request()
    return lambda x: torch.from_numpy(request.infer({0: x.numpy()}, share_outputs=False)[0])


def variant_ort_spin(data: bytes, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1")  # ORT's default
    session = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def time_images_per_s(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                      min_images: int) -> tuple[float, float]:
    """One warm-up call, then enough calls for ``min_images`` images: (images/s of the timed calls, CPU
    milliseconds per image of this process, all its threads: less sensitive to other processes' load)."""
    fn(x)
    reps = max(2, -(-min_images // len(x)))
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(reps):
        fn(x)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = reps * len(x)
    return n / wall, 1000 * cpu / n


def recall_per_runtime(bb, runners: dict[str, Callable[[torch.Tensor], torch.Tensor]],
                       args: argparse.Namespace) -> list[dict]:
    """cub100 test-class R@1 / top-1 of every descriptor head on every runtime's feature maps."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from descriptors import load_protocol  # benchmarks/descriptors.py: the PROTOCOL.md split

    from engine.evaluation import evaluate
    from models.descriptors import build_descriptor, list_descriptors

    proto = load_protocol(args.r1, parts=("test",))
    names = [n for n in runners if n != "torch" or args.r1_torch]
    heads = {k: build_descriptor(k, bb) for k in list_descriptors()}
    tf = build_transform(args.image_size, bb.mean, bb.std, crop_fraction=224 / 227)
    vecs: dict[tuple[str, str], list[torch.Tensor]] = {}
    seconds = dict.fromkeys(names, 0.0)
    paths, bs = proto["test"], max(args.batches)
    for start in range(0, len(paths), bs):
        x = torch.stack([tf(load_image(p)) for p in paths[start:start + bs]])
        for name in names:
            t0 = time.perf_counter()
            fmap = runners[name](x)
            seconds[name] += time.perf_counter() - t0
            with torch.inference_mode():
                for kind, head in heads.items():
                    vecs.setdefault((name, kind), []).append(head.describe(fmap))
        log.info("R@1 extraction: %d / %d images", min(start + bs, len(paths)), len(paths))
    rows = []
    for (name, kind), parts in vecs.items():
        m = evaluate(torch.cat(parts).numpy(), proto["labels"], ks=(1,), queries=proto["query"],
                     retrieval=proto["retrieval"])
        rows.append({"runtime": name, "descriptor": kind, "recall@1": m["recall@1"], "top1": m["top1"],
                     "images_per_s": len(paths) / seconds[name]})
    return rows


def print_r1(rows: list[dict]) -> None:
    kinds = list(dict.fromkeys(r["descriptor"] for r in rows))
    print("\ncub100 test classes 50-99, R@1 leave-one-out / top-1 query -> retrieval, "
          "224 centre crop of the 227 image, cosine")
    print("| runtime | " + " | ".join(kinds) + " | inference images/s in this pass |")
    print("|" + "---|" * (len(kinds) + 2))
    for name in dict.fromkeys(r["runtime"] for r in rows):
        got = {r["descriptor"]: r for r in rows if r["runtime"] == name}
        cells = [f"{got[k]['recall@1']:.4f} / {got[k]['top1']:.4f}" for k in kinds]
        rate = next(iter(got.values()))["images_per_s"]
        print(f"| {name} | " + " | ".join(cells) + f" | {rate:.1f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-images", type=int, default=64,
                    help="images timed per runtime, batch size and round")
    ap.add_argument("--no-variants", action="store_true",
                    help="leave out OpenVINO bf16 and ORT with spinning")
    ap.add_argument("--r1", type=Path, default=None, metavar="CUB100",
                    help="also measure R@1 per runtime on the cub100 test classes in this folder")
    ap.add_argument("--r1-torch", action="store_true", help="with --r1: PyTorch too (slow)")
    ap.add_argument("--r1-only", action="store_true", help="with --r1: skip the speed rounds")
    args = ap.parse_args(argv)
    if (args.r1_only or args.r1_torch) and args.r1 is None:
        ap.error("--r1-only and --r1-torch go with --r1 CUB100")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    torch.set_num_threads(args.threads)
    bb = get_backbone(args.backbone, weights="pretrained")
    x_all = load_batch(max(args.batches), args.image_size, bb.mean, bb.std)
    with torch.inference_mode():
        ref = bb.forward_features(x_all)

    def torch_fn(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return bb.forward_features(x)

    runners: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"torch": torch_fn}
    setup: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        _, data, _ = export_onnx(bb, args.image_size, "bench", cache)
        setup["export"] = time.perf_counter() - t0
        for name in available_runtimes():
            if name == "torch":
                continue
            t0 = time.perf_counter()
            r = feature_runner(bb, args.image_size, "bench", cache, name, threads=args.threads)
            setup[name] = time.perf_counter() - t0
            if r.name != name:
                log.warning("%s unavailable: %s", name, r.fallback_reason)
                continue
            runners[name] = r
        if not args.no_variants:
            if "openvino" in runners:
                runners["openvino bf16"] = variant_openvino_bf16(data, args.threads)
            if "onnxruntime" in runners:
                runners["onnxruntime spinning"] = variant_ort_spin(data, args.threads)

    diffs = {name: float((fn(x_all) - ref).abs().max()) for name, fn in runners.items()}
    if args.r1 is not None:
        r1_rows = recall_per_runtime(bb, runners, args)
    if args.r1_only:
        print_r1(r1_rows)
        return 0
    rates: dict[tuple[str, int], list[float]] = {}
    cpu_ms: dict[tuple[str, int], list[float]] = {}
    load_before = os.getloadavg()
    for rnd in range(args.rounds):
        for bs in args.batches:
            x = x_all[:bs].contiguous()
            for name, fn in runners.items():
                rate, ms = time_images_per_s(fn, x, args.min_images)
                rates.setdefault((name, bs), []).append(rate)
                cpu_ms.setdefault((name, bs), []).append(ms)
                log.info("round %d  batch %2d  %-20s %7.1f images/s  %6.1f CPU ms/image",
                         rnd + 1, bs, name, rate, ms)
    load_after = os.getloadavg()

    print(f"\n{args.backbone}, {args.image_size} px, forward_features only, {args.threads} threads, "
          f"{args.rounds} interleaved rounds, {len(x_all)} demo photographs; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs; "
          f"torch {torch.__version__}")
    print(f"load average (1, 5, 15 min) before {tuple(round(v, 2) for v in load_before)}, "
          f"after {tuple(round(v, 2) for v in load_after)}")
    print(f"ONNX export {setup['export']:.1f} s; runner set-up from the cached export "
          "(probe check included): "
          + ", ".join(f"{k} {v:.2f} s" for k, v in setup.items() if k != "export"))
    print(f"max |torch map| = {float(ref.abs().max()):.2f}\n")
    head = "| runtime | " + " | ".join(f"batch {b}: images/s median (range) x torch" for b in args.batches)
    print(head + " | CPU ms/image (median, batch " + str(max(args.batches)) + ") | max abs diff vs torch |")
    print("|" + "---|" * (len(args.batches) + 3))
    base = {bs: statistics.median(rates[("torch", bs)]) for bs in args.batches}
    for name in runners:
        cells = []
        for bs in args.batches:
            v = rates[(name, bs)]
            med = statistics.median(v)
            cells.append(f"{med:.1f} ({min(v):.1f}-{max(v):.1f}) x{med / base[bs]:.1f}")
        ms = statistics.median(cpu_ms[(name, max(args.batches))])
        print(f"| {name} | " + " | ".join(cells) + f" | {ms:.1f} | {diffs[name]:.2g} |")
    if args.r1 is not None:
        print_r1(r1_rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
