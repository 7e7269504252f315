"""PySide6 6.12 on CPython 3.11 releases a reference to None on every Python slot call and on every
call of a C++ method returning void (QPainter.save, ...); importing retrieval_gui must keep the process
alive through a long session (tens of thousands of signals and paint calls)."""

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
from PySide6.QtGui import QImage, QPainter
img = QImage(8, 8, QImage.Format.Format_ARGB32)
p = QPainter(img)
for _ in range(30000):
    p.save()
    p.restore()
p.end()
print("painted")
from PySide6.QtCore import QObject, Signal
class Emitter(QObject):
    progress = Signal(int, int, str)
e = Emitter()
seen = []
e.progress.connect(lambda d, t, m: seen.append(d))
for i in range(30000):  # each emit() from Python drops a reference to True in PySide6 6.12
    e.progress.emit(i, 30000, "")
print(len(seen))
"""


def test_thirty_thousand_slot_void_and_emit_calls_do_not_abort():
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert proc.stdout.split() == ["30000", "painted", "30000"]
