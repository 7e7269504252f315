"""A real "Train XBM" wizard run: cub100's training classes, head-only, on the CPU.

The wizard is walked page by page as a user would (the settings come pre-filled; the training classes
from cub100's ``class_split.json`` as the Data page's split file), training runs in its
worker thread with the live plots, and when it ends the run page is saved as a screenshot. Then the
trained model (best checkpoint, chosen on validation classes carved from the training classes) and the
untrained descriptor are evaluated with the CLI's ``eval`` on the held-out classes 50-99 (leave-one-out
R@1/R@5/mAP and the query -> retrieval top-1 of ``query_retrieval_test.json``). Prints a markdown table.

    xvfb-run -a -s "-screen 0 1400x1000x24" .venv/bin/python benchmarks/wizard_run.py \\
        --out docs/images/train_run.png                       # a real window; QT_QPA_PLATFORM=offscreen also works

Models, caches and settings go to a throw-away folder unless --home is given.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _eval(data: Path, backbone: str, descriptor: str, threads: int) -> dict:
    """The CLI's eval on the test split (classes 50-99), as a dict."""
    cmd = [sys.executable, "-c", "import sys; from engine.cli import main; sys.exit(main())",
           "eval", "--root", str(data), "--split", str(data / "query_retrieval_test.json"),
           "--backbone", backbone, "--descriptor", descriptor, "--device", "cpu", "--json",
           "--workers", str(max(0, threads - 1))]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, QT_QPA_PLATFORM="offscreen"))
    if proc.returncode:
        raise RuntimeError(f"eval failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cub100")
    ap.add_argument("--out", default="bench_out/train_run.png")
    ap.add_argument("--home", default=None, help="models, caches and settings (default: a temporary folder)")
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--val-every", type=int, default=50)
    ap.add_argument("--pooling", default="mac")
    ap.add_argument("--memory", choices=("on", "off"), default="on")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--size", default="1250x890", help="wizard size WxH")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    home = Path(args.home or tempfile.mkdtemp(prefix="re-wizard-run-"))
    os.environ["RETRIEVAL_EXPLORER_HOME"] = str(home)
    os.environ["RETRIEVAL_EXPLORER_OFFLINE"] = "1"

    from PySide6.QtCore import QCoreApplication, QSettings
    from PySide6.QtWidgets import QApplication

    QCoreApplication.setOrganizationName("RetrievalExplorerWizardRun")
    QCoreApplication.setApplicationName("retrieval-explorer-wizard-run")
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(home / "settings"))
    app = QApplication.instance() or QApplication(["retrieval-explorer"])

    from engine.training.config import TrainConfig
    from retrieval_gui.wizard import TrainWizard

    split = json.loads((args.data / "class_split.json").read_text())
    name = f"cub100_head_{'xbm' if args.memory == 'on' else 'triplet'}_{args.pooling}_{args.iterations}"
    cfg = TrainConfig(data_root=str(args.data / "images"), train_classes=list(split["train_classes"]), mode="head",
                      pooling=args.pooling, memory=args.memory == "on", iterations=args.iterations,
                      val_every=args.val_every, device="cpu", name=name, num_threads=args.threads,
                      cache_dir=str(home / "cache"), extra={"split_file": str(args.data / "class_split.json")})
    wiz = TrainWizard(config=cfg)
    w, h = (int(v) for v in args.size.lower().split("x"))
    wiz.resize(w, h)
    done: list = []
    wiz.trainingFinished.connect(done.append)
    wiz.show()
    t0 = time.monotonic()
    for _ in range(len(wiz.settings_pages)):
        app.processEvents()
        if not wiz.currentPage().isComplete():
            raise SystemExit(f"the wizard refuses page {type(wiz.currentPage()).__name__}")
        wiz.next()
    if not wiz.summary_page.isComplete():
        raise SystemExit(f"the summary page refuses the settings: {wiz.summary_page.problems}")
    used = wiz.config().train_classes
    if sorted(used or []) != sorted(split["train_classes"]):  # the test classes must never be trained on
        raise SystemExit(f"the wizard would train on {len(used or [])} classes, not the protocol's 50 train classes")
    wiz.next()  # "Start training"
    while not done and wiz.run_page.error is None:
        app.processEvents()
        time.sleep(0.02)
    if wiz.run_page.error is not None:
        raise SystemExit(f"training failed: {wiz.run_page.error}")
    wall = time.monotonic() - t0
    end = time.monotonic() + 1.0  # the plot's last redraw
    while time.monotonic() < end or wiz.run_page.running:
        app.processEvents()
        time.sleep(0.02)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if not wiz.grab().save(args.out):
        raise SystemExit(f"cannot save {args.out}")
    result = done[0]
    wiz.close()
    app.processEvents()

    untrained = _eval(args.data, "efficientnet_lite0", args.pooling, args.threads)
    trained = _eval(args.data, result.best_checkpoint_path, "fc", args.threads)
    rows = [(f"untrained {args.pooling.upper()} (ImageNet)", result.baseline_val_metrics, untrained),
            (f"wizard: head-only, triplet{' + memory' if cfg.memory else ''}", result.val_metrics, trained)]
    print(f"\n## Train XBM wizard, cub100 train classes 0-49 (val carved), {args.iterations} iterations, "
          f"CPU ({args.threads} threads), {wall:.0f} s (feature cache included)\n")
    print("| model | val R@1 | test R@1 | test R@5 | test top-1 (q->r) | test mAP |")
    print("|---|---|---|---|---|---|")
    for label, val, m in rows:
        print(f"| {label} | {val.get('recall@1', float('nan')):.4f} | {m['recall@1']:.4f} | {m['recall@5']:.4f} | "
              f"{m['top1']:.4f} | {m['map']:.4f} |")
    print(f"\nscreenshot: {args.out}; model: {result.best_checkpoint_path}")
    if args.json:
        Path(args.json).write_text(json.dumps({"wall_s": wall, "config": cfg.to_dict(), "untrained": untrained,
                                               "trained": trained, "val": result.val_metrics,
                                               "val_baseline": result.baseline_val_metrics}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
