"""The program's entry point, `retrieval-explorer`: the engine's commands plus the window.

It lives here, above both layers, so that the engine never imports the GUI: ``engine.cli.main`` runs
the commands and calls back :func:`launch_gui` when there is none (or for `gui`).
"""

from __future__ import annotations

import argparse
import sys

from engine.vocabulary import RUNTIMES


def register(sub: argparse._SubParsersAction) -> None:
    """The `gui` command: the window, with every option of retrieval_gui.app passed through."""
    p = sub.add_parser("gui", help="open the explorer window",
                       description="Open the explorer window (also what the program does with no command).")
    p.add_argument("collection", nargs="?", help="an image folder to open")
    p.add_argument("--query", help="an image to search with once the collection is indexed")
    p.add_argument("--weights", default=None, help="'pretrained' (default), 'random' or a weights file")
    p.add_argument("--image-size", type=int, default=None, help="network input size (default: the model's)")
    p.add_argument("--device", default=None, help="cpu (default), cuda, cuda:N")
    p.add_argument("--runtime", default=None, choices=RUNTIMES,
                   help="what runs the network for indexing on the CPU (default: auto)")
    p.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="where collections, runtimes and thumbnails are kept (default: the user cache folder)")
    p.set_defaults(func=lambda a: launch_gui(gui_argv(a)))


def gui_argv(args: argparse.Namespace) -> list[str]:
    """The window's own arguments from the `gui` command's (every option passes through)."""
    argv = [args.collection] if args.collection else []
    for name in ("query", "weights", "image_size", "device", "runtime", "cache_dir"):
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


def main(argv: list[str] | None = None) -> int:
    """`retrieval-explorer [COMMAND ...]`."""
    from engine.cli import main as engine_main

    return engine_main(argv, gui=launch_gui, extra=(register,))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
