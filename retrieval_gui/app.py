"""`run_app(argv)`: the Retrieval Explorer application (also `retrieval-explorer` with no arguments)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

ORGANIZATION = "RetrievalExplorer"
APPLICATION = "retrieval-explorer"


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="retrieval-explorer gui", description="Open the explorer window.")
    p.add_argument("collection", nargs="?", help="an image folder to open")
    p.add_argument("--query", help="an image to search with once the collection is indexed")
    p.add_argument("--weights", default=os.environ.get("RETRIEVAL_EXPLORER_WEIGHTS", "pretrained"),
                   help="'pretrained' (default), 'random' or a weights file")
    p.add_argument("--image-size", type=int, default=None, help="network input size (default: the model's)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    return p.parse_args(argv)


def create_window(args: argparse.Namespace):
    """The main window, opened on the argument folder, else the last collection, else the demo."""
    from PySide6.QtCore import QSettings

    from retrieval_gui.backend import demo_collection
    from retrieval_gui.main_window import MainWindow

    win = MainWindow(weights=args.weights, image_size=args.image_size, device=args.device)
    last = QSettings().value("lastCollection")
    if args.collection:
        folder = args.collection
    elif last and Path(str(last)).is_dir():
        folder = str(last)
    else:
        folder = str(demo_collection())
    win.open_collection(folder)
    if args.query:
        win.set_query(str(Path(args.query).resolve()))
    return win


def run_app(argv: list[str] | None = None) -> int:
    """Start the Qt application and the explorer window; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    from PySide6.QtCore import QCoreApplication
    from PySide6.QtWidgets import QApplication

    QCoreApplication.setOrganizationName(ORGANIZATION)
    QCoreApplication.setApplicationName(APPLICATION)
    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else APPLICATION])
    app.setApplicationDisplayName("Retrieval Explorer")
    win = create_window(args)
    win.show()
    return int(app.exec())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_app())
