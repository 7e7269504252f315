"""After an install (scripts/install.sh): is everything the program imports there, at the locked versions?

    VENV/bin/python scripts/check_install.py --gpu 0|1 [--extra dev]
    VENV/bin/python scripts/check_install.py --lock-lines SECTION...   (what install.sh installs)

The reader of constraints.txt's sections (scripts/lock.py writes them with :data:`SECTION`); standard
library only, so it runs in a new venv before anything is installed.

Checks, each printing what is wrong and exiting 1:

1. every package of the lock's sections for this install (constraints.txt: program, plus dev with
   ``--extra dev``, plus gpu with ``--gpu 1``) is installed at its pinned version;
2. ``pip check``: every installed package has what it needs. With ``--gpu 0`` the only lines let through
   are torch's requirements on the lock's gpu section (triton, cuda-toolkit...), left out on purpose;
3. with ``--gpu 0``: no package of the gpu section is installed, and ``torch.cuda.is_available()`` is
   simply False (imports, no error);
4. every module of engine, models and retrieval_gui imports (but ``__main__``, which runs the program).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "models", "retrieval_gui")
# the line that starts a section of the lock: program, dev, gpu
SECTION = "# --- section: {} ---"


def section_of(line: str) -> str | None:
    """The section a line of the lock starts (``SECTION``'s name), else None."""
    head, tail = SECTION.split("{}")
    return line[len(head):-len(tail)] if line.startswith(head) and line.endswith(tail) else None


# `pip check`'s line for a requirement that is not installed: "torch 2.14.1 requires triton, which is not
# installed." (the name may carry extras: "cuda-toolkit[cublas,...]")
_NOT_INSTALLED = re.compile(r"^(?P<who>\S+) \S+ requires (?P<what>[A-Za-z0-9._-]+)(\[[^\]]*\])?, which is not installed\.$")


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(lock: Path, sections: set[str]) -> dict[str, str]:
    """{canonical name: pinned version} of the lock lines in ``sections`` (each starts with SECTION)."""
    pins: dict[str, str] = {}
    section = None
    for line in lock.read_text().splitlines():
        if section_of(line):
            section = section_of(line)
            continue
        spec = line.split("#", 1)[0].strip()
        if spec and section in sections:
            name, _, version = spec.partition("==")
            pins[_canon(name)] = version
    return pins


def unexpected_pip_check_lines(output: str, left_out: set[str]) -> list[str]:
    """The lines of ``pip check``'s output that are real problems: all but torch's requirements on the
    packages ``left_out`` on purpose (the lock's gpu section on the CPU install; empty on the GPU one)."""
    bad = []
    for line in output.splitlines():
        line = line.strip()
        if not line or line == "No broken requirements found.":
            continue
        m = _NOT_INSTALLED.match(line)
        if m and _canon(m.group("who")) == "torch" and _canon(m.group("what")) in left_out:
            continue
        bad.append(line)
    return bad


def import_all(packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """Import every module of ``packages``; the ones that fail, as 'module: error'."""
    failed = []
    for top in packages:
        pkg = importlib.import_module(top)
        names = [top] + [m.name for m in pkgutil.walk_packages(pkg.__path__, prefix=f"{top}.")
                         if not m.name.endswith(".__main__")]  # __main__ would run the program
        for name in names:
            try:
                importlib.import_module(name)
            except Exception as exc:  # report them all, not only the first
                failed.append(f"{name}: {type(exc).__name__}: {exc}")
    return failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", type=int, choices=(0, 1))
    ap.add_argument("--extra", choices=("dev",), default=None)
    ap.add_argument("--lock-lines", nargs="+", metavar="SECTION", help="print NAME==VERSION of these sections")
    args = ap.parse_args(argv)
    lock = ROOT / "constraints.txt"
    if args.lock_lines:
        print("\n".join(f"{n}=={v}" for n, v in lock_pins(lock, set(args.lock_lines)).items()))
        return 0
    if args.gpu is None:
        ap.error("--gpu 0|1 is needed")
    gpu = bool(args.gpu)
    problems: list[str] = []

    sections = {"program"} | ({"dev"} if args.extra else set()) | ({"gpu"} if gpu else set())
    left_out = set() if gpu else set(lock_pins(lock, {"gpu"}))
    installed = {_canon(d.metadata["Name"]): d.version for d in metadata.distributions()}
    for name, version in sorted(lock_pins(lock, sections).items()):
        if installed.get(name) != version:
            problems.append(f"{name}: the lock pins {version}, installed: {installed.get(name, 'nothing')}")

    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    problems += [f"pip check: {line}" for line in unexpected_pip_check_lines(check.stdout + check.stderr, left_out)]

    if not gpu:
        extra = sorted(left_out & set(installed))
        if extra:
            problems.append(f"GPU-only packages on the CPU install: {', '.join(extra)}")
        probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                               capture_output=True, text=True)
        if probe.returncode != 0 or probe.stdout.strip() != "False":
            problems.append(f"torch.cuda.is_available() on the CPU install: {probe.stdout.strip()!r} "
                            f"{probe.stderr.strip()[-500:]}")

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    problems += [f"import {line}" for line in import_all()]

    for line in problems:
        print(f"check_install: {line}", file=sys.stderr)
    mode = "CUDA" if gpu else "CPU"
    print(f"check_install: {mode} install, sections {', '.join(sorted(sections))}: "
          f"{'FAILED' if problems else 'complete'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
