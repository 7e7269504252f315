"""Split files (which images are queries, which form the retrieval set) and image labels.

A split file is JSON or a pickle of ``{"query": [relative paths], "retrieval": [relative paths]}``.
Pickles are read through a restricted unpickler that can build only plain containers and strings:
a pickle that names any callable (``os.system`` in ``__reduce__``, a class, ...) is refused before
anything runs.

Labels: the parent folder's name by default, or from a labels file: ``relative/path label`` lines, a
JSON mapping ``{"relative/path": "label"}``, or the CUB layout (``image_class_labels.txt`` with
``images.txt`` and, when present, ``classes.txt`` beside it).
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from engine.images import label_of

log = logging.getLogger(__name__)

SPLIT_KEYS = ("query", "retrieval")

# the only globals a split pickle may name (protocol 0-1 pickles of containers may reference them)
_SAFE_GLOBALS = {("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "str"),
                 ("__builtin__", "dict"), ("__builtin__", "list"), ("__builtin__", "tuple"),
                 ("__builtin__", "unicode"), ("__builtin__", "str")}


class SplitFileError(ValueError):
    """A split or labels file that cannot be used; the message says why."""


class _Refused(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            import builtins

            return getattr(builtins, {"unicode": "str"}.get(name, name))
        raise _Refused(
            f"refused to load '{module}.{name}': a split pickle may only contain dicts, lists, tuples and "
            "strings (this file would run or build other objects)"
        )


def safe_unpickle(data: bytes) -> Any:
    """Unpickle ``data`` allowing only dict/list/tuple/str (and plain scalars); raises SplitFileError."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except _Refused as exc:
        raise SplitFileError(str(exc)) from exc
    except Exception as exc:  # truncated or garbage data
        raise SplitFileError(f"not a valid pickle ({type(exc).__name__}: {exc})") from exc


def _short_repr(value: Any, limit: int = 80) -> str:
    """repr(value) cut to ``limit`` characters; a structure too deep to print says so."""
    try:
        text = repr(value)
    except RecursionError:
        return f"<a {type(value).__name__} nested too deeply to print>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _validate_split(obj: Any, source: str) -> dict[str, list[str]]:
    if not isinstance(obj, dict):
        raise SplitFileError(f"{source}: a split must be a mapping with keys 'query' and 'retrieval', "
                             f"got {type(obj).__name__}")
    missing = [k for k in SPLIT_KEYS if k not in obj]
    if missing:
        raise SplitFileError(f"{source}: missing key(s) {', '.join(repr(k) for k in missing)} "
                             f"(found: {', '.join(repr(k) for k in obj) or 'none'})")
    out: dict[str, list[str]] = {}
    for key in SPLIT_KEYS:
        value = obj[key]
        if not isinstance(value, (list, tuple)):
            raise SplitFileError(f"{source}: {key!r} must be a list of paths, got {type(value).__name__}")
        bad = [i for i, v in enumerate(value) if not isinstance(v, str) or not v.strip()]
        if bad:
            raise SplitFileError(f"{source}: {key!r} entry {bad[0]} is not a non-empty string: "
                                 f"{_short_repr(value[bad[0]])}")
        if not value:
            raise SplitFileError(f"{source}: {key!r} is empty")
        if len(set(value)) != len(value):
            raise SplitFileError(f"{source}: {key!r} lists {len(value) - len(set(value))} path(s) twice")
        out[key] = list(value)
    overlap = set(out["query"]) & set(out["retrieval"])
    if overlap:
        log.warning("%s: %d image(s) are both query and retrieval, e.g. %s", source, len(overlap),
                    sorted(overlap)[0])
    return out


def load_split(path: str | os.PathLike, root: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """Read a split file -> {"query": [paths], "retrieval": [paths]} (paths as written, relative to the
    image root). JSON (by content) or a restricted pickle; raises SplitFileError / FileNotFoundError.
    With ``root``, every entry must stay inside it (see :func:`check_inside_root`)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"split file not found: {p}")
    data = p.read_bytes()
    if not data:
        raise SplitFileError(f"{p}: empty file")
    stripped = data.lstrip()
    try:
        if stripped[:1] in (b"{", b"["):
            try:
                obj = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise SplitFileError(f"{p}: invalid JSON ({exc})") from exc
        elif data[:1] == b"\x80" or p.suffix.lower() in (".pkl", ".pickle", ".p"):
            try:
                obj = safe_unpickle(data)
            except SplitFileError as exc:
                raise SplitFileError(f"{p}: {exc}") from exc
        else:
            raise SplitFileError(f"{p}: neither JSON nor a pickle")
        split = _validate_split(obj, str(p))
    except RecursionError as exc:
        raise SplitFileError(f"{p}: nested too deeply to read (a split is a mapping of two flat lists of "
                             "paths)") from exc
    if root is not None:
        for key in SPLIT_KEYS:
            check_inside_root(split[key], root, str(p))
    return split


def check_inside_root(entries: Sequence[str], root: str | os.PathLike, source: str = "the split") -> None:
    """Refuse (SplitFileError naming the entry) any entry that is an absolute path or whose ``..`` parts
    lead out of ``root``. The check is on the written path: a symbolic link inside the root (a class
    folder linked from elsewhere) is allowed."""
    for entry in entries:
        posix = str(entry).replace("\\", "/")
        if posix.startswith("/") or PureWindowsPath(str(entry)).drive or PureWindowsPath(str(entry)).root:
            raise SplitFileError(f"{source}: the entry {entry!r} is an absolute path; split entries must be "
                                 f"relative to the image root {root}")
        depth = 0
        for part in PurePosixPath(posix).parts:
            if part == "..":
                depth -= 1
                if depth < 0:
                    raise SplitFileError(f"{source}: the entry {entry!r} points outside the image root {root} "
                                         "(through '..'); split entries must be inside the root")
            elif part not in (".", ""):
                depth += 1


def resolve_split(split: dict[str, Sequence[str]], root: str | os.PathLike,
                  source: str = "the split") -> dict[str, list[Path]]:
    """{"query": [root / entry], "retrieval": [...]} after :func:`check_inside_root` on every entry;
    keys other than the split's two are left out."""
    root_path = Path(root)
    out: dict[str, list[Path]] = {}
    for key in SPLIT_KEYS:
        if key in split:
            check_inside_root(split[key], root, source)
            out[key] = [root_path / entry for entry in split[key]]
    return out


# --- labels ---------------------------------------------------------------------------------------
def _rel_key(path: str | os.PathLike, root: Path) -> str:
    p = Path(path)
    if p.is_absolute():
        try:
            p = p.relative_to(root)
        except ValueError:
            try:
                p = p.resolve().relative_to(root.resolve())
            except ValueError:
                return PurePosixPath(p.as_posix()).as_posix()
    return PurePosixPath(p.as_posix()).as_posix()


def _read_pairs(lines: Sequence[str], source: str, sep: str | None) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for n, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [s.strip() for s in line.split(sep, 1)] if sep else line.rsplit(None, 1)
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise SplitFileError(f"{source}:{n}: expected 'path label', got {line!r}")
        mapping[parts[0]] = parts[1]
    return mapping


def _read_cub(labels_file: Path) -> dict[str, str]:
    folder = labels_file.parent
    images_txt = folder / "images.txt"
    if not images_txt.is_file():
        raise SplitFileError(f"{labels_file}: a CUB-style labels file needs images.txt beside it")
    ids_to_path = _read_pairs(images_txt.read_text().splitlines(), str(images_txt), ",")
    ids_to_class = _read_pairs(labels_file.read_text().splitlines(), str(labels_file), ",")
    names: dict[str, str] = {}
    classes_txt = folder / "classes.txt"
    if classes_txt.is_file():
        names = _read_pairs(classes_txt.read_text().splitlines(), str(classes_txt), ",")
    out = {}
    for image_id, rel in ids_to_path.items():
        if image_id not in ids_to_class:
            raise SplitFileError(f"{labels_file}: no class for image id {image_id} ({rel})")
        cls = ids_to_class[image_id]
        out[rel] = names.get(cls, cls)
    return out


def read_labels_file(labels_file: str | os.PathLike) -> dict[str, str]:
    """{relative path: label} from a ``path label`` text file, a JSON mapping, or CUB's
    image_class_labels.txt (+ images.txt, classes.txt beside it)."""
    p = Path(labels_file)
    if not p.is_file():
        raise FileNotFoundError(f"labels file not found: {p}")
    text = p.read_text(encoding="utf-8")
    if p.name == "image_class_labels.txt":
        return _read_cub(p)
    if text.lstrip().startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SplitFileError(f"{p}: invalid JSON ({exc})") from exc
        if not all(isinstance(k, str) and isinstance(v, (str, int)) for k, v in obj.items()):
            raise SplitFileError(f"{p}: a JSON labels file must map paths (strings) to labels")
        return {k: str(v) for k, v in obj.items()}
    return _read_pairs(text.splitlines(), str(p), None)


def labels_for(paths: Sequence[str | os.PathLike], root: str | os.PathLike,
               labels_file: str | os.PathLike | None = None) -> list[str]:
    """One label per path: engine.images.label_of (the name of the folder that holds the image; '' for an
    image directly in ``root``), or the entry of ``labels_file`` for the path
    relative to ``root`` (a mapping's keys may also be relative to a sub-folder of root, e.g. CUB's
    images.txt is relative to root/images). Raises SplitFileError naming the paths without a label."""
    root = Path(root)
    if labels_file is None:
        return [label_of(_rel_key(p, root)) or "" for p in paths]
    mapping = {PurePosixPath(k).as_posix(): v for k, v in read_labels_file(labels_file).items()}
    out: list[str] = []
    missing: list[str] = []
    for p in paths:
        key = _rel_key(p, root)
        label = mapping.get(key)
        parts = PurePosixPath(key).parts
        i = 1
        while label is None and i < len(parts):  # keys relative to a sub-folder of root
            label = mapping.get(PurePosixPath(*parts[i:]).as_posix())
            i += 1
        if label is None:
            missing.append(key)
            out.append("")
        else:
            out.append(label)
    if missing:
        raise SplitFileError(f"{labels_file}: no label for {len(missing)} image(s), e.g. {', '.join(missing[:3])}")
    return out
