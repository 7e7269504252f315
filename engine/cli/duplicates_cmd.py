"""`retrieval-explorer duplicates DIR`: groups of near-duplicate images of an indexed folder.

Uses the collection that `retrieval-explorer index DIR` made (same model options); reads no pixel, only
the stored vectors, its index and the image headers. Lists groups best first (engine.duplicates.ORDER_RULE);
never moves or deletes anything (the window does that, after a confirmation).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from engine.cli.common import TextProgress, dumps_json
from engine.cli.common import shown as _shown
from engine.cli.index_cmd import spec_from_args
from engine.collection import Collection, CollectionError
from engine.duplicates import ORDER_RULE, BestRule, default_threshold, find_duplicates, group_records
from engine.vocabulary import DEFAULT_BACKBONE


def add_collection_args(p: argparse.ArgumentParser) -> None:
    """The options that name an indexed collection: model, descriptor, cache folder."""
    p.add_argument("folder", metavar="DIR", help="the indexed image folder")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE,
                   help=f"backbone name or trained checkpoint it was indexed with (default: {DEFAULT_BACKBONE})")
    p.add_argument("--weights", default="pretrained",
                   help="'pretrained' (default), 'random' or a weights file")
    p.add_argument("--descriptor", default=None,
                   help="fc, spoc, rmac, mac or gem (default: gem; fc for a trained checkpoint)")
    p.add_argument("--image-size", type=int, default=None, help="input size it was indexed with")
    p.add_argument("--whitening", metavar="FILE", default=None, help="the PCA whitening it was indexed with")
    p.add_argument("--crop-fraction", type=float, default=1.0, help="centre-crop share it was indexed with")
    p.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="where collections are kept (default: $RETRIEVAL_EXPLORER_CACHE, else the user cache folder)")


def open_indexed(args: argparse.Namespace) -> Collection:
    """The collection of ``args.folder`` for the model options; CollectionError saying to run `index`
    first when nothing is indexed for them."""
    spec = spec_from_args(args)
    coll = Collection.open(args.folder, model_spec=spec, cache_dir=args.cache_dir, verify=False)
    if not coll.is_saved or len(coll) == 0:
        raise CollectionError(f"{coll.folder} is not indexed for {spec.backbone}/{spec.descriptor} yet: run "
                              f"`retrieval-explorer index {coll.folder}` first (with the same model options)")
    return coll


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("duplicates", help="list groups of near-duplicate images of an indexed folder",
                       description="Find images of DIR that are copies of one another (re-encoded, resized, "
                       "cropped, rotated, mirrored, recoloured, captioned) from the vectors of "
                       "`retrieval-explorer index DIR`. Each group lists its best copy first (largest "
                       "resolution, then largest file, then oldest). Nothing is moved or deleted.")
    add_collection_args(p)
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine similarity from which two images count as copies (default: the "
                   "descriptor's measured default, see docs/BENCHMARKS.md)")
    p.add_argument("--rule", choices=("components", "complete"), default="components",
                   help="components (default): images linked through pairs above the threshold form a "
                   "group; complete: every two images of a group score above it (no chains, smaller groups)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the verification (no 'copies' tier: only similar photos, from the vectors alone)")
    p.add_argument("--keep-best", metavar="ORDER", default=None,
                   help="the keep-best rule of the copies: criteria in order, comma-separated, among derived "
                   "(not an upscaled, re-encoded or cropped copy), resolution, bytes, date, folder "
                   "(default: derived,resolution,bytes,date,folder)")
    p.add_argument("--prefer-folder", metavar="DIR", default=None,
                   help="the folder whose copies the 'folder' criterion keeps (absolute or inside DIR)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _group_json(number: int, grp: Any) -> dict[str, Any]:
    return {"group": number, "tier": grp.tier, "max_score": round(grp.max_score, 4),
            "min_score": round(grp.min_score, 4), "best": grp.best.path, "best_reason": grp.best_reason,
            "images": [{**{k: v for k, v in r.items() if k != "group"}, "derived": it.derived}
                       for r, it in zip(group_records([grp]), grp.items, strict=True)],
            **({"evidence": grp.evidence} if grp.tier == "copies" else {})}


def run(args: argparse.Namespace) -> int:
    coll = open_indexed(args)
    threshold = (default_threshold(coll.model_spec.descriptor) if args.threshold is None
                 else float(args.threshold))
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"--threshold is a cosine similarity in [-1, 1], got {threshold}")
    best_rule = BestRule.parse(args.keep_best, args.prefer_folder)
    start = time.perf_counter()
    progress = TextProgress("searching") if not args.json else None
    dup = find_duplicates(coll, threshold=threshold, floor=threshold, candidates=not args.no_verify,
                          progress=progress)
    copies = []
    if not args.no_verify:
        dup.verify(progress=TextProgress("verifying") if not args.json else None)
        copies = dup.copy_groups(best_rule=best_rule)
    similar = dup.similar_groups(threshold, args.rule)
    groups = dup.groups(threshold, args.rule)
    seconds = time.perf_counter() - start
    if args.json:
        out = {"folder": str(coll.folder), "descriptor": coll.model_spec.descriptor, "threshold": threshold,
               "rule": args.rule, "order": ORDER_RULE, "keep_best": best_rule.describe(),
               "images": len(coll), "pairs": len(dup.pairs),
               "candidates_checked": len(dup.checks), "exact": dup.pairs.exact, "seconds": round(seconds, 3),
               "notes": dup.notes,
               "copies": [_group_json(g, grp) for g, grp in enumerate(copies, 1)],
               "similar": [_group_json(g, grp) for g, grp in enumerate(similar, 1)],
               # every group of the descriptors at the threshold, verified or not (as before the tiers)
               "groups": [_group_json(g, grp) for g, grp in enumerate(groups, 1)]}
        sys.stdout.write(dumps_json(out) + "\n")
        return 0
    write = sys.stdout.write
    if not args.no_verify:
        write(f"copies (verified: the same picture, edited; keep-best rule: {best_rule.describe()})\n")
        for g, grp in enumerate(copies, 1):
            write(f"copies {g}: {len(grp)} images, check score {grp.min_score:.2f}-{grp.max_score:.2f}; "
                  f"kept: {grp.best_reason}\n")
            _items(write, grp)
    write("similar photos (not verified as copies)\n")
    for g, grp in enumerate(similar, 1):
        write(f"group {g}: {len(grp)} images, similarity {grp.min_score:.3f}-{grp.max_score:.3f}\n")
        _items(write, grp)
    extra = sum(len(g) - 1 for g in copies)
    write(f"{len(copies)} groups of copies ({extra} images that are copies of a kept one, "
          f"{len(dup.checks):,} candidate pairs checked), {len(similar)} groups of similar photos, among "
          f"{len(coll):,} images ({coll.model_spec.descriptor}, threshold {threshold:.2f}, {args.rule}, "
          f"{'exact' if dup.pairs.exact else 'HNSW'} search, {seconds:.1f} s)\n")
    for note in dup.notes:
        write(f"note: {note}\n")
    return 0


def _items(write: Any, grp: Any) -> None:
    for it in grp.items:
        f = it.facts
        mark = "keep" if it.best else "    "
        score = "" if it.best or it.score is None else f"  {it.score:.3f}"
        why = f"  ({'; '.join(it.derived)})" if it.derived else ""
        write(f"  {mark}  {f.width}x{f.height}  {_size(f.bytes):>8}  {_shown(it.path)}{score}{why}\n")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
