"""Near-duplicate images of an indexed collection: pairs above a similarity threshold, grouped and ordered.

The work is split so that a threshold slider costs nothing:

1. :func:`find_duplicates` searches the collection's own index ONCE (exact brute force up to
   :data:`EXACT_LIMIT` images, its HNSW graph beyond): every image's nearest neighbours scoring at least a
   ``floor`` (the lowest threshold the caller will ever ask for), widened until the list ends below the
   floor (a k-NN search with a radius). It keeps the pairs with their scores (:class:`DuplicatePairs`) and
   the file facts (resolution, bytes, mtime) of every image in a pair.
2. :meth:`DuplicateSet.groups` regroups those pairs at any threshold >= the floor without searching
   again: pure array work.

Grouping rules (``rule``), measured by benchmarks/duplicates.py on edited cub100 photos among all the
other photos of their species (docs/BENCHMARKS.md, "Near-duplicates"):

- ``"components"`` (the default): connected components of the pairs above the threshold (single
  linkage). At the default thresholds chaining joined different photos in 5 groups of 155 (pair
  precision 0.999) and keeps the copies of a picture together (pair recall 0.85 with SPoC).
- ``"complete"``: two groups merge only when EVERY pair across them scores at least the threshold
  (greedy complete linkage over the pairs, strongest first): no chaining, but two edits of one picture
  that each match the original and not each other (a captioned copy and a rotated one) split the group
  (pair recall 0.70 at the same threshold). Below the defaults chaining grows fast (SPoC at 0.86: 65 of
  198 groups mixed, one of 34 images; pair precision 0.73 against 0.97 for complete): the strict rule is
  for low thresholds.

Two tiers (issue 29): the groups above are **similar photos**; :meth:`DuplicateSet.verify` checks the
candidate pairs (those pairs plus each image's CANDIDATE_K nearest neighbours) with engine.copycheck, and
:meth:`DuplicateSet.copy_groups` gives the **copies** (verified pairs only), each ordered by a
:class:`BestRule` that never keeps an upscaled, re-encoded or cropped copy (:func:`derivations`) and says
why (``best_reason``). :class:`Decisions` ("not copies", "keep all") are kept beside the collection's state,
keyed by relative paths, and applied to both tiers.

Each similar-photos group is ordered best first by :data:`ORDER_RULE`: largest resolution (width x height), then
largest file, then oldest (smallest mtime), then path. Nothing here deletes anything: :func:`move_files`
and :func:`trash_files` move what they are given, and the window asks for confirmation first.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.atomic import atomic_write_text, write_target
from engine.callbacks import Cancelled, ProgressFn, ShouldStopFn, resolve
from engine.search import SearchOptions

log = logging.getLogger(__name__)

#: the default threshold per descriptor (cosine similarity, EfficientNet-Lite0 ImageNet weights), chosen
#: by benchmarks/duplicates.py (docs/BENCHMARKS.md, "Near-duplicates"): the lowest threshold at which every
#: kind of edit keeps precision >= 0.95 on the calibration species; other descriptors use FALLBACK_THRESHOLD
DEFAULT_THRESHOLDS: dict[str, float] = {
    "spoc": 0.90,
    "gem": 0.90,
    "mac": 0.89,
    "rmac": 0.92,
    "fc": 0.91,
}
FALLBACK_THRESHOLD = 0.90
#: the pair search reaches this far below the threshold asked for, so that a slider can go down that much
#: without searching again
SEARCH_MARGIN = 0.10
#: exact (brute-force) search up to this many images, the HNSW graph beyond
EXACT_LIMIT = 20_000
#: neighbours asked for per image at first; an image whose whole list scores above the floor is asked
#: again with twice as many, up to MAX_NEIGHBOURS
FIRST_K = 16
MAX_NEIGHBOURS = 512
RULES = ("components", "complete")
DEFAULT_RULE = "components"
ORDER_RULE = "largest resolution, then largest file, then oldest (mtime), then path"
#: the merge checks of complete linkage are O(|A| x |B|): its groups stop growing at this size, so that a
#: folder of 10,000 identical frames cannot stall it (they come out as several groups)
COMPLETE_MAX_GROUP = 2_000
#: stage one of the copies tier: besides every pair above the similar tier's floor, each image's
#: CANDIDATE_K nearest neighbours scoring >= CANDIDATE_FLOOR are verified. A caption or a 30 % thumbnail
#: moves a descriptor far (SPoC 0.80 keeps 0.96 of captions) but rarely out of the 5 nearest: on the
#: training species of benchmarks/duplicates.py this kept >= 0.993 of every kind of edit at 2.4 pairs per
#: image (docs/BENCHMARKS.md)
CANDIDATE_K = 5
CANDIDATE_FLOOR = 0.60


def default_threshold(descriptor: str | None) -> float:
    """The measured default threshold of a descriptor kind (FALLBACK_THRESHOLD for others)."""
    return DEFAULT_THRESHOLDS.get(str(descriptor), FALLBACK_THRESHOLD)


# --- pairs ---------------------------------------------------------------------------------------
@dataclass
class DuplicatePairs:
    """Every pair of rows scoring >= ``floor``: ``i`` (P,) < ``j`` (P,) int64 row numbers of the
    collection, ``scores`` (P,) float32 cosine similarity, sorted by score descending. ``n``: rows of
    the collection; ``exact``: brute-force search (else HNSW, approximate); ``truncated``: rows whose
    neighbour list was still above the floor at MAX_NEIGHBOURS (more pairs may exist); ``queries``: calls
    made to the collection's search."""

    n: int
    i: np.ndarray
    j: np.ndarray
    scores: np.ndarray
    floor: float
    exact: bool = True
    truncated: int = 0
    queries: int = 0

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def above(self, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The pairs scoring >= ``threshold``: (i, j, scores), strongest first."""
        if threshold < self.floor - 1e-6:
            raise ValueError(f"the pairs were searched down to {self.floor:.3f}; {threshold:.3f} needs a new "
                             "search (find_duplicates with a lower floor)")
        m = int(np.searchsorted(-self.scores, -np.float32(threshold), side="right"))
        return self.i[:m], self.j[:m], self.scores[:m]


def unique_pairs(n: int, i: np.ndarray, j: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                                      np.ndarray]:
    """Pairs (i, j, scores) of any order and with repeats -> unique (min, max) pairs, i != j, each with
    its highest score, sorted by score descending (ties by i, j)."""
    i = np.asarray(i, np.int64)
    j = np.asarray(j, np.int64)
    s = np.asarray(scores, np.float32)
    keep = i != j
    a, b, s = np.minimum(i, j)[keep], np.maximum(i, j)[keep], s[keep]
    if a.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    key = a * max(int(n), 1) + b
    order = np.lexsort((-s, key))  # by key, best score first within a key
    key, a, b, s = key[order], a[order], b[order], s[order]
    first = np.ones(key.shape[0], bool)
    first[1:] = key[1:] != key[:-1]
    a, b, s = a[first], b[first], s[first]
    order = np.lexsort((b, a, -s))
    return a[order], b[order], s[order]


def find_pairs(collection: Any, floor: float, *, k: int = FIRST_K, max_k: int = MAX_NEIGHBOURS,
               exact: bool | None = None, batch: int = 512, progress: ProgressFn | None = None,
               should_stop: ShouldStopFn | None = None) -> DuplicatePairs:
    """All pairs of ``collection`` (an engine.collection.Collection) scoring >= ``floor``, from its index.

    Every row queries its ``k`` nearest neighbours (exact when ``exact``, default: up to EXACT_LIMIT
    rows); rows whose whole list scores >= ``floor`` ask again with twice as many, up to ``max_k``.
    Raises Cancelled when ``should_stop()`` says so."""
    return _search_pairs(collection, floor, k=k, max_k=max_k, exact=exact, batch=batch, progress=progress,
                         should_stop=should_stop)[0]


def _search_pairs(collection: Any, floor: float, *, k: int = FIRST_K, max_k: int = MAX_NEIGHBOURS,
                  exact: bool | None = None, batch: int = 512, progress: ProgressFn | None = None,
                  should_stop: ShouldStopFn | None = None,
                  near: tuple[int, float] | None = None) -> tuple[DuplicatePairs, DuplicatePairs | None]:
    """:func:`find_pairs`, and with ``near`` = (K, near_floor) in the same search also each row's K nearest
    neighbours scoring >= near_floor (the copies tier's candidates; one search instead of two)."""
    report, stop = resolve(progress, should_stop)
    # one snapshot: another thread may be adding rows meanwhile (hits on rows beyond it are left out)
    vectors = collection.vectors
    n = int(vectors.shape[0]) if vectors.ndim == 2 and vectors.shape[1] else 0
    relpaths = collection.relpaths[:n]
    exact = n <= EXACT_LIMIT if exact is None else bool(exact)
    empty = DuplicatePairs(n, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32),
                           float(floor), exact)
    near_empty = None if near is None else DuplicatePairs(n, empty.i, empty.j, empty.scores, float(near[1]), exact)
    if n < 2:
        return empty, near_empty
    if exact:
        # the rows' own vectors against each other: engine.index's exact search on the snapshot, row numbers
        # as ids (the collection's search answers the same, with a SearchHit per hit that this throws away)
        from engine.index import make_index

        brute = make_index("exact", "cosine", dim=int(vectors.shape[1]))
        brute.add(np.asarray(vectors, np.float32), np.arange(n, dtype=np.int64), normalised=True)

    row_of = {p: r for r, p in enumerate(relpaths)}

    def neighbours(rows: np.ndarray, want: int, low: float) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per row: (rows, scores) of its ``want`` nearest scoring >= ``low``, best first."""
        if exact:
            ids, scores = brute.query(vectors[rows], want)
            keep = scores >= np.float32(low)
            return [(ids[x][keep[x]], scores[x][keep[x]]) for x in range(len(rows))]
        hits = collection.search_many(vectors[rows], SearchOptions(k=want, exact=False, threshold=low))
        return [(np.fromiter((row_of.get(h.relpath, -1) for h in row_hits), np.int64, len(row_hits)),
                 np.fromiter((h.score for h in row_hits), np.float32, len(row_hits))) for row_hits in hits]

    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    found_s: list[np.ndarray] = []
    near_i: list[np.ndarray] = []
    near_j: list[np.ndarray] = []
    near_s: list[np.ndarray] = []
    todo = np.arange(n)
    first_want = min(max(2, int(k) + 1), n)  # +1: a row finds itself
    want = first_want
    queries, truncated, done = 0, 0, 0
    report(0, n, "searching for similar pairs")
    while todo.size:
        again: list[int] = []
        first = want == first_want
        # the first pass also holds the near neighbours: as many of them, down to their floor
        ask = max(want, min(int(near[0]) + 1, n)) if first and near is not None else want
        low = min(float(floor), float(near[1])) if first and near is not None else float(floor)
        for start in range(0, todo.size, batch):
            if stop():
                raise Cancelled("duplicate search stopped")
            rows = todo[start:start + batch]
            hits = neighbours(rows, ask, low)
            queries += 1
            for r, (js, ss) in zip(rows, hits, strict=True):
                ok = js >= 0
                if first and near is not None:
                    m = ok.copy()
                    m[int(near[0]) + 1:] = False
                    m &= ss >= np.float32(near[1])
                    near_i.append(np.full(int(m.sum()), r, np.int64))
                    near_j.append(js[m])
                    near_s.append(ss[m])
                    ok &= ss >= np.float32(floor)
                found_i.append(np.full(int(ok.sum()), r, np.int64))
                found_j.append(js[ok])
                found_s.append(ss[ok])
                if int((ss >= np.float32(floor)).sum()) >= want and want < n:
                    again.append(int(r))
            if first:
                done += rows.size
                report(done, n, "searching for similar pairs")
        if not again:
            break
        if want >= max_k + 1 or want >= n:
            truncated = len(again)
            log.info("%d images have more than %d neighbours above %.3f: their lists are cut there",
                     truncated, max_k, floor)
            break
        todo = np.asarray(again, np.int64)
        want = min(2 * want - 1, max_k + 1, n)
    i, j, s = unique_pairs(n, np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s))
    keep = s >= np.float32(floor)
    pairs = DuplicatePairs(n, i[keep], j[keep], s[keep], float(floor), exact, truncated, queries)
    if near is None:
        return pairs, None
    i, j, s = unique_pairs(n, np.concatenate(near_i), np.concatenate(near_j), np.concatenate(near_s))
    return pairs, DuplicatePairs(n, i, j, s, float(near[1]), exact, 0, queries)


# --- grouping ------------------------------------------------------------------------------------
class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, a: int) -> int:
        p = self.parent
        root = a
        while p[root] != root:
            root = p[root]
        while p[a] != root:
            p[a], a = root, p[a]
        return int(root)


def group_rows(n: int, i: np.ndarray, j: np.ndarray, scores: np.ndarray, threshold: float,
               rule: str = DEFAULT_RULE) -> list[np.ndarray]:
    """Groups of >= 2 rows from pairs (i, j, scores) sorted by score descending: those scoring
    >= ``threshold`` are joined by ``rule`` ('complete' or 'components', see the module docstring).
    Returns row arrays (sorted), the groups in no particular order."""
    if rule not in RULES:
        raise ValueError(f"unknown grouping rule {rule!r}; valid: {', '.join(RULES)}")
    m = int(np.searchsorted(-np.asarray(scores, np.float32), -np.float32(threshold), side="right"))
    i, j = np.asarray(i[:m], np.int64), np.asarray(j[:m], np.int64)
    touched = np.unique(np.concatenate([i, j])) if i.size else np.zeros(0, np.int64)
    if touched.size == 0:
        return []
    if rule == "components":
        roots = _component_labels(n, i, j)[touched]
    else:
        roots = _complete_labels(n, i, j)[touched]
    order = np.argsort(roots, kind="stable")
    roots, touched = roots[order], touched[order]
    cuts = np.flatnonzero(np.diff(roots)) + 1
    return [g for g in np.split(touched, cuts) if g.size >= 2]


def _component_labels(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """(n,) the smallest row of each row's connected component over edges (i, j): min-label propagation
    with pointer jumping, all in numpy (a few passes for the short chains of duplicates)."""
    lab = np.arange(n)
    while True:
        m = np.minimum(lab[i], lab[j])
        new = lab.copy()
        np.minimum.at(new, i, m)
        np.minimum.at(new, j, m)
        new = new[new]
        if np.array_equal(new, lab):
            return lab
        lab = new


def _complete_labels(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """(n,) a group label per row by greedy complete linkage over the edges (i, j), strongest first: two
    groups merge only when every pair across them is an edge."""
    uf = _UnionFind(n)
    strong = set(zip(i.tolist(), j.tolist(), strict=True))
    members: dict[int, list[int]] = {}
    for a, b in zip(i.tolist(), j.tolist(), strict=True):
        ra, rb = uf.find(a), uf.find(b)
        if ra == rb:
            continue
        ga, gb = members.get(ra, [ra]), members.get(rb, [rb])
        if len(ga) + len(gb) > COMPLETE_MAX_GROUP:
            continue
        if len(ga) * len(gb) > 1 and not all((min(x, y), max(x, y)) in strong for x in ga for y in gb):
            continue
        root, other = min(ra, rb), max(ra, rb)
        uf.parent[other] = root
        members[root] = ga + gb
        members.pop(other, None)
    lab = np.arange(n)
    for root, group in members.items():
        lab[group] = root
    return lab


# --- file facts and ordering ---------------------------------------------------------------------
@dataclass(frozen=True)
class FileFacts:
    """What orders a group: ``width`` x ``height`` from the image header (0 when unreadable), ``bytes``,
    ``mtime`` (seconds since the epoch)."""

    width: int = 0
    height: int = 0
    bytes: int = 0
    mtime: float = 0.0

    @property
    def pixels(self) -> int:
        return self.width * self.height


def file_facts(path: str | os.PathLike) -> FileFacts:
    """Size, mtime and resolution of an image file (only the header is read; no pixel is decoded).
    A missing or unreadable file gives zeros where unknown."""
    try:
        st = os.stat(path)
    except OSError:
        return FileFacts()
    if not stat.S_ISREG(st.st_mode):  # a pipe or device put in an image's place: never opened
        return FileFacts(0, 0, int(st.st_size), float(st.st_mtime))
    width = height = 0
    try:
        from PIL import Image

        with Image.open(path) as im:
            width, height = (int(v) for v in im.size)
    except Exception as exc:  # not an image any more: ordered last by resolution
        log.debug("no header for %s: %s", path, exc)
    return FileFacts(width, height, int(st.st_size), float(st.st_mtime))


def order_key(facts: FileFacts, relpath: str) -> tuple:
    """The sort key of ORDER_RULE (best first): largest resolution, largest file, oldest, then path."""
    return (-facts.pixels, -facts.bytes, facts.mtime, relpath)


@dataclass
class DuplicateItem:
    """One image of a group: ``score`` is its similarity to the group's best image (1.0 for the best
    itself; None when that pair was not found above the floor)."""

    row: int
    path: str
    relpath: str
    facts: FileFacts
    best: bool
    score: float | None
    #: why this image is a derived copy ('upscaled copy of a/b.jpg'...): never the best by default
    derived: list[str] = field(default_factory=list)


@dataclass
class DuplicateGroup:
    """Images taken for copies of one picture, best first (ORDER_RULE); ``max_score``/``min_score``: the
    strongest and weakest pair inside the group that scored above the threshold."""

    items: list[DuplicateItem]
    max_score: float
    min_score: float
    #: "similar" (descriptor pairs above the threshold) or "copies" (pairs the verification confirmed)
    tier: str = "similar"
    #: why the first image is the best (the keep-best rule's deciding criterion)
    best_reason: str = ""
    #: copies: the evidence of each verified pair inside the group (PairCheck.as_dict() + a, b relpaths)
    evidence: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def best(self) -> DuplicateItem:
        return self.items[0]

    @property
    def others(self) -> list[DuplicateItem]:
        """All but the best (what 'select all but the best' selects)."""
        return self.items[1:]


@dataclass
class DuplicateSet:
    """The pairs of a collection and the facts of their files; :meth:`groups` regroups at any threshold
    >= ``pairs.floor`` without searching. ``paths``/``relpaths``: per collection row."""

    folder: str
    paths: list[str]
    relpaths: list[str]
    pairs: DuplicatePairs
    facts: dict[int, FileFacts] = field(default_factory=dict)
    descriptor: str | None = None
    notes: list[str] = field(default_factory=list)
    #: verification evidence (engine.copycheck.PairCheck) per candidate pair (i, j), i < j
    checks: dict[tuple[int, int], Any] = field(default_factory=dict)
    #: candidate pairs scoring >= this were verified (None: not verified yet)
    verified_from: float | None = None
    #: stage one's nearest-neighbour candidates (each image's CANDIDATE_K nearest >= CANDIDATE_FLOOR)
    candidates: DuplicatePairs | None = None
    #: when True, :meth:`groups` gives the similar-photos tier (less verified copies and decisions): the
    #: window sets it once the candidates are verified
    similar_only: bool = False
    decisions: Decisions = field(default_factory=lambda: Decisions())
    #: where the verification evidence is kept between runs (engine.copycheck.save_evidence; None: not kept)
    evidence_path: Path | None = None
    _pixels: dict[tuple[int, str], Any] = field(default_factory=dict)

    def pixel_fact(self, row: int, name: str, fn: Callable[[str], Any]) -> Any:
        """``fn(path)`` of a row, cached under ``name`` (what the keep-best rule reads from files)."""
        key = (int(row), name)
        if key not in self._pixels:
            self._pixels[key] = fn(self.paths[row])
        return self._pixels[key]

    def _dismissed(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """(P,) bool: pairs the user said are not copies."""
        if not self.decisions.not_copies:
            return np.zeros(i.shape[0], bool)
        return np.fromiter((self.decisions.dismissed(self.relpaths[a], self.relpaths[b])
                            for a, b in zip(i.tolist(), j.tolist(), strict=True)), bool, i.shape[0])

    def verify(self, threshold: float | None = None, checker: Any = None, *, progress: ProgressFn | None = None,
               should_stop: ShouldStopFn | None = None, workers: int | None = None) -> int:
        """Stage two: check every candidate pair scoring >= ``threshold`` (default: the floor) with
        engine.copycheck.verify_pairs (``workers`` processes, default one per core; cached: a pair checked
        before is not checked again, also in an earlier run when ``evidence_path`` keeps the evidence and
        neither file changed since). Returns the pairs checked now. Raises Cancelled when stopped (the
        checks made so far are kept)."""
        from engine.copycheck import Checker, load_evidence, save_evidence, verify_pairs

        threshold = self.pairs.floor if threshold is None else max(float(threshold), self.pairs.floor)
        i, j, _ = self.pairs.above(threshold)
        if self.candidates is not None:
            i, j = np.concatenate([i, self.candidates.i]), np.concatenate([j, self.candidates.j])
        todo = sorted({(int(a), int(b)) for a, b in zip(i.tolist(), j.tolist(), strict=True)
                       if (a, b) not in self.checks})

        def keep(n: int, check: Any) -> None:
            self.checks[todo[n]] = check

        checker = checker or Checker()
        if self.evidence_path is not None and todo:
            load_evidence(self.evidence_path, checker)
        try:
            verify_pairs([(self.paths[a], self.paths[b]) for a, b in todo], checker, progress=progress,
                         should_stop=should_stop, workers=workers, keep=keep)
        finally:  # what was checked is kept, also when stopped
            if self.evidence_path is not None and todo:
                try:
                    save_evidence(self.evidence_path, [(self.paths[a], self.paths[b], c)
                                                       for (a, b), c in self.checks.items()], checker.floor)
                except OSError as exc:
                    log.warning("the duplicate evidence was not kept (%s): the next run checks again", exc)
        self.verified_from = threshold if self.verified_from is None else min(self.verified_from, threshold)
        return len(todo)

    def copy_pairs(self, copy_rule: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The verified pairs (i, j, verification score), strongest first, less the dismissed ones."""
        from engine.copycheck import DEFAULT_RULE, is_copy

        copy_rule = copy_rule or DEFAULT_RULE
        got = [(a, b, c.score) for (a, b), c in self.checks.items() if is_copy(c, copy_rule)]
        if not got:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        i, j, s = (np.array(v) for v in zip(*got, strict=True))
        order = np.lexsort((j, i, -s))
        i, j, s = i[order].astype(np.int64), j[order].astype(np.int64), s[order].astype(np.float32)
        keep = ~self._dismissed(i, j)
        return i[keep], j[keep], s[keep]

    def copy_groups(self, copy_rule: Any = None, best_rule: BestRule | None = None) -> list[DuplicateGroup]:
        """Tier one: groups of verified copies (connected components), each ordered by ``best_rule``
        (default BestRule()), ``best_reason`` and ``evidence`` filled in; groups settled with 'keep all'
        are left out. Reads pixels for the keep-best rule (call it off the GUI thread)."""
        best_rule = best_rule or BestRule()
        i, j, s = self.copy_pairs(copy_rule)
        rows = group_rows(self.pairs.n, i, j, s, -np.inf)
        out = []
        for g in rows:
            members = [int(r) for r in g]
            if self.decisions.kept([self.relpaths[r] for r in members]):
                continue
            inside = np.isin(i, g) & np.isin(j, g)
            pairs = list(zip(i[inside].tolist(), j[inside].tolist(), strict=True))
            derived = derivations(self, members, pairs)
            ordered, reason = choose_best(self, members, derived, best_rule)
            best = ordered[0]
            to_best = {b if a == best else a: float(c.score) for (a, b), c in
                       ((p, self.checks[p]) for p in pairs) if best in (a, b)}
            items = [DuplicateItem(r, self.paths[r], self.relpaths[r], self.facts_of(r), x == 0,
                                   1.0 if x == 0 else to_best.get(r), [d.text() for d in derived.get(r, [])])
                     for x, r in enumerate(ordered)]
            evidence = [{"a": self.relpaths[a], "b": self.relpaths[b], **self.checks[(a, b)].as_dict()}
                        for a, b in pairs]
            sc = s[inside]
            out.append(DuplicateGroup(items, float(sc.max()), float(sc.min()), "copies", reason, evidence))
        out.sort(key=lambda grp: (-len(grp), -grp.max_score, grp.best.relpath))
        return out

    def similar_groups(self, threshold: float, rule: str = DEFAULT_RULE,
                       copy_rule: Any = None) -> list[DuplicateGroup]:
        """Tier two: groups of candidate pairs scoring >= ``threshold`` that are not verified copies (nor
        dismissed); ordered as :meth:`groups`. Before :meth:`verify` it is :meth:`groups` less the
        decisions."""
        from engine.copycheck import DEFAULT_RULE as COPY_RULE
        from engine.copycheck import is_copy

        copy_rule = copy_rule or COPY_RULE
        i, j, s = self.pairs.above(threshold)
        keep = ~self._dismissed(i, j)
        if self.checks:
            keep &= np.fromiter((not is_copy(self.checks[(a, b)], copy_rule) if (a, b) in self.checks else True
                                 for a, b in zip(i.tolist(), j.tolist(), strict=True)), bool, i.shape[0])
        return [g for g in self.groups(threshold, rule, pairs=(i[keep], j[keep], s[keep]))
                if not self.decisions.kept([it.relpath for it in g.items])]

    def facts_of(self, row: int) -> FileFacts:
        f = self.facts.get(row)
        if f is None:
            f = self.facts[row] = file_facts(self.paths[row])
        return f

    def groups(self, threshold: float, rule: str = DEFAULT_RULE,
               pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> list[DuplicateGroup]:
        """The groups at ``threshold`` (>= ``pairs.floor``), largest first, then strongest (``pairs``:
        (i, j, scores) to group instead of every pair above the threshold)."""
        if pairs is None and self.similar_only:
            return self.similar_groups(threshold, rule)
        i, j, s = self.pairs.above(threshold) if pairs is None else pairs
        rows = group_rows(self.pairs.n, i, j, s, threshold, rule)
        if not rows:
            return []
        ordered = [sorted((int(r) for r in g), key=lambda r: order_key(self.facts_of(r), self.relpaths[r]))
                   for g in rows]
        gid = np.full(self.pairs.n, -1, np.int64)
        best = np.full(self.pairs.n, False)
        for k, members in enumerate(ordered):
            gid[members] = k
            best[members[0]] = True
        # the strongest and weakest pair inside each group, and each member's score to its group's best
        inside = (gid[i] >= 0) & (gid[i] == gid[j])
        g_in, s_in = gid[i][inside], s[inside]
        hi = np.full(len(ordered), -np.inf)
        lo = np.full(len(ordered), np.inf)
        np.maximum.at(hi, g_in, s_in)
        np.minimum.at(lo, g_in, s_in)
        to_best = inside & (best[i] | best[j])
        score_to_best = {int(b if best[a] else a): float(c)
                         for a, b, c in zip(i[to_best], j[to_best], s[to_best], strict=True)}
        out = []
        for k, members in enumerate(ordered):
            items = [DuplicateItem(r, self.paths[r], self.relpaths[r], self.facts_of(r), x == 0,
                                   1.0 if x == 0 else score_to_best.get(r)) for x, r in enumerate(members)]
            out.append(DuplicateGroup(items, float(hi[k]), float(lo[k])))
        out.sort(key=lambda grp: (-len(grp), -grp.max_score, grp.best.relpath))
        return out


def find_duplicates(collection: Any, *, threshold: float | None = None, floor: float | None = None,
                    k: int = FIRST_K, exact: bool | None = None, candidates: bool = True,
                    progress: ProgressFn | None = None, should_stop: ShouldStopFn | None = None) -> DuplicateSet:
    """Search ``collection`` (engine.collection.Collection) once for every pair scoring >= ``floor``
    (default: ``threshold`` - SEARCH_MARGIN, ``threshold`` defaulting to the descriptor's measured
    default) and read the headers of the files in a pair. Regroup with :meth:`DuplicateSet.groups`.
    Raises Cancelled when stopped, engine.collection.CollectionError when nothing is indexed."""
    report, stop = resolve(progress, should_stop)
    descriptor = getattr(getattr(collection, "model_spec", None), "descriptor", None)
    if threshold is None:
        threshold = default_threshold(descriptor)
    if floor is None:
        floor = float(threshold) - SEARCH_MARGIN
    if floor > threshold:
        raise ValueError(f"floor {floor} is above the threshold {threshold}")
    # stage one of the copies tier (see CANDIDATE_K) comes from the same search
    wanted = (CANDIDATE_K, CANDIDATE_FLOOR) if candidates and CANDIDATE_FLOOR < floor else None
    pairs, near = _search_pairs(collection, floor, k=k, exact=exact, progress=report, should_stop=stop,
                                near=wanted)
    paths, relpaths = collection.paths[:pairs.n], collection.relpaths[:pairs.n]
    dup = DuplicateSet(str(collection.folder), paths, relpaths, pairs, descriptor=descriptor)
    dup.candidates = near
    if getattr(collection, "state_dir", None) is not None:
        dup.decisions = Decisions.for_collection(collection)
        dup.evidence_path = Path(collection.state_dir).parent / EVIDENCE_FILE
    if pairs.truncated:
        dup.notes.append(f"{pairs.truncated} images have more than {MAX_NEIGHBOURS} neighbours above "
                         f"{pairs.floor:.2f}: only their {MAX_NEIGHBOURS} nearest were kept")
    rows = np.unique(np.concatenate([pairs.i, pairs.j])) if len(pairs) else np.zeros(0, np.int64)
    for x, r in enumerate(rows.tolist()):
        if x % 64 == 0:
            if stop():
                raise Cancelled("duplicate search stopped")
            report(x, int(rows.size), "reading image sizes")
        dup.facts[r] = file_facts(paths[r])
    report(int(rows.size), int(rows.size), f"{len(pairs):,} similar pairs")
    return dup


# --- decisions: "not copies" and "keep all", kept beside the collection ----------------------------
DECISIONS_FILE = "duplicate-decisions.json"
#: the verification evidence of the last run, beside the decisions (engine.copycheck.save_evidence)
EVIDENCE_FILE = "duplicate-evidence.npz"


@dataclass
class Decisions:
    """What the user said about groups, keyed by relative paths (so that it survives reindexing):
    ``not_copies``: pairs of images that are not copies of each other (a dismissed group gives all its
    pairs); ``keep_all``: groups whose images are all kept (hidden while the group holds no other
    image). Stored as JSON at ``path`` (None: in memory only), written atomically."""

    path: Path | None = None
    not_copies: set[tuple[str, str]] = field(default_factory=set)
    keep_all: list[frozenset[str]] = field(default_factory=list)

    @classmethod
    def for_collection(cls, collection: Any) -> Decisions:
        """The decisions of ``collection``'s folder (shared by its model variants: beside their state)."""
        return cls.load(Path(collection.state_dir).parent / DECISIONS_FILE)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Decisions:
        """Read ``path`` (missing: no decisions; unreadable: no decisions and a warning in the log)."""
        d = cls(Path(path))
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
            d.not_copies = {(min(a, b), max(a, b)) for a, b in raw.get("not_copies", [])}
            d.keep_all = [frozenset(g) for g in raw.get("keep_all", []) if len(g) >= 2]
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable duplicate decisions %s: %s", path, exc)
        return d

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps({"version": 1, "not_copies": sorted(self.not_copies),
                                                 "keep_all": sorted(sorted(g) for g in self.keep_all)},
                                                indent=1))

    def mark_not_copies(self, relpaths: Sequence[str]) -> None:
        """Every two of ``relpaths`` are not copies; saved at once."""
        rel = sorted(set(relpaths))
        self.not_copies.update((a, b) for x, a in enumerate(rel) for b in rel[x + 1:])
        self.save()

    def mark_keep_all(self, relpaths: Sequence[str]) -> None:
        """Keep every image of this group; saved at once."""
        self.keep_all.append(frozenset(relpaths))
        self.save()

    def dismissed(self, a: str, b: str) -> bool:
        return (min(a, b), max(a, b)) in self.not_copies

    def kept(self, relpaths: Sequence[str]) -> bool:
        """The group was settled with 'keep all' (and holds no image added since)."""
        s = set(relpaths)
        return any(s <= g for g in self.keep_all)


# --- two stages: candidates verified, copies and similar photos -----------------------------------
#: the keep-best rule's criteria (BestRule.order): "derived" puts a copy that is an upscaled, re-encoded or
#: cropped version of another member last; then largest resolution, largest file, oldest date taken
#: (EXIF, else mtime), files under the preferred folder first
BEST_CRITERIA = ("derived", "resolution", "bytes", "date", "folder")
BEST_LABELS = {"derived": "not an upscaled, re-encoded or cropped copy of another",
               "resolution": "largest resolution", "bytes": "largest file", "date": "oldest (date taken)",
               "folder": "in the preferred folder"}


@dataclass(frozen=True)
class BestRule:
    """Which image of a group of copies to keep: ``order`` of BEST_CRITERIA (each used at most once,
    the path last), ``folder``: a preferred folder (absolute, or relative to the collection)."""

    order: tuple[str, ...] = BEST_CRITERIA
    folder: str | None = None

    def __post_init__(self) -> None:
        bad = [c for c in self.order if c not in BEST_CRITERIA]
        if bad or len(set(self.order)) != len(self.order):
            raise ValueError(f"keep-best criteria must be distinct names among {', '.join(BEST_CRITERIA)}; "
                             f"got {', '.join(self.order)}")

    def describe(self) -> str:
        text = ", then ".join(BEST_LABELS[c] for c in self.order)
        return text + (f" ({self.folder})" if self.folder and "folder" in self.order else "")

    @classmethod
    def parse(cls, text: str | None, folder: str | None = None) -> BestRule:
        """From 'derived,resolution,bytes' (None: the default order)."""
        order = tuple(c.strip() for c in text.split(",") if c.strip()) if text else BEST_CRITERIA
        return cls(order, folder or None)


def date_taken(path: str | os.PathLike) -> float | None:
    """EXIF DateTimeOriginal (or DateTime) as seconds since the epoch, None when absent."""
    import datetime

    try:
        from PIL import Image

        with Image.open(path) as im:
            exif = im.getexif()
            raw = exif.get_ifd(0x8769).get(0x9003) or exif.get(0x0132)
        if not raw:
            return None
        return datetime.datetime.strptime(str(raw).strip("\x00 "), "%Y:%m:%d %H:%M:%S").timestamp()
    except Exception:
        return None


@dataclass
class Derivation:
    """Why a file is a derived copy: ``kind`` 'upscaled', 're-encoded' or 'cropped'; ``source``: the
    relpath it was derived from ('' when told by the file alone, e.g. JPEG blocks in a PNG)."""

    kind: str
    source: str = ""

    def text(self) -> str:
        return f"{self.kind} copy" + (f" of {self.source}" if self.source else " (JPEG blocks in a lossless file)")


def derivations(dup: DuplicateSet, rows: Sequence[int], pairs: Sequence[tuple[int, int]]) -> dict[int, list[Derivation]]:
    """For the rows of one group and its verified pairs: which rows are upscaled, re-encoded or cropped
    copies of another (engine.copycheck reads the pixels; results cached in ``dup``)."""
    from engine import copycheck as cc

    out: dict[int, list[Derivation]] = {int(r): [] for r in rows}
    for r in rows:
        if dup.pixel_fact(r, "format", lambda p: cc.image_format(p)) in cc.LOSSLESS_FORMATS \
                and dup.pixel_fact(r, "blocking", cc.jpeg_blocking) > cc.BLOCKING_RATIO:
            out[r].append(Derivation("re-encoded"))
    for a, b in pairs:
        chk = dup.checks.get((min(a, b), max(a, b)))
        if chk is None or chk.error:
            continue
        if a > b:
            a, b = b, a
        # chk is about (a, b): scale = b's pixels per a's; outside_x = x's content outside the other
        fa, fb = dup.facts_of(a), dup.facts_of(b)
        for x, y, out_x, out_y in ((a, b, chk.outside_a, chk.outside_b), (b, a, chk.outside_b, chk.outside_a)):
            if abs(chk.angle) < 1.0:
                # upright: x's content lies inside y's and y holds more (a turned copy's filled corners
                # make edges of their own: turned pairs are told by the fill below)
                if out_x <= 0.02 and out_y >= 0.03:
                    out[x].append(Derivation("cropped", dup.relpaths[y]))
            elif (dup.pixel_fact(x, "filled", cc.filled_corners) and dup.pixel_fact(x, "filled", cc.filled_corners)
                  and not dup.pixel_fact(y, "filled", cc.filled_corners)):
                # turned inside its frame: the corners it lost are filled (a crop of the turned picture)
                out[x].append(Derivation("cropped", dup.relpaths[y]))
        big, small = (b, a) if chk.scale > 1 else (a, b)
        ratio = chk.scale if chk.scale > 1 else (1 / chk.scale if chk.scale else 1.0)
        fs = dup.facts_of(small)
        if ratio > 1.1 and fs.width and dup.pixel_fact(big, f"upscaled<{max(fs.width, fs.height)}",
                                                        lambda p, s=max(fs.width, fs.height): cc.upscaled_from(p, s)):
            out[big].append(Derivation("upscaled", dup.relpaths[small]))
        if 0.97 < ratio < 1.03 and abs(chk.angle) < 1.0:
            # one size, upright: a lossless file that holds the JPEG blocks of the other was made from it
            for x, y in ((a, b), (b, a)):
                if (dup.pixel_fact(x, "format", cc.image_format) in cc.LOSSLESS_FORMATS
                        and dup.pixel_fact(y, "format", cc.image_format) == "JPEG"
                        and dup.pixel_fact(y, "blocking", cc.jpeg_blocking) > 1.05
                        and dup.pixel_fact(x, "blocking", cc.jpeg_blocking)
                        >= 0.9 * dup.pixel_fact(y, "blocking", cc.jpeg_blocking)
                        and not any(d.kind == "re-encoded" for d in out[x])):
                    out[x].append(Derivation("re-encoded", dup.relpaths[y]))
        if (0.97 < ratio < 1.03 and abs(chk.angle) < 0.5 and not chk.mirrored and fa.pixels == fb.pixels
                and dup.pixel_fact(a, "format", cc.image_format) == "JPEG"
                and dup.pixel_fact(b, "format", cc.image_format) == "JPEG"):
            # cached per pair: the copies slider and the keep-best rule regroup without re-encoding again
            if dup.pixel_fact(a, f"re-encoded from {b}", lambda p, q=dup.paths[b]: cc.reencoded_from(p, q)):
                out[a].append(Derivation("re-encoded", dup.relpaths[b]))
            elif dup.pixel_fact(b, f"re-encoded from {a}", lambda p, q=dup.paths[a]: cc.reencoded_from(p, q)):
                out[b].append(Derivation("re-encoded", dup.relpaths[a]))
    return out


def choose_best(dup: DuplicateSet, rows: Sequence[int], derived: dict[int, list[Derivation]],
                rule: BestRule) -> tuple[list[int], str]:
    """The rows ordered best first by ``rule`` and the reason the first one was chosen."""
    pref = None
    if rule.folder:
        pref = Path(rule.folder) if os.path.isabs(rule.folder) else Path(dup.folder) / rule.folder

    def value(r: int, c: str) -> Any:
        f = dup.facts_of(r)
        if c == "derived":
            return 1 if derived.get(r) else 0
        if c == "resolution":
            return -f.pixels
        if c == "bytes":
            return -f.bytes
        if c == "date":
            d = dup.pixel_fact(r, "date", date_taken)
            return d if d is not None else f.mtime
        if pref is None:
            return 0
        try:
            Path(dup.paths[r]).resolve().relative_to(pref.resolve())
            return 0
        except ValueError:
            return 1

    ordered = sorted(rows, key=lambda r: (*(value(r, c) for c in rule.order), dup.relpaths[r]))
    best, reason = ordered[0], "first by path (nothing else tells them apart)"
    for c in rule.order:
        if any(value(r, c) != value(best, c) for r in ordered[1:]):
            reason = BEST_LABELS[c]
            if c == "derived":
                others = [f"{dup.relpaths[r]}: {derived[r][0].text()}" for r in ordered[1:] if derived.get(r)]
                reason += " (" + "; ".join(others[:3]) + (" …" if len(others) > 3 else "") + ")"
            break
    return ordered, reason


# --- output and actions --------------------------------------------------------------------------
CSV_FIELDS = ("group", "rank", "keep", "path", "width", "height", "bytes", "mtime", "score")


def group_records(groups: Sequence[DuplicateGroup]) -> list[dict[str, Any]]:
    """One flat record per image (CSV_FIELDS): group number from 1, rank from 1, keep = the best."""
    out = []
    for g, grp in enumerate(groups, 1):
        for rank, it in enumerate(grp.items, 1):
            out.append({"group": g, "rank": rank, "keep": it.best, "path": it.path, "width": it.facts.width,
                        "height": it.facts.height, "bytes": it.facts.bytes, "mtime": it.facts.mtime,
                        "score": None if it.score is None else round(it.score, 4)})
    return out


def groups_csv(groups: Sequence[DuplicateGroup]) -> str:
    """The groups as CSV text (header CSV_FIELDS)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for rec in group_records(groups):
        w.writerow(rec)
    return buf.getvalue()


def write_csv(groups: Sequence[DuplicateGroup], path: str | os.PathLike) -> None:
    """Write :func:`groups_csv` to ``path`` atomically."""
    write_target(path, groups_csv(groups))  # engine.atomic: a FIFO or device written through


def _free_name(dest: Path) -> Path:
    if not dest.exists() and not dest.is_symlink():
        return dest
    for n in range(1, 100_000):
        cand = dest.with_name(f"{dest.stem} ({n}){dest.suffix}")
        if not cand.exists() and not cand.is_symlink():
            return cand
    raise OSError(f"no free name for {dest}")


def move_files(paths: Sequence[str | os.PathLike], folder: str | os.PathLike,
               root: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """Move ``paths`` into ``folder`` (created if needed), keeping their path relative to ``root`` when
    they lie under it (so that two 'IMG_0001.jpg' of different folders do not collide) and never
    overwriting: a taken name gets ' (n)'. Returns (source, destination) of each file moved; stops at the
    first failure (OSError), after which the files moved so far stay moved."""
    dest_root = Path(folder).expanduser()
    moved = []
    for p in paths:
        src = Path(p)
        rel: Path = Path(src.name)
        if root is not None:
            try:
                rel = src.resolve().relative_to(Path(root).resolve())
            except ValueError:
                pass
        dest = _free_name(dest_root / rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(dest))
        moved.append((str(src), str(dest)))
    return moved


def trash_files(paths: Sequence[str | os.PathLike], trash: Callable[[str], None] | None = None) -> list[str]:
    """Send ``paths`` to the system trash (``send2trash.send2trash``; ``trash`` replaces it, e.g. in
    tests). Returns the paths sent; stops at the first failure (OSError or send2trash's
    TrashPermissionError)."""
    if trash is None:
        from send2trash import send2trash

        trash = send2trash
    sent = []
    for p in paths:
        trash(str(p))
        sent.append(str(p))
    return sent
