"""Relevance feedback on the command line (issue 28): ``search [IMAGE] --positive FILE... --negative FILE...``
or ``search --concept NAME`` rank as the window does after marks (engine.session.run_feedback), and the
``concepts`` command lists, shows, exports and deletes the saved concepts (engine.concepts).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from engine.cli.common import dumps_json
from engine.concepts import Concept, ConceptError, delete_concept, export_csv, list_concepts, load_concept


def add_search_args(s: argparse.ArgumentParser) -> None:
    """The feedback options of ``search``."""
    g = s.add_argument_group("relevance feedback", "re-rank with images marked relevant or not (as the window "
                             "does after + / - marks): a linear model fitted on their stored vectors, its "
                             "scores smoothed over the best results' neighbours; with --box, from that region "
                             "of IMAGE")
    g.add_argument("--positive", nargs="+", metavar="FILE", default=[], help="images marked relevant")
    g.add_argument("--negative", nargs="+", metavar="FILE", default=[], help="images marked not relevant")
    g.add_argument("--concept", metavar="NAME", default=None,
                   help="a saved concept (its query and marks; `concepts` lists them): IMAGE is then optional")


def wants_feedback(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "positive", None) or getattr(args, "negative", None) or getattr(args, "concept", None))


def feedback_inputs(args: argparse.Namespace) -> tuple[list[str], list[str], list[str], object]:
    """(queries, positives, negatives, settings) from IMAGE, --positive/--negative and --concept."""
    from engine.feedback import FeedbackSettings

    queries, settings = ([args.image] if args.image else []), FeedbackSettings()
    pos, neg = list(args.positive), list(args.negative)
    if args.concept:
        concept = load_concept(args.concept)
        queries = queries + [q for q in concept.queries if q not in queries]
        pos = concept.positives + [p for p in pos if p not in concept.positives]
        neg = concept.negatives + [n for n in neg if n not in concept.negatives]
        settings = concept.settings
    for p in [*queries, *pos, *neg]:
        if not Path(p).exists():
            raise FileNotFoundError(f"image not found: {p}")
    if not queries and not pos:
        raise ValueError("give a query IMAGE, --positive images or a --concept")
    return queries, pos, neg, settings


def run_feedback_search(args: argparse.Namespace, index, spec, options, describe, box=None) -> object:
    """The result of ``search`` with feedback (engine.session.run_feedback: the window's ranking). ``describe(path,
    box) -> (D,)``: how an image outside the collection becomes a vector (the query's own path: engine.fastquery,
    else PyTorch); ``box``: IMAGE's region searched (``--box``), as the window's region query."""
    from engine.session import run_feedback

    queries, pos, neg, settings = feedback_inputs(args)
    if box is not None and not args.image:
        raise ValueError("--box is a region of the query IMAGE: give IMAGE with it")
    return run_feedback(index, None, spec, queries, pos, neg, options, settings, exclude_query=False, box=box,
                        describe=describe)


# --- the `concepts` command -------------------------------------------------------------------------
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("concepts", help="list, show, export or delete saved concepts (queries with marks)",
                       description="Concepts are saved from the window (a query and the results marked + / -). "
                       "Without options: the list. Use one with `search --concept NAME`, or train on several "
                       "(the window's Training > Train on my concepts…).")
    p.add_argument("--show", metavar="NAME", help="print one concept's images and marks")
    p.add_argument("--export", nargs=2, metavar=("NAME", "FILE"), help="write a concept's paths as CSV")
    p.add_argument("--delete", metavar="NAME", help="delete a saved concept")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_concepts)


def _summary(c: Concept) -> dict:
    return {"name": c.name, "folder": c.folder, "queries": len(c.queries), "positives": len(c.positives),
            "negatives": len(c.negatives), "modified": c.modified}


def run_concepts(args: argparse.Namespace) -> int:
    if args.export:
        name, target = args.export
        path = export_csv(load_concept(name), target)
        print(f"wrote {path}")
        return 0
    if args.delete:
        if not delete_concept(args.delete):
            raise ConceptError(f"no concept named {args.delete!r}")
        print(f"deleted {args.delete}")
        return 0
    if args.show:
        c = load_concept(args.show)
        if args.json:
            print(dumps_json({**c.to_json(), "settings": dataclasses.asdict(c.settings)}))
        else:
            for mark, paths in (("query", c.queries), ("+", c.positives), ("-", c.negatives)):
                for p in paths:
                    print(f"{mark:5s} {p}")
        return 0
    concepts = list_concepts()
    if args.json:
        print(dumps_json([_summary(c) for c in concepts]))
    elif not concepts:
        print("no concept saved yet (mark results + / - in the window and save them as a concept)")
    for c in concepts if not args.json else []:
        print(f"{c.name}: {len(c.queries)} query, {len(c.positives)} +, {len(c.negatives)} -  ({c.folder or '?'})")
    return 0
