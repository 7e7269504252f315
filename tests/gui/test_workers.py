"""The QThread worker wrapper: results, progress, errors, cancel and pause all reach the GUI thread."""

from __future__ import annotations

import threading
import time

import pytest
from PySide6.QtCore import QThread

from engine.callbacks import Cancelled
from retrieval_gui import workers
from retrieval_gui.workers import live_tasks, start_task


def counting_task(n, *, progress, should_stop, delay=0.0):
    seen = []
    for i in range(n):
        if should_stop():
            raise Cancelled()
        seen.append(threading.get_ident())
        time.sleep(delay)
        progress(i + 1, n, f"step {i + 1}")
    return {"n": n, "threads": set(seen)}


def test_result_and_progress_arrive_on_gui_thread(qtbot):
    got, prog = [], []
    handle = start_task(counting_task, 5)
    handle.progress.connect(lambda d, t, m: prog.append((d, t, m, QThread.currentThread())))
    handle.result.connect(got.append)
    with qtbot.waitSignal(handle.finished, timeout=5000):
        pass
    assert got and got[0]["n"] == 5
    assert threading.get_ident() not in got[0]["threads"], "the work must not run on the GUI thread"
    assert [p[0] for p in prog] == [1, 2, 3, 4, 5]
    assert all(p[3] is QThread.currentThread() for p in prog), "signals must be delivered on the GUI thread"
    assert not live_tasks()


def test_error_is_reported_not_swallowed(qtbot):
    def boom(*, progress, should_stop):
        raise ValueError("bad input: nothing to index")

    errors = []
    handle = start_task(boom)
    handle.error.connect(lambda msg, tb: errors.append((msg, tb)))
    with qtbot.waitSignal(handle.finished, timeout=5000):
        pass
    assert errors and errors[0][0] == "ValueError: bad input: nothing to index"
    assert "Traceback" in errors[0][1]


def test_cancel_stops_the_task(qtbot):
    errors, results = [], []
    handle = start_task(counting_task, 10_000, delay=0.002)
    handle.error.connect(lambda m, t: errors.append(m))
    handle.result.connect(results.append)
    qtbot.waitUntil(lambda: handle.worker is not None, timeout=1000)
    handle.cancel()
    with qtbot.waitSignal(handle.finished, timeout=5000):
        pass
    assert not results
    assert errors and errors[0].startswith("Cancelled")


def test_pause_blocks_progress_until_resume(qtbot):
    prog = []
    handle = start_task(counting_task, 400, delay=0.002)
    handle.progress.connect(lambda d, t, m: prog.append(d))
    qtbot.waitUntil(lambda: len(prog) >= 3, timeout=5000)
    handle.pause()
    qtbot.wait(150)  # let in-flight signals arrive
    frozen = len(prog)
    qtbot.wait(300)
    assert len(prog) <= frozen + 1, "a paused task must not advance"
    assert handle.paused
    handle.resume()
    with qtbot.waitSignal(handle.finished, timeout=10_000):
        pass
    assert prog[-1] == 400


def test_event_kwarg_streams_events(qtbot):
    def emitter(*, progress, should_stop, on_event):
        for i in range(3):
            on_event({"i": i})
        return "ok"

    events = []
    handle = start_task(emitter, event_kwarg="on_event")
    handle.event.connect(events.append)
    with qtbot.waitSignal(handle.finished, timeout=5000):
        pass
    assert events == [{"i": 0}, {"i": 1}, {"i": 2}]


@pytest.mark.parametrize("with_callbacks", [False])
def test_plain_function_without_callbacks(qtbot, with_callbacks):
    results = []
    handle = start_task(sum, [1, 2, 3], with_callbacks=with_callbacks)
    handle.result.connect(results.append)
    with qtbot.waitSignal(handle.finished, timeout=5000):
        pass
    assert results == [6]


def test_wait_on_gui_thread_returns_when_done(qtbot):
    handle = start_task(counting_task, 3)
    t0 = time.monotonic()
    assert handle.wait(10_000)
    assert time.monotonic() - t0 < 5.0, "wait() must not sit out its timeout"
    qtbot.waitUntil(lambda: not live_tasks(), timeout=2000)


def test_folder_index_reloads_when_another_program_indexed_meanwhile(tmp_path, image_folder):
    """The window's open collection went stale because `retrieval-explorer index` committed meanwhile:
    the next update reloads it instead of failing (and loses neither run's work)."""
    from engine.session import FolderIndex, ModelCache
    from engine.vocabulary import ModelSpec

    root = image_folder(n_classes=2, per_class=3)
    models = ModelCache(runtime="torch")
    key = ModelSpec(weights="random", image_size=32)
    window_side = FolderIndex(root, cache_dir=tmp_path / "cache")
    assert window_side.update(models, key, descriptors=["spoc"]).indexed == 6
    other = FolderIndex(root, cache_dir=tmp_path / "cache")
    (root / "class_00" / "000.jpg").rename(root / "class_00" / "moved.jpg")
    assert other.update(models, key, descriptors=["spoc"]).indexed == 6  # commits first
    (root / "class_01" / "001.jpg").unlink()
    state = window_side.update(models, key, descriptors=["spoc"])
    assert state.indexed == 5 and not state.cancelled


def _echo(value, delay=0.0):
    time.sleep(delay)
    return value


def test_latest_task_delivers_only_the_latest_request(qtbot):
    latest = workers.LatestTask(name="echo")
    got = []
    for i in range(5):  # the first starts, 2-4 are replaced while it runs, 5 runs after it
        latest.request(_echo, i, 0.2 if i == 0 else 0.0, on_result=got.append, with_callbacks=False)
    assert latest.busy
    qtbot.waitUntil(lambda: not latest.busy, timeout=5000)
    assert got == [4]


def test_latest_task_cancel_drops_the_waiting_request_and_late_results(qtbot):
    latest = workers.LatestTask(name="count")
    got, errors = [], []
    latest.request(counting_task, 50, delay=0.01, on_result=got.append,
                   on_error=lambda m, tb: errors.append(m))
    latest.request(_echo, "waiting", on_result=got.append, with_callbacks=False)
    latest.cancel()
    assert latest.close(5000)
    qtbot.wait(50)
    assert got == [] and errors == [] and not latest.busy


def test_latest_task_cancel_running_starts_the_new_request_soon(qtbot):
    latest = workers.LatestTask(name="count")
    got = []
    latest.request(counting_task, 10_000, delay=0.01, on_result=got.append)
    latest.request(_echo, "new", on_result=got.append, with_callbacks=False, cancel_running=True)
    qtbot.waitUntil(lambda: got == ["new"], timeout=5000)


def test_latest_task_owner_deleted_while_running_gets_nothing(qtbot):
    from PySide6.QtCore import QObject

    owner = QObject()
    latest = workers.LatestTask(owner, name="echo")
    got = []
    latest.request(_echo, "late", 0.2, on_result=got.append, with_callbacks=False)
    handle = latest.handle
    owner.deleteLater()
    qtbot.waitUntil(lambda: not handle.is_running(), timeout=5000)
    qtbot.wait(50)
    assert got == []
