"""`retrieval-explorer`: with no arguments the GUI, with a subcommand the headless CLI.

Each subcommand lives in its own module exposing ``register(subparsers)``, which adds a parser
and sets ``func(args) -> int``. Heavy imports (torch, Qt) happen inside ``func``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from engine.atomic import disk_full

# module names under engine.cli, in the order their subcommands are listed in --help
_COMMAND_MODULES = ("eval_cmd", "index_cmd", "duplicates_cmd", "map_cmd", "train_cmd", "whiten_cmd",
                    "feedback_cmd")

Register = Callable[[argparse._SubParsersAction], None]


def build_parser(extra: Sequence[Register] = ()) -> argparse.ArgumentParser:
    """The parser of every engine command, plus ``extra`` registrars (the window's `gui` command is
    added by retrieval_gui.launcher, the program's entry point: the engine never imports the GUI)."""
    parser = argparse.ArgumentParser(
        prog="retrieval-explorer",
        description="Content-based image retrieval with deep metric learning. "
        "Without a command, opens the explorer window.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"engine.cli.{name}")
        except ModuleNotFoundError as exc:  # a command whose module is not part of this build
            if exc.name != f"engine.cli.{name}":
                raise
            continue
        module.register(sub)
    for register in extra:
        register(sub)
    return parser


def main(argv: list[str] | None = None, *, gui: Callable[[list[str]], int] | None = None,
         extra: Sequence[Register] = ()) -> int:
    """Run a command; with none, ``gui([])`` (the window) when given, else the help."""
    parser = build_parser(extra)
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        if gui is None:
            parser.print_help(sys.stderr)
            return 2
        return gui([])
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): not an error of ours
        with contextlib.suppress(OSError, AttributeError, ValueError):  # no more writes to the closed pipe
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, OSError, RuntimeError) as exc:
        # engine errors carry messages meant for the user; no traceback unless asked for
        if args.verbose >= 2:
            raise
        # a full disk says so, whichever library hit it (engine.atomic.disk_full: the one mapping)
        where = getattr(exc, "filename", None)
        exc = disk_full(exc, where if isinstance(where, str) else os.getcwd()) or exc
        sys.stderr.write(f"error: {_printable(exc)}\n")
        return 2
    except Exception as exc:  # the last guard: a message and the way to the details, never a traceback
        if args.verbose >= 2:
            raise
        logging.getLogger(__name__).debug("unexpected error", exc_info=True)
        sys.stderr.write(f"error: unexpected {type(exc).__name__}: {_printable(exc)} "
                         "(run again with -vv for the details)\n")
        return 3


def _printable(exc: BaseException) -> str:
    """An exception's message with undecodable file-name bytes shown escaped (engine.cli.common.shown)."""
    from engine.cli.common import shown

    return shown(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
