"""Pieces shared by the CLI subcommands: common options, the default descriptor of a backbone (a trained
checkpoint's own embedding), and a text progress bar on stderr."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

from engine.vocabulary import (
    DEFAULT_BACKBONE,
    DEFAULT_DESCRIPTOR,
    POOLING_DESCRIPTORS,
    ModelSpec,
    is_checkpoint_name,
    parse_scales,
)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--backbone, --weights, --descriptor, --image-size, --scales, --device, --batch-size, --workers."""
    p.add_argument("--backbone", default=DEFAULT_BACKBONE,
                   help="backbone name, or a trained model's checkpoint file (default: efficientnet_lite0)")
    p.add_argument("--weights", default="pretrained",
                   help="'pretrained' (default), 'random', or a local weights file")
    p.add_argument("--descriptor", default=None,
                   help="fc, spoc (conv-average), rmac, mac or gem (default: none given = fc, the trained "
                   "embedding, when --backbone is a trained checkpoint, gem otherwise; a pooling descriptor "
                   "on a checkpoint uses its backbone without the trained head)")
    p.add_argument("--image-size", type=int, default=None, help="input size in pixels (default: the backbone's)")
    p.add_argument("--scales", default=None, metavar="S1,S2,...",
                   help="multi-scale descriptor: input sizes, e.g. 224,288,352 (each size's descriptor "
                   "L2-normalised, summed, normalised; costs the sum of the sizes); instead of --image-size")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")


def default_descriptor(backbone: str, descriptor: str | None) -> str:
    """The descriptor to use: ``descriptor`` when one was asked for; else "fc" for a trained checkpoint
    (its trained embedding: a trained model is used as trained), DEFAULT_DESCRIPTOR for a plain backbone."""
    if descriptor:
        return descriptor
    return "fc" if is_checkpoint_name(backbone) else DEFAULT_DESCRIPTOR


def trained_head_note(backbone: str, descriptor: str | None) -> str:
    """What to tell the user when a pooling descriptor was asked for explicitly on a trained checkpoint (its
    trained head is then not used); '' otherwise."""
    if not descriptor or descriptor not in POOLING_DESCRIPTORS or not is_checkpoint_name(backbone):
        return ""
    return (f"note: --descriptor {descriptor} pools the feature map of {backbone}'s backbone: the trained head is "
            "not used (leave --descriptor out, or give fc, for the trained embedding)")


def scales_from_args(args: argparse.Namespace) -> tuple[int, ...] | None:
    """--scales parsed (ValueError with an example when malformed, or when --image-size is given too)."""
    text = getattr(args, "scales", None)
    if not text:
        return None
    if getattr(args, "image_size", None):
        raise ValueError("give either --image-size or --scales, not both")
    return parse_scales(text)


def spec_from_model_args(args: argparse.Namespace, default: str | None = None, **extra) -> ModelSpec:
    """engine.vocabulary.ModelSpec from the model options (--descriptor, else ``default``, else the
    backbone's default descriptor); ``extra`` fields override."""
    fields = dict(backbone=args.backbone, weights=args.weights,
                  descriptor=args.descriptor or default or default_descriptor(args.backbone, None),
                  image_size=args.image_size, scales=scales_from_args(args),
                  crop_fraction=getattr(args, "crop_fraction", 1.0))
    fields.update(extra)
    return ModelSpec(**fields)


class TextProgress:
    """A progress callback drawing a one-line bar on a terminal (plain lines when not a tty)."""

    def __init__(self, label: str = "", stream: TextIO | None = None, min_interval: float = 0.2) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.min_interval = min_interval
        self._last = 0.0
        self._start = time.monotonic()
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        if not self._tty:  # logs and CI: a line every few seconds, not a flood
            self.min_interval = max(min_interval, 5.0)

    def __call__(self, done: int, total: int, message: str = "") -> None:
        now = time.monotonic()
        final = total > 0 and done >= total
        if not final and now - self._last < self.min_interval:
            return
        self._last = now
        elapsed = now - self._start
        if total > 0:
            frac = min(done / total, 1.0)
            bar = "#" * int(frac * 30)
            rate = done / elapsed if elapsed > 0 else 0.0
            eta = (total - done) / rate if rate > 0 else 0.0
            text = f"{self.label} [{bar:<30}] {done}/{total} {rate:.1f}/s eta {eta:.0f}s {message}"
        else:
            text = f"{self.label} {done} {message}"
        if self._tty:
            self.stream.write("\r" + text[:160].ljust(100) + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


# --- file names that are not UTF-8 -----------------------------------------------------------------------
# A name the file system gives as bytes that are not UTF-8 reaches Python as lone surrogates (os.fsdecode's
# surrogateescape: b"\xff" -> "\udcff"). The one rule for showing them: the bytes as \xNN escapes, in
# messages, text output and JSON alike; in JSON, a value that held such bytes also gets a sibling key
# "<key>_hex" with the name's exact bytes in hex (os.fsencode(name) == bytes.fromhex(value)), so that a
# program can find the file again.


def shown(text: object) -> str:
    """``text`` (a path, a message) for a person: undecodable file-name bytes shown as \\xNN escapes."""
    s = str(text)
    try:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte: shown as \\udXXX
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


def _undecodable(s: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in s)


def json_ready(obj: Any) -> Any:
    """``obj`` (dicts, lists, tuples, scalars) with every string that holds undecodable bytes :func:`shown`;
    a dict value that did gets a sibling "<key>_hex" (its exact bytes in hex). Other values unchanged."""
    if isinstance(obj, str):
        return shown(obj) if _undecodable(obj) else obj
    if isinstance(obj, dict):
        out: dict = {}
        for key, value in obj.items():
            k = json_ready(key) if isinstance(key, str) else key
            out[k] = json_ready(value)
            if isinstance(value, str) and _undecodable(value):
                try:
                    out[f"{k}_hex"] = value.encode("utf-8", "surrogateescape").hex()
                except UnicodeEncodeError:
                    pass
        return out
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return obj


def dumps_json(obj: Any, indent: int | None = 1) -> str:
    """The one JSON writer of the commands' --json outputs: :func:`json_ready`, then valid UTF-8 JSON text
    (no lone surrogate escapes, which many readers refuse)."""
    return json.dumps(json_ready(obj), indent=indent)
