"""`retrieval-explorer index DIR` and `retrieval-explorer search IMAGE --collection DIR`.

``index`` brings a folder's collection up to date (only new and changed images are extracted) and
prints a summary; ``search`` ranks the collection for one query image. Both take the model options
(the collection is kept per model: search with the same options you indexed with).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import logging
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from engine.cli.common import TextProgress, add_model_args, default_descriptor, dumps_json, scales_from_args
from engine.cli.common import shown as _shown
from engine.cli.feedback_cmd import add_search_args as add_feedback_args
from engine.cli.feedback_cmd import run_feedback_search, wants_feedback
from engine.collection import Collection, CollectionError, update_collections
from engine.images import ImageLoadError, parse_box
from engine.search import SearchOptions
from engine.session import FolderIndex, run_query
from engine.vocabulary import DESCRIPTORS, RUNTIMES, ModelSpec, cache_root, resolve_device

log = logging.getLogger(__name__)


def _add_common(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--whitening", metavar="FILE", default=None,
                   help="a saved whitening to apply (`whiten`: learned for this descriptor and these sizes)")
    p.add_argument("--crop-fraction", type=float, default=1.0, help="centre-crop share of the image (default 1.0)")
    p.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="where collections are kept (default: $RETRIEVAL_EXPLORER_CACHE, else the user cache folder)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="index a folder of images (incremental: only new/changed images)",
                       description="Extract descriptors for the images of DIR (recursively) and build its "
                       "search index, for every descriptor at once (one pass of the network per image) "
                       "unless --descriptor names one. Work is committed every few thousand images: "
                       "Ctrl-C, a crash or a kill keeps what was done, and the next run continues. Run it "
                       "again after adding, changing or deleting photos: only those are processed.")
    p.add_argument("folder", metavar="DIR", help="the image folder")
    _add_common(p)
    p.add_argument("--rebuild", action="store_true", help="ignore the saved state and index everything again")
    p.add_argument("--index", choices=("hnsw", "exact"), default="hnsw", help="index kind for a new collection")
    p.add_argument("--runtime", choices=RUNTIMES, default="auto",
                   help="what runs the network on the CPU: auto (the fastest installed, default), torch, "
                   "onnxruntime or openvino; PyTorch on a GPU")
    p.add_argument("--decode-threads", type=int, default=None,
                   help="threads decoding images beside the network (default: one per core)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="decode and run the network on a Ray cluster, this process writing the collection "
                   "(needs pip install 'retrieval-explorer[cluster]'); ADDRESS: its head (HOST:PORT, "
                   "ray://HOST:10001 or auto), none: the cluster RAY_ADDRESS names or a new one on this "
                   "machine. A worker task is --batch-size files, all a killed worker can lose")
    p.add_argument("--ray-workers", type=int, default=None,
                   help="Ray workers (default: the cluster's CPUs / --ray-cpus, or GPUs / --ray-gpus)")
    p.add_argument("--ray-cpus", type=float, default=1.0, help="CPUs per Ray worker (default 1)")
    p.add_argument("--ray-gpus", type=float, default=0.0,
                   help="GPUs per Ray worker (default 0: the workers run ONNX Runtime on CPUs)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_index)

    s = sub.add_parser("search", help="rank an indexed folder's images by similarity to a query image",
                       description="Search the collection of DIR (made by `index`, with the same model "
                       "options) for the images most similar to IMAGE.")
    s.add_argument("image", metavar="IMAGE", nargs="?", default=None,
                   help="the query image (optional with --concept or --positive)")
    s.add_argument("--collection", metavar="DIR", required=True, help="the indexed image folder")
    _add_common(s)
    s.add_argument("--k", type=int, default=10, help="number of results (default 10)")
    s.add_argument("--threshold", type=float, default=None, help="drop results scoring below this (cosine)")
    s.add_argument("--exact", action="store_true",
                   help="exact (brute-force) search; the default of this one search unless --ef is given")
    s.add_argument("--ef", type=int, default=None,
                   help="search the HNSW graph with this breadth instead (loads the graph: for one query exact "
                   "is faster, 0.1 s at 100,000 photos)")
    s.add_argument("--qe", choices=("average", "alpha"), default=None, help="query expansion")
    s.add_argument("--qe-top", type=int, default=5, help="neighbours used by query expansion (default 5)")
    s.add_argument("--alpha", type=float, default=3.0, help="alpha-QE exponent (default 3)")
    s.add_argument("--runtime", choices=RUNTIMES, default="auto",
                   help="what runs the network on the CPU for the query (as for index; default auto)")
    s.add_argument("--box", metavar="X,Y,W,H", default=None,
                   help="search with this region of IMAGE alone (pixels of the image as shown: left, top, "
                   "width, height), e.g. 40,30,200,150; the first 20 hits are then re-ordered by the part of "
                   "each that matches best (each seen at twice the network's input size)")
    s.add_argument("--json", action="store_true", help="print the results as a JSON object")
    add_feedback_args(s)
    s.set_defaults(func=run_search)


def spec_from_args(args: argparse.Namespace, descriptor: str | None = None) -> ModelSpec:
    """A ModelSpec from the model options (``descriptor`` overrides --descriptor)."""
    return ModelSpec(backbone=args.backbone, weights=args.weights,
                     descriptor=descriptor or default_descriptor(args.backbone, args.descriptor),
                     image_size=args.image_size, whitening=args.whitening, crop_fraction=args.crop_fraction,
                     scales=scales_from_args(args))


def index_descriptors(args: argparse.Namespace) -> list[str]:
    """The descriptors `index` stores: the one asked for, else every kind (one backbone pass), the
    model's default first: the first one's search graph is built at the end of the run (the others' when
    first searched; exact until then), so it must be the one a plain `search` or the window uses."""
    if args.descriptor:
        return [args.descriptor]
    if args.whitening:
        raise ValueError("--whitening belongs to one descriptor: give --descriptor too")
    first = default_descriptor(args.backbone, None)
    return [first, *(d for d in DESCRIPTORS if d != first)]


@contextmanager
def _ctrl_c_stops(flag: list[bool]):
    """While active, the first Ctrl-C asks the running update to stop cleanly (a second one kills)."""
    def handler(signum, frame):
        if flag[0]:
            raise KeyboardInterrupt
        flag[0] = True
        sys.stderr.write("\nstopping after this batch (Ctrl-C again to abort)...\n")

    try:
        old = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def run_index(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    if args.ray is not None and getattr(args, "scales", None):
        raise ValueError("--ray extracts one input size: index a multi-scale descriptor (--scales) without --ray")
    if args.ray is not None:
        from engine.cluster import require_ray

        require_ray()  # without Ray: the install command (exit 2), before any work
    specs = [spec_from_args(args, d) for d in index_descriptors(args)]
    collections = [Collection.open(args.folder, model_spec=sp, cache_dir=args.cache_dir, rebuild=args.rebuild,
                                   index=args.index) for sp in specs]
    with contextlib.ExitStack() as held:
        for c in collections:  # a second `index` of the same collections is refused now, before any work
            held.enter_context(c.writing())
        return _index_held(args, collections, specs, start)


def _index_held(args: argparse.Namespace, collections: list[Collection], specs: list[ModelSpec],
                start: float) -> int:
    """`index` once every collection's lock is held."""
    repairs = [c.repair for c in collections]
    work = [bool(c.scan()) or not c.is_saved for c in collections]  # a repair alone needs no network
    device, runtime, models, fast = "cpu", None, [None] * len(collections), None
    if any(work):  # the model only when there is work
        fast = _fast_describer(specs, args)
        if fast is not None:  # every export cached: the network runs in ONNX Runtime, torch is not imported
            runtime = fast
        else:
            # on a cluster this process only exports the network for the workers (on the CPU, unless GPUs run it)
            device = resolve_device(args.device) if args.ray is None or args.ray_gpus > 0 else "cpu"
            models, runtime = _build_models(specs, device, args)
    stop = [False]
    with _ctrl_c_stops(stop):
        pairs = list(zip(collections, models, strict=True))
        if args.ray is not None and any(work):
            reports = _index_on_ray(args, pairs, runtime, TextProgress("indexing on Ray"), lambda: stop[0])
        else:
            extract = None if fast is None else functools.partial(
                fast.extract, batch_size=args.batch_size, decode_threads=args.decode_threads)
            reports = update_collections(
                pairs, device=device, batch_size=args.batch_size,
                num_workers=args.workers, decode_threads=args.decode_threads, features=runtime,
                progress=TextProgress("indexing"), should_stop=lambda: stop[0], extract=extract)
    cancelled = any(r.cancelled for r in reports)
    if any(work) and not cancelled and args.ray is None and fast is None:  # `search` then runs without torch
        _export_heads(specs, models, runtime, Path(args.cache_dir) if args.cache_dir else cache_root())
    seconds = time.perf_counter() - start
    first, report = collections[0], reports[0]
    # images read once for every descriptor; the files that failed, each once whatever wanted it
    read = max((r.read for r in reports), default=0)
    failed = list({s.path: s for r in reports for s in r.skipped}.values())
    summary = {
        "folder": str(first.folder),
        "descriptors": {c.model_spec.descriptor: {"cache": str(c.state_dir), "total": r.total,
                                                  "commit": c.generation, "extracted": r.extracted,
                                                  "repaired": why if why and not c.repair else None}
                        for c, r, why in zip(collections, reports, repairs, strict=True)},
        "runtime": getattr(runtime, "name", "torch") if any(work) else None,
        "runtime_fallback": getattr(runtime, "fallback_reason", None),
        "added": report.added, "changed": report.changed, "removed": report.removed,
        "extracted": read,
        "kept": read - len(failed),
        "skipped": [dataclasses.asdict(s) for s in failed],
        "unreadable": [{"path": p, "reason": r} for p, r in report.unreadable],
        "total": report.total, "skipped_total": len(first.skipped),
        "seconds": round(seconds, 3),
        "images_per_s": round(read / seconds, 2) if seconds > 0 else 0.0,
        "cancelled": cancelled,
    }
    if args.json:
        print(dumps_json(summary))
        return 1 if cancelled else 0
    new = summary["kept"]
    if cancelled:
        state = f"stopped; {report.total:,} images indexed so far are kept (run index again to continue)"
    elif read or report.removed:
        state = f"indexed {new:,} new or changed images" + (f", removed {report.removed:,}" if report.removed else "")
    else:
        state = "up to date"
    print(f"{_shown(first.folder)}: {state}")
    print(f"  added {report.added}, changed {report.changed}, removed {report.removed}, "
          f"skipped {len(failed)} (now), {len(first.skipped)} (all)")
    for s in failed[:20]:
        print(f"    skipped {_shown(s.path)}: {s.reason}")
    if len(failed) > 20:
        print(f"    ... and {len(failed) - 20} more")
    for p, r in report.unreadable[:20]:
        print(f"    left out {_shown(p)}: {r}")
    if len(report.unreadable) > 20:
        print(f"    ... and {len(report.unreadable) - 20} more left out")
    rate = f" ({summary['images_per_s']:.1f} images/s, {summary['runtime']})" if read else ""
    print(f"  total {report.total} images indexed, {read} read, in {seconds:.1f} s{rate}")
    for c, why in zip(collections, repairs, strict=True):
        if why and not c.repair:
            print(f"  repaired {c.model_spec.descriptor}: {why} (its search graph was rebuilt)")
    print(f"  descriptors {', '.join(c.model_spec.descriptor for c in collections)}; cache "
          f"{_shown(first.state_dir.parent)}")
    return 1 if cancelled else 0


def _index_on_ray(args: argparse.Namespace, pairs: list, runtime, progress, should_stop) -> list:
    """update_collections with decoding and the network on the Ray cluster of ``--ray`` (engine.cluster)."""
    from engine.cluster import connected, index_on_ray

    with connected(args.ray or None):
        return index_on_ray(pairs, features=runtime, batch_size=args.batch_size, workers=args.ray_workers,
                            cpus_per_worker=args.ray_cpus, gpus_per_worker=args.ray_gpus, progress=progress,
                            should_stop=should_stop)


def _no_gpu_here() -> bool:
    """True where no GPU driver is present, so that --device auto means the CPU without asking torch (whose
    import costs 1-2 s): Linux without NVIDIA's, AMD's (ROCm) or WSL's GPU device files, or macOS."""
    if sys.platform == "darwin":
        return True
    if not sys.platform.startswith("linux"):
        return False
    dev = Path("/dev")
    return not any(dev.glob("nvidia[0-9]*")) and not (dev / "kfd").exists() and not (dev / "dxg").exists()


def _fast_describer(specs: list[ModelSpec], args: argparse.Namespace):
    """engine.fastquery's describer of every spec (one backbone pass, every head) when the network runs on the
    CPU in ONNX Runtime (--runtime auto or onnxruntime, threads not processes) and its exports are cached and
    trusted; else None (the reason logged): the model is then built in PyTorch, which exports them."""
    on_cpu = args.device == "cpu" or (args.device == "auto" and _no_gpu_here())
    if not (on_cpu and _exportable(args)) or args.ray is not None or args.workers > 0:
        return None
    from engine.fastquery import load_describers

    fast, why = load_describers(specs, Path(args.cache_dir) if args.cache_dir else cache_root())
    if fast is None:
        log.info("the network runs from PyTorch this time: %s", why)
    return fast


def _build_models(specs: list, device: str, args: argparse.Namespace):
    """One backbone shared by every descriptor's head, and the runner of its feature maps (None for a
    model that is not split into backbone and head)."""
    from engine.extraction import build_model
    from engine.runtime import feature_runner

    first = build_model(specs[0], device)
    backbone = getattr(first, "backbone", None)
    models = [first] + [build_model(sp, device, backbone=backbone) for sp in specs[1:]]
    if backbone is None or not hasattr(first, "describe"):
        return models, None
    cache = Path(args.cache_dir) if args.cache_dir else cache_root()
    rt = args.runtime if device == "cpu" else "torch"
    if specs[0].scales:  # multi-scale: a runner per input size (each export is cached per size)
        runners = {s: feature_runner(backbone, s, specs[0].backbone_identity(), cache, rt) for s in specs[0].scales}
        return models, _PerSize(runners)
    size = specs[0].image_size or getattr(backbone, "default_image_size", 224)
    runtime = feature_runner(backbone, size, specs[0].backbone_identity(), cache, rt)
    return models, runtime


class _PerSize(dict):
    """Feature-map runners keyed by input size (engine.extraction.feature_fn), named like one runner."""

    @property
    def name(self) -> str:
        return "+".join(sorted({getattr(r, "name", "torch") for r in self.values()}))

    @property
    def fallback_reason(self) -> str | None:
        return "; ".join(r.fallback_reason for r in self.values() if getattr(r, "fallback_reason", None)) or None


def _exportable(args: argparse.Namespace) -> bool:
    """Whether the query may run from the exports: ONNX Runtime on the CPU (the runtime "auto" prefers)."""
    return args.device in ("auto", "cpu") and args.runtime in ("auto", "onnxruntime")


def describe_query(args: argparse.Namespace, spec: ModelSpec, cache_dir: Path, path: str, box=None):
    """The query's descriptor (D,): from the cached exports without torch (engine.fastquery) when they are
    there and trusted, else in PyTorch through engine.session.embed_images, exporting the descriptor head for
    the next search."""
    if _exportable(args):
        from engine.fastquery import load_describer

        fast, why = load_describer(spec, cache_dir)
        if fast is not None:
            return fast.describe(path, box)
        log.info("the query is described in PyTorch: %s", why)
    from engine.session import ModelCache, embed_images, scale_features

    models = ModelCache(device=resolve_device(args.device), runtime=args.runtime, cache_dir=cache_dir)
    vec = embed_images(models, spec, [path], runtime=args.runtime, boxes=None if box is None else [box])[0]
    if _exportable(args) and _export_heads([spec], [models.get(spec)], scale_features(models, spec, args.runtime)
                                           if spec.scales else models.features(spec, args.runtime), cache_dir):
        sys.stderr.write("note: this first search with this model described the query in PyTorch (slower); "
                         "the model is now exported for faster searches\n")
    return vec


def _export_heads(specs: list, models: list, runtime, cache_dir: Path) -> int:
    """Export every descriptor head whose feature maps run in ONNX Runtime (engine.runtime.export_head), for
    `search` without torch; a head that cannot be exported only leaves `search` on PyTorch. Returns how many
    heads have an export now."""
    from engine.runtime import FeatureRunner, export_head

    runners = dict(runtime) if isinstance(runtime, dict) else (
        {runtime.image_size: runtime} if isinstance(runtime, FeatureRunner) else {})
    if not runners:
        return 0
    return sum(export_head(model, spec, runners, cache_dir) is not None
               for spec, model in zip(specs, models, strict=True) if model is not None)


def run_search(args: argparse.Namespace) -> int:
    """Rank the collection for one query image through the session the window uses (engine.session). A query
    inside the collection is searched with its stored row; any other is described from the cached exports
    without importing torch (engine.fastquery), or, before they exist, in PyTorch as indexing does (which
    exports them for the next search)."""
    if args.k < 1:
        raise ValueError(f"--k must be >= 1, got {args.k}")
    box = parse_box(args.box) if args.box else None
    feedback = wants_feedback(args)
    if args.image is None and not feedback:
        raise ValueError("give the query IMAGE (or --concept NAME, or --positive images)")
    query = Path(args.image or ".")
    if args.image is not None and not query.exists() and not query.is_symlink():
        raise FileNotFoundError(f"query image not found: {args.image}")
    # one search: exact from the rows, without loading the saved graph (a second and 530 MB at 100k x 1280,
    # where the exact search takes 0.1 s), unless an HNSW setting (--ef) was asked for
    exact = args.exact or args.ef is None
    options = SearchOptions(k=args.k, threshold=args.threshold, exact=exact, ef=args.ef,
                            query_expansion=args.qe, qe_top=args.qe_top, alpha=args.alpha)
    spec = spec_from_args(args)
    index = FolderIndex(args.collection, cache_dir=args.cache_dir, rebuild_damaged=False, load_graphs=not exact)
    collection = index.collection(spec)
    if not collection.is_saved or len(collection) == 0:
        hint = f" --descriptor {spec.descriptor}" if args.descriptor else ""
        raise CollectionError(f"{collection.folder} is not indexed with this model yet; run "
                              f"`retrieval-explorer index {collection.folder}{hint}` with the same model options")
    describe = lambda path, box: describe_query(args, spec, index.cache_dir, path, box)  # noqa: E731
    try:
        if feedback:  # marked images are the collection's own rows; others are described as the query is
            result = run_feedback_search(args, index, spec, options, describe, box)
        elif box is not None:  # the first hits re-ordered by their best region, as in the window
            from engine.regions import region_options, rerank_result
            from engine.session import ModelCache

            result = run_query(index, None, spec, str(query), region_options(options), exclude_query=False, box=box,
                               describe=describe)
            models = ModelCache(device=resolve_device(args.device), runtime=args.runtime, cache_dir=index.cache_dir)
            result = rerank_result(result, models, options.k)
        else:
            result = run_query(index, None, spec, str(query), options, exclude_query=False, box=box,
                               describe=describe)
    except ImageLoadError as exc:
        what = "the query image" if args.image and Path(exc.path) == query else "the marked image"
        raise ValueError(f"cannot use {what} {_shown(Path(exc.path) if feedback else query)}: {exc.reason}") from None
    hits = result.hits
    if args.json:
        print(dumps_json({
            "query": str(Path(result.query).resolve()), "collection": str(collection.folder), "model": collection.state_dir.name,
            "options": dataclasses.asdict(options), "search_ms": round(result.search_seconds * 1000, 3),
            "box": list(result.box) if result.box else None,
            "hits": [dataclasses.asdict(h) for h in hits],
        }))
    else:
        for h in hits:
            print(f"{h.rank:4d}  {h.score:.4f}  {_shown(h.path)}")
        if not hits:
            print("no result (lower --threshold?)")
    return 0
