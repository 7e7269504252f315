"""Inference runtimes for the backbone's feature map on the CPU: ONNX Runtime, OpenVINO, or PyTorch.

:func:`feature_runner` exports ``backbone.forward_features`` once per model identity and input size to
ONNX (dynamic batch axis, fixed S x S input), caches the file under ``<cache>/runtimes/`` and runs it
with the requested runtime. The runner returns the feature map (B, C, h, w) float32, not a pooled
vector: every pooling head stays in PyTorch and sees the same numbers whichever runtime made the map.

Safety and fallbacks:

- The ONNX file is written atomically with a sidecar ``<file>.json`` recording its size and SHA-256.
  A cached file is read into memory and checked against the sidecar; only the checked bytes are given
  to the runtime (never the path, which could change between the check and the load). A file that does
  not match is exported again, never loaded.
- After building a runtime session its output is compared with PyTorch's on a fixed probe batch
  (relative tolerance :data:`CHECK_REL_TOL`); a mismatch falls back to PyTorch.
- An unavailable runtime (not installed, export failure, unsupported op, a backbone on a GPU) falls
  back to PyTorch with a logged reason, kept in ``FeatureRunner.fallback_reason``; only an unknown
  runtime name raises (ValueError).

"auto" takes the first installed runtime of :data:`AUTO_ORDER` (chosen by ``benchmarks/runtimes.py``
on the development machine) and PyTorch for a backbone on a GPU. Full precision (f32) everywhere:
OpenVINO's bf16 ran 2x faster there but moved cub100 R@1 by up to 0.0027 and top-1 by up to 0.0085
(both signs), outside the 0.002 goal of issue 11, so it is not offered.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.atomic import atomic_write_text, atomic_write_with
from engine.exports import (  # first: it turns ONNX Runtime's telemetry off before anything loads it
    EXPORT_FORMAT,
    checked_marker,
    export_path,
    onnxruntime_session,
    read_checked,
    read_verified,
    runtime_version,
    sidecar_path,
)
from engine.vocabulary import RUNTIMES

log = logging.getLogger(__name__)


# "auto" tries these in order. benchmarks/runtimes.py, 2-core development machine under load, 2 threads,
# EfficientNet-Lite0 at 224 px: ONNX Runtime 74-81 images/s, OpenVINO f32 66-75, PyTorch eager 9-11;
# both runtimes give PyTorch's cub100 R@1 to 4 decimals. ONNX Runtime is the dependency (a 28 MB wheel
# against OpenVINO's 59 MB); OpenVINO is used when installed and ONNX Runtime is not.
AUTO_ORDER = ("onnxruntime", "openvino")
# Runtime vs PyTorch on the probe batch: max |diff| <= CHECK_REL_TOL * max(1, max |torch map|).
CHECK_REL_TOL = 1e-3
_PROBE_BATCH = 2
# the exporter's optimiser logs every rewrite at INFO: quiet while exporting
_NOISY_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._dynamo", "torch.fx")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_export_lock = threading.Lock()


class RuntimeUnavailableError(RuntimeError):
    """A runtime cannot serve this backbone here; the message says why."""


class FeatureRunner:
    """``runner(x)`` : (B, 3, S, S) float32 -> (B, C, h, w) float32 feature map, as ``forward_features``.

    ``name`` is the runtime actually used ("torch", "onnxruntime", "openvino"); ``fallback_reason`` says
    why a requested runtime was not used (None when it was, or when "auto" chose torch for a GPU).
    ``onnx_path`` is the cached export behind an exported runtime (None for torch) and ``exported``
    whether this runner exported it (False: the cached file was reused).
    """

    def __init__(self, name: str, fn: Callable[[torch.Tensor], torch.Tensor], image_size: int,
                 threads: int, *, fallback_reason: str | None = None, onnx_path: Path | None = None,
                 exported: bool = False, out_shape: tuple[int, int, int] | None = None) -> None:
        self.name = name
        self.fallback_reason = fallback_reason
        self.image_size = image_size
        self.threads = threads
        self.onnx_path = onnx_path
        self.exported = exported
        self._fn = fn
        self._out_shape = out_shape

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised images -> (B, C, h, w) float32 (on the CPU for the exported runtimes)."""
        s = self.image_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, s, s):
            raise ValueError(f"the {self.name} feature runner takes (B, 3, {s}, {s}) images, "
                             f"got {tuple(x.shape)}")
        if x.shape[0] == 0 and self._out_shape is not None:
            return torch.empty((0, *self._out_shape), dtype=torch.float32)
        return self._fn(x)

    def __repr__(self) -> str:
        why = f", fallback_reason={self.fallback_reason!r}" if self.fallback_reason else ""
        return f"FeatureRunner(name={self.name!r}, image_size={self.image_size}, threads={self.threads}{why})"


def available_runtimes() -> list[str]:
    """The runtime names whose Python package imports here ("torch" always), without "auto"."""
    names = ["torch"]
    for name, module in (("onnxruntime", "onnxruntime"), ("openvino", "openvino")):
        try:
            __import__(module)
        except Exception:  # a broken install is as unavailable as a missing one
            continue
        names.append(name)
    return names


@contextlib.contextmanager
def _quiet(names: tuple[str, ...]) -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


class _FeatureModule(nn.Module):
    def __init__(self, backbone: nn.Module, trunk: int | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.trunk = trunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _maps(self.backbone, x, self.trunk)


def _maps(backbone: nn.Module, x: torch.Tensor, trunk: int | None) -> torch.Tensor:
    """The backbone's feature map, or with ``trunk`` the map entering its last ``trunk`` units."""
    return backbone.forward_features(x) if trunk is None else backbone.forward_trunk(x, trunk)


def export_onnx(backbone: nn.Module, image_size: int, identity: str,
                cache_dir: str | os.PathLike, trunk: int | None = None) -> tuple[Path, bytes, bool]:
    """The verified ONNX export of ``backbone.forward_features`` for (B, 3, S, S) input, S = ``image_size``
    (with ``trunk``: of ``backbone.forward_trunk(x, trunk)``; ``identity`` must then name the trunk).

    Returns (path, file bytes, exported): the cached file when it matches its sidecar, else a new export
    (written atomically, then its sidecar). Raises RuntimeUnavailableError when the export fails.
    """
    path = export_path(cache_dir, identity, image_size)
    with _export_lock:
        data, _, why = read_verified(path, {"identity": identity, "image_size": image_size})
        if data is not None:
            log.debug("reusing the verified export %s", path)
            return path, data, False
        if why != "no cached export":
            log.warning("re-exporting %s: %s", path, why)
        was_training = backbone.training
        backbone.eval()
        written: list[bytes] = []

        def writer(tmp: str) -> None:
            example = torch.zeros(_PROBE_BATCH, 3, image_size, image_size)
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet(_NOISY_LOGGERS):
                warnings.simplefilter("ignore")
                torch.onnx.export(_FeatureModule(backbone, trunk), (example,), tmp, input_names=["images"],
                                  output_names=["fmap"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                  dynamo=True, external_data=False, verbose=False)
            with open(tmp, "rb") as fh:
                written.append(fh.read())

        t0 = time.perf_counter()
        try:
            atomic_write_with(path, writer)
        except Exception as exc:  # any exporter failure means: no export, use torch
            raise RuntimeUnavailableError(f"ONNX export failed: {_brief(exc)}") from exc
        finally:
            backbone.train(was_training)
        data = written[0]
        meta = {"format": EXPORT_FORMAT, "identity": identity, "image_size": image_size, "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(), "torch": torch.__version__,
                "exporter": "torch.onnx.export(dynamo=True)"}
        atomic_write_text(sidecar_path(path), json.dumps(meta, indent=1))
        log.info("exported %s (%.1f MB) in %.1f s", path, len(data) / 1e6, time.perf_counter() - t0)
        return path, data, True


def _brief(exc: BaseException) -> str:
    """An exception as one short line: type, message without terminal colours or line breaks."""
    text = " ".join(_ANSI.sub("", str(exc)).split())
    return f"{type(exc).__name__}: {text[:300]}"


def _to_numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float32).contiguous().numpy()


def _onnxruntime_fn(data: bytes, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        import onnxruntime  # noqa: F401
    except Exception as exc:
        raise RuntimeUnavailableError(f"onnxruntime is not installed ({exc})") from exc
    try:
        session = onnxruntime_session(data, threads)
    except Exception as exc:
        raise RuntimeUnavailableError(f"onnxruntime cannot load the export: {_brief(exc)}") from exc
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: _to_numpy(x)})[0])

    return run


def _openvino_fn(data: bytes, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        import openvino as ov
    except Exception as exc:
        raise RuntimeUnavailableError(f"openvino is not installed ({exc})") from exc
    # LATENCY: one stream, all threads on the one batch in flight (we run batches one after another).
    # f32 explicitly: on CPUs with AVX512-BF16 / AMX the CPU plugin's default precision is bf16.
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
              "INFERENCE_PRECISION_HINT": "f32"}
    try:
        core = ov.Core()
        compiled = core.compile_model(core.read_model(io.BytesIO(data)), "CPU", config)
        request = compiled.create_infer_request()
    except Exception as exc:
        raise RuntimeUnavailableError(f"openvino cannot compile the export: {_brief(exc)}") from exc
    lock = threading.Lock()  # an infer request serves one call at a time

    def run(x: torch.Tensor) -> torch.Tensor:
        arr = _to_numpy(x)
        with lock:
            out = request.infer({0: arr}, share_inputs=True, share_outputs=False)[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    return run


_BUILDERS = {"onnxruntime": _onnxruntime_fn, "openvino": _openvino_fn}


def _torch_fn(backbone: nn.Module, trunk: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    param = next(backbone.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return _maps(backbone, x.to(device, torch.float32), trunk).float()

    return run


def _probe(image_size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(_PROBE_BATCH, 3, image_size, image_size, generator=g)


def _check(fn: Callable[[torch.Tensor], torch.Tensor], ref: torch.Tensor, probe: torch.Tensor,
           name: str) -> None:
    try:
        out = fn(probe)
    except Exception as exc:
        raise RuntimeUnavailableError(f"{name} failed on a probe batch: {_brief(exc)}") from exc
    if out.shape != ref.shape:
        raise RuntimeUnavailableError(f"{name} gives maps of shape {tuple(out.shape)}, "
                                      f"PyTorch {tuple(ref.shape)}")
    diff = float((out - ref).abs().max())
    bound = CHECK_REL_TOL * max(1.0, float(ref.abs().max()))
    if not diff <= bound:  # also catches NaN
        raise RuntimeUnavailableError(f"{name} differs from PyTorch by {diff:.3g} (allowed {bound:.3g})")


def feature_runners(backbone: nn.Module, sizes: Sequence[int], identity: str | None, cache_dir: str | os.PathLike,
                    runtime: str = "auto", device: str = "cpu") -> dict[int, FeatureRunner] | None:
    """A :func:`feature_runner` per input size for work on the CPU; None (plain PyTorch) for another
    ``device``, for ``runtime`` "torch", or without an ``identity`` to cache the export under (e.g. random
    weights drawn per run)."""
    if device != "cpu" or runtime == "torch" or identity is None:
        return None
    return {int(s): feature_runner(backbone, int(s), identity, cache_dir, runtime) for s in sizes}


def feature_runner(backbone: nn.Module, image_size: int, identity: str, cache_dir: str | os.PathLike,
                   runtime: str = "auto", *, threads: int | None = None, check: bool = True,
                   trunk: int | None = None) -> FeatureRunner:
    """A :class:`FeatureRunner` for ``backbone.forward_features`` on (B, 3, S, S) input, S = ``image_size``.

    ``identity``: a stable string naming the weights (e.g. a hash of the collection's model identity,
    trained checkpoints included); the export is cached as ``<cache_dir>/runtimes/<identity>-<S>.onnx``.
    ``runtime``: one of :data:`RUNTIMES` (ValueError otherwise). ``threads``: intra-op threads of the
    exported runtimes (default ``torch.get_num_threads()``; the torch runner keeps torch's setting).
    ``check``: compare the runtime with PyTorch on a probe batch before use, unless that comparison already
    passed on this very export with this runtime version (remembered beside it). Never raises for an
    unavailable runtime: the runner is then torch, with ``fallback_reason`` set and logged.
    ``trunk``: run the frozen part of tail fine-tuning instead, ``backbone.forward_trunk(x, trunk)`` (the map
    entering the last ``trunk`` units), exported under ``<identity>-trunk<trunk>``.
    """
    if trunk is not None:
        identity = f"{identity}-trunk{int(trunk)}"
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    image_size = int(image_size)
    threads = int(threads) if threads else torch.get_num_threads()
    export_path(cache_dir, identity, image_size)  # ValueError for an empty identity, before any work

    def torch_runner(reason: str | None) -> FeatureRunner:
        if reason:
            log.warning("feature extraction runs in PyTorch: %s", reason)
        return FeatureRunner("torch", _torch_fn(backbone, trunk), image_size, threads, fallback_reason=reason)

    if runtime == "torch":
        return torch_runner(None)
    param = next(backbone.parameters(), None)
    if param is not None and param.device.type != "cpu":
        if runtime == "auto":
            log.info("runtime auto: PyTorch for a backbone on %s", param.device)
            return torch_runner(None)
        return torch_runner(f"{runtime} runs on the CPU, the backbone is on {param.device}")

    importable = set(available_runtimes())
    requested = AUTO_ORDER if runtime == "auto" else (runtime,)
    candidates = [c for c in requested if c in importable]  # "auto" passes over those not installed
    if not candidates:
        return torch_runner("; ".join(f"{c} is not installed" for c in requested))
    reasons: list[str] = []
    try:
        path, data, exported = export_onnx(backbone, image_size, identity, cache_dir, trunk)
    except (RuntimeUnavailableError, OSError) as exc:
        return torch_runner(str(exc))
    probe = _probe(image_size)
    trusted = None if exported or not check else _checked_runtime(path, data, backbone)
    ref: torch.Tensor | None = None
    for name in candidates:
        try:
            fn = _BUILDERS[name](data, threads)
            checked = check and name != trusted
            if checked:
                if ref is None:
                    ref = _torch_fn(backbone, trunk)(probe)
                _check(fn, ref, probe, name)
            out_shape = tuple(ref.shape[1:]) if ref is not None else tuple(fn(probe[:1]).shape[1:])
        except RuntimeUnavailableError as exc:
            reasons.append(str(exc))
            log.info("runtime %s unavailable: %s", name, exc)
            continue
        if checked:
            _remember_checked(path, data, name, backbone)
        log.info("feature extraction runs in %s (%d threads, %s)", name, threads, path.name)
        return FeatureRunner(name, fn, image_size, threads, onnx_path=path, exported=exported,
                             fallback_reason="; ".join(reasons) or None, out_shape=out_shape)
    return torch_runner("; ".join(reasons))


# --- a passed check, remembered per export -------------------------------------------------------------
# The comparison with PyTorch on a probe batch runs once per export and runtime version: a passed check is
# written beside the export (``<export>.checked.json``, naming the export's SHA-256, the runtime and its
# version, and a fingerprint of the backbone's weights); a later process given those same bytes (verified
# against the sidecar) for the same weights skips it. The fingerprint keeps random weights, drawn anew per
# process under one identity, from trusting another process's check.
_runtime_version = runtime_version
_checked_marker = checked_marker  # tests name it here


def _weights_fingerprint(backbone: nn.Module) -> str:
    """SHA-256 over every parameter's shape and first 256 values: cheap, and different for other weights."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            h.update(f"{name}{tuple(p.shape)}".encode())
            h.update(p.detach().reshape(-1)[:256].to("cpu", torch.float32).numpy().tobytes())
    return h.hexdigest()


def _checked_runtime(path: Path, data: bytes, backbone: nn.Module) -> str | None:
    """The runtime whose comparison with PyTorch passed on exactly these export bytes (by SHA-256) and these
    weights, when that runtime is still the version that passed it; None otherwise."""
    mark = read_checked(path)
    name = mark.get("runtime")
    if not isinstance(name, str) or mark.get("sha256") != hashlib.sha256(data).hexdigest():
        return None
    if mark.get("weights") != _weights_fingerprint(backbone):
        return None
    return name if mark.get("version") == _runtime_version(name) else None


def _remember_checked(path: Path, data: bytes, name: str, backbone: nn.Module) -> None:
    try:
        atomic_write_text(_checked_marker(path), json.dumps(
            {"sha256": hashlib.sha256(data).hexdigest(), "runtime": name, "version": _runtime_version(name),
             "weights": _weights_fingerprint(backbone)}))
    except OSError as exc:  # only a later start is slower
        log.info("cannot remember the runtime check of %s: %s", path.name, exc)


# --- the descriptor head, exported for queries without torch ------------------------------------------------
# `search` describes one query image; importing torch costs it seconds. Beside the backbone's export (the
# feature maps), the head of a descriptor (pooling, whitening, normalisation: feature maps -> vector) is
# exported too, named by the ModelSpec's key, with what the query's preprocessing needs (sizes, mean, std,
# crop) in its sidecar; engine.fastquery runs the two with ONNX Runtime and numpy only.
#: the head's export vs PyTorch on a probe batch: max |diff| of the (unit) descriptors
HEAD_CHECK_TOL = 1e-5


class _HeadModule(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *fmaps: torch.Tensor) -> torch.Tensor:
        return self.model.describe(fmaps[0]) if len(fmaps) == 1 else self.model.describe_scales(list(fmaps))


def export_head(model: nn.Module, spec, runners: dict[int, FeatureRunner], cache_dir: str | os.PathLike
                ) -> Path | None:
    """Export ``model``'s descriptor head ((B, C, h, w) per input size -> (B, D)) for the torch-free query
    path (engine.fastquery), when every size's feature map runs in ONNX Runtime from a cached export
    (``runners``: size -> runner, as :func:`feature_runners` makes them). Kept as
    ``engine.exports.head_export_path(cache_dir, spec.key())`` with a sidecar naming the backbone exports by
    SHA-256, the preprocessing and the ONNX Runtime version that agreed with PyTorch on a probe batch.
    Reuses a verified export; returns its path, or None (the reason logged) when it cannot be made."""
    from engine.exports import head_export_path
    from engine.extraction import input_spec

    if not hasattr(model, "describe") or not runners:
        return None
    if any(r.name != "onnxruntime" or r.onnx_path is None for r in runners.values()):
        log.debug("no head export: the feature maps do not run in ONNX Runtime")
        return None
    key = spec.key()
    path = head_export_path(cache_dir, key)
    sizes = sorted(runners)
    _, mean, std = input_spec(model.backbone, tuple(sizes) if len(sizes) > 1 else sizes[0])
    backbones = []
    for s in sizes:
        bpath = runners[s].onnx_path
        bdata, _, why = read_verified(bpath, {"image_size": s})
        if bdata is None:
            log.info("no head export: the backbone export %s: %s", bpath.name, why)
            return None
        backbones.append({"size": s, "file": bpath.name, "sha256": hashlib.sha256(bdata).hexdigest()})
    expect = {"kind": "head", "identity": key, "backbones": backbones, "runtime": "onnxruntime",
              "version": runtime_version("onnxruntime")}
    with _export_lock:
        data, _, why = read_verified(path, expect)
        if data is not None:
            return path
        fmaps = [runners[s](_probe(s)) for s in sizes]  # realistic maps: the backbone on a fixed probe
        head = _HeadModule(model).eval()
        names = [f"fmap{i}" for i in range(len(sizes))]
        written: list[bytes] = []

        def writer(tmp: str) -> None:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet(_NOISY_LOGGERS):
                warnings.simplefilter("ignore")
                # the TorchScript exporter: a head is a few ops, exported in a fraction of a second (the
                # dynamo exporter takes 12-16 s for the same graph)
                torch.onnx.export(head, tuple(fmaps), tmp, input_names=names, output_names=["vector"],
                                  dynamic_axes={n: {0: "batch"} for n in names + ["vector"]}, dynamo=False)
            with open(tmp, "rb") as fh:
                written.append(fh.read())

        try:
            with torch.inference_mode():
                ref = head(*fmaps)
            atomic_write_with(path, writer)
            session = onnxruntime_session(written[0], 1)
            out = session.run(None, {n: _to_numpy(f) for n, f in zip(names, fmaps, strict=True)})[0]
        except Exception as exc:  # no head export: `search` describes its query in PyTorch
            log.info("no head export for %s: %s", key, _brief(exc))
            return None
        diff = float(np.abs(out - ref.numpy()).max()) if out.shape == tuple(ref.shape) else float("inf")
        if not diff <= HEAD_CHECK_TOL:
            log.warning("the exported head of %s differs from PyTorch by %.3g: not used", key, diff)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        data = written[0]
        meta = {"format": EXPORT_FORMAT, **expect, "sizes": sizes, "mean": [float(m) for m in mean],
                "std": [float(v) for v in std], "crop_fraction": float(spec.crop_fraction),
                "dim": int(out.shape[1]), "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                "torch": torch.__version__, "checked_max_diff": diff}
        atomic_write_text(sidecar_path(path), json.dumps(meta, indent=1))
        log.info("exported the head of %s (%d bytes)", key, len(data))
        return path
