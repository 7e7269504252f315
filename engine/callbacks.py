"""The task-state contract shared by every long-running engine function.

``progress(done, total, message)`` is called as work advances (``total`` may be 0 when unknown);
``should_stop()`` is polled between units of work and, when it returns True, the function stops
cleanly (returning what it has, flagged as cancelled, or raising :class:`Cancelled` where a partial
result would be meaningless).
"""

from __future__ import annotations

from collections.abc import Callable

ProgressFn = Callable[[int, int, str], None]
ShouldStopFn = Callable[[], bool]


class Cancelled(Exception):
    """Raised by an engine function that was asked to stop and has no meaningful partial result."""


def no_progress(done: int, total: int, message: str = "") -> None:
    """A progress callback that does nothing."""


def never_stop() -> bool:
    """A should_stop callback that never asks to stop."""
    return False


def resolve(progress: ProgressFn | None, should_stop: ShouldStopFn | None) -> tuple[ProgressFn, ShouldStopFn]:
    """Replace missing callbacks with no-ops."""
    return progress or no_progress, should_stop or never_stop
