"""Open the real explorer window on a folder, run one query and save a screenshot.

    python -m retrieval_gui.screenshot resources/demo --query resources/demo/stars/01.jpg \\
        --out docs/images/explorer.png [--weights random --image-size 64] [--activations 2] \\
        [--compare rmac --compare-out docs/images/compare.png]

Without --query the window shows the collection, as before a first query.

    python -m retrieval_gui.screenshot resources/demo --wizard --out docs/images/wizard_summary.png \\
        [--train-out docs/images/wizard_run.png --iterations 200]

With --wizard the folder is training data (one sub-folder per class): the training wizard is walked to its
summary page (the run-time estimate shown) and saved to --out; with --train-out, Start is pressed and the
run page is saved once training has finished. Runs and caches go to a throw-away folder.

Prints one JSON line: the number of results, the results area (x, y, w, h) in the image, timings.
Settings go to a throw-away folder unless --settings-dir is given, so a run never touches the user's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def _wait(app, cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        app.processEvents()
        time.sleep(0.01)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder")
    p.add_argument("--query", default=None, help="an image to search with (default: none, the collection view)")
    p.add_argument("--out", required=True)
    p.add_argument("--weights", default="pretrained")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--descriptor", default=None)
    p.add_argument("--k", type=int, default=None)
    p.add_argument("--size", default="1400x860", help="window size WxH")
    p.add_argument("--activations", type=int, default=None, metavar="RANK",
                   help="show the activations dock with the result of this rank selected")
    p.add_argument("--compare", default=None, metavar="DESCRIPTOR",
                   help="also open Compare with this descriptor and save it to --compare-out")
    p.add_argument("--compare-out", default=None)
    p.add_argument("--settings-dir", default=None)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--wizard", action="store_true", help="the training wizard on FOLDER instead of the explorer")
    p.add_argument("--train-out", default=None, help="--wizard: also train and save the finished run page")
    p.add_argument("--iterations", type=int, default=200, help="--wizard: training iterations")
    p.add_argument("--whiten", action="store_true",
                   help="the wizard's whitening path on FOLDER (class sub-folders): its report page")
    p.add_argument("--shrinkage", type=float, default=None,
                   help="--whiten: a given shrinkage (all dimensions) instead of choosing on validation classes")
    p.add_argument("--sizes", choices=("single", "multi"), default="multi", help="--whiten: input sizes")
    args = p.parse_args(argv)

    from PySide6.QtCore import QCoreApplication, QSettings
    from PySide6.QtWidgets import QApplication

    settings_dir = args.settings_dir or tempfile.mkdtemp(prefix="re-shot-settings-")
    QCoreApplication.setOrganizationName("RetrievalExplorerScreenshot")
    QCoreApplication.setApplicationName("retrieval-explorer-screenshot")
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, settings_dir)
    app = QApplication.instance() or QApplication(["retrieval-explorer"])

    if args.whiten:
        return _whiten(app, args)
    if args.wizard:
        return _wizard(app, args)

    from retrieval_gui.main_window import MainWindow

    t0 = time.monotonic()
    win = MainWindow(weights=args.weights, image_size=args.image_size, restore=False)
    w, h = (int(v) for v in args.size.lower().split("x"))
    win.resize(w, h)
    if args.descriptor:
        win.set_descriptor(args.descriptor)
    if args.k:
        win.k_spin.setValue(args.k)
    win.show()
    if not win.open_collection(args.folder):
        print(json.dumps({"error": win.banner.text()}))
        return 2
    ok = _wait(app, win.index_ready, args.timeout)
    t_index = time.monotonic() - t0
    if args.query:
        win.set_query(os.path.abspath(args.query))
        ok = ok and _wait(app, lambda: win.result is not None and not win.searching, args.timeout)
        if ok:  # once more, warm (the first query also pays the model's one-off start-up)
            first = win.result
            win.run_query()
            ok = _wait(app, lambda: win.result is not first and not win.searching, args.timeout)
    else:  # the collection view
        ok = ok and _wait(app, lambda: win.results_model.browsing and win.explorer.listing() is not None
                          and win.results_model.rowCount() == len(win.explorer.listing()[0]) > 0, args.timeout)
    if ok and args.activations and args.query:
        win.act_dock.show()
        hit = win.result.hits[min(args.activations, len(win.result.hits)) - 1]
        win.results_view.setCurrentIndex(win.results_model.index(hit.rank - 1))
        win.select_hit(hit)
        ok = _wait(app, lambda: win.activations.payload is not None and win.activations.payload.other == hit.path
                   and not win.act_task.busy, args.timeout)
    win.loader.wait(30_000)
    win.big_loader.wait(30_000)
    _wait(app, lambda: False, 0.5)  # let the grid repaint with every thumbnail
    screen = win.screen()
    shot = screen.grabWindow(win.winId()) if screen is not None else None
    if shot is None or shot.isNull() or shot.width() < 10:
        shot = win.grab()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    saved = shot.save(args.out)
    view = win.results_view.viewport()
    top_left = view.mapTo(win, view.rect().topLeft())
    scale = shot.width() / max(1, win.width())
    area = [int(top_left.x() * scale), int(top_left.y() * scale), int(view.width() * scale), int(view.height() * scale)]
    compare_saved = None
    if ok and args.compare and args.query:
        dlg = win.open_compare(args.compare)
        ok = _wait(app, lambda: dlg.overlap is not None and dlg.right is not None
                   and dlg.right.spec.descriptor == args.compare, args.timeout)
        win.loader.wait(30_000)
        _wait(app, lambda: False, 0.8)
        grab = screen.grabWindow(dlg.winId()) if screen is not None else None
        if grab is None or grab.isNull() or grab.width() < 10:
            grab = dlg.grab()
        out = args.compare_out or str(Path(args.out).with_name("compare.png"))
        compare_saved = bool(grab.save(out))
        ok = ok and compare_saved
    info = {"ok": bool(ok and saved), "results": len(win.result.hits) if win.result else 0,
            "results_area": area, "image": [shot.width(), shot.height()], "index_s": round(t_index, 2),
            "total_s": round(time.monotonic() - t0, 2), "banner": win.banner.text() if win.banner.isVisible() else "",
            "mode": win.grid_mode(), "browsed": win.results_model.rowCount() if win.results_model.browsing else 0,
            "compare_saved": compare_saved}
    win.close()
    print(json.dumps(info))
    return 0 if info["ok"] else 1


def _grab(widget):
    screen = widget.screen()
    shot = screen.grabWindow(widget.winId()) if screen is not None else None
    if shot is None or shot.isNull() or shot.width() < 10:
        shot = widget.grab()
    return shot


def _wizard(app, args) -> int:
    """Walk the training wizard on args.folder to its summary page (and, with --train-out, through a run)."""
    work = Path(tempfile.mkdtemp(prefix="re-shot-wizard-"))
    os.environ.setdefault("RETRIEVAL_EXPLORER_HOME", str(work / "home"))
    from engine.training.config import TrainConfig
    from retrieval_gui.wizard import TrainWizard

    t0 = time.monotonic()
    cfg = TrainConfig(data_root=str(Path(args.folder).resolve()), weights=args.weights, device="cpu",
                      iterations=args.iterations, val_every=max(1, args.iterations // 4), classes_per_batch=4,
                      samples_per_class=4, image_size=args.image_size or 224, cache_dir=str(work / "cache"),
                      name="demo")
    wiz = TrainWizard(config=cfg)
    w, h = (int(v) for v in args.size.lower().split("x"))
    wiz.resize(w, h)
    wiz.show()
    ok = wiz.data_page.wait_scan(int(args.timeout * 1000))
    for _ in wiz.settings_pages:
        ok = ok and _wait(app, wiz.currentPage().isComplete, args.timeout)
        wiz.next()
    page = wiz.summary_page
    ok = ok and wiz.currentPage() is page and _wait(app, lambda: page.estimate is not None, args.timeout)
    _wait(app, lambda: False, 0.5)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    saved = bool(_grab(wiz).save(args.out))
    info = {"ok": bool(ok and saved), "estimate_s": round(page.estimate.total_s, 1) if page.estimate else None,
            "estimate": page.estimate_label.text(), "problems": page.problems}
    if ok and args.train_out:
        t1 = time.monotonic()
        wiz.next()  # Start training
        run = wiz.run_page
        ok = _wait(app, lambda: not run.running and (run.result is not None or run.error is not None), args.timeout)
        _wait(app, lambda: False, 0.8)
        info.update({"train_ok": bool(ok and run.result is not None), "run_s": round(time.monotonic() - t1, 1),
                     "run_rates": {k: round(v, 1) for k, v in run._seen_rates.items()},
                     "train_saved": bool(_grab(wiz).save(args.train_out))})
        ok = ok and info["train_ok"] and info["train_saved"]
        if ok and run.alike_panel.isVisible():  # the evaluation alike, further down the scrolling page
            run.scroll.verticalScrollBar().setValue(run.scroll.verticalScrollBar().maximum())
            _wait(app, lambda: False, 0.5)
            alike_out = str(Path(args.train_out).with_name(Path(args.train_out).stem + "_alike.png"))
            info["alike_saved"] = bool(_grab(wiz).save(alike_out))
            info["alike"] = run.alike_panel.status.text()[:400]
    info["ok"] = bool(ok and saved)
    info["total_s"] = round(time.monotonic() - t0, 1)
    wiz.run_page.stop(wait_ms=60_000)  # a run past the timeout: stopped here, closing would ask what to do
    wiz.close()
    print(json.dumps(info))
    return 0 if info["ok"] else 1


def _whiten(app, args) -> int:
    """Walk the wizard's whitening path on args.folder (GeM, Lw) and save its report page."""
    work = Path(tempfile.mkdtemp(prefix="re-shot-whiten-"))
    os.environ.setdefault("RETRIEVAL_EXPLORER_HOME", str(work / "home"))
    from retrieval_gui.wizard import TrainWizard

    t0 = time.monotonic()
    wiz = TrainWizard(path="whiten")
    w, h = (int(v) for v in args.size.lower().split("x"))
    wiz.resize(w, h)
    wiz.show()
    _wait(app, lambda: wiz.currentPage() is not None, 5)
    if wiz.currentPage() is wiz.choice_page:
        wiz.next()
    data = wiz.whiten_data_page
    data.folder_edit.setText(str(Path(args.folder).resolve()))
    ok = data.wait_count(int(args.timeout * 1000)) and _wait(app, data.isComplete, args.timeout)
    wiz.next()
    page = wiz.whiten_settings_page
    page.sizes.setCurrentIndex(max(0, page.sizes.findData(args.sizes)))
    if args.shrinkage is not None:
        page.manual_button.setChecked(True)
        page.shrinkage.setValue(args.shrinkage)
        page.dim.setValue(0)
    page.output_edit.setText(str(work / "whitening.npz"))
    ok = ok and _wait(app, page.isComplete, 10)
    wiz.next()
    run = wiz.whiten_run_page
    ok = ok and _wait(app, lambda: not run.running and wiz.currentPage() is run, args.timeout)
    _wait(app, lambda: False, 0.8)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    saved = bool(_grab(wiz).save(args.out))
    info = {"ok": bool(ok and saved and run.outcome is not None), "total_s": round(time.monotonic() - t0, 1),
            "report": run.report.toPlainText()[:600]}
    wiz.close()
    print(json.dumps(info))
    return 0 if info["ok"] else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
