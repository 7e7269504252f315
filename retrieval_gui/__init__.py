"""Retrieval Explorer's Qt front end (PySide6). Engine work runs in workers (see workers.py).

Importing this package applies one work-around (below) that every Qt module of the GUI needs.
"""

from __future__ import annotations

import sys


def _pin_none() -> None:
    """Keep ``None`` alive for the life of the process on CPython < 3.12.

    PySide6 6.12 releases one reference to ``None`` that it never took on every call of a Python
    slot from a signal (a QTimer tick, a progress signal, ...) and every ``QModelIndex.data()`` that
    returns None. On CPython 3.12+ None is immortal and this is harmless; on 3.11 None's count
    (a few thousand) runs out within a minute of normal use and the interpreter aborts with
    "none_dealloc: deallocating None". None is a static object, so adding 2**40 to its count
    (what 3.12 does in effect) makes those extra releases harmless.
    """
    if sys.implementation.name != "cpython" or sys.version_info >= (3, 12):
        return
    import ctypes

    ctypes.c_ssize_t.from_address(id(None)).value += 1 << 40


_pin_none()
