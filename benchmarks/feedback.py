"""Relevance feedback on cub100 (issue 28): how much a few marks improve a ranking, per method and descriptor.

Protocol (the issue's): random queries on a set of classes; the database is every other image of those
classes; a simulated user marks the top ``--marks`` (20) not yet marked images of the current ranking by
their true labels (same class: +, else -); the ranking is recomputed from the query and all marks so far;
**residual mAP** = mAP of the ranking restricted to the images not marked yet (the honest figure: marked
images are known already). Rounds 1 and 2; "no feedback" is the first ranking with the same numbers of top
images taken away.

Selection: the method (engine.feedback's SVM and Rocchio, and two candidates kept here only: a logistic
regression and a kNN re-weighting) and its settings are chosen on the TRAINING classes (0-49, ``--select-
queries`` queries) by the mean of the two rounds' residual mAP, for the default descriptor; the chosen
settings are then measured once on the TEST classes (50-99, ``--queries`` queries) for every descriptor.
``--split`` measures the same on the same-categories split of issue 18 (queries: its query list,
database: its retrieval list). The vectors are the project's own: the collection ``index`` wrote into
``--cache`` (index the folder first with the same model options), read through engine.collection.

    python -m engine index ../shared/data/cub100/images --cache-dir CACHE
    python benchmarks/feedback.py --data ../shared/data/cub100 --cache CACHE [--backbone best.pt]
    python benchmarks/feedback.py --speed      # re-ranking time at 100,000 x 1,280 (synthetic rows)

Prints markdown tables on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.feedback import (  # noqa: E402
    FeedbackSettings,
    background_rows,
    linear_scores,
    rerank,
    top_rows,
)
from engine.vectors import l2n  # noqa: E402
from engine.vocabulary import DEFAULT_BACKBONE, DEFAULT_DESCRIPTOR, DESCRIPTORS, ModelSpec  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cub100"
SAME_SPLIT = Path(__file__).resolve().parent / "splits" / "cub100_same_categories.json"

#: a ranker: (db vectors (N, D), query (D,), positive rows, negative rows) -> scores (N,)
Ranker = Callable[[np.ndarray, np.ndarray, list[int], list[int]], np.ndarray]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- rankers ----------------------------------------------------------------------------------------
def engine_ranker(settings: FeedbackSettings) -> Ranker:
    """The shipped path: engine.feedback.rerank (fit, background draw, scores) on the database rows."""
    def rank(v: np.ndarray, q: np.ndarray, pos: list[int], neg: list[int]) -> np.ndarray:
        if not pos and not neg:
            return linear_scores(v, q)
        r = rerank(v, q, pos, neg, settings)
        out = np.empty(len(v), np.float32)
        out[r.rows] = r.scores
        return out
    return rank


def logreg_ranker(c: float, background: int, query_weight: float) -> Ranker:
    """Candidate: scikit-learn's L2 logistic regression (no intercept, balanced), the same inputs as the SVM."""
    from sklearn.linear_model import LogisticRegression

    def rank(v: np.ndarray, q: np.ndarray, pos: list[int], neg: list[int]) -> np.ndarray:
        if not pos and not neg:
            return v @ q
        bg = background_rows(len(v), pos + neg, background, 0)
        x = np.concatenate([q[None], v[pos], v[neg], v[bg]])
        y = np.r_[np.ones(1 + len(pos)), np.zeros(len(neg) + len(bg))]
        m = LogisticRegression(C=c, fit_intercept=False, class_weight="balanced", max_iter=200).fit(x, y)
        w = l2n(m.coef_[0].astype(np.float32)) + query_weight * q
        return v @ w
    return rank


def knn_ranker(lam: float) -> Ranker:
    """Candidate: kNN re-weighting, score = max cosine to the query or a positive - lam x max cosine to a
    negative (not linear: one matrix product per mark, so slower at scale)."""
    def rank(v: np.ndarray, q: np.ndarray, pos: list[int], neg: list[int]) -> np.ndarray:
        s = np.max(v @ np.concatenate([q[None], v[pos]]).T, axis=1)
        if neg:
            s = s - lam * np.max(v @ v[neg].T, axis=1)
        return s
    return rank


# --- the protocol -------------------------------------------------------------------------------------
def average_precision(order: np.ndarray, relevant: np.ndarray) -> float | None:
    """AP of a ranking ``order`` (rows) against a boolean ``relevant`` per row; None when none is relevant."""
    rel = relevant[order]
    hits = np.flatnonzero(rel)
    if hits.size == 0:
        return None
    return float(np.mean(np.arange(1, hits.size + 1) / (hits + 1)))


@dataclass
class Figures:
    """Residual mAP per round (index 0: round 1) for the feedback and for no feedback; whole-ranking mAP."""

    feedback: list[float]
    baseline: list[float]
    whole: list[float]
    seconds: float


def simulate(vectors: np.ndarray, labels: np.ndarray, queries: Sequence[int], db: np.ndarray, ranker: Ranker,
             marks: int = 20, rounds: int = 2) -> Figures:
    """The issue's protocol for ``queries`` (rows of ``vectors``) against the database rows ``db`` (the
    query itself left out)."""
    fb: list[list[float]] = [[] for _ in range(rounds)]
    base: list[list[float]] = [[] for _ in range(rounds)]
    whole: list[list[float]] = [[] for _ in range(rounds)]
    t0 = time.perf_counter()
    for qi in queries:
        rows = db[db != qi]
        v = vectors[rows]
        rel = labels[rows] == labels[qi]
        q = vectors[qi]
        first = np.argsort(-(v @ q), kind="stable")
        pos: list[int] = []
        neg: list[int] = []
        scores = v @ q
        for r in range(rounds):
            marked = set(pos) | set(neg)
            new = [int(i) for i in top_rows(scores, marks, exclude=sorted(marked))]
            pos += [i for i in new if rel[i]]
            neg += [i for i in new if not rel[i]]
            scores = ranker(v, q, list(pos), list(neg))
            marked = np.zeros(len(rows), bool)
            marked[pos + neg] = True
            order = np.argsort(-scores, kind="stable")
            ap = average_precision(order[~marked[order]], rel)
            if ap is None:  # every relevant image is marked: nothing left to find
                continue
            fb[r].append(ap)
            whole[r].append(average_precision(order, rel) or 0.0)
            cut = first[marks * (r + 1):]
            base[r].append(average_precision(cut, rel) or 0.0)
    return Figures([float(np.mean(x)) for x in fb], [float(np.mean(x)) for x in base],
                   [float(np.mean(x)) for x in whole], time.perf_counter() - t0)


# --- data ---------------------------------------------------------------------------------------------
def load_collection(data: Path, cache: Path, descriptor: str, backbone: str) -> tuple[list[str], np.ndarray]:
    """(relative paths under data, vectors) of the cub100 images from the collection ``index`` wrote."""
    from engine.collection import Collection

    spec = ModelSpec(backbone=backbone, descriptor=descriptor)
    coll = Collection.open(data / "images", model_spec=spec, cache_dir=cache)
    if len(coll) == 0:
        raise SystemExit(f"no vectors for {descriptor} in {cache}: run `python -m engine index {data / 'images'} "
                         f"--cache-dir {cache}` (with --backbone {backbone}) first")
    return ["images/" + p for p in coll.relpaths], np.ascontiguousarray(coll.vectors, np.float32)


def class_rows(paths: list[str], classes: Sequence[str]) -> np.ndarray:
    keep = set(classes)
    return np.array([i for i, p in enumerate(paths) if Path(p).parent.name in keep], np.int64)


#: (smooth_top, smooth_k, smooth_weight, smooth_steps) tried on the best SVM (engine.feedback.smooth_scores)
SMOOTHING_GRID = ((300, 10, 0.5, 1), (500, 10, 0.5, 1), (1000, 10, 0.5, 1), (1000, 5, 0.5, 1), (300, 5, 1.0, 1),
                  (300, 10, 1.0, 1), (500, 5, 1.0, 1), (500, 10, 1.0, 1), (500, 20, 1.0, 1), (500, 10, 2.0, 1),
                  (1000, 10, 2.0, 1), (500, 10, 3.0, 1), (500, 10, 5.0, 1), (500, 10, 1.0, 2), (500, 10, 2.0, 2),
                  (500, 10, 1.0, 3), (500, 10, 0.5, 3))


def select(vectors: np.ndarray, labels: np.ndarray, rows: np.ndarray, n_queries: int, seed: int,
           marks: int) -> tuple[list[tuple[str, dict, Figures]], dict]:
    """Every candidate on ``rows`` (training classes); -> (all results, the best engine settings)."""
    queries = np.random.default_rng(seed + 1).choice(rows, size=min(n_queries, len(rows)), replace=False)
    results: list[tuple[str, dict, Figures]] = []

    def run(name: str, params: dict, ranker: Ranker) -> Figures:
        f = simulate(vectors, labels, queries, rows, ranker, marks)
        results.append((name, params, f))
        log(f"  {name} {params}: {f.feedback[0]:.3f} / {f.feedback[1]:.3f} ({f.seconds:.0f} s)")
        return f

    for beta, gamma in itertools.product((0.5, 1.0, 2.0), (0.0, 0.3, 1.0)):
        run("rocchio", {"beta": beta, "gamma": gamma, "smooth_weight": 0.0},
            engine_ranker(FeedbackSettings(method="rocchio", beta=beta, gamma=gamma, smooth_weight=0.0)))
    for c, bg, qw in itertools.product((0.3, 1.0, 3.0), (100, 200, 500), (0.0, 0.25, 0.5)):
        run("svm", {"c": c, "background": bg, "query_weight": qw, "smooth_weight": 0.0},
            engine_ranker(FeedbackSettings(method="svm", c=c, background=bg, query_weight=qw, smooth_weight=0.0)))
    # the neighbourhood smoothing of the scores, on the best SVM without it
    best_svm = max((t for t in results if t[0] == "svm"), key=lambda t: sum(t[2].feedback))[1]
    for top, k, a, steps in SMOOTHING_GRID:
        params = {**best_svm, "smooth_weight": a, "smooth_k": k, "smooth_top": top, "smooth_steps": steps}
        run("svm", params, engine_ranker(FeedbackSettings(method="svm", **params)))
    for c, qw in itertools.product((0.3, 3.0, 30.0), (0.0, 0.5)):
        run("logreg", {"c": c, "background": 200, "query_weight": qw}, logreg_ranker(c, 200, qw))
    for lam in (0.3, 1.0):
        run("knn", {"lambda": lam}, knn_ranker(lam))
    engine_rows = [(n, p, f) for n, p, f in results if n in ("svm", "rocchio")]
    name, params, _ = max(engine_rows, key=lambda t: sum(t[2].feedback))
    return results, {"method": name, **params}


def ranker_for(name: str, params: dict) -> Ranker:
    if name == "logreg":
        return logreg_ranker(params["c"], params["background"], params["query_weight"])
    if name == "knn":
        return knn_ranker(params["lambda"])
    return engine_ranker(FeedbackSettings(method=name, **params))


# --- speed --------------------------------------------------------------------------------------------
def speed(n: int = 100_000, dim: int = 1280, marks: int = 40, repeats: int = 7) -> str:
    """Median time of one re-ranking with the default settings (fit + scores of every row + top 100) on
    n x dim synthetic L2-normalised rows in 1,000 clusters (the query, 10 positives from its cluster, 30
    negatives from others), float32 rows (as engine.collection holds them) and float16 rows; wall time and
    this process's CPU time (the time on a quiet machine, when the shared one is loaded)."""
    rng = np.random.default_rng(0)
    centres = l2n(rng.standard_normal((1000, dim), dtype=np.float32))
    labels = rng.integers(0, 1000, n)
    v32 = np.empty((n, dim), np.float32)
    for a in range(0, n, 10_000):
        block = centres[labels[a:a + 10_000]] + 0.04 * rng.standard_normal((min(10_000, n - a), dim), dtype=np.float32)
        v32[a:a + 10_000] = l2n(block)
    same = np.flatnonzero(labels == labels[0])[1:]
    other = np.flatnonzero(labels != labels[0])
    pos = same[: marks // 4].tolist()
    neg = other[: marks - len(pos)].tolist()
    s = FeedbackSettings()
    out = []
    for dtype in (np.float32, np.float16):
        v = v32 if dtype == np.float32 else v32.astype(np.float16)
        wall, cpu = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            rerank(v, v32[0], pos, neg, s, k=100, exclude=[0])
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        out.append(f"| {np.dtype(dtype).name} | {n:,} x {dim:,} | {len(pos)} + / {len(neg)} - | "
                   f"{np.median(wall) * 1e3:.0f} | {np.median(cpu) * 1e3:.0f} |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    head = ("| stored rows | size | marks | re-rank wall (ms) | re-rank CPU time (ms) |\n"
            "|---|---|---|---|---|")
    return (head + "\n" + "\n".join(out) + f"\n\n(re-rank = fit + scores of every row + top 100, settings "
            f"{s}; {platform.machine()}, {os.cpu_count()} cores, load average {load:.1f}; median of {repeats})")


# --- main ---------------------------------------------------------------------------------------------
def fmt(f: Figures) -> str:
    return f"{f.baseline[0]:.3f} | {f.feedback[0]:.3f} | {f.baseline[1]:.3f} | {f.feedback[1]:.3f} | {f.whole[1]:.3f}"


HEAD = ("| {what} | no feedback, 1 round | feedback, 1 round | no feedback, 2 rounds | feedback, 2 rounds "
        "| whole ranking after 2 |\n|---|---|---|---|---|---|")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--cache", type=Path, help="the cache folder `index --cache-dir` wrote")
    ap.add_argument("--backbone", default=DEFAULT_BACKBONE, help="a trained checkpoint measures that model")
    ap.add_argument("--descriptors", default=",".join(DESCRIPTORS))
    ap.add_argument("--queries", type=int, default=600, help="test queries (default 600)")
    ap.add_argument("--select-queries", type=int, default=200, help="training-class queries for the selection")
    ap.add_argument("--marks", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--settings", default=None, help="JSON of chosen settings: skips the selection")
    ap.add_argument("--split", action="store_true", help="also the same-categories split of issue 18")
    ap.add_argument("--split-only", action="store_true", help="only the same-categories split (with --settings)")
    ap.add_argument("--speed", action="store_true", help="only the re-ranking time at 100,000 x 1,280")
    ap.add_argument("--threads", type=int, default=None,
                    help="BLAS threads (default: 2 for --speed, else 1: small fits gain nothing from more)")
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits  # scikit-learn's; many small fits on a shared machine

    threadpool_limits(args.threads or (2 if args.speed else 1))
    if args.speed:
        print(speed())
        return
    if args.cache is None:
        ap.error("--cache is needed (the folder `index --cache-dir` wrote)")
    classes = json.loads((args.data / "class_split.json").read_text())
    wanted = args.descriptors.split(",")
    default = DEFAULT_DESCRIPTOR if DEFAULT_DESCRIPTOR in wanted else wanted[0]  # a trained model: its "fc"
    paths, vecs = load_collection(args.data, args.cache, default, args.backbone)
    labels = np.array([Path(p).parent.name for p in paths])
    train_rows = class_rows(paths, classes["train_classes"])
    test_rows = class_rows(paths, classes["test_classes"])
    test_q = np.random.default_rng(args.seed).choice(test_rows, size=min(args.queries, len(test_rows)),
                                                     replace=False)
    if args.settings:
        chosen = json.loads(args.settings)
        candidates = []
    else:
        log(f"selection on the {len(classes['train_classes'])} training classes, {args.select_queries} queries, "
            f"{default}")
        results, chosen = select(vecs, labels, train_rows, args.select_queries, args.seed, args.marks)
        print(f"Selection ({default}, training classes 0-49, {args.select_queries} queries; residual mAP after "
              "rounds 1 / 2):\n")
        print("| method | settings | round 1 | round 2 |\n|---|---|---|---|")
        for name, params, f in results:
            print(f"| {name} | {params} | {f.feedback[0]:.3f} | {f.feedback[1]:.3f} |")
        best = {}
        for name, params, f in results:
            if name not in best or sum(f.feedback) > sum(best[name][1].feedback):
                best[name] = (params, f)
        candidates = [(n, p) for n, (p, _) in best.items()]
        print(f"\nchosen (engine methods): {json.dumps(chosen)}\n")
    method = chosen.pop("method")
    if candidates:
        print(f"Test classes 50-99, {len(test_q)} queries, {args.marks} marks a round, residual mAP "
              f"({Path(args.backbone).name}, {default}):\n")
        print(HEAD.format(what="method (best settings on the training classes)"))
    for name, params in candidates:
        f = simulate(vecs, labels, test_q, test_rows, ranker_for(name, params), args.marks)
        print(f"| {name} {params} | {fmt(f)} |", flush=True)
    if not args.split_only:
        print(f"\nEvery descriptor ({Path(args.backbone).name}), {method} {chosen}, test classes 50-99, "
              f"{len(test_q)} queries:\n")
        print(HEAD.format(what="descriptor"))
    for d in [] if args.split_only else args.descriptors.split(","):
        p2, v2 = (paths, vecs) if d == default else load_collection(args.data, args.cache, d, args.backbone)
        if p2 != paths:
            raise SystemExit(f"{d}: its rows are not in the order of {default}'s")
        f = simulate(v2, labels, test_q, test_rows, ranker_for(method, chosen), args.marks)
        print(f"| {d} | {fmt(f)} |", flush=True)
    if args.split or args.split_only:
        split = json.loads(SAME_SPLIT.read_text())
        where = {p: i for i, p in enumerate(paths)}
        q_rows = np.array([where[p] for p in split["query"]], np.int64)
        db_rows = np.array([where[p] for p in split["retrieval"]], np.int64)
        print(f"\nSame-categories split of issue 18 (all 100 classes; {len(q_rows)} queries against its "
              f"{len(db_rows)} retrieval images), {method} {chosen}:\n")
        print(HEAD.format(what="descriptor"))
        for d in args.descriptors.split(","):
            p2, v2 = (paths, vecs) if d == default else load_collection(args.data, args.cache, d, args.backbone)
            f = simulate(v2, labels, q_rows, db_rows, ranker_for(method, chosen), args.marks)
            print(f"| {d} | {fmt(f)} |", flush=True)


if __name__ == "__main__":
    main()
