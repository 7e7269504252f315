"""The window comes up before PyTorch is imported (issue 11 item 7): what it lists without torch
matches the registries of models/, and building it imports no torch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_static_lists_match_the_model_registries():
    from engine.session import BACKBONES, DESCRIPTORS
    from models.descriptors import list_descriptors
    from models.registry import list_backbones

    assert list(BACKBONES) == list(list_backbones())
    assert list(DESCRIPTORS) == list(list_descriptors())


def test_the_window_is_built_and_shown_without_importing_torch(tmp_path):
    script = textwrap.dedent(f"""
        import sys, argparse
        sys.path.insert(0, {str(REPO)!r})
        from PySide6.QtWidgets import QApplication
        app = QApplication([])
        from retrieval_gui.app import create_window
        args = argparse.Namespace(collection=None, query=None, weights="random", image_size=None, device="cpu")
        win = create_window(args, preload_now=False)
        win.show()
        app.processEvents()
        print("torch imported:", "torch" in sys.modules, "visible:", win.isVisible())
    """)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", RETRIEVAL_EXPLORER_HOME=str(tmp_path / "home"),
               RETRIEVAL_EXPLORER_CACHE=str(tmp_path / "cache"), XDG_CONFIG_HOME=str(tmp_path / "config"))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "torch imported: False visible: True" in out.stdout


def test_gui_subcommand_passes_every_window_option_through():
    from engine.cli import build_parser
    from retrieval_gui.app import _parse
    from retrieval_gui.launcher import gui_argv, register

    args = build_parser(extra=(register,)).parse_args(["gui", "/photos", "--query", "q.jpg", "--device", "cuda", "--runtime", "torch",
                                      "--image-size", "288", "--weights", "random"])
    win_args = _parse(gui_argv(args))
    assert (win_args.collection, win_args.query, win_args.device, win_args.runtime, win_args.image_size,
            win_args.weights) == ("/photos", "q.jpg", "cuda", "torch", 288, "random")
