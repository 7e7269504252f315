"""A first case, so the registry is never empty: a FIFO given as the query must not hang `search`."""

from __future__ import annotations

import os
from pathlib import Path

from . import SMALL, Case, indexed_folder, no_traceback, run_cli


def _fifo_query(work: Path) -> None:
    folder = indexed_folder(work)
    fifo = work / "query.jpg"
    os.mkfifo(fifo)
    r = run_cli(work, "search", str(fifo), "--collection", str(folder), *SMALL, timeout=60)
    no_traceback(r)
    assert r.rc != 0, "a FIFO query was accepted"
    assert "not a regular file" in r.err, r.err


CASES = [Case("special files", "FIFO as the query image", _fifo_query)]
