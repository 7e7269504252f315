"""Saved concepts: a query and the results a user marked right (+) or wrong (-), kept under a name.

A concept is plain data: its name, the folder it was made in, the query images and the marked images
(absolute paths), and the feedback settings that ranked it. It is saved as JSON (written atomically through
engine.atomic; read with json, never by running code) in the user's data folder
(:func:`concepts_dir`: ``$RETRIEVAL_EXPLORER_HOME/concepts``, else the platform's user data folder, the rule
of engine.vocabulary.data_home), one file per concept. It can be listed, reopened, exported as a CSV of
paths, used as a query again (``search --concept NAME``; the window's Concepts menu), and turned into a
training set: :func:`training_split` writes the trainer's image split file (engine.training.trainer's
``image_split``: ``{"train": [...], "val": [...]}`` of paths relative to a root, plus ``"labels"``: the
concept each image belongs to), so no image is copied.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.atomic import atomic_write_text, write_target
from engine.feedback import FeedbackSettings
from engine.vocabulary import data_home

log = logging.getLogger(__name__)

FORMAT = "retrieval-explorer/concept"
VERSION = 1
SUFFIX = ".concept.json"
#: a concept name: letters, digits, spaces and . _ - + ( ) , (:func:`check_name`), at most this long
MAX_NAME = 80
#: the largest concept file read (a concept lists paths: thousands of marks are a few hundred kB)
MAX_BYTES = 32 * 1024 * 1024


class ConceptError(ValueError):
    """A concept that cannot be saved or read; the message says why and what to do."""


def concepts_dir() -> Path:
    """Where concepts are saved: ``<data home>/concepts`` (engine.vocabulary.data_home)."""
    return data_home() / "concepts"


def check_name(name: str) -> str:
    """The concept name, stripped, when it is valid (1-80 letters, digits, spaces and . _ - + ( ) ,, not
    starting with a dot): a file name on every platform. Raises ConceptError naming the fix."""
    if not isinstance(name, str):
        raise ConceptError(f"a concept name must be text, got {type(name).__name__}")
    n = name.strip()
    if not n:
        raise ConceptError("give the concept a name (letters, digits, spaces, . _ - + ( ) ,)")
    if len(n) > MAX_NAME:
        raise ConceptError(f"the concept name is {len(n)} characters long; use at most {MAX_NAME}")
    if n.startswith(".") or not re.fullmatch(r"[\w .+(),-]+", n) or n.endswith("."):
        bad = sorted({c for c in n if not re.fullmatch(r"[\w .+(),-]", c)})
        what = f"the character(s) {' '.join(repr(c) for c in bad)}" if bad else "a leading or trailing dot"
        raise ConceptError(f"the concept name {n!r} has {what}: use letters, digits, spaces and . _ - + ( ) ,")
    return n


@dataclass
class Concept:
    """``name``; ``folder``: the image folder it was made in (absolute; None: unknown); ``queries``,
    ``positives``, ``negatives``: absolute image paths; ``settings``: the feedback settings that rank it;
    ``created`` / ``modified``: ISO times."""

    name: str
    queries: list[str] = field(default_factory=list)
    positives: list[str] = field(default_factory=list)
    negatives: list[str] = field(default_factory=list)
    folder: str | None = None
    settings: FeedbackSettings = field(default_factory=FeedbackSettings)
    created: str = ""
    modified: str = ""

    def __post_init__(self) -> None:
        self.name = check_name(self.name)
        self.positives = _unique(self.positives)
        self.negatives = [p for p in _unique(self.negatives) if p not in set(self.positives)]
        self.queries = _unique(self.queries)

    @property
    def images(self) -> list[str]:
        """Every image of the concept: the queries, then the positives (no repeats)."""
        return _unique(self.queries + self.positives)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "name": self.name, "folder": self.folder,
                "queries": list(self.queries), "positives": list(self.positives),
                "negatives": list(self.negatives), "settings": asdict(self.settings),
                "created": self.created, "modified": self.modified}

    @classmethod
    def from_json(cls, obj: Any, source: str = "the concept") -> Concept:
        """A concept from its JSON object; ConceptError naming what is wrong."""
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise ConceptError(f"{source} is not a saved concept (no 'format': {FORMAT!r})")
        if obj.get("version") != VERSION:
            raise ConceptError(f"{source} is a concept of version {obj.get('version')!r}; this program reads "
                               f"version {VERSION}")
        lists = {}
        for key in ("queries", "positives", "negatives"):
            v = obj.get(key, [])
            if not isinstance(v, list) or not all(isinstance(p, str) and p for p in v):
                raise ConceptError(f"{source}: {key!r} must be a list of image paths")
            lists[key] = v
        settings = obj.get("settings") or {}
        if not isinstance(settings, dict):
            raise ConceptError(f"{source}: 'settings' must be a mapping")
        known = set(FeedbackSettings.__dataclass_fields__)
        try:
            fs = FeedbackSettings(**{k: v for k, v in settings.items() if k in known})
        except (TypeError, ValueError) as exc:
            raise ConceptError(f"{source}: bad settings ({exc})") from exc
        folder = obj.get("folder")
        if folder is not None and not isinstance(folder, str):
            raise ConceptError(f"{source}: 'folder' must be a path or null")
        return cls(name=obj.get("name", ""), folder=folder, settings=fs,
                   created=str(obj.get("created", "")), modified=str(obj.get("modified", "")), **lists)


def _unique(paths: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(str(p) for p in paths))


def concept_path(name: str, folder: str | os.PathLike | None = None) -> Path:
    """The file of the concept ``name`` in ``folder`` (default :func:`concepts_dir`)."""
    return Path(folder or concepts_dir()) / (check_name(name) + SUFFIX)


def save_concept(concept: Concept, folder: str | os.PathLike | None = None, *, overwrite: bool = True) -> Path:
    """Write ``concept`` (atomically) and return its file; ``overwrite=False`` refuses an existing name."""
    if not concept.queries and not concept.positives:
        raise ConceptError(f"the concept {concept.name!r} has no query and no image marked +: mark at least one")
    path = concept_path(concept.name, folder)
    if not overwrite and path.exists():
        raise ConceptError(f"a concept named {concept.name!r} exists already: choose another name")
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    concept.created = concept.created or now
    concept.modified = now
    atomic_write_text(path, json.dumps(concept.to_json(), indent=1, ensure_ascii=False))
    return path


def read_concept_file(path: str | os.PathLike) -> Concept:
    """A concept from its file (any name); ConceptError / FileNotFoundError with the reason."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise ConceptError(f"{p}: {size:,} bytes is too large for a concept")
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except UnicodeDecodeError as exc:
        raise ConceptError(f"{p} is not a concept file (not UTF-8 text)") from exc
    except OSError as exc:
        raise ConceptError(f"cannot read {p}: {exc.strerror or exc}") from exc
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ConceptError(f"{p} is damaged (not valid JSON: {exc})") from exc
    return Concept.from_json(obj, str(p))


def load_concept(name_or_path: str | os.PathLike, folder: str | os.PathLike | None = None) -> Concept:
    """The concept saved as ``name_or_path`` (a name in ``folder``/:func:`concepts_dir`, or a file)."""
    s = str(name_or_path)
    if s.endswith(".json") and Path(s).expanduser().is_file():
        return read_concept_file(Path(s).expanduser())
    path = concept_path(s, folder)
    if not path.is_file():
        names = [c.name for c in list_concepts(folder)]
        raise ConceptError(f"no concept named {check_name(s)!r}" +
                           (f"; saved: {', '.join(names[:20])}" if names else "; none is saved yet (mark results "
                            "+/- and save them as a concept first)"))
    return read_concept_file(path)


def list_concepts(folder: str | os.PathLike | None = None) -> list[Concept]:
    """Every readable concept in ``folder`` (default :func:`concepts_dir`), by name; damaged files are logged
    and left out."""
    root = Path(folder or concepts_dir())
    out = []
    if not root.is_dir():
        return out
    for p in sorted(root.glob("*" + SUFFIX)):
        try:
            out.append(read_concept_file(p))
        except (ConceptError, OSError) as exc:
            log.warning("left out %s: %s", p, exc)
    return sorted(out, key=lambda c: c.name.lower())


def delete_concept(name: str, folder: str | os.PathLike | None = None) -> bool:
    """Remove the saved concept ``name``; False when there was none."""
    path = concept_path(name, folder)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def concept_csv(concept: Concept) -> str:
    """The concept as CSV text: a header ``path,mark`` and one row per image (mark: query, +, -)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "mark"])
    for mark, paths in (("query", concept.queries), ("+", concept.positives), ("-", concept.negatives)):
        for p in paths:
            w.writerow([p, mark])
    return buf.getvalue()


def export_csv(concept: Concept, path: str | os.PathLike) -> Path:
    """Write :func:`concept_csv` to ``path``, an output the user named (engine.atomic.write_target: a file
    atomically, a FIFO or device written through, never replaced)."""
    write_target(path, concept_csv(concept))
    return Path(path)


# --- training on concepts --------------------------------------------------------------------------
@dataclass
class ConceptSplit:
    """A training set made of concepts: ``root`` (the folder every image lies under), the trainer's split
    ``{"train": [...], "val": [...], "labels": {path: concept}}`` (paths relative to root) and per-class counts."""

    root: str
    split: dict[str, Any]
    counts: dict[str, int]
    left_out: list[str]


def training_split(concepts: Sequence[Concept], *, val_share: float = 0.2, seed: int = 0,
                   negatives_class: bool | None = None) -> ConceptSplit:
    """The images of ``concepts`` as a labelled training set, one class per concept (its queries and its
    images marked +). With one concept (``negatives_class`` None) or ``negatives_class=True``, the images
    marked - of each concept form a class "not <name>" too, so that one concept is something to learn.
    Validation: ``val_share`` of every class's images (engine.training.data.split_images: at least 2, from
    classes of 4 or more), seeded; an image in two classes is left out of both. Missing files are left out (``left_out``).
    Raises ConceptError when fewer than 2 classes with 2 images remain."""
    from engine.training.data import split_images

    if not concepts:
        raise ConceptError("choose at least one saved concept to train on")
    if negatives_class is None:
        negatives_class = len(concepts) == 1
    classes: dict[str, list[str]] = {}
    for c in concepts:
        classes.setdefault(c.name, []).extend(c.images)
        if negatives_class and c.negatives:
            classes.setdefault(f"not {c.name}", []).extend(c.negatives)
    seen: dict[str, set[str]] = {}
    for name, paths in classes.items():
        for p in paths:
            seen.setdefault(p, set()).add(name)
    left_out = sorted(p for p, names in seen.items() if len(names) > 1)
    left_out += sorted(p for p in seen if len(seen[p]) == 1 and not Path(p).is_file())
    drop = set(left_out)
    classes = {n: [p for p in _unique(ps) if p not in drop] for n, ps in classes.items()}
    classes = {n: ps for n, ps in classes.items() if len(ps) >= 2}
    if len(classes) < 2:
        raise ConceptError("training needs at least 2 classes of 2 or more images: save a second concept, or "
                           "mark some results - in this one (they become the class 'not <name>')")
    everything = [p for ps in classes.values() for p in ps]
    root = Path(os.path.commonpath([str(Path(p).parent) for p in everything]))
    names = sorted(classes)
    rows = [(p, i) for i, n in enumerate(names) for p in classes[n]]
    _, val_idx = split_images([i for _, i in rows], val_share, seed)
    val = set(val_idx)
    rel = [Path(p).relative_to(root).as_posix() for p, _ in rows]
    split = {"train": [r for j, r in enumerate(rel) if j not in val],
             "val": [r for j, r in enumerate(rel) if j in val],
             "labels": {r: names[i] for r, (_, i) in zip(rel, rows, strict=True)},
             "concepts": [c.name for c in concepts]}
    return ConceptSplit(str(root), split, {n: len(ps) for n, ps in classes.items()}, left_out)


def write_training_split(split: ConceptSplit, path: str | os.PathLike | None = None) -> Path:
    """Write the split file the trainer reads (``--data ROOT --image-split FILE``); default
    ``<concepts dir>/training/<concept names>.split.json``."""
    if path is None:
        stem = "+".join(split.split["concepts"])[:120]
        path = concepts_dir() / "training" / f"{stem}.split.json"
    p = Path(path)
    atomic_write_text(p, json.dumps(split.split, indent=1, ensure_ascii=False))
    return p
