"""Write constraints.txt, the complete lock, from a full install (`make test GPU=1`'s virtual environment).

    .venv/bin/python scripts/lock.py > constraints.txt

Every installed package is pinned, in three sections that scripts/install.sh reads:

- ``program``: what ``pip install -e .`` brings (pyproject's ``dependencies`` and what they need), less the
  CUDA packages that torch does not load at import; ``make run`` installs this section. PyPI's torch for
  Linux is a CUDA build whose libraries link cuDNN, cuBLAS, NCCL... (ELF NEEDED): ``import torch`` fails
  without those, GPU or not, so the nvidia packages they come from stay here (found by reading the links).
- ``dev``: what the ``dev`` extra adds (tests, lint, Ray for the cluster tests); ``make test`` adds it.
- ``gpu``: the rest of torch's CUDA requirements (``nvidia-*``, ``cuda-*``, ``triton``), used only on a GPU:
  installed with ``GPU=1`` only; without them torch runs on its CPU paths.

A direct dependency carries the reason pyproject.toml gives for it; any other line says which packages
need it (``# via``). Run with the venv whose packages you want to pin (its sys.path is what is read); Python 3.11+ (tomllib)
and readelf (binutils).
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import tomllib
from check_install import SECTION
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "retrieval-explorer"
CUDA = re.compile(r"^(nvidia-|cuda-|triton$)")
SECTIONS = ("program", "dev", "gpu")
# In a venv but never pinned: the installer itself.
UNPINNED = {"pip"}


def _direct(pyproject: Path) -> tuple[dict[str, str], dict[str, str]]:
    """{name: why} for pyproject's dependencies and dev extra; `why` is the line's comment, else the comment
    block above it (a group's reason), else ''."""
    text = pyproject.read_text()
    data = tomllib.loads(text)
    out = []
    for key, reqs in (("dependencies", data["project"]["dependencies"]),
                      ("dev", data["project"]["optional-dependencies"]["dev"])):
        start = text.index(f"\n{key} = [") + 1
        block = text[start:text.index("\n]", start)].splitlines()[1:]
        why: dict[str, str] = {}
        group, in_comment = "", False
        for line in block:
            s = line.strip()
            if s.startswith("#"):  # a comment block is the reason of the lines below it
                group = f"{group} {s.lstrip('# ')}" if in_comment else s.lstrip("# ")
                in_comment = True
                continue
            in_comment = False
            if not s:
                group = ""
                continue
            spec, _, comment = s.partition("#")
            name = canonicalize_name(Requirement(spec.strip().rstrip(",").strip('"')).name)
            why[name] = comment.strip() or group
        assert set(why) == {canonicalize_name(Requirement(r).name) for r in reqs}, key
        out.append(why)
    return out[0], out[1]


def _requires(name: str, extras: set[str]) -> list[tuple[str, set[str]]]:
    """(dependency name, its extras) that the installed ``name`` needs here, with ``extras`` asked."""
    env = default_environment()
    found = []
    for spec in metadata.requires(name) or []:
        req = Requirement(spec)
        if req.marker is not None and not any(req.marker.evaluate({**env, "extra": e}) for e in extras | {""}):
            continue
        found.append((canonicalize_name(req.name), set(req.extras)))
    return found


def _closure(roots: list[Requirement], stop=lambda n: False) -> dict[str, set[str]]:
    """{package: {packages that need it}} reachable from ``roots``, not walking through ``stop`` names."""
    via: dict[str, set[str]] = {}
    todo = [(canonicalize_name(r.name), set(r.extras), PROJECT) for r in roots]
    seen: set[tuple[str, frozenset]] = set()
    while todo:
        name, extras, parent = todo.pop()
        if stop(name):
            continue
        via.setdefault(name, set()).add(parent)
        if (name, frozenset(extras)) in seen:
            continue
        seen.add((name, frozenset(extras)))
        todo.extend((dep, ex, name) for dep, ex in _requires(name, extras))
    return via


def _dynamic(library: Path) -> tuple[list[str], list[Path]]:
    """(NEEDED sonames, RPATH/RUNPATH folders with $ORIGIN filled in) of the ELF ``library``."""
    out = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", out)
    paths = re.findall(r"\((?:RPATH|RUNPATH)\)\s+Library r(?:un)?path: \[(.*?)\]", out)
    return needed, [Path(d.replace("$ORIGIN", str(library.parent))) for p in paths for d in p.split(":")]


def _linked_at_import() -> dict[str, set[str]]:
    """{CUDA package: {library linking one of its files}}: what ``import torch`` and ``import torchvision``
    make the dynamic loader open, GPU or not: torch's global-deps library and the extension modules, their
    NEEDED entries followed through the RPATHs as the loader does. (Libraries that torch opens itself
    only on a GPU, like cuSOLVER through libtorch_cuda_linalg.so, are not links and stay out.)"""
    owner = {Path(f.locate()).resolve(): canonicalize_name(d.metadata["Name"])
             for d in metadata.distributions() for f in d.files or [] if ".so" in f.name}
    torch_dir = Path(metadata.distribution("torch").locate_file("torch"))
    vision_dir = Path(metadata.distribution("torchvision").locate_file("torchvision"))
    roots = [torch_dir / "lib" / "libtorch_global_deps.so", *torch_dir.glob("_C*.so"), *vision_dir.glob("*.so")]
    loaded: dict[str, Path] = {}  # soname -> the file the loader took, as it reuses it for later NEEDs
    linked: dict[str, set[str]] = {}

    def visit(lib: Path, inherited: list[Path]) -> None:
        needed, rpath = _dynamic(lib)
        search = rpath + inherited
        for soname in needed:
            if soname not in loaded:
                found = next((d / soname for d in search if (d / soname).exists()), None)
                if found is None:
                    continue  # a system library
                loaded[soname] = found.resolve()
                visit(loaded[soname], search)
            name = owner.get(loaded[soname])
            if name and CUDA.match(name):
                linked.setdefault(name, set()).add(lib.name)

    for root in roots:
        visit(root.resolve(), [])
    return linked


def main() -> int:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = [Requirement(r) for r in data["project"]["dependencies"]]
    dev = [Requirement(r) for r in data["project"]["optional-dependencies"]["dev"]]
    why_prog, why_dev = _direct(ROOT / "pyproject.toml")
    linked = _linked_at_import()
    program = _closure(deps + [Requirement(n) for n in linked], stop=lambda n: bool(CUDA.match(n)) and n not in linked)
    with_cuda = _closure(deps)
    everything = _closure(deps + dev)
    sections = {
        "program": program,
        "gpu": {n: v for n, v in with_cuda.items() if n not in program},
        "dev": {n: v for n, v in everything.items() if n not in with_cuda},
    }
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    missing = sorted(set(everything) - set(installed))
    if missing:
        print(f"not installed here (install the dev extra first): {', '.join(missing)}", file=sys.stderr)
        return 1
    extra = sorted(set(installed) - set(everything) - UNPINNED - {PROJECT})
    if extra:
        print(f"installed but needed by nothing (left out of the lock): {', '.join(extra)}", file=sys.stderr)
    print("# The complete lock: every package of a full install (`make test GPU=1`), pinned. Written by")
    print("# scripts/lock.py (`.venv/bin/python scripts/lock.py > constraints.txt`), read by scripts/install.sh:")
    print("# GPU=1 installs with `pip install -c constraints.txt`, GPU=0 installs the program (and dev) sections")
    print("# with `pip install --no-deps` and leaves the gpu section out. pyproject.toml keeps the ranges.")
    for section in SECTIONS:
        print("\n" + SECTION.format(section))
        names = sections[section]
        for name in sorted(names):
            why = why_prog.get(name) or why_dev.get(name)
            if name in why_prog or name in why_dev:
                note = f"direct: {why}" if why else "direct"
            else:
                parents = sorted(names[name] - {PROJECT})
                note = f"via {', '.join(parents)}" if parents else ""
            if name in linked:
                note = f"{note} (linked by {', '.join(sorted(linked[name]))}: loaded at `import torch`, GPU or not)".strip()
            print(f"{name}=={installed[name]}  # {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
