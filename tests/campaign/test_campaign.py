"""Every campaign case as a test; the slow ones are marked ``slow``."""

from __future__ import annotations

import pytest

from . import all_cases

_CASES = all_cases()


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else []) for c in _CASES])
def test_case(case, tmp_path):
    case.run(tmp_path)
