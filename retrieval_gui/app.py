"""`run_app(argv)`: the Retrieval Explorer application (also `retrieval-explorer` with no arguments)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

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
    p.add_argument("--runtime", default=None, choices=("auto", "torch", "onnxruntime", "openvino"),
                   help="what runs the network for indexing on the CPU (default: auto, the fastest installed)")
    p.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="where collections, runtimes and thumbnails are kept (default: the user cache folder)")
    return p.parse_args(argv)


def create_window(args: argparse.Namespace, *, preload_now: bool = True):
    """The main window, opened on the argument folder, else the last collection, else the demo.
    With ``preload_now=False`` the window is built without PyTorch: call :func:`finish_start` once it
    is on screen."""
    from retrieval_gui.main_window import MainWindow

    win = MainWindow(weights=args.weights, image_size=args.image_size, device=args.device,
                     runtime=getattr(args, "runtime", None), preload_now=preload_now,
                     cache_dir=getattr(args, "cache_dir", None))
    if preload_now:
        finish_start(win, args)
    return win


def finish_start(win, args: argparse.Namespace) -> None:
    """Load PyTorch and the engine (seconds), then open the collection and the query."""
    import time

    from PySide6.QtWidgets import QApplication

    from engine.session import preload
    from retrieval_gui.startup import loading_message, remember_load_time, start_folder

    win.status_label.setText(loading_message())
    QApplication.processEvents()
    t0 = time.perf_counter()
    preload()
    remember_load_time(time.perf_counter() - t0)
    folder = start_folder(args)
    win.open_collection(folder)
    if args.query:
        win.set_query(os.path.abspath(args.query))  # as given: a link in the folder keeps its label


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
    from PySide6.QtCore import QTimer

    win = create_window(args, preload_now=False)  # on screen in about a second, before PyTorch is loaded
    from retrieval_gui.startup import loading_message, show_cached_grid, start_folder

    win.early_grid = show_cached_grid(win.results_model, win.loader, start_folder(args))  # cached thumbnails, no torch
    win.grid_stack.setCurrentIndex(1)
    win.status_label.setText(loading_message())
    win.show()
    QTimer.singleShot(50, lambda: finish_start(win, args))
    return int(app.exec())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_app())
