"""Extraction on a Ray cluster: the collection's commits filled by Ray Data workers.

``retrieval-explorer index DIR --ray [ADDRESS]`` runs here. The driver (this process) lists the files,
as a local update does, and is the only writer of the collection; the workers decode and run the
network. Per batch of files a worker:

1. decodes the files (engine.images.load_image through engine.extraction.iter_extract, in threads),
2. runs the backbone's feature map in the runtime of engine.runtime (the driver's verified ONNX export,
   shipped as bytes and checked against its SHA-256 sidecar and against PyTorch before use),
3. pools every descriptor of the run from that one map and returns float16 rows, with the reasons of
   the files it could not use.

The driver streams those rows into :func:`engine.collection.update_collections` (``extract=``), which
commits every 2,000 images / 30 s as the local path does. Models reach the workers as data: the
backbone's state dict as numpy arrays (a trained checkpoint as its file's bytes, loaded with
``torch.load(weights_only=True)`` there), whitening as its arrays; never a pickled module.

Failures: the workers are actors of a Ray Data pool that each take one batch at a time
(``max_tasks_in_flight_per_actor=1``), so a killed worker loses the one batch it held; Ray restarts the
actor and retries that batch (:data:`BATCH_RETRIES` times, then the run stops with the error; what was
committed stays). A crash of the driver keeps every commit; the next run extracts only what is missing.

Ray is an optional dependency (the ``cluster`` extra): without it :func:`require_ray` raises
:class:`ClusterUnavailableError` saying how to install it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.collection import update_collections
from engine.decoding import ExtractedBatch, SkippedImage
from engine.extraction import input_spec, iter_extract
from engine.runtime import export_path, feature_runner
from engine.vocabulary import is_checkpoint_name
from models.descriptors import build_descriptor
from models.registry import get_backbone
from models.whitening import PCAWhitening

log = logging.getLogger(__name__)

INSTALL_HINT = ('indexing on a Ray cluster needs Ray Data, an optional dependency: '
                'pip install "retrieval-explorer[cluster]" (or pip install "ray[data]==2.60.0")')
#: a batch whose worker dies is retried this many times (on a restarted worker) before the run stops
BATCH_RETRIES = 3
#: files per worker batch (one Ray task): what a killed worker loses at most
DEFAULT_BATCH = 64


class ClusterUnavailableError(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached; the message says what to do."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RAY_WRAPPER = re.compile(r"^(?:ray\.|Ray\w*Error|UserCodeException|RayData)")
_RAISED = re.compile(r"^(?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt): \S")


class ClusterRunError(RuntimeError):
    """A batch failed on the cluster (an error in a worker, or a worker lost more often than retried)."""


def _root_cause(exc: BaseException) -> str:
    """The error behind a chain of Ray wrappers, as 'Type: message'. Ray puts the worker's traceback in
    the outer message (the worker's exception itself does not travel): its last "Type: message" line
    that is not one of Ray's wrappers is the error."""
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and all(cur is not c for c in chain):
        chain.append(cur)
        cur = getattr(cur, "cause", None) or cur.__cause__ or cur.__context__
    raised = [ln.strip() for c in chain for ln in _ANSI.sub("", str(c)).splitlines() if _RAISED.match(ln.strip())]
    own = [ln for ln in raised if not _RAY_WRAPPER.match(ln)]
    if own or raised:
        return (own or raised)[-1]
    last = chain[-1]
    lines = [ln.strip() for ln in str(last).splitlines() if ln.strip()]
    return f"{type(last).__name__}: {lines[0] if lines else ''}".strip()


def require_ray() -> Any:
    """The ``ray`` module with Ray Data, or ClusterUnavailableError naming the install command."""
    try:
        import ray
        import ray.data  # noqa: F401  (the extra is ray[data]: plain ray lacks pyarrow and pandas)
    except ImportError as exc:
        raise ClusterUnavailableError(f"{INSTALL_HINT} ({exc})") from exc
    return ray


# --- what a worker needs: plain data -------------------------------------------------------------
@dataclass
class HeadSpec:
    """One descriptor head: ``kind`` (fc, spoc, rmac, mac, gem), its pooling parameters and whitening
    (mean (D,), projection (D', D)) or None."""

    kind: str
    rmac_levels: int = 3
    gem_p: float = 3.0
    whitening: tuple[np.ndarray, np.ndarray] | None = None


@dataclass
class WorkerModel:
    """Everything a worker rebuilds the descriptor models from, as data (no pickled module).

    ``backbone``: a backbone name of models.backbones, with ``state`` its weights (name -> array); or,
    for a trained checkpoint, ``checkpoint`` the file's bytes. ``heads``: one per descriptor, in the
    order of the run's pairs. ``onnx``/``onnx_sidecar``: the driver's verified export of the feature map
    (None when the driver runs PyTorch); ``runtime`` the runtime the driver uses."""

    backbone: str
    identity: str
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_fraction: float
    heads: list[HeadSpec]
    state: dict[str, np.ndarray] | None = None
    checkpoint: bytes | None = None
    runtime: str = "torch"
    onnx: bytes | None = None
    onnx_sidecar: str | None = None


def worker_model(pairs: Sequence[tuple[Any, Any]], features: Any = None) -> WorkerModel:
    """The :class:`WorkerModel` of the (Collection, DescriptorModel) pairs of one run (one backbone, as
    update_collections requires) and the driver's feature runner (engine.runtime.FeatureRunner or None)."""
    if not pairs:
        raise ValueError("nothing to extract: no (collection, model) pair")
    spec = pairs[0][0].model_spec
    if getattr(spec, "scales", None):
        raise ValueError("multi-scale descriptors (scales) are not extracted on a cluster yet: index them "
                         "without --ray")
    models = [m for _, m in pairs]
    if any(m is None or not hasattr(m, "describe") or not hasattr(m, "backbone") for m in models):
        raise ValueError("a cluster run needs descriptor models (models.descriptors.DescriptorModel)")
    backbone = models[0].backbone
    size, mean, std = input_spec(models[0], spec.image_size)
    heads = []
    for m in models:
        w = getattr(m, "whitening", None)
        heads.append(HeadSpec(m.kind, int(getattr(m, "rmac_levels", 3)), float(getattr(m, "gem_p", 3.0)),
                              None if w is None else (np.asarray(w.mean), np.asarray(w.projection))))
    state, checkpoint = None, None
    if is_checkpoint_name(spec.backbone):
        checkpoint = Path(spec.backbone).expanduser().read_bytes()
    else:
        state = {k: v.detach().to("cpu").numpy().copy() for k, v in backbone.state_dict().items()}
    model = WorkerModel(spec.backbone, spec.backbone_identity(), int(size), tuple(mean), tuple(std),
                        float(spec.crop_fraction), heads, state=state, checkpoint=checkpoint)
    onnx_path = getattr(features, "onnx_path", None)
    if features is not None and getattr(features, "name", "torch") != "torch" and onnx_path is not None:
        onnx_path = Path(onnx_path)
        model.runtime = features.name
        model.onnx = onnx_path.read_bytes()
        model.onnx_sidecar = onnx_path.with_name(onnx_path.name + ".json").read_text(encoding="utf-8")
    return model


def build_worker_models(package: WorkerModel, device: str = "cpu", *, threads: int = 1,
                        workdir: str | os.PathLike | None = None) -> tuple[Any, list[Any]]:
    """On a worker: (feature runner (B, 3, S, S) -> (B, C, h, w), descriptor models) from ``package``.

    The export is written into ``workdir``'s runtime cache with its sidecar, so engine.runtime checks it
    (size, SHA-256, agreement with PyTorch on a probe batch) exactly as on the driver."""
    import torch

    if workdir is None:  # the export and checkpoint are read into memory: their files can go at once
        with tempfile.TemporaryDirectory(prefix="retrieval-explorer-worker-") as tmp:
            return build_worker_models(package, device, threads=threads, workdir=tmp)
    work = Path(workdir)
    if package.checkpoint is not None:
        ckpt = work / "model.pt"
        ckpt.write_bytes(package.checkpoint)
        backbone = get_backbone(str(ckpt), device="cpu")
    else:
        backbone = get_backbone(package.backbone, weights="random", device="cpu")
        backbone.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in (package.state or {}).items()})
    backbone = backbone.to(device).eval()
    heads = []
    for h in package.heads:
        white = None if h.whitening is None else PCAWhitening(h.whitening[0], h.whitening[1])
        heads.append(build_descriptor(h.kind, backbone, whitening=white, rmac_levels=h.rmac_levels,
                                      gem_p=h.gem_p).to(device).eval())
    runtime = package.runtime if device == "cpu" else "torch"
    if runtime != "torch" and package.onnx is not None and package.onnx_sidecar is not None:
        path = export_path(work, package.identity, package.image_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(package.onnx)
        path.with_name(path.name + ".json").write_text(package.onnx_sidecar, encoding="utf-8")
    else:
        runtime = "torch"
    runner = feature_runner(backbone, package.image_size, package.identity, work, runtime, threads=threads)
    if runner.name != runtime:
        log.warning("worker runs %s instead of %s: %s", runner.name, runtime, runner.fallback_reason)
    return runner, heads


# --- the worker ------------------------------------------------------------------------------------
def _join(paths: Sequence[str]) -> bytes:
    """File names as one bytes value (NUL never occurs in a path; undecodable names survive)."""
    return b"\0".join(os.fsencode(p) for p in paths)


def _split(data: bytes) -> list[str]:
    return [os.fsdecode(p) for p in bytes(data).split(b"\0")]


class BatchExtractor:
    """A Ray Data actor: one row {"start", "files"} (a batch of files) -> one row per file:
    ``index`` (position in the run's list), ``ok``, ``reason`` (utf-8, surrogates escaped) and
    ``v0``..``v{k-1}`` (n, D_i) float16 (zeros for a file that could not be used)."""

    def __init__(self, package: Any, device: str = "cpu", threads: int = 1,
                 on_batch: Callable[[list[str]], None] | None = None) -> None:
        import torch

        ray = require_ray()
        if isinstance(package, list):  # [ObjectRef]: the driver's one copy in the object store
            package = ray.get(package[0])
        self.package: WorkerModel = package
        self.device = device
        self.threads = max(1, int(threads))
        torch.set_num_threads(self.threads)
        self.on_batch = on_batch
        self.runner, self.heads = build_worker_models(package, device, threads=self.threads)
        self.dims = [int(h.dim) for h in self.heads]

    def compute(self, x: Any) -> dict[int, Any]:
        fmap = self.runner(x)
        return {i: h.describe(fmap) for i, h in enumerate(self.heads)}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        starts, files = batch["start"], batch["files"]
        paths: list[str] = []
        index: list[int] = []
        for start, data in zip(starts, files, strict=True):
            names = _split(data)
            paths.extend(names)
            index.extend(range(int(start), int(start) + len(names)))
        if self.on_batch is not None:
            self.on_batch(paths)
        if paths and not any(os.path.exists(q) for q in paths):  # a node without the images, not bad files
            import socket

            raise FileNotFoundError(f"the worker on {socket.gethostname()} sees none of the {len(paths)} files "
                                    f"of its batch (the first: {paths[0]}): every node of the cluster must "
                                    "see the images at the path the indexing machine sees them")
        p = self.package
        rows = {path: j for j, path in enumerate(paths)}
        vectors = [np.zeros((len(paths), d), np.float16) for d in self.dims]
        ok = np.zeros(len(paths), bool)
        reasons = [b""] * len(paths)
        for out in iter_extract(paths, self.compute, image_size=p.image_size, mean=p.mean, std=p.std,
                                crop_fraction=p.crop_fraction, batch_size=max(1, len(paths)),
                                decode_threads=self.threads, device=self.device):
            at = np.array([rows[q] for q in out.paths], np.int64)
            for i, v in out.vectors.items():
                vectors[i][at] = v.astype(np.float16)
            ok[at] = True
            for s in out.skipped:
                reasons[rows[s.path]] = s.reason.encode("utf-8", "backslashreplace")
        result: dict[str, np.ndarray] = {"index": np.array(index, np.int64), "ok": ok,
                                         "reason": np.array(reasons, dtype=object)}
        for i, v in enumerate(vectors):
            result[f"v{i}"] = v
        return result


# --- the driver ------------------------------------------------------------------------------------
@contextlib.contextmanager
def connected(address: str | None = None, **init_args: Any) -> Iterator[Any]:
    """Ray connected for the block: an already initialised Ray is used as it is; else ``ray.init(address)``
    (None or "": the running local cluster or a new one on this machine; "auto"; "HOST:PORT";
    "ray://HOST:10001"), shut down at the end. Raises ClusterUnavailableError when it cannot connect."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    args = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    args.update(init_args)
    try:
        ray.init(address=address or None, **args)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterUnavailableError(f"cannot reach the Ray cluster at {address or 'this machine'}: {exc}") \
            from exc
    try:
        yield ray
    finally:
        ray.shutdown()


def _quiet_ray_data() -> None:
    """Ray Data's per-run INFO lines and its note on the progress bars it is told not to draw (the caller
    reports progress) stay out of the terminal; its warnings and errors do not."""
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def ray_extract(package: WorkerModel, *, batch_size: int = DEFAULT_BATCH, workers: int | None = None,
                cpus_per_worker: float = 1, gpus_per_worker: float = 0,
                on_batch: Callable[[list[str]], None] | None = None
                ) -> Callable[[Sequence[str | os.PathLike]], Iterator[ExtractedBatch]]:
    """An ``extract`` source for engine.collection.update_collections running on the connected Ray cluster.

    The files are cut into batches of ``batch_size``; each batch is one task of a pool of up to
    ``workers`` actors (default: the cluster's CPUs / ``cpus_per_worker``, or its GPUs /
    ``gpus_per_worker``), each holding one batch at a time. Results come back in file order.
    ``on_batch(paths)`` runs in the worker before each batch (tests use it to kill a worker)."""
    ray = require_ray()
    if batch_size < 1:
        raise ValueError(f"the batch size must be >= 1, got {batch_size}")
    if cpus_per_worker <= 0 and gpus_per_worker <= 0:
        raise ValueError("a worker needs CPUs or GPUs (cpus_per_worker > 0 or gpus_per_worker > 0)")
    device = "cuda" if gpus_per_worker > 0 else "cpu"
    threads = max(1, int(cpus_per_worker))

    def extract(files: Sequence[str | os.PathLike]) -> Iterator[ExtractedBatch]:
        from ray.data import ActorPoolStrategy, DataContext

        paths = [os.fspath(f) for f in files]
        total = len(paths)
        if not total:
            return
        size = workers
        if size is None:
            res = ray.cluster_resources()
            size = int(res.get("GPU", 0) // gpus_per_worker) if gpus_per_worker > 0 else \
                int(res.get("CPU", 1) // cpus_per_worker)
        n_batches = -(-total // batch_size)
        size = max(1, min(int(size), n_batches))
        ctx = DataContext.get_current()
        ctx.execution_options.preserve_order = True  # rows come back in file order: the local path's ids
        ctx.enable_progress_bars = False  # the caller reports progress
        _quiet_ray_data()
        items = [{"start": a, "files": _join(paths[a:a + batch_size])} for a in range(0, total, batch_size)]
        package_ref = ray.put(package)
        with warnings.catch_warnings():
            # Ray 2.60 deprecates passing actor options this way but names no other for the retries
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                BatchExtractor, batch_size=1, batch_format="numpy", zero_copy_batch=True,
                # a fixed pool (one batch in flight per actor never reaches Ray's scale-up threshold)
                compute=ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=1),
                # the model as a reference (in a list: not resolved by Ray), held by this generator for
                # the run, so that a restarted worker finds it
                fn_constructor_kwargs={"package": [package_ref], "device": device, "threads": threads,
                                       "on_batch": on_batch},
                num_cpus=cpus_per_worker, num_gpus=gpus_per_worker or None,
                max_restarts=-1, max_task_retries=BATCH_RETRIES)
        log.info("extracting %d files in %d batches on up to %d Ray workers", total, n_batches, size)
        stream = iter(ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2))
        try:
            yield from _batches(stream, paths, len(package.heads))
        except ray.exceptions.RayError as exc:  # the workers' error in one line, without Ray's tracebacks
            raise ClusterRunError(f"the run on the Ray cluster failed: {_root_cause(exc)} (what was "
                                  "committed is kept; run index again to continue)") from None
        finally:  # a caller that stops iterating (a stop, an error) ends the run on the cluster at once
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    return extract


def _batches(stream: Iterator[dict[str, np.ndarray]], paths: list[str], heads: int) -> Iterator[ExtractedBatch]:
    """The workers' output blocks (one per batch, in file order) as engine.decoding.ExtractedBatch."""
    done, total = 0, len(paths)
    for out in stream:
        index = np.asarray(out["index"], np.int64)
        ok = np.asarray(out["ok"], bool)
        kept = index[ok]
        skipped = [SkippedImage(paths[int(j)], bytes(r).decode("utf-8", "replace"))
                   for j, r in zip(index[~ok], np.asarray(out["reason"], dtype=object)[~ok], strict=True)]
        vectors = {i: np.asarray(out[f"v{i}"])[ok].astype(np.float32) for i in range(heads)}
        done += len(index)
        yield ExtractedBatch([paths[int(j)] for j in kept], vectors, skipped, done, total)


def index_on_ray(pairs: Sequence[tuple[Any, Any]], *, features: Any = None, batch_size: int = DEFAULT_BATCH,
                 workers: int | None = None, cpus_per_worker: float = 1, gpus_per_worker: float = 0,
                 progress: Any = None, should_stop: Any = None,
                 on_batch: Callable[[list[str]], None] | None = None, **update_args: Any) -> list[Any]:
    """:func:`engine.collection.update_collections` with the extraction on the connected Ray cluster
    (see :func:`connected`): same arguments, same reports, same commits."""
    extract = ray_extract(worker_model(pairs, features), batch_size=batch_size, workers=workers,
                          cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker, on_batch=on_batch)
    return update_collections(pairs, progress=progress, should_stop=should_stop, features=features,
                              extract=extract, **update_args)
