"""`retrieval-explorer map DIR --csv OUT`: 2-D coordinates of an indexed folder's images (path, x, y, label).

The map is computed from the stored vectors (engine.mapping) and cached beside the collection, so a
second run, and the window's map view, read it back at once.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time

from engine.atomic import target_kind, write_target
from engine.cli.common import TextProgress
from engine.cli.duplicates_cmd import add_collection_args, open_indexed
from engine.mapping import DEFAULT_METHOD, collection_map


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("map", help="2-D map of an indexed folder (similar images close together) as CSV",
                       description="Lay out the images of DIR (indexed by `retrieval-explorer index DIR`) "
                       "on a plane so that similar images sit together, and write path, x, y, label per "
                       "image. "
                       "The map is cached with the collection until the folder changes.")
    add_collection_args(p)
    p.add_argument("--csv", metavar="OUT", required=True, help="the CSV file to write ('-' for stdout; a FIFO or a device is written "
                   "through, never replaced)")
    p.add_argument("--method", choices=("tsne", "umap", "pca"), default=None,
                   help="tsne (default, see docs/BENCHMARKS.md), umap (needs umap-learn) or pca")
    p.add_argument("--recompute", action="store_true", help="compute again even when a cached map exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    target_kind(args.csv)  # a folder or a disk refused before any work
    coll = open_indexed(args)
    start = time.perf_counter()
    m = collection_map(coll, args.method or DEFAULT_METHOD, recompute=args.recompute,
                       progress=TextProgress("mapping"))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "x", "y", "label"])
    for path, (x, y), label in zip(m.paths, m.coords.tolist(), m.labels, strict=True):
        w.writerow([path, f"{x:.6f}", f"{y:.6f}", label or ""])
    kind = write_target(args.csv, buf.getvalue())  # a FIFO, /dev/stdout or /dev/null written through
    how = "from the cache" if m.cached else f"computed in {m.seconds:.1f} s"
    total = time.perf_counter() - start
    sys.stderr.write(f"{len(m):,} images mapped by {m.method} ({how}, {total:.1f} s in all)"
                     + ("" if kind == "fd" else f" -> {args.csv}") + "\n")
    return 0
