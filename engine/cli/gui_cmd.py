"""`retrieval-explorer gui [COLLECTION]`: open the explorer window (also the default with no command)."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gui", help="open the explorer window")
    p.add_argument("collection", nargs="?", help="an image folder to open")
    p.set_defaults(func=lambda a: launch_gui([a.collection] if a.collection else []))


def launch_gui(argv: list[str]) -> int:
    """Start the Qt application; returns its exit code."""
    try:
        from retrieval_gui.app import run_app
    except ImportError as exc:
        sys.stderr.write(f"The GUI cannot start: {exc}\n")
        return 1
    return run_app(argv)
