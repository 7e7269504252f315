"""The REAL window under Xvfb (xcb platform, in a subprocess): a query is run and the screenshot shows it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def xvfb_display(tmp_path):
    exe = shutil.which("Xvfb")
    if exe is None:
        pytest.skip("Xvfb is not installed")
    for number in range(90, 140):
        if not Path(f"/tmp/.X11-unix/X{number}").exists() and not Path(f"/tmp/.X{number}-lock").exists():
            break
    proc = subprocess.Popen([exe, f":{number}", "-screen", "0", "1400x900x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "xvfb.log").open("w"))
    deadline = time.monotonic() + 10
    while not Path(f"/tmp/.X11-unix/X{number}").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.skip(f"Xvfb did not start: {(tmp_path / 'xvfb.log').read_text()[-300:]}")
        time.sleep(0.05)
    yield f":{number}"
    proc.terminate()
    proc.wait(10)


@pytest.mark.xvfb
@pytest.mark.slow
def test_real_window_screenshot_shows_results(xvfb_display, image_folder, tmp_path):
    folder = image_folder(n_classes=3, per_class=4, size=64)
    out = tmp_path / "shot.png"
    env = dict(os.environ, DISPLAY=xvfb_display, QT_QPA_PLATFORM="xcb",
               RETRIEVAL_EXPLORER_CACHE=str(tmp_path / "cache"), RETRIEVAL_EXPLORER_HOME=str(tmp_path / "home"))
    cmd = [sys.executable, "-m", "retrieval_gui.screenshot", str(folder), "--query",
           str(folder / "class_01" / "000.jpg"), "--out", str(out), "--weights", "random", "--image-size", "64",
           "--size", "1100x700", "--settings-dir", str(tmp_path / "settings")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["ok"] and info["results"] == 11
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape[1] == info["image"][0] and img.shape[0] == info["image"][1]
    x, y, w, h = info["results_area"]
    area = img[y:y + h, x:x + w]
    assert area.size > 0
    # the grid is drawn: many colours, and most of the upper rows differ from the background
    colours = np.unique(area.reshape(-1, 3) // 8, axis=0)
    assert len(colours) > 200, len(colours)
    background = np.array([0xEE, 0xF1, 0xF5])
    top = area[: min(h, 240)]
    share = np.mean(np.abs(top.astype(int) - background).sum(-1) > 30)
    assert share > 0.3, share
    # the hit/miss frames are drawn in their colours (green for the same class, red otherwise)
    flat = area.reshape(-1, 3).astype(int)
    green = np.sum(np.abs(flat - [46, 160, 67]).sum(-1) < 20)
    red = np.sum(np.abs(flat - [218, 54, 51]).sum(-1) < 20)
    assert green > 200 and red > 200


@pytest.mark.xvfb
@pytest.mark.slow
def test_real_window_shows_the_collection_then_compare(xvfb_display, image_folder, tmp_path):
    """Without a query the real window shows the collection; with one, Compare is saved as its own window."""
    folder = image_folder(n_classes=3, per_class=4, size=64)
    env = dict(os.environ, DISPLAY=xvfb_display, QT_QPA_PLATFORM="xcb",
               RETRIEVAL_EXPLORER_CACHE=str(tmp_path / "cache"), RETRIEVAL_EXPLORER_HOME=str(tmp_path / "home"))
    common = ["--weights", "random", "--image-size", "64", "--size", "1100x700"]
    cmd = [sys.executable, "-m", "retrieval_gui.screenshot", str(folder), "--out", str(tmp_path / "browse.png"),
           *common, "--settings-dir", str(tmp_path / "s1")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["mode"] == "collection" and info["browsed"] == 12
    x, y, w, h = info["results_area"]
    area = np.asarray(Image.open(tmp_path / "browse.png").convert("RGB"))[y:y + h, x:x + w]
    assert len(np.unique(area.reshape(-1, 3) // 8, axis=0)) > 100  # thumbnails are drawn
    cmd = [sys.executable, "-m", "retrieval_gui.screenshot", str(folder), "--query", str(folder / "class_00" / "001.jpg"),
           "--out", str(tmp_path / "main.png"), "--compare", "mac", "--compare-out", str(tmp_path / "compare.png"),
           *common, "--settings-dir", str(tmp_path / "s2")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["compare_saved"] and info["results"] == 11
    shot = Image.open(tmp_path / "compare.png")
    assert shot.width >= 600 and shot.height >= 400


@pytest.mark.xvfb
@pytest.mark.slow
def test_real_wizard_reaches_the_summary_with_an_estimate(xvfb_display, image_folder, tmp_path):
    """The training wizard in a real window: the data counted in its worker, the speeds measured in
    another, the summary page saved with the run-time estimate (a run is left to the wizard's own tests)."""
    folder = image_folder(n_classes=4, per_class=4, size=48)
    out = tmp_path / "summary.png"
    env = dict(os.environ, DISPLAY=xvfb_display, QT_QPA_PLATFORM="xcb",
               RETRIEVAL_EXPLORER_CACHE=str(tmp_path / "cache"), RETRIEVAL_EXPLORER_HOME=str(tmp_path / "home"))
    cmd = [sys.executable, "-m", "retrieval_gui.screenshot", str(folder), "--wizard", "--out", str(out),
           "--weights", "random", "--image-size", "32", "--size", "1000x760", "--settings-dir", str(tmp_path / "s")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["ok"] and info["problems"] == [] and info["estimate_s"] > 0
    assert "computing features" in info["estimate"] and "measured now" in info["estimate"]
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape[0] > 500 and len(np.unique(img.reshape(-1, 3) // 8, axis=0)) > 20
