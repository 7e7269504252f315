"""Campaign cases of region queries (issue 28): malformed ``search --box`` values are refused with the
form of a box in the message, before any model or collection is touched."""

from __future__ import annotations

from pathlib import Path

from . import Case, make_photos, no_traceback, run_cli

BAD_BOXES = ("1,2,3", "a,b,c,d", "1e400,0,5,5", "0,0,0,10")


def _malformed_boxes(work: Path) -> None:
    (query,) = make_photos(work / "q", 1)
    for box in BAD_BOXES:
        r = run_cli(work, "search", str(query), "--collection", str(work / "nowhere"), f"--box={box}")
        no_traceback(r)
        assert r.rc == 2 and ("X,Y,W,H" in r.err or "X, Y" in r.err), (box, r.said[-500:])


CASES = [Case("region queries", "malformed --box values", _malformed_boxes)]
