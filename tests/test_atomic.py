"""engine.atomic: a killed writer's temporary file is removed by the next write of the same file."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from engine.atomic import atomic_write_text, atomic_write_with, sweep_temporaries

REPO = Path(__file__).resolve().parents[1]


def test_a_writer_killed_mid_write_leaves_a_temporary_that_the_next_write_removes(tmp_path):
    target = tmp_path / "best.pt"
    atomic_write_text(target, "v1")
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        from engine.atomic import atomic_write_with

        def write(tmp):
            with open(tmp, "w") as fh:
                fh.write("half")
            os.kill(os.getpid(), signal.SIGKILL)  # killed between the write and the rename

        atomic_write_with({str(target)!r}, write)
    """)
    proc = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert proc.returncode == -9
    left = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and left[0].startswith(".best.pt.")
    assert target.read_text() == "v1"  # the old file, whole
    atomic_write_with(target, lambda tmp: Path(tmp).write_text("v2"))
    assert target.read_text() == "v2" and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_running_writers_temporary_is_kept(tmp_path):
    target = tmp_path / "last.pt"
    mine = tmp_path / f".last.pt.{__import__('os').getpid()}.abc.tmp"  # this process is alive
    mine.write_text("in progress")
    other = tmp_path / ".other.pt.1.abc.tmp"  # another file's temporary
    other.write_text("x")
    assert sweep_temporaries(target) == [] and mine.exists() and other.exists()
