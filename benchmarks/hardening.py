"""The hardening campaign's counts table (issue 26): cases, passed, failed per category.

    python benchmarks/hardening.py [--fast] [--only CATEGORY] [-v]

Runs every case of ``tests/campaign`` in its own scratch folder (HOME, config and cache inside it)
and prints one row per category; ``-v`` names each failure with its message.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from campaign import all_cases  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fast", action="store_true", help="only the cases CI runs (not marked slow)")
    ap.add_argument("--only", help="one category")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    rows: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    failures: list[tuple[str, str]] = []
    t0 = time.perf_counter()
    for case in all_cases():
        if (a.fast and case.slow) or (a.only and case.category != a.only):
            continue
        row = rows[case.category]
        row[0] += 1
        with tempfile.TemporaryDirectory(prefix="campaign-") as work:
            try:
                case.run(Path(work))
                row[1] += 1
            except Exception as e:  # noqa: BLE001 - a failed case of any kind is counted, not raised
                row[2] += 1
                failures.append((case.id, f"{type(e).__name__}: {e}".splitlines()[0][:200]))
    width = max([len(c) for c in rows] + [8])
    print(f"| {'category':<{width}} | cases | passed | failed |")
    print(f"|{'-' * (width + 2)}|------:|-------:|-------:|")
    for cat, (n, ok, bad) in rows.items():
        print(f"| {cat:<{width}} | {n:5d} | {ok:6d} | {bad:6d} |")
    total = [sum(r[i] for r in rows.values()) for i in range(3)]
    print(f"| {'all':<{width}} | {total[0]:5d} | {total[1]:6d} | {total[2]:6d} |")
    print(f"({time.perf_counter() - t0:.0f} s)")
    if a.verbose:
        for cid, msg in failures:
            print(f"FAILED {cid}: {msg}")
    return 1 if total[2] else 0


if __name__ == "__main__":
    raise SystemExit(main())
