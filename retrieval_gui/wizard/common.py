"""Small helpers shared by the wizard's pages (below them all: no page imports the wizard module)."""

from __future__ import annotations


def fmt_duration(seconds: float) -> str:
    """'1h 02m', '3m 05s', '12s'."""
    s = max(0, int(round(seconds)))
    if s >= 3600:
        return f"{s // 3600}h {(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"
