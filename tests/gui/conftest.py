"""Qt fixtures: every GUI test runs offscreen, on throw-away settings, and fails on a leaked thread."""

from __future__ import annotations

import gc
import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QCoreApplication, QSettings  # noqa: E402


@pytest.fixture(autouse=True)
def isolated_settings(qapp, tmp_path, monkeypatch):
    """QSettings go to a temporary INI folder, never to the user's real settings."""
    QCoreApplication.setOrganizationName("RetrievalExplorerTests")
    QCoreApplication.setApplicationName("retrieval-explorer-tests")
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    for scope in (QSettings.Scope.UserScope, QSettings.Scope.SystemScope):
        QSettings.setPath(QSettings.Format.IniFormat, scope, str(tmp_path / "settings"))
    monkeypatch.setenv("RETRIEVAL_EXPLORER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RETRIEVAL_EXPLORER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RETRIEVAL_EXPLORER_OFFLINE", "1")
    # PyTorch runs the network: an exported runtime would be exported again in every test's fresh cache
    # (tests/test_runtime.py covers the runtimes; test_explorer has one window on the default runtime)
    monkeypatch.setenv("RETRIEVAL_EXPLORER_RUNTIME", "torch")
    yield tmp_path / "settings"


@pytest.fixture(autouse=True)
def no_leaked_threads(qapp):
    """Fail a test that leaves an engine task thread running."""
    from retrieval_gui import workers

    yield
    # short tasks a window starts by itself and cannot cancel (the wizard's data count, its speed
    # measurement) may outlive a test by a moment: waited for, but only briefly
    import time

    deadline = time.monotonic() + 10
    while any(h.name in ("data scan", "run estimate") for h in workers.live_tasks()) and time.monotonic() < deadline:
        qapp.processEvents()
        time.sleep(0.01)
    qapp.processEvents()
    leaked = workers.live_tasks()
    if leaked:
        names = [h.name for h in leaked]
        workers.shutdown(10_000)
        qapp.processEvents()
        pytest.fail(f"test leaked running task threads: {names}")
    qapp.processEvents()
    # Free this test's Qt garbage here, on the GUI thread. Left to the cyclic collector, a widget caught in a
    # reference cycle may be freed later from whichever thread allocates (a thumbnail or task thread): its
    # timers then cannot be unregistered there and the next event loop delivers one to freed memory
    # (seen: a segfault in QApplication::notify from QTimerInfoList::activateTimers, a test or two later).
    gc.collect()
    qapp.processEvents()


@pytest.fixture
def folder(image_folder):
    """A small labelled folder: 3 class sub-folders of 4 images, 64 px."""
    return image_folder(n_classes=3, per_class=4, size=64)


@pytest.fixture
def window(qtbot):
    """Factory of explorer windows on a random-weights model (fast), closed after the test; keyword
    arguments go to MainWindow (``restore`` False unless given)."""
    from retrieval_gui.main_window import MainWindow

    wins = []

    def make(**kwargs) -> MainWindow:
        w = MainWindow(weights="random", image_size=64, threads=1, thumb_size=64, restore=kwargs.pop("restore", False),
                       **kwargs)
        qtbot.addWidget(w)
        wins.append(w)
        return w

    yield make
    for w in wins:
        w.close()


def open_shown(qtbot, w, folder, timeout: int = 60_000):
    """``w`` shown at 900 x 700, exposed, with ``folder`` opened and indexed: for tests that press keys
    or click on what a visible window draws."""
    w.resize(900, 700)
    w.show()
    qtbot.waitExposed(w)
    assert w.open_collection(folder)
    qtbot.waitUntil(w.index_ready, timeout=timeout)
    return w
