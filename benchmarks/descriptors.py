"""Untrained-descriptor benchmark on cub100 (PROTOCOL.md): every backbone with weights at hand x
fc, spoc, mac, gem, rmac, rmac + PCA-whitening learned on the TRAIN classes 0-49.

Test classes 50-99 only: leave-one-out R@1, R@5, mAP over the 2,953 test images, top-1 with
query_retrieval_test.json (593 queries -> 2,360 retrieval images), dimension, and extraction
throughput (images/s of the one pass that computes the feature map once for all the heads).

    python benchmarks/descriptors.py --data ../shared/data/cub100                    # all backbones
    python benchmarks/descriptors.py --backbones efficientnet_lite0 --json-out r.json

Prints a markdown table on stdout; progress and notes on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.cli.common import TextProgress, resolve_device  # noqa: E402
from engine.evaluation import evaluate  # noqa: E402
from engine.extraction import extract_multi, learn_whitening  # noqa: E402
from engine.images import scan_images  # noqa: E402
from engine.splits import load_split  # noqa: E402

log = logging.getLogger("bench.descriptors")

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cub100"
DESCRIPTORS = ("fc", "spoc", "mac", "gem", "rmac")


def load_protocol(data: Path, parts: tuple[str, ...] = ("train", "test")) -> dict:
    """Paths and labels of the train and/or test classes, and the query/retrieval split (as row
    indices into the test list)."""
    classes = json.loads((data / "class_split.json").read_text())
    images = data / "images"

    def files(names: list[str]) -> tuple[list[str], list[str]]:
        paths, labels = [], []
        for name in names:
            found = scan_images(images / name)
            if not found:
                raise FileNotFoundError(f"no images for class {name} under {images}")
            paths += [str(p) for p in found]
            labels += [name] * len(found)
        return paths, labels

    out: dict = {"train": []}
    if "train" in parts:
        out["train"], _ = files(classes["train_classes"])
    if "test" not in parts:
        return out
    test_paths, test_labels = files(classes["test_classes"])
    split = load_split(data / "query_retrieval_test.json")
    row = {p: i for i, p in enumerate(test_paths)}
    q = [row[str(data / rel)] for rel in split["query"]]
    r = [row[str(data / rel)] for rel in split["retrieval"]]
    out.update(test=test_paths, labels=test_labels, query=q, retrieval=r)
    return out


def bench_backbone(name: str, proto: dict, args: argparse.Namespace, device: str) -> list[dict]:
    from models.backbones import get_backbone
    from models.descriptors import build_descriptor

    bb = get_backbone(name, weights="pretrained", device=device)
    common = dict(image_size=args.image_size, batch_size=args.batch_size, num_workers=args.workers,
                  device=device, crop_fraction=args.crop_fraction)
    heads = {}
    for kind in DESCRIPTORS:
        if kind == "fc" and getattr(bb, "fc_dim", None) is None:
            continue
        heads[kind] = build_descriptor(kind, bb)
    t0 = time.perf_counter()
    if args.whitening_file:
        from models.whitening import PCAWhitening

        whitening = PCAWhitening.load(args.whitening_file)
    else:
        whitening = learn_whitening("rmac", bb, proto["train"], progress=TextProgress(f"{name} whitening (train)"),
                                    **common)
        if args.save_whitening:
            whitening.save(args.save_whitening)
    whiten_s = time.perf_counter() - t0
    if args.whiten_only:
        return []
    heads["rmac+w"] = build_descriptor("rmac", bb, whitening=whitening)
    results = extract_multi(bb, heads, proto["test"], progress=TextProgress(f"{name} test"), **common)
    rows = []
    for kind, res in results.items():
        if res.skipped:
            log.warning("%s: %d test images skipped", name, len(res.skipped))
        if len(res.paths) != len(proto["test"]):
            raise RuntimeError(f"{name}/{kind}: {len(res.skipped)} test images could not be read")
        m = evaluate(res.vectors, proto["labels"], ks=(1, 5), queries=proto["query"], retrieval=proto["retrieval"])
        rows.append({
            "backbone": name, "descriptor": kind, "recall@1": m["recall@1"], "recall@5": m["recall@5"],
            "map": m["map"], "top1": m["top1"], "dim": int(res.vectors.shape[1]),
            "images_per_s": res.images_per_s, "whitening_s": whiten_s if kind == "rmac+w" else None,
        })
    return rows


def markdown(rows: list[dict]) -> str:
    out = ["| backbone | descriptor | R@1 | R@5 | mAP | top-1 (q->r) | dim | images/s |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['backbone']} | {r['descriptor']} | {r['recall@1']:.3f} | {r['recall@5']:.3f} | "
                   f"{r['map']:.3f} | {r['top1']:.3f} | {r['dim']} | {r['images_per_s']:.1f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the cub100 folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--crop-fraction", type=float, default=224 / 227)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--backbones", default=None, help="comma-separated (default: every one with weights)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json-out", type=Path, default=None)
    p.add_argument("--whitening-file", default=None,
                   help="load the R-MAC whitening (learned on the train classes earlier) instead of learning it")
    p.add_argument("--save-whitening", default=None, help="save the learned R-MAC whitening to this file")
    p.add_argument("--whiten-only", action="store_true",
                   help="only learn (and save) the whitening; needs the train classes only")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import torch

    from models.backbones import list_backbones, weights_available

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    names = args.backbones.split(",") if args.backbones else list_backbones()
    available = [n for n in names if weights_available(n)]
    unavailable = [n for n in names if n not in available]
    if args.whiten_only and len(available) != 1:
        p.error("--whiten-only needs exactly one backbone (--backbones NAME)")
    if args.whiten_only and not args.save_whitening:
        p.error("--whiten-only needs --save-whitening FILE")
    if args.whitening_file and len(available) != 1:
        p.error("--whitening-file needs exactly one backbone (--backbones NAME)")
    parts = ("train",) if args.whiten_only else ("test",) if args.whitening_file else ("train", "test")
    proto = load_protocol(args.data.resolve(), parts)
    if not args.whiten_only:
        log.info("%d train images, %d test images, %d queries, %d retrieval", len(proto["train"]),
                 len(proto["test"]), len(proto["query"]), len(proto["retrieval"]))
    rows: list[dict] = []
    for name in available:
        rows += bench_backbone(name, proto, args, device)
    if args.whiten_only:
        log.info("whitening saved to %s", args.save_whitening)
        return 0
    if device == "cuda":
        machine = torch.cuda.get_device_name(0)
    else:
        machine = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    table = markdown(rows)
    notes = [f"cub100 test classes 50-99 ({len(proto['test'])} images; top-1: {len(proto['query'])} queries -> "
             f"{len(proto['retrieval'])} retrieval), {args.image_size} px, crop fraction {args.crop_fraction:.4f}, "
             f"device: {machine}, batch {args.batch_size}, {args.workers} workers. "
             "rmac+w: PCA-whitening learned on the regional vectors of the train classes 0-49. "
             "images/s: the one extraction pass over the test images shared by all heads of a backbone."]
    if unavailable:
        notes.append("Not measured (no weights available offline): " + ", ".join(unavailable) + ".")
    sys.stdout.write(table + "\n\n" + "\n".join(notes) + "\n")
    if args.json_out:
        args.json_out.write_text(json.dumps({"rows": rows, "unavailable": unavailable, "device": machine,
                                             "image_size": args.image_size, "crop_fraction": args.crop_fraction},
                                            indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
