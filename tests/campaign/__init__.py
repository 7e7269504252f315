"""The bad-input, crash and attack campaign (issue 26) as data: one registry of cases.

Each case is a plain function ``run(work: Path) -> None`` that sets up its own scratch tree under
``work`` (HOME, config and cache included, see :func:`scratch_env`), attacks the program, and raises
``AssertionError`` naming what went wrong when the program misbehaves. The same cases run as pytest
tests (``tests/campaign/test_campaign.py``; ``slow`` ones are marked) and from
``benchmarks/hardening.py``, which prints the counts table (cases, passed, failed per category).

Case modules are ``tests/campaign/cases_*.py``; each exposes ``CASES: list[Case]``.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Case:
    """One attack: ``category`` groups the table's rows (e.g. "tampered graph", "special files")."""

    category: str
    name: str
    run: Callable[[Path], None]
    slow: bool = False

    @property
    def id(self) -> str:
        return f"{self.category}: {self.name}"


def all_cases() -> list[Case]:
    """Every case of every ``cases_*`` module, in module then list order."""
    cases: list[Case] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("cases_"):
            cases.extend(importlib.import_module(f"{__name__}.{info.name}").CASES)
    return cases


def scratch_env(work: Path) -> dict[str, str]:
    """Environment for a subprocess that must not touch the user's files: HOME, XDG folders and the
    project's cache all under ``work``; the repository first on the import path."""
    env = dict(os.environ)
    env.pop("RETRIEVAL_EXPLORER_CONFIG", None)  # the config folder (and its secret) under HOME too
    home = work / "home"
    for sub in ("", ".config", ".cache"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_CACHE_HOME=str(home / ".cache"),
        RETRIEVAL_EXPLORER_CACHE=str(work / "cache"),
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        QT_QPA_PLATFORM="offscreen",
    )
    return env


@dataclass
class Ran:
    rc: int
    out: str
    err: str

    @property
    def said(self) -> str:
        return self.out + self.err


def run_cli(work: Path, *argv: str, timeout: float = 120, stdin: str | None = None) -> Ran:
    """``python -m engine ARGV`` in a subprocess with :func:`scratch_env`; a hang past ``timeout``
    is a failed case (AssertionError), a crash by signal shows as a negative ``rc``."""
    try:
        p = subprocess.run([sys.executable, "-m", "engine", *argv], env=scratch_env(work), cwd=work,
                           capture_output=True, text=True, timeout=timeout, input=stdin)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"hung for more than {timeout:.0f} s: {' '.join(argv)}") from e
    return Ran(p.returncode, p.stdout, p.stderr)


def no_traceback(r: Ran) -> None:
    """The house rule every case checks: no Python traceback and no death by signal."""
    assert "Traceback (most recent call last)" not in r.said, r.said[-2000:]
    assert r.rc >= 0, f"killed by signal {-r.rc}: {r.said[-500:]}"


SMALL = ("--image-size", "64")
"""Model options every case uses, so indexing a handful of images takes a second or two."""


def make_photos(folder: Path, n: int = 6, size: int = 64) -> list[Path]:
    """``n`` small distinct JPEGs in ``folder`` (made here, nothing from elsewhere)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        img = (rng.random((size, size, 3)) * 255).astype("uint8")
        path = folder / f"photo_{i:02d}.jpg"
        Image.fromarray(img).save(path, quality=90)
        out.append(path)
    return out


def indexed_folder(work: Path, n: int = 6) -> Path:
    """A folder of ``n`` photos indexed by the CLI with :data:`SMALL` options (the scratch cache)."""
    folder = work / "photos"
    make_photos(folder, n)
    r = run_cli(work, "index", str(folder), *SMALL)
    no_traceback(r)
    assert r.rc == 0, r.said[-1000:]
    return folder
