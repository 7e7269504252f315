"""The cached ONNX exports' files, torch-free: where they live, their sidecars, their verification, and the
ONNX Runtime session that runs them.

engine.runtime writes the exports (it needs torch); this module is what reads them, so that a program that
only runs a cached export (engine.fastquery: the `search` command) does not import torch. Every export
``X.onnx`` has a sidecar ``X.onnx.json`` recording its size and SHA-256 and what it was made from; a
cached file is read into memory and checked against it, and only the checked bytes are given to the
runtime (never the path, which could change between the check and the load). A passed comparison with
PyTorch is remembered beside an export as ``X.onnx.checked.json`` (engine.runtime writes it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

# ONNX Runtime's Linux builds load a telemetry client that writes a device id and a database under the
# user's cache folder (Microsoft/DeveloperTools/.onnxruntime/) as soon as the library loads; this variable,
# read at load, turns it off (onnxruntime.disable_telemetry_events() comes too late: the files exist by
# then). Set here, before any `import onnxruntime` of the program (engine.runtime imports this module first).
# tests/test_install.py::test_index_and_search_write_only_the_programs_folders keeps it so.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

EXPORT_FORMAT = 1
_SAFE_IDENTITY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def export_path(cache_dir: str | os.PathLike, identity: str, image_size: int) -> Path:
    """``<cache_dir>/runtimes/<identity>-<S>.onnx`` (an identity that is not a plain file name is hashed):
    the backbone's feature-map export for input size S."""
    return Path(cache_dir) / "runtimes" / f"{_stem(identity)}-{int(image_size)}.onnx"


def head_export_path(cache_dir: str | os.PathLike, spec_key: str) -> Path:
    """``<cache_dir>/runtimes/<spec key>.head.onnx``: a descriptor head's export (feature maps -> vector),
    named by :meth:`engine.vocabulary.ModelSpec.key` (which hashes every file of the model by content)."""
    return Path(cache_dir) / "runtimes" / f"{_stem(spec_key)}.head.onnx"


def _stem(identity: str) -> str:
    if not identity:
        raise ValueError("the model identity is empty")
    if _SAFE_IDENTITY.fullmatch(identity):
        return identity
    return "id" + hashlib.sha256(identity.encode()).hexdigest()[:32]


def sidecar_path(path: Path) -> Path:
    """The sidecar ``<export>.json`` of an export."""
    return path.with_name(path.name + ".json")


def checked_marker(onnx_path: Path) -> Path:
    """``<export>.checked.json``: the runtime whose comparison with PyTorch passed on this export."""
    return onnx_path.with_name(onnx_path.name + ".checked.json")


def read_verified(path: Path, expect: dict[str, Any]) -> tuple[bytes | None, dict, str]:
    """(the export's bytes, its sidecar) when the sidecar has ``expect``'s values and records the file's size
    and SHA-256, else (None, {}, why not)."""
    side = sidecar_path(path)
    if not path.is_file() or not side.is_file():
        return None, {}, "no cached export"
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
        data = path.read_bytes()
    except (OSError, ValueError) as exc:
        return None, {}, f"unreadable cached export: {exc}"
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        return None, {}, "sidecar of another format"
    if any(meta.get(k) != v for k, v in expect.items()):
        return None, {}, "sidecar of another model or size"
    if meta.get("size") != len(data) or meta.get("sha256") != hashlib.sha256(data).hexdigest():
        return None, {}, f"{path.name} does not match its recorded size and SHA-256 (damaged)"
    return data, meta, "verified"


def runtime_version(name: str) -> str | None:
    """The installed version of a runtime package (None when it does not import)."""
    try:
        return str(__import__(name).__version__)
    except Exception:
        return None


def read_checked(onnx_path: Path) -> dict:
    """The passed-check record beside an export ({} when none or unreadable)."""
    try:
        mark = json.loads(checked_marker(onnx_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return mark if isinstance(mark, dict) else {}


def onnxruntime_session(data: bytes, threads: int):
    """An ONNX Runtime CPU session over the export's bytes, ``threads`` intra-op threads, errors-only log.
    Raises ImportError when onnxruntime is not installed, its own error when it cannot load the bytes."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only: its warnings go to stderr, not to our log
    # Idle workers sleep instead of spinning: spinning burns the cores that decoding threads and other
    # processes need (measured in benchmarks/runtimes.py: not slower alone, faster under load).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
