"""`retrieval-explorer index DIR` and `retrieval-explorer search IMAGE --collection DIR`.

``index`` brings a folder's collection up to date (only new and changed images are extracted) and
prints a summary; ``search`` ranks the collection for one query image. Both take the model options
(the collection is kept per model: search with the same options you indexed with).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import time
from contextlib import contextmanager


def _add_common(p: argparse.ArgumentParser) -> None:
    from engine.cli.common import add_model_args

    add_model_args(p)
    p.add_argument("--whitening", metavar="FILE", default=None, help="a saved PCA whitening to apply")
    p.add_argument("--crop-fraction", type=float, default=1.0, help="centre-crop share of the image (default 1.0)")
    p.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="where collections are kept (default: the user cache folder)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="index a folder of images (incremental: only new/changed images)",
                       description="Extract descriptors for the images of DIR (recursively) and build its "
                       "search index. Run it again after adding, changing or deleting photos: only those "
                       "are processed. Ctrl-C stops cleanly and keeps the previous index.")
    p.add_argument("folder", metavar="DIR", help="the image folder")
    _add_common(p)
    p.add_argument("--rebuild", action="store_true", help="ignore the saved state and index everything again")
    p.add_argument("--index", choices=("hnsw", "exact"), default="hnsw", help="index kind for a new collection")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_index)

    s = sub.add_parser("search", help="rank an indexed folder's images by similarity to a query image",
                       description="Search the collection of DIR (made by `index`, with the same model "
                       "options) for the images most similar to IMAGE.")
    s.add_argument("image", metavar="IMAGE", help="the query image")
    s.add_argument("--collection", metavar="DIR", required=True, help="the indexed image folder")
    _add_common(s)
    s.add_argument("--k", type=int, default=10, help="number of results (default 10)")
    s.add_argument("--threshold", type=float, default=None, help="drop results scoring below this (cosine)")
    s.add_argument("--exact", action="store_true", help="exact (brute-force) search instead of HNSW")
    s.add_argument("--ef", type=int, default=None, help="HNSW search breadth for this query")
    s.add_argument("--qe", choices=("average", "alpha"), default=None, help="query expansion")
    s.add_argument("--qe-top", type=int, default=5, help="neighbours used by query expansion (default 5)")
    s.add_argument("--alpha", type=float, default=3.0, help="alpha-QE exponent (default 3)")
    s.add_argument("--json", action="store_true", help="print the results as a JSON object")
    s.set_defaults(func=run_search)


def spec_from_args(args: argparse.Namespace):
    """A ModelSpec from the model options."""
    from engine.collection import ModelSpec

    return ModelSpec(backbone=args.backbone, weights=args.weights, descriptor=args.descriptor,
                     image_size=args.image_size, whitening=args.whitening, crop_fraction=args.crop_fraction)


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
    from engine.cli.common import TextProgress, resolve_device
    from engine.collection import Collection

    spec = spec_from_args(args)
    collection = Collection.open(args.folder, model_spec=spec, cache_dir=args.cache_dir, rebuild=args.rebuild,
                                 index=args.index)
    start = time.perf_counter()
    changes = collection.scan()
    device, model = "cpu", None
    if changes or not collection.is_saved:  # torch and the model only when there is work
        device = resolve_device(args.device)
        model = spec.build(device)
    stop = [False]
    with _ctrl_c_stops(stop):
        report = collection.update(model, device=device, batch_size=args.batch_size, num_workers=args.workers,
                                   progress=TextProgress("indexing"), should_stop=lambda: stop[0])
    seconds = time.perf_counter() - start
    summary = {
        "folder": str(collection.folder),
        "cache": str(collection.state_dir),
        "added": report.added, "changed": report.changed, "removed": report.removed,
        "skipped": [dataclasses.asdict(s) for s in report.skipped],
        "extracted": report.extracted, "total": report.total, "skipped_total": len(collection.skipped),
        "seconds": round(seconds, 3), "cancelled": report.cancelled,
    }
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        state = "cancelled, previous index kept" if report.cancelled else "up to date"
        print(f"{collection.folder}: {state}")
        print(f"  added {report.added}, changed {report.changed}, removed {report.removed}, "
              f"skipped {len(report.skipped)} (now), {len(collection.skipped)} (all)")
        for s in report.skipped[:20]:
            print(f"    skipped {s.path}: {s.reason}")
        if len(report.skipped) > 20:
            print(f"    ... and {len(report.skipped) - 20} more")
        print(f"  total {report.total} images indexed, {report.extracted} read, in {seconds:.1f} s")
        print(f"  cache {collection.state_dir}")
    return 1 if report.cancelled else 0


def run_search(args: argparse.Namespace) -> int:
    from pathlib import Path

    from engine.cli.common import resolve_device
    from engine.collection import Collection, CollectionError
    from engine.extraction import extract_descriptors
    from engine.search import SearchOptions

    if args.k < 1:
        raise ValueError(f"--k must be >= 1, got {args.k}")
    query = Path(args.image)
    if not query.is_file():
        raise FileNotFoundError(f"query image not found: {args.image}")
    options = SearchOptions(k=args.k, threshold=args.threshold, exact=args.exact, ef=args.ef,
                            query_expansion=args.qe, qe_top=args.qe_top, alpha=args.alpha)
    spec = spec_from_args(args)
    collection = Collection.open(args.collection, model_spec=spec, cache_dir=args.cache_dir)
    if not collection.is_saved or len(collection) == 0:
        raise CollectionError(f"{collection.folder} is not indexed with this model yet; run "
                              f"`retrieval-explorer index {collection.folder}` with the same model options")
    device = resolve_device(args.device)
    res = extract_descriptors(spec.build(device), [query], image_size=spec.image_size,
                              crop_fraction=spec.crop_fraction, batch_size=1, device=device)
    if res.skipped:
        raise ValueError(f"cannot use the query image: {res.skipped[0].reason}")
    start = time.perf_counter()
    hits = collection.search(res.vectors[0], options)
    ms = (time.perf_counter() - start) * 1000
    if args.json:
        print(json.dumps({
            "query": str(query.resolve()), "collection": str(collection.folder), "model": collection.state_dir.name,
            "options": dataclasses.asdict(options), "search_ms": round(ms, 3),
            "hits": [dataclasses.asdict(h) for h in hits],
        }, indent=1))
    else:
        for h in hits:
            print(f"{h.rank:4d}  {h.score:.4f}  {h.path}")
        if not hits:
            print("no result (lower --threshold?)")
    return 0
