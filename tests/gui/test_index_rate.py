"""The indexing progress text, without a window (retrieval_gui.controllers.folder.IndexRate)."""

import time

import pytest

from retrieval_gui.controllers.folder import IndexRate, clock


@pytest.mark.parametrize("seconds, text", [(-3, "0:00"), (42.9, "0:42"), (725, "12:05"), (3723, "1:02:03")])
def test_clock(seconds, text):
    assert clock(seconds) == text


def test_rate_and_time_left_over_this_run(monkeypatch):
    times = [100.0, 100.5, 110.0, 200.0, 201.0]
    real = time.monotonic  # the same module: pytest-qt's teardown reads it too
    monkeypatch.setattr("retrieval_gui.controllers.folder.time.monotonic", lambda: times.pop(0) if times else real())
    rate = IndexRate()
    assert rate.text(100, 1_100) == "indexing 100 / 1,100"  # the first report starts the clock
    assert rate.text(120, 1_100) == "indexing 120 / 1,100"  # under a second: no rate yet
    # 100 images in 10 s since the first report: 10/s, 900 left -> 1:30
    assert rate.text(200, 1_100) == "indexing 200 / 1,100 · 10/s · 1:30 left"
    assert rate.text(5, 1_100) == "indexing 5 / 1,100"  # the count went back: a new run, a new clock
    rate.reset()
    assert rate.text(7, 1_100) == "indexing 7 / 1,100"
    monkeypatch.undo()
