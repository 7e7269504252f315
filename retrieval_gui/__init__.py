"""Retrieval Explorer's Qt front end (PySide6). Engine work runs in workers (see workers.py).

Importing this package applies one work-around (below) that every Qt module of the GUI needs.
"""

from __future__ import annotations

import sys


def _pin_none() -> None:
    """Keep ``None``, ``True`` and ``False`` alive for the life of the process on CPython < 3.12.

    PySide6 6.12 releases one reference to ``None`` that it never took on every call of a Python
    slot from a signal (a QTimer tick, a progress signal, ...) and every ``QModelIndex.data()`` that
    returns None, and one reference to ``True`` on every ``Signal.emit()`` from Python. On CPython
    3.12+ these objects are immortal and this is harmless; on 3.11 their counts (hundreds to a few
    thousand) run out within minutes of normal use (a training run's progress signals) and the
    interpreter aborts with "none_dealloc" or "bool_dealloc". They are static objects, so adding 2**40
    to their counts (what 3.12 does in effect) makes those extra releases harmless.
    """
    if sys.implementation.name != "cpython" or sys.version_info >= (3, 12):
        return
    import ctypes

    for obj in (None, True, False):
        ctypes.c_ssize_t.from_address(id(obj)).value += 1 << 40


_pin_none()
