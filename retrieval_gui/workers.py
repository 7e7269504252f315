"""Run engine functions in QThreads and turn their callbacks into Qt signals.

The engine knows nothing of Qt: a long function takes ``progress(done, total, message)`` and
``should_stop()`` callbacks (see :mod:`engine.callbacks`). :func:`start_task` moves a
:class:`TaskWorker` to a fresh QThread (the pattern of superqt's ``create_worker``), calls the
function there and reports back through queued signals, so widgets only ever react to signals on
the GUI thread.

Pause is implemented here, not in the engine: while paused, ``should_stop()`` blocks the worker
thread until :meth:`TaskHandle.resume` or :meth:`TaskHandle.cancel`.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QCoreApplication, QEventLoop, QObject, Qt, QThread, Signal, Slot

log = logging.getLogger(__name__)

# every handle whose thread has not finished yet; tests check it is empty after each test
_LIVE: weakref.WeakSet[TaskHandle] = weakref.WeakSet()
_STRONG: set[TaskHandle] = set()  # keep running tasks alive even if the caller drops its handle


class TaskWorker(QObject):
    """Calls ``fn(*args, progress=..., should_stop=..., **kwargs)`` on its own thread."""

    progress = Signal(int, int, str)
    event = Signal(object)  # optional stream of engine events (e.g. training events)
    result = Signal(object)
    error = Signal(str, str)  # message, formatted traceback
    finished = Signal()

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple = (),
        kwargs: dict | None = None,
        *,
        event_kwarg: str | None = None,
        with_callbacks: bool = True,
    ) -> None:
        super().__init__()
        self._fn = fn
        self._args = args
        self._kwargs = dict(kwargs or {})
        self._event_kwarg = event_kwarg
        self._with_callbacks = with_callbacks
        self._cancel = threading.Event()
        self._running = threading.Event()
        self._running.set()  # set = not paused

    # -- called from any thread ------------------------------------------------------------
    def cancel(self) -> None:
        self._cancel.set()
        self._running.set()  # wake a paused worker so it can stop

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    # -- called on the worker thread ---------------------------------------------------------
    def _should_stop(self) -> bool:
        while not self._running.wait(0.05):
            if self._cancel.is_set():
                break
        return self._cancel.is_set()

    def _progress(self, done: int, total: int, message: str = "") -> None:
        self.progress.emit(int(done), int(total), str(message))

    @Slot()
    def run(self) -> None:
        kwargs = dict(self._kwargs)
        if self._with_callbacks:
            kwargs.setdefault("progress", self._progress)
            kwargs.setdefault("should_stop", self._should_stop)
        if self._event_kwarg:
            kwargs[self._event_kwarg] = self.event.emit
        try:
            out = self._fn(*self._args, **kwargs)
        except Exception as exc:  # reported to the GUI, never swallowed
            log.exception("task %s failed", getattr(self._fn, "__name__", self._fn))
            self.error.emit(_message(exc), traceback.format_exc())
        else:
            self.result.emit(out)
        finally:
            self.finished.emit()


def _message(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class TaskHandle(QObject):
    """Owns a worker and its thread; forwards the worker's signals.

    Connect to the signals before the event loop runs again (they are queued), e.g.::

        handle = start_task(engine_fn, arg, parent=self)
        handle.progress.connect(bar.update)
        handle.result.connect(self.on_result)
    """

    progress = Signal(int, int, str)
    event = Signal(object)
    result = Signal(object)
    error = Signal(str, str)
    finished = Signal()

    def __init__(self, worker: TaskWorker, parent: QObject | None = None, name: str = "") -> None:
        super().__init__(parent)
        self.name = name or getattr(worker._fn, "__name__", "task")
        self.worker = worker
        self.thread = QThread()
        self.thread.setObjectName(f"task:{self.name}")
        worker.moveToThread(self.thread)
        worker.progress.connect(self.progress)
        worker.event.connect(self.event)
        worker.result.connect(self.result)
        worker.error.connect(self.error)
        # direct: quit() is thread-safe, and a queued call would need the GUI event loop, which
        # wait() on the GUI thread blocks (the wait would then sit out its whole timeout)
        worker.finished.connect(self.thread.quit, Qt.ConnectionType.DirectConnection)
        self.thread.started.connect(worker.run)
        self.thread.finished.connect(self._on_thread_finished)
        self._done = False

    def start(self) -> TaskHandle:
        _LIVE.add(self)
        _STRONG.add(self)
        self.thread.start()
        return self

    def cancel(self) -> None:
        self.worker.cancel()

    def pause(self) -> None:
        self.worker.pause()

    def resume(self) -> None:
        self.worker.resume()

    @property
    def paused(self) -> bool:
        return self.worker.paused

    def is_running(self) -> bool:
        return self.thread.isRunning() or not self._done

    def wait(self, msecs: int = 30_000) -> bool:
        """Block until the thread has finished (for shutdown and tests); True when it has."""
        return self.thread.wait(msecs)

    @Slot()
    def _on_thread_finished(self) -> None:
        self._done = True
        self.finished.emit()
        _STRONG.discard(self)
        _LIVE.discard(self)
        self.worker.deleteLater()


def start_task(
    fn: Callable[..., Any],
    *args: Any,
    parent: QObject | None = None,
    name: str = "",
    event_kwarg: str | None = None,
    with_callbacks: bool = True,
    **kwargs: Any,
) -> TaskHandle:
    """Run ``fn(*args, progress=, should_stop=, **kwargs)`` in a new QThread and return its handle.

    ``event_kwarg`` names a keyword through which ``fn`` receives a callable that emits the handle's
    ``event`` signal (e.g. ``event_kwarg="on_event"`` for the trainer). ``with_callbacks=False`` calls
    ``fn`` without progress/should_stop (for short functions that do not take them).
    """
    worker = TaskWorker(fn, args, kwargs, event_kwarg=event_kwarg, with_callbacks=with_callbacks)
    return TaskHandle(worker, parent, name).start()


def wait_for_task(handle, timeout_ms: int) -> bool:
    """Block until ``handle``'s thread has finished, still delivering the worker's queued signals
    (progress, events, the result) meanwhile. True when it finished in time."""
    deadline = time.monotonic() + timeout_ms / 1000
    while handle.thread.isRunning():
        QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
        if handle.thread.wait(20) or time.monotonic() > deadline:
            break
    QCoreApplication.processEvents()
    return not handle.thread.isRunning()


def live_tasks() -> list[TaskHandle]:
    """Handles whose thread has not finished (used on shutdown and by the tests' leak check)."""
    return [h for h in list(_LIVE) if h.is_running()]


def shutdown(timeout_ms: int = 10_000) -> bool:
    """Cancel every live task and wait for its thread; True when all finished in time."""
    ok = True
    for handle in live_tasks():
        handle.cancel()
    for handle in live_tasks():
        ok = handle.wait(timeout_ms) and ok
    return ok
