"""Every campaign case as a test. The long ones (whole program runs, ``Case.slow``) are marked ``slow`` and
``campaign_long``: `make test` runs them, CI leaves them to ``benchmarks/hardening.py`` (issue 26: "fast ones
in CI, the rest marked slow"), which runs every case and prints the counts table."""

from __future__ import annotations

import pytest

from . import all_cases

_CASES = all_cases()


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow, pytest.mark.campaign_long] if c.slow else []) for c in _CASES])
def test_case(case, tmp_path):
    case.run(tmp_path)
