"""`retrieval-explorer train --data DIR ...`: train an embedding (metric learning) headless.

Every TrainConfig field is an option (--iterations, --mode, --no-memory, ...). Progress goes to
stderr; the result (paths, validation metrics) to stdout, as JSON with --json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

_SKIP = {"data_root", "train_classes", "extra"}


def _bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def register(sub: argparse._SubParsersAction) -> None:
    from engine.training.config import LOSSES, MININGS, MODES, POOLINGS, TrainConfig

    choices = {"mode": MODES, "loss": LOSSES, "mining": MININGS, "pooling": POOLINGS,
               "select_metric": ("map", "recall@1")}
    p = sub.add_parser("train", help="train an embedding on a folder of class sub-folders (metric learning)",
                       description="Train an embedding with triplet/contrastive loss and a cross-batch memory. "
                       "Label = sub-folder name. Validation classes are carved from the training classes.")
    p.add_argument("--data", required=True, help="folder with one sub-folder of images per class")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--classes", metavar="FILE",
                   help="the training classes: a text file (one per line) or JSON (a list, or a dict with "
                        "'train_classes')")
    g.add_argument("--train-classes", nargs="+", metavar="CLASS", help="the training classes, listed")
    p.add_argument("--resume", metavar="CKPT", help="continue a run from its last.pt")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    defaults = TrainConfig(data_root="")
    for f in dataclasses.fields(TrainConfig):
        if f.name in _SKIP:
            continue
        opt = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            p.add_argument(opt, type=_bool, default=None, metavar="BOOL", help=f"(default: {default})")
            if f.name == "memory":
                p.add_argument("--no-memory", dest="memory", action="store_false", help="train without the memory")
        else:
            p.add_argument(opt, type=type(default), default=None, choices=choices.get(f.name),
                           help=f"(default: {default!r})")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from engine.training.config import TrainConfig
    from engine.training.data import read_class_list

    cfg = TrainConfig(data_root=args.data)
    if args.classes:
        cfg.train_classes = read_class_list(args.classes)
    elif args.train_classes:
        cfg.train_classes = list(args.train_classes)
    for f in dataclasses.fields(TrainConfig):
        if f.name in _SKIP:
            continue
        v = getattr(args, f.name, None)
        if v is not None:
            setattr(cfg, f.name, v)
    return cfg


def run(args: argparse.Namespace) -> int:
    from engine.cli.common import TextProgress
    from engine.training.trainer import train

    cfg = config_from_args(args)
    problems = cfg.validate()
    if problems:
        raise ValueError("; ".join(problems))
    bar = TextProgress("train")
    last: dict = {}

    def on_event(e) -> None:
        if e.kind == "iteration":
            last.update(loss=e.loss, mem=e.loss_memory)
        elif e.kind == "validation" and e.val_recall1 is not None:
            sys.stderr.write(f"\n[it {e.iteration}] validation R@1 {e.val_recall1:.4f}\n")
        elif e.kind == "message":
            sys.stderr.write(e.message + "\n")

    def progress(done: int, total: int, message: str) -> None:
        mem = f" mem {last['mem']:.4f}" if last.get("mem") is not None else ""
        bar(done, total, message + mem)

    res = train(cfg, progress=progress, on_event=on_event, resume_from=args.resume)
    out = {"checkpoint": res.checkpoint_path, "best_checkpoint": res.best_checkpoint_path,
           "val_metrics": res.val_metrics, "baseline_val_metrics": res.baseline_val_metrics,
           "stopped_reason": res.stopped_reason, "cancelled": res.cancelled,
           "iterations_done": max([h["iteration"] for h in res.history] or [0])}
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"best model: {res.best_checkpoint_path}")
        print(f"last checkpoint: {res.checkpoint_path}")
        b, v = res.baseline_val_metrics.get("recall@1"), res.val_metrics.get("recall@1")
        if b is not None and v is not None:
            print(f"validation R@1: untrained {b:.4f} -> last {v:.4f}")
        print(f"stopped: {res.stopped_reason}")
    return 0 if not res.stopped_reason.startswith("the loss became") else 1
