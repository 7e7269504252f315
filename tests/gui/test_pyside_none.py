"""PySide6 6.12 on CPython 3.11 releases a reference to None on every Python slot call; importing
retrieval_gui must keep the process alive through a long session (tens of thousands of signals)."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import retrieval_gui
from PySide6.QtCore import QCoreApplication, QTimer
app = QCoreApplication([])
n = [0]
def tick():
    n[0] += 1
    if n[0] >= 30000:
        app.quit()
t = QTimer()
t.setInterval(0)
t.timeout.connect(tick)
t.start()
app.exec()
print(n[0])
"""


def test_thirty_thousand_slot_calls_do_not_abort():
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert proc.stdout.strip() == "30000"
