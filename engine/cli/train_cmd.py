"""`retrieval-explorer train --data DIR ...`: train an embedding (metric learning) headless.

Every TrainConfig field is an option (--iterations, --mode, --target, --no-memory, ...), described by
engine.training.options (its help and choices, which the GUI wizard shows too). Progress goes to
stderr (each preparation phase with its own rate and ETA, then the training loop with the loop's own);
the result to stdout: the kept model, the metric that chose it, and what it, last.pt and the best
untrained descriptor score on the validation data; as JSON with --json.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import TextIO

from engine.cli.common import dumps_json
from engine.training.config import TrainConfig
from engine.training.options import option
from engine.vocabulary import DESCRIPTOR_SHORT, fmt_duration, resolve_device

_SKIP = {"data_root", "train_classes", "extra"}

def _bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an embedding on a folder of class sub-folders (metric learning)",
                       description="Train an embedding with triplet/contrastive loss and a cross-batch memory. "
                       "Label = sub-folder name. --target same (default) holds back a share of every class's images "
                       "to validate (better retrieval within your categories); --target new holds back whole "
                       "classes (better retrieval of unseen categories). The checkpoint kept as best.pt is the "
                       "one with the best validation --select-metric. On several GPUs or machines, start it with torchrun "
                       "(torchrun --nproc-per-node N -m engine train ...): data-parallel, one process per GPU.")
    p.add_argument("--data", required=True, help="folder with one sub-folder of images per class")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--classes", metavar="FILE",
                   help="the training classes: a text file (one per line) or JSON (a list, or a dict with "
                        "'train_classes')")
    g.add_argument("--train-classes", nargs="+", metavar="CLASS", help="the training classes, listed")
    p.add_argument("--resume", metavar="CKPT", help="continue a run from its last.pt (the only way to write "
                   "into a folder that holds a run)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--alike-sizes", metavar="SIZES", help="when the run ends, evaluate the kept model and the best "
                   "untrained descriptor alike at these input sizes (e.g. 224,288,352: the first alone and all "
                   "summed), without and with a whitening learned on the run's training images, on its validation "
                   "images; prints the table (a pass over the run's images)")
    defaults = TrainConfig(data_root="")
    for f in dataclasses.fields(TrainConfig):
        if f.name in _SKIP:
            continue
        opt = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        opt_info = option(f.name)  # the help and choices the wizard shows too
        extra = f"{opt_info.help} " if opt_info.help else ""
        if isinstance(default, bool):
            p.add_argument(opt, type=_bool, default=None, metavar="BOOL", help=f"{extra}(default: {default})")
            if f.name == "memory":
                p.add_argument("--no-memory", dest="memory", action="store_false", help="train without the memory")
        else:
            p.add_argument(opt, type=type(default), default=None, choices=opt_info.choices or None,
                           help=f"{extra}(default: {default!r})")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
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


class Console:
    """The trainer's events on a terminal: every preparation phase as a bar with its own rate and ETA, the
    training loop as a bar with the loop's own rate and ETA (from the trainer), other events as lines.
    Redrawn in place on a terminal; when not a terminal, a line every few seconds."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.min_interval = 0.2 if self.tty else 5.0
        self._last = 0.0
        self._bar_open = False
        self._bar_key = ""

    def line(self, text: str) -> None:
        if self._bar_open and self.tty:
            self.stream.write("\n")
        self._bar_open = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def bar(self, key: str, label: str, done: int, total: int, rate: float, unit: str, eta: float,
            extra: str = "") -> None:
        now = time.monotonic()
        final = total > 0 and done >= total
        if key == self._bar_key and not final and now - self._last < self.min_interval:
            return
        if key != self._bar_key and self._bar_open and self.tty:
            self.stream.write("\n")
        self._last, self._bar_key = now, key
        frac = min(done / total, 1.0) if total else 0.0
        text = (f"{label} [{'#' * int(frac * 30):<30}] {done}/{total} {rate:.1f} {unit}/s "
                f"eta {fmt_duration(eta)}{extra}")
        if self.tty:
            self.stream.write("\r" + text[:160].ljust(100) + ("\n" if final else ""))
            self._bar_open = not final
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def __call__(self, e) -> None:
        if e.kind == "phase":
            self.bar("phase:" + e.message, e.message, e.iteration, e.total, e.images_per_s, "images", e.eta_s)
        elif e.kind == "iteration":
            mem = f" mem {e.loss_memory:.4f}" if e.loss_memory is not None else ""
            self.bar("train", "train", e.iteration, e.total, e.images_per_s, "images", e.eta_s,
                     f" loss {e.loss:.4f}{mem}" if e.loss is not None else "")
        elif e.kind in ("validation", "message"):
            self.line(f"[it {e.iteration}] {e.message}" if e.kind == "validation" else e.message)


def summary(res) -> list[str]:
    """What the run kept and why: the selection metric, and the kept model, last.pt and the best untrained
    descriptor on the validation data."""
    from engine.training.trainer import SELECT_LABELS

    sel = res.select_metric
    keys = [sel] + [k for k in ("map", "recall@1") if k != sel]
    lines = [f"best model (kept): {res.best_checkpoint_path}",
             f"  iteration {res.best_iteration}, chosen on validation {SELECT_LABELS[sel]} (the selection metric)",
             f"last checkpoint (resumable): {res.checkpoint_path} (iteration {res.last_iteration})"]
    rows = []
    bu = res.best_untrained
    if bu:
        rows.append((f"best untrained descriptor ({DESCRIPTOR_SHORT[bu]})", res.untrained_val_metrics[bu]))
    elif res.baseline_val_metrics:
        rows.append((f"untrained descriptor ({res.config.pooling})", res.baseline_val_metrics))
    if res.best_val_metrics:
        rows.append((f"kept best.pt (iteration {res.best_iteration})", res.best_val_metrics))
    last_val = next((h for h in reversed(res.history) if "val" in h), None)
    if last_val is not None and last_val["iteration"] == res.last_iteration:
        rows.append((f"last.pt (iteration {res.last_iteration})", last_val["val"]))
    if rows and any(m.get(sel) is not None for _, m in rows):
        width = max(len(r) for r, _ in rows)
        lines += ["", f"on the validation data ({res.validation})"]
        lines.append(f"  {'':<{width}}  " + "  ".join(f"{SELECT_LABELS[k] + ('*' if k == sel else ''):>7}"
                                                      for k in keys))
        for label, m in rows:
            lines.append(f"  {label:<{width}}  " + "  ".join(
                f"{m[k]:7.4f}" if m.get(k) is not None else f"{'—':>7}" for k in keys))
        lines.append(f"  * the selection metric: best.pt is the checkpoint with the best validation "
                     f"{SELECT_LABELS[sel]}")
    lines.append(f"stopped: {res.stopped_reason}")
    return lines


def run(args: argparse.Namespace) -> int:
    from engine.training.launch import train

    cfg = config_from_args(args)
    problems = cfg.validate()
    if problems:
        raise ValueError("; ".join(problems))
    # under torchrun (data-parallel training) rank 0 alone reports; the other ranks print nothing
    main_rank = os.environ.get("RANK", "0") == "0"
    res = train(cfg, on_event=Console() if main_rank else None, resume_from=args.resume)
    failed = res.stopped_reason.startswith("the loss became")
    if not main_rank:
        return 1 if failed else 0
    out = {"checkpoint": res.checkpoint_path, "best_checkpoint": res.best_checkpoint_path,
           "run_folder": res.config.out_dir, "target": res.config.target, "validation": res.validation,
           "select_metric": res.select_metric, "best_iteration": res.best_iteration,
           "best_val_metrics": res.best_val_metrics, "last_iteration": res.last_iteration,
           "val_metrics": res.val_metrics, "baseline_val_metrics": res.baseline_val_metrics,
           "untrained_val_metrics": res.untrained_val_metrics, "best_untrained": res.best_untrained,
           "stopped_reason": res.stopped_reason, "cancelled": res.cancelled,
           "iterations_done": max([h["iteration"] for h in res.history] or [0])}
    alike, alike_error = None, ""
    if getattr(args, "alike_sizes", None) and not res.cancelled:
        alike, alike_error = evaluate_alike_cli(res, args.alike_sizes)
        out["alike"] = alike.to_dict() if alike is not None else {"error": alike_error}
    if args.json:
        print(dumps_json(out))
    else:
        print("\n".join(summary(res)))
        if alike is not None:
            print("\n" + "\n".join(alike.lines()))
    if alike_error:
        print(f"error: the evaluation alike failed: {alike_error}", file=sys.stderr)
    return 1 if failed or alike_error else 0


def evaluate_alike_cli(res, sizes_text: str):
    """engine.training.alike.evaluate_alike on the run's folder, its progress on stderr:
    (the report, '') or (None, the error message)."""
    from pathlib import Path

    from engine.training.alike import evaluate_alike

    try:
        sizes = [int(t) for t in sizes_text.replace(" ", "").split(",") if t]
    except ValueError:
        return None, f"--alike-sizes takes input sizes, e.g. 224,288,352; got {sizes_text!r}"
    console = Console()
    started = {"message": "", "t": time.monotonic()}

    def progress(done: int, total: int, message: str) -> None:
        phase = message.split(":")[0]
        if phase != started["message"]:
            started.update(message=phase, t=time.monotonic())
        dt = time.monotonic() - started["t"]
        rate = done / dt if dt > 0 else 0.0
        console.bar("alike:" + phase, phase, done, total, rate, "steps", (total - done) / rate if rate > 0 else 0.0)

    try:
        device = resolve_device(res.config.device)
    except RuntimeError:
        device = "cpu"
    try:
        report = evaluate_alike(Path(res.best_checkpoint_path).parent, sizes=sizes, device=device, progress=progress)
    except (ValueError, OSError, RuntimeError) as exc:
        return None, str(exc)
    console.line(f"evaluated alike in {fmt_duration(report.seconds)}")
    return report, ""
