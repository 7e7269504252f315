"""`retrieval-explorer eval`: extract descriptors for a folder of images and report retrieval metrics.

Leave-one-out R@1/5/10 and mAP over the images (all images under --root, or with --split the union of
its query and retrieval lists), and with --split the query -> retrieval top-1. The metrics go to
stdout (a table, or one JSON object with --json); the progress bar and skipped files go to stderr.
A trained checkpoint given as --backbone is evaluated through its trained embedding (descriptor fc) unless a
pooling descriptor is asked for, and then a note says that the trained head is not used.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.cli.common import (
    TextProgress,
    add_model_args,
    default_descriptor,
    dumps_json,
    scales_from_args,
    trained_head_note,
)
from engine.cli.index_cmd import spec_from_args
from engine.collection import Collection
from engine.evaluation import evaluate
from engine.images import scan_images
from engine.splits import labels_for, load_split
from engine.vocabulary import RUNTIMES, ModelSpec, cache_root, resolve_device


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a descriptor on a labelled image folder (R@K, mAP, top-1)",
        description="Extract descriptors for the images under --root and print retrieval metrics. "
        "Labels are the images' parent folder names unless --labels is given.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--root", help="image folder (split and labels paths are relative to it)")
    src.add_argument("--collection", metavar="DIR",
                     help="an indexed folder (`retrieval-explorer index DIR` with the same model options): "
                     "evaluate its stored vectors without extracting anything")
    p.add_argument("--split", default=None,
                   help="JSON or pickle {'query': [...], 'retrieval': [...]} of paths relative to --root")
    p.add_argument("--labels", default=None,
                   help="labels file: 'relative/path label' lines, a JSON mapping, or CUB's image_class_labels.txt")
    add_model_args(p)
    p.add_argument("--crop-fraction", type=float, default=1.0,
                   help="resize the shorter side to size/fraction, then centre-crop (default 1.0: no margin)")
    p.add_argument("--whitening", default=None,
                   help="a whitening file saved by the program (`whiten`, learned for this descriptor and sizes)")
    p.add_argument("--runtime", choices=RUNTIMES, default="auto",
                   help="what runs the backbone on the CPU, as for index (default auto: the first installed of "
                   "onnxruntime or openvino; PyTorch on a GPU)")
    p.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="where collections (with --collection) and exported runtimes are kept (default: "
                   "$RETRIEVAL_EXPLORER_CACHE, else the user cache folder)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (indented, like index and search) instead of a table")
    p.set_defaults(func=run)


def _collect(root: Path, split_file: str | None) -> tuple[list[Path], list[str] | None, list[str] | None]:
    if split_file is None:
        paths = scan_images(root)
        if not paths:
            raise ValueError(f"no image files under {root}")
        return paths, None, None
    split = load_split(split_file, root=root)  # entries leading outside the root are refused, named
    ordered = list(dict.fromkeys(split["query"] + split["retrieval"]))
    return [root / rel for rel in ordered], split["query"], split["retrieval"]


def evaluate_folder(args: argparse.Namespace, make_progress: Callable[[], Any] | None = None) -> dict[str, Any]:
    """The work of `eval` on parsed arguments -> the metrics dict (see module docstring).
    ``make_progress()`` builds the progress callback just before extraction starts (so its rate
    and ETA leave out the model loading)."""
    from engine.extraction import extract_multi, input_sizes, input_spec
    from engine.runtime import feature_runners
    from models.descriptors import build_descriptor
    from models.registry import get_backbone

    args.descriptor = default_descriptor(args.backbone, args.descriptor)
    scales = scales_from_args(args)
    root = Path(args.root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    paths, queries, retrieval = _collect(root, args.split)
    labels = labels_for(paths, root, args.labels)
    device = resolve_device(args.device)
    backbone = get_backbone(args.backbone, weights=args.weights, device=device)
    whitening = None
    if args.whitening:  # refused unless learned for this descriptor, these sizes and vectors (issue 26)
        from engine.whitening_fit import load_whitening_for, model_sizes_and_dim

        sizes, in_dim = model_sizes_and_dim(backbone, args.descriptor, scales, args.image_size)
        whitening = load_whitening_for(args.whitening, descriptor=args.descriptor, sizes=sizes, in_dim=in_dim,
                                       backbone=str(args.backbone))
    model = build_descriptor(args.descriptor, backbone, whitening=whitening, scales=scales)
    # the backbone on the runtime index uses (an export is cached by identity: none for random weights,
    # which are drawn per run), every descriptor head in PyTorch on its feature maps
    size, _, _ = input_spec(model, args.image_size)
    identity = None if args.weights == "random" else ModelSpec(backbone=args.backbone,
                                                               weights=args.weights).backbone_identity()
    cache = Path(args.cache_dir) if args.cache_dir else cache_root()
    runners = feature_runners(backbone, input_sizes(size), identity, cache, args.runtime, device)
    res = extract_multi(
        backbone, {"v": model}, paths, image_size=size, batch_size=args.batch_size, num_workers=args.workers,
        device=device, crop_fraction=args.crop_fraction, progress=make_progress() if make_progress else None,
        features=runners,
    )["v"]
    for s in res.skipped:
        sys.stderr.write(f"skipped {s.path}: {s.reason}\n")
    if len(res.paths) < 2:
        raise ValueError(f"only {len(res.paths)} usable image(s): at least 2 are needed to evaluate")
    label_of = dict(zip([str(p) for p in paths], labels, strict=True))
    kept_labels = [label_of[p] for p in res.paths]
    q_idx = r_idx = None
    if queries is not None and retrieval is not None:
        row = {p: i for i, p in enumerate(res.paths)}
        q_idx = [row[str(root / q)] for q in queries if str(root / q) in row]
        r_idx = [row[str(root / r)] for r in retrieval if str(root / r) in row]
        if not q_idx or not r_idx:
            raise ValueError("no usable query or no usable retrieval image in the split")
    metrics = evaluate(res.vectors, kept_labels, ks=(1, 5, 10), queries=q_idx, retrieval=r_idx)
    out: dict[str, Any] = {
        "backbone": str(args.backbone),
        "descriptor": args.descriptor,
        "recall@1": metrics["recall@1"],
        "recall@5": metrics["recall@5"],
        "recall@10": metrics["recall@10"],
        "map": metrics["map"],
    }
    if "top1" in metrics:
        out["top1"] = metrics["top1"]
        out["n_queries"], out["n_retrieval"] = metrics["n_queries"], metrics["n_retrieval"]
    out.update(
        n_images=len(res.paths),
        n_skipped=len(res.skipped),
        n_classes=len(set(kept_labels)),
        map_excluded=metrics["map_excluded"],
        dim=int(res.vectors.shape[1]),
        images_per_s=round(res.images_per_s, 2),
        image_size=args.image_size or int(getattr(backbone, "default_image_size", 224)),
        scales=list(model.scales) if model.scales and len(model.scales) > 1 else None,
        crop_fraction=args.crop_fraction,
        device=device,
        runtime=next(iter(runners.values())).name if runners else "torch",
    )
    return out


def _table(m: dict[str, Any]) -> str:
    speed = "from the index" if math.isnan(m["images_per_s"]) else f"{m['images_per_s']:.1f} images/s"
    lines = [f"{m['backbone']} / {m['descriptor']}: {m['n_images']} images, {m['n_classes']} classes, "
             f"{m['n_skipped']} skipped, dim {m['dim']}, {speed}", ""]
    rows = [("R@1", m["recall@1"]), ("R@5", m["recall@5"]), ("R@10", m["recall@10"]), ("mAP", m["map"])]
    if "top1" in m:
        rows.append((f"top-1 (q->r, {m['n_queries']} queries)", m["top1"]))
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        lines.append(f"{name:<{width}}  {'n/a' if math.isnan(value) else f'{value:.4f}'}")
    if m["map_excluded"]:
        lines.append(f"({m['map_excluded']} queries without another image of their class are left out of mAP)")
    if m.get("note"):
        lines.append(f"({m['note'].removeprefix('note: ')})")
    return "\n".join(lines)


def evaluate_indexed(args: argparse.Namespace) -> dict[str, Any]:
    """`eval --collection DIR`: the metrics of an indexed collection's stored vectors (no extraction).

    Labels are the images' sub-folder names (or --labels); with --split, paths are relative to DIR."""
    args.descriptor = default_descriptor(args.backbone, args.descriptor)
    folder = Path(args.collection)
    coll = Collection.open(folder, model_spec=spec_from_args(args), cache_dir=args.cache_dir)
    if len(coll) == 0:
        raise ValueError(f"{folder} has no indexed image for {args.backbone}/{args.descriptor}: run "
                         f"`retrieval-explorer index {folder}` with the same model options first")
    rel = coll.relpaths
    labels = labels_for([folder / r for r in rel], folder, args.labels) if args.labels else list(coll.labels)
    rows = list(range(len(rel)))
    q_idx = r_idx = None
    if args.split:
        split = load_split(args.split, root=folder)
        row_of = {r: i for i, r in enumerate(rel)}
        missing = [p for p in split["query"] + split["retrieval"] if p not in row_of]
        if missing:
            raise ValueError(f"{len(missing)} split path(s) are not in the collection (e.g. {missing[0]}); "
                             "index the folder again or check that the split is relative to it")
        rows = list(dict.fromkeys(row_of[p] for p in split["query"] + split["retrieval"]))
        pos = {r: i for i, r in enumerate(rows)}
        q_idx = [pos[row_of[p]] for p in split["query"]]
        r_idx = [pos[row_of[p]] for p in split["retrieval"]]
    rows = [i for i in rows if labels[i] is not None]
    if len(rows) < 2:
        raise ValueError(f"{folder}: evaluation needs at least 2 labelled images (class sub-folders)")
    metrics = evaluate(coll.vectors[rows], [labels[i] for i in rows], ks=(1, 5, 10), queries=q_idx,
                       retrieval=r_idx)
    out: dict[str, Any] = {"backbone": str(args.backbone), "descriptor": args.descriptor}
    out.update({k: metrics[k] for k in ("recall@1", "recall@5", "recall@10", "map")})
    if "top1" in metrics:
        out.update(top1=metrics["top1"], n_queries=metrics["n_queries"], n_retrieval=metrics["n_retrieval"])
    out.update(n_images=len(rows), n_skipped=len(coll.skipped), n_classes=len({labels[i] for i in rows}),
               map_excluded=metrics["map_excluded"], dim=int(coll.vectors.shape[1]), images_per_s=float("nan"),
               collection=str(folder))
    return out


def run(args: argparse.Namespace) -> int:
    note = trained_head_note(args.backbone, args.descriptor)
    if note:
        sys.stderr.write(note + "\n")
    if args.collection:
        m = evaluate_indexed(args)
    else:
        m = evaluate_folder(args, make_progress=lambda: TextProgress("extracting"))
    if note:
        m["note"] = note
    if args.json:
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in m.items()}
        sys.stdout.write(dumps_json(clean) + "\n")
    else:
        sys.stdout.write(_table(m) + "\n")
    return 0
