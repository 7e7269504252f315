"""`retrieval-explorer gui [COLLECTION]`: open the explorer window (also the default with no command)."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gui", help="open the explorer window",
                       description="Open the explorer window (also what the program does with no command).")
    p.add_argument("collection", nargs="?", help="an image folder to open")
    p.add_argument("--query", help="an image to search with once the collection is indexed")
    p.add_argument("--weights", default=None, help="'pretrained' (default), 'random' or a weights file")
    p.add_argument("--image-size", type=int, default=None, help="network input size (default: the model's)")
    p.add_argument("--device", default=None, help="cpu (default), cuda, cuda:N")
    p.add_argument("--runtime", default=None, choices=("auto", "torch", "onnxruntime", "openvino"),
                   help="what runs the network for indexing on the CPU (default: auto)")
    p.set_defaults(func=lambda a: launch_gui(gui_argv(a)))


def gui_argv(args: argparse.Namespace) -> list[str]:
    """The window's own arguments from the `gui` subcommand's (every option passes through)."""
    argv = [args.collection] if args.collection else []
    for name in ("query", "weights", "image_size", "device", "runtime"):
        value = getattr(args, name, None)
        if value is not None:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv


def launch_gui(argv: list[str]) -> int:
    """Start the Qt application; returns its exit code."""
    try:
        from retrieval_gui.app import run_app
    except ImportError as exc:
        sys.stderr.write(f"The GUI cannot start: {exc}\n")
        return 1
    return run_app(argv)
