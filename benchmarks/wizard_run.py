"""A real "Train XBM" wizard run on cub100, head-only, on the CPU.

The wizard is walked page by page as a user would (the settings come pre-filled), training runs in its
worker thread with the live plots, and when it ends the run page is saved as a screenshot. Then the kept
model (best.pt, through its trained head: the CLI's default for a checkpoint) and the best untrained
descriptor on the validation data are evaluated with the CLI's ``eval`` on test images never trained on
(leave-one-out R@1/R@5/mAP and the query -> retrieval top-1). Prints a markdown table.

--target same (default): the same-categories protocol of ``benchmarks/splits/cub100_same_categories.json``
(train on its train images, validate on its validation images, test on its query and retrieval images).
--target new: train on classes 0-49 (the Data page's split file; validation classes carved from them),
test on the held-out classes 50-99 with ``query_retrieval_test.json``.

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


def _eval(data: Path, split: Path, backbone: str, descriptor: str | None, threads: int) -> dict:
    """The CLI's eval on a split's query and retrieval images, as a dict (``descriptor`` None: the CLI's
    default, i.e. a checkpoint's trained embedding)."""
    cmd = [sys.executable, "-c", "import sys; from engine.cli import main; sys.exit(main())",
           "eval", "--root", str(data), "--split", str(split), "--backbone", backbone, "--device", "cpu", "--json",
           "--workers", str(max(0, threads - 1))] + (["--descriptor", descriptor] if descriptor else [])
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
    ap.add_argument("--target", choices=("same", "new"), default="same")
    ap.add_argument("--split", type=Path, default=ROOT / "benchmarks" / "splits" / "cub100_same_categories.json",
                    help="--target same: the split file (train / val / query / retrieval, relative to --data)")
    ap.add_argument("--cache-dir", default=None, help="feature cache (default: inside --home); e.g. "
                    "bench_out/train/cache to reuse benchmarks/train.py's")
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
    name = f"cub100_{args.target}_head_{'xbm' if args.memory == 'on' else 'triplet'}_{args.pooling}_{args.iterations}"
    common = dict(mode="head", pooling=args.pooling, memory=args.memory == "on", iterations=args.iterations,
                  val_every=args.val_every, device="cpu", name=name, num_threads=args.threads,
                  cache_dir=str(Path(args.cache_dir).resolve()) if args.cache_dir else str(home / "cache"))
    if args.target == "same":
        cfg = TrainConfig(data_root=str(args.data), target="same", image_split=str(args.split), **common)
        test_split = args.split
    else:
        cfg = TrainConfig(data_root=str(args.data / "images"), train_classes=list(split["train_classes"]),
                          target="new", extra={"split_file": str(args.data / "class_split.json")}, **common)
        test_split = args.data / "query_retrieval_test.json"
    wiz = TrainWizard(config=cfg)
    w, h = (int(v) for v in args.size.lower().split("x"))
    wiz.resize(w, h)
    done: list = []
    wiz.trainingFinished.connect(done.append)
    wiz.show()
    t0 = time.monotonic()
    wiz.data_page.wait_scan(600_000)  # the Data page counts the folder in a worker
    for _ in range(len(wiz.settings_pages)):
        app.processEvents()
        if not wiz.currentPage().isComplete():
            raise SystemExit(f"the wizard refuses page {type(wiz.currentPage()).__name__}")
        wiz.next()
    if not wiz.summary_page.isComplete():
        raise SystemExit(f"the summary page refuses the settings: {wiz.summary_page.problems}")
    used = wiz.config()
    if args.target == "same" and used.image_split != str(args.split):  # the test images must never be trained on
        raise SystemExit("the wizard would not train on the split's train images")
    if args.target == "new" and sorted(used.train_classes or []) != sorted(split["train_classes"]):
        raise SystemExit(f"the wizard would train on {len(used.train_classes or [])} classes, not the protocol's "
                         "50 train classes")
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

    best_untrained = result.best_untrained or args.pooling   # chosen on the validation data
    untrained = _eval(args.data, test_split, "efficientnet_lite0", best_untrained, args.threads)
    trained = _eval(args.data, test_split, result.best_checkpoint_path, None, args.threads)
    if trained["descriptor"] != "fc":
        raise SystemExit(f"eval used {trained['descriptor']} for the checkpoint, not its trained head")
    rows = [(f"best untrained on validation: {best_untrained} (ImageNet)",
             result.untrained_val_metrics.get(best_untrained, result.baseline_val_metrics), untrained),
            (f"wizard: head-only, triplet{' + memory' if cfg.memory else ''}, best.pt (it {result.best_iteration})",
             result.best_val_metrics, trained)]
    what = ("same categories (cub100_same_categories.json)" if args.target == "same"
            else "train classes 0-49 (val carved), test classes 50-99")
    print(f"\n## Train XBM wizard, cub100 {what}, {args.iterations} iterations, CPU ({args.threads} threads), "
          f"{wall:.0f} s (feature cache included)\n")
    print("| model | val mAP | val R@1 | test R@1 | test R@5 | test top-1 (q->r) | test mAP |")
    print("|---|---|---|---|---|---|---|")
    for label, val, m in rows:
        print(f"| {label} | {val.get('map', float('nan')):.4f} | {val.get('recall@1', float('nan')):.4f} | "
              f"{m['recall@1']:.4f} | {m['recall@5']:.4f} | {m['top1']:.4f} | {m['map']:.4f} |")
    print(f"\nscreenshot: {args.out}; model: {result.best_checkpoint_path}")
    if args.json:
        Path(args.json).write_text(json.dumps({"wall_s": wall, "config": cfg.to_dict(), "untrained": untrained,
                                               "trained": trained, "val": result.best_val_metrics,
                                               "val_untrained": result.untrained_val_metrics}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
