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


class LatestTask(QObject):
    """One task of a kind at a time, and only the latest request counts: the window's "latest wins".

    :meth:`request` starts ``fn`` at once when nothing of this kind runs; while one runs, the request
    waits and replaces any older waiting one (``cancel_running=True`` also cancels the running one),
    and it starts when the running one has finished. Results, errors and progress of a task that is
    no longer the latest request are dropped, so a caller's handlers only ever see the latest::

        self.query = LatestTask(self, "query")
        self.query.request(run_query, index, path, on_result=self.show, on_error=self.failed,
                           with_callbacks=False)

    :meth:`cancel` cancels the running task and drops the waiting one; :meth:`close` also waits for
    the thread (window close, folder change). ``busy`` tells whether a task runs or waits.
    """

    busy_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None, name: str = "task") -> None:
        super().__init__(parent)
        self.name = name
        self.generation = 0  # of the latest request
        self.handle: TaskHandle | None = None  # the running task, if any
        self.running_tag: Any = None  # what the running task works for (the caller's ``tag``)
        self._settled = False  # the running task has delivered its outcome
        self._pending: tuple | None = None
        self._callbacks: tuple = (0, None, None, None, None)  # generation and callbacks of the running task

    def request(
        self,
        fn: Callable[..., Any],
        *args: Any,
        on_result: Callable[[Any], Any] | None = None,
        on_error: Callable[[str, str], Any] | None = None,
        on_progress: Callable[[int, int, str], Any] | None = None,
        on_event: Callable[[Any], Any] | None = None,
        cancel_running: bool = False,
        tag: Any = None,
        **kwargs: Any,
    ) -> int:
        """Ask for ``fn(*args, **kwargs)`` (``kwargs`` as :func:`start_task`'s); returns its generation.
        ``tag`` says what the task works for (e.g. a folder and a model): :attr:`running_tag` and
        :attr:`pending_tag` tell it back while the task runs or waits."""
        self.generation += 1
        was_busy = self.busy
        self._pending = (self.generation, fn, args, on_result, on_error, on_progress, on_event, kwargs, tag)
        if self.running():
            if cancel_running:
                self.handle.cancel()
        else:
            self._start_pending()
        if not was_busy:
            self.busy_changed.emit(True)
        return self.generation

    def is_latest(self, generation: int) -> bool:
        return generation == self.generation

    def running(self) -> bool:
        return self.handle is not None and self.handle.is_running()

    @property
    def pending_tag(self) -> Any:
        """The ``tag`` of the waiting request (None when none waits)."""
        return self._pending[-1] if self._pending is not None else None

    def settled(self) -> bool:
        """The running task has delivered its result or error (its thread is only ending)."""
        return self.running() and self._settled

    def cancelled(self) -> bool:
        """The running task was asked to stop (its results are dropped)."""
        return self.running() and self.handle.worker.cancelled

    @property
    def busy(self) -> bool:
        """A task runs or waits."""
        return self.running() or self._pending is not None

    def cancel(self) -> None:
        """Cancel the running task and drop the waiting request; late results are dropped."""
        self.generation += 1
        self._pending = None
        if self.handle is not None:
            self.handle.cancel()

    def close(self, timeout_ms: int = 10_000) -> bool:
        """Cancel, then wait for the running thread; True when it finished in time."""
        self.cancel()
        return self.handle.wait(timeout_ms) if self.running() else True

    def _start_pending(self) -> None:
        gen, fn, args, on_result, on_error, on_progress, on_event, kwargs, tag = self._pending
        self._pending = None
        self.running_tag = tag
        self._settled = False
        kwargs = dict(kwargs)
        kwargs.setdefault("name", self.name)
        if on_event is not None:
            kwargs.setdefault("event_kwarg", "on_event")
        # no parent: a handle must outlive its requester while its thread runs (see start_task)
        handle = start_task(fn, *args, **kwargs)
        self.handle = handle
        self._callbacks = (gen, on_result, on_error, on_progress, on_event)
        # bound slots of this object, not lambdas: when the owner (and so this object) is deleted, Qt
        # drops the connections, and a late result never reaches deleted widgets
        handle.result.connect(self._deliver_result)
        handle.error.connect(self._deliver_error)
        handle.progress.connect(self._deliver_progress)
        handle.event.connect(self._deliver_event)
        handle.finished.connect(self._on_finished)

    def _wanted(self, index: int) -> Callable[..., Any] | None:
        """The callback at ``index`` of the running task's, when that task is still the latest request."""
        if self.sender() is not self.handle:  # a finished task's queued signal, arriving late
            return None
        gen, *callbacks = self._callbacks
        return callbacks[index] if self.is_latest(gen) else None

    @Slot(object)
    def _deliver_result(self, result: Any) -> None:
        if self.sender() is self.handle:
            self._settled = True
        if (cb := self._wanted(0)) is not None:
            cb(result)

    @Slot(str, str)
    def _deliver_error(self, message: str, details: str) -> None:
        if self.sender() is self.handle:
            self._settled = True
        if (cb := self._wanted(1)) is not None:
            cb(message, details)

    @Slot(int, int, str)
    def _deliver_progress(self, done: int, total: int, message: str) -> None:
        if (cb := self._wanted(2)) is not None:
            cb(done, total, message)

    @Slot(object)
    def _deliver_event(self, event: Any) -> None:
        if (cb := self._wanted(3)) is not None:
            cb(event)

    @Slot()
    def _on_finished(self) -> None:
        if self.sender() is not self.handle:
            return
        self.handle = None
        self.running_tag = None
        self._callbacks = (0, None, None, None, None)
        if self._pending is not None:
            self._start_pending()
        else:
            self.busy_changed.emit(False)


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
