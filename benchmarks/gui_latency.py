"""GUI-thread latency while a large collection is indexed in the background.

The explorer window (offscreen unless QT_QPA_PLATFORM says otherwise) opens a folder with a fresh
cache and indexes it in its worker, while the results grid shows and lazily loads ``--grid``
thumbnails of the folder. A QTimer fires every 10 ms on the GUI thread and records how late each
tick is; the table gives p50 / p99 / max lateness and the ticks late by more than 100 ms (stalls).

    .venv/bin/python benchmarks/gui_latency.py --limit 2000
    .venv/bin/python benchmarks/gui_latency.py --folder ../shared/data/cub100/images   # 5,902 images
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_FOLDER = ROOT.parent / "shared" / "data" / "cub100" / "images"


def _subset(folder: Path, limit: int, out: Path) -> Path:
    """The first ``limit`` images of ``folder`` (sorted), as symlinks in class sub-folders under ``out``."""
    from engine.images import scan_images

    for p in scan_images(folder)[:limit]:
        rel = p.relative_to(folder)
        (out / rel.parent).mkdir(parents=True, exist_ok=True)
        os.symlink(p, out / rel)
    return out


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, default=DEFAULT_FOLDER)
    ap.add_argument("--limit", type=int, default=None, help="index only the first N images")
    ap.add_argument("--weights", default="pretrained")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--descriptor", default="spoc")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the worker (default: cores - 1)")
    ap.add_argument("--grid", type=int, default=300, help="thumbnails shown in the grid meanwhile")
    ap.add_argument("--max-seconds", type=float, default=540)
    ap.add_argument("--baseline", type=float, default=10,
                    help="seconds of an idle window measured first (the machine's own noise)")
    args = ap.parse_args(argv)

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    tmp = Path(tempfile.mkdtemp(prefix="gui-latency-"))
    os.environ["RETRIEVAL_EXPLORER_CACHE"] = str(tmp / "cache")  # a cold cache: everything is extracted
    os.environ["RETRIEVAL_EXPLORER_HOME"] = str(tmp / "home")
    folder = args.folder.resolve()
    if not folder.is_dir():
        sys.stderr.write(f"no such folder: {folder}\n")
        return 2
    if args.limit:
        folder = _subset(folder, args.limit, tmp / "images")

    from PySide6.QtCore import QCoreApplication, QElapsedTimer, QSettings, Qt, QTimer
    from PySide6.QtWidgets import QApplication

    QCoreApplication.setOrganizationName("RetrievalExplorerBench")
    QCoreApplication.setApplicationName("gui-latency")
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp / "settings"))
    app = QApplication.instance() or QApplication([])

    from engine.images import scan_images
    from engine.session import hit
    from retrieval_gui.main_window import MainWindow

    win = MainWindow(weights=args.weights, image_size=args.image_size, threads=args.threads, restore=False)
    win.resize(1400, 860)
    win.set_descriptor(args.descriptor)
    win.show()
    paths = [str(p) for p in scan_images(folder)]
    n_images = len(paths)

    lateness: list[float] = []
    clock = QElapsedTimer()
    clock.start()
    last = [clock.nsecsElapsed()]

    phase = ["idle"]
    worst: list[tuple[float, float, str]] = []  # (lateness ms, seconds since start, phase)

    def tick() -> None:
        now = clock.nsecsElapsed()
        late = max(0.0, (now - last[0]) / 1e6 - 10.0)
        lateness.append(late)
        if late > 50:
            worst.append((late, now / 1e9, phase[0]))
        last[0] = now

    timer = QTimer()
    timer.setTimerType(Qt.TimerType.PreciseTimer)
    timer.setInterval(10)
    timer.timeout.connect(tick)

    timer.start()
    t_base = time.monotonic()
    while time.monotonic() - t_base < args.baseline:  # the idle window: the machine's own noise
        app.processEvents()
        time.sleep(0.001)
    baseline = list(lateness)
    lateness.clear()

    progress_calls = [0]

    def on_progress(done: int, total: int, _msg: str) -> None:
        progress_calls[0] += 1
        phase[0] = f"extracting {done}/{total}" if total else "loading the model"
        if total and done >= total:
            phase[0] = "saving + building the index"

    t0 = time.monotonic()
    phase[0] = "scan"
    win.open_collection(str(folder))
    win._index_task.progress.connect(on_progress)
    rng = random.Random(0)
    grid = rng.sample(paths, min(args.grid, len(paths)))
    if grid:
        win.results_model.set_hits([hit(p, 1.0 - i / 1000, i + 1, Path(p).parent.name) for i, p in enumerate(grid)],
                                   Path(grid[0]).parent.name)
    scroll_every, next_scroll = 1.0, time.monotonic() + 1.0
    while not win.index_ready() and time.monotonic() - t0 < args.max_seconds:
        app.processEvents()
        time.sleep(0.001)
        if time.monotonic() >= next_scroll:  # the user scrolls through the grid meanwhile
            bar = win.results_view.verticalScrollBar()
            bar.setValue((bar.value() + 600) % max(1, bar.maximum() + 1))
            next_scroll += scroll_every
    seconds = time.monotonic() - t0
    timer.stop()
    done = win.index_ready()
    win.close()


    def row(name: str, values: list[float], extra: str) -> str:
        return (f"| {name} | {extra} | {len(values)} | {_percentile(values, 50):.1f} | {_percentile(values, 99):.1f} "
                f"| {max(values, default=0):.1f} | {sum(1 for v in values if v > 100)} |")

    print(f"\nGUI-thread latency while indexing {n_images} images ({folder.name}), {args.descriptor}, "
          f"weights={args.weights}, image size {args.image_size or 'default'}, grid of {len(grid)} thumbnails")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
          f"Qt platform {os.environ['QT_QPA_PLATFORM']}\n")
    print("| phase | what | timer ticks | p50 late (ms) | p99 late (ms) | max late (ms) | ticks > 100 ms |")
    print("|---|---|---|---|---|---|---|")
    print(row("idle window (baseline)", baseline, f"{args.baseline:.0f} s"))
    print(row("indexing + thumbnails + scrolling", lateness,
              f"{'done' if done else 'NOT done'} in {seconds:.1f} s, {n_images / seconds:.1f} img/s, "
              f"{progress_calls[0]} progress signals"))
    if worst:
        print("\nworst ticks (ms late, at s, during):")
        for late, at, ph in sorted(worst, reverse=True)[:8]:
            print(f"  {late:7.1f} ms  at {at:6.1f} s  {ph}")
    try:
        print(f"\nload average during the run: {os.getloadavg()}")
    except OSError:
        pass
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
