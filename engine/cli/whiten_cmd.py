"""`retrieval-explorer whiten DIR -o FILE`: learn a whitening (Lw or PCA) from a folder of labelled images.

DIR holds one sub-folder per class (training classes: never the ones you report on). The whitening is
learned for one descriptor at the given input size(s) and saved; give it to `index`, `search` and `eval`
with --whitening FILE (and the same --descriptor and --scales / --image-size).
"""

from __future__ import annotations

import argparse
import dataclasses

from engine.atomic import target_kind
from engine.cli.common import TextProgress, add_model_args, dumps_json, spec_from_model_args
from engine.vocabulary import DEFAULT_DESCRIPTOR, RUNTIMES, resolve_device
from engine.whitening import learn_from_folder, save_whitening


def _shrinkage(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number in [0, 1] or 'auto', got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a number in [0, 1] or 'auto', got {text!r}")
    return value


def _dim(text: str) -> int | str | None:
    if text in ("auto", "all"):
        return None if text == "all" else text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a positive number, 'all' or 'auto', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"a positive number, 'all' or 'auto', got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("whiten", help="learn a whitening (Lw or PCA) from a folder with class sub-folders",
                       description="Describe the images of DIR (one sub-folder per class) and learn a whitening "
                       "for the descriptor: Lw (within-class covariance whitened away, then PCA; default) or PCA. "
                       "Shrinkage and dimension are chosen on validation classes carved from DIR's classes "
                       "unless given. Use training classes, never the classes you evaluate on.")
    p.add_argument("folder", metavar="DIR", help="images in one sub-folder per class")
    p.add_argument("-o", "--output", metavar="FILE", required=True, help="where to save the whitening (.npz)")
    add_model_args(p)
    p.add_argument("--crop-fraction", type=float, default=1.0, help="centre-crop share of the image (default 1.0)")
    p.add_argument("--method", choices=("lw", "pca"), default="lw", help="lw (learned, needs classes; default) or pca")
    p.add_argument("--shrinkage", type=_shrinkage, default="auto",
                   help="covariance shrinkage towards the identity in [0, 1], or auto (chosen on validation "
                   "classes, default)")
    p.add_argument("--dim", type=_dim, default="auto", help="output dimensions: a number, all, or auto (default)")
    p.add_argument("--val-classes", type=int, default=10, help="classes carved off for choosing (default 10)")
    p.add_argument("--seed", type=int, default=0, help="which classes are carved off (default 0)")
    p.add_argument("--runtime", choices=RUNTIMES, default="auto",
                   help="what runs the network on the CPU (default: the fastest installed)")
    p.add_argument("--cache-dir", metavar="DIR", default=None, help="where exported runtimes are kept")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run_whiten)


def run_whiten(args: argparse.Namespace) -> int:
    spec = spec_from_model_args(args, default=DEFAULT_DESCRIPTOR)
    target_kind(args.output)  # a folder or a disk refused before minutes of learning
    device = resolve_device(args.device)
    w, rep = learn_from_folder(args.folder, spec, method=args.method, shrinkage=args.shrinkage, dim=args.dim,
                               device=device, batch_size=args.batch_size, runtime=args.runtime,
                               cache_dir=args.cache_dir, n_val=args.val_classes, seed=args.seed,
                               progress=TextProgress("whitening"))
    save_whitening(w, args.output)
    if args.json:
        print(dumps_json({**dataclasses.asdict(rep), "output": args.output, "descriptor": spec.descriptor,
                          "scales": list(spec.scales or [spec.image_size or 0])}, indent=1))
        return 0
    print(f"{args.output}: {rep.method} whitening of {spec.descriptor} @ {spec.sizes_title()}, {w.in_dim} -> {w.out_dim} dims, "
          f"shrinkage {rep.shrinkage:g}, from {rep.n_images} images of {rep.n_classes} classes in {rep.seconds:.1f} s")
    if rep.chosen:
        print(f"  chosen on {args.val_classes} validation classes: R@1 {rep.val_r1:.3f} "
              f"(without whitening {rep.val_none_r1:.3f}), mAP {rep.val_map:.3f}")
        if rep.val_none_r1 is not None and rep.val_r1 is not None and rep.val_r1 < rep.val_none_r1:
            print("  note: on these validation classes the descriptor does better WITHOUT a whitening; "
                  "use the file only if your own checks say otherwise")
    for path, reason in rep.unreadable[:10]:
        print(f"  skipped {path}: {reason}")
    if len(rep.unreadable) > 10:
        print(f"  ... and {len(rep.unreadable) - 10} more unreadable images")
    print(f"  use it with: --descriptor {spec.descriptor} "
          + (f"--scales {','.join(map(str, spec.scales))} " if spec.scales else "")
          + f"--whitening {args.output}")
    return 0
