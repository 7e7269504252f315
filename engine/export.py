"""Export result galleries (no Qt): a self-contained HTML page, a PNG contact sheet and a CSV.

A gallery is a list of :class:`QueryGallery` (one query image and its ranked hits). Hits may be
:class:`GalleryHit` objects, or any object / dict with ``path``, ``score``, ``rank`` and optionally
``label`` (e.g. the search engine's hits). Everything is usable headless::

    gallery = [QueryGallery(query_path="q.jpg", hits=hits, query_label="cat")]
    export_html(gallery, "out.html", settings={"model": "efficientnet_lite0", "descriptor": "spoc"})

For every query of a split file, :func:`export_split` runs a ``search(path, retrieval) -> hits``
callable over the split's retrieval list.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import io
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from engine.atomic import target_kind, write_target
from engine.callbacks import Cancelled, ProgressFn, ShouldStopFn, resolve
from engine.images import ImageLoadError, load_image
from engine.splits import load_split, resolve_split

log = logging.getLogger(__name__)

FORMATS = ("html", "png", "csv")


@dataclass
class GalleryHit:
    """One ranked result: ``rank`` starts at 1; ``score`` is the similarity (higher is closer)."""

    path: str
    score: float
    rank: int
    label: str | None = None


@dataclass
class QueryGallery:
    """A query image and its ranked hits. ``hit`` marks are derived from labels when both exist."""

    query_path: str
    hits: list[GalleryHit] = field(default_factory=list)
    query_label: str | None = None

    def marks(self) -> list[bool | None]:
        """Per hit: True (same label as the query), False (another label) or None (no labels)."""
        if self.query_label is None:
            return [None] * len(self.hits)
        return [None if h.label is None else h.label == self.query_label for h in self.hits]

    def precision(self) -> float | None:
        """Share of labelled hits with the query's label (precision@k), None without labels."""
        known = [m for m in self.marks() if m is not None]
        return sum(known) / len(known) if known else None


def as_hit(obj: Any, rank: int | None = None) -> GalleryHit:
    """Normalise a hit given as a GalleryHit, a mapping or an object with path/score/rank/label."""
    if isinstance(obj, GalleryHit):
        return obj
    get = obj.get if isinstance(obj, Mapping) else lambda k, d=None: getattr(obj, k, d)
    path = get("path")
    if path is None:
        raise ValueError(f"a hit needs a 'path': {obj!r}")
    label = get("label")
    return GalleryHit(path=str(path), score=float(get("score", 0.0)),
                      rank=int(get("rank", rank if rank is not None else 0)),
                      label=None if label is None else str(label))


def make_gallery(query_path: str | os.PathLike, hits: Iterable[Any], query_label: str | None = None) -> QueryGallery:
    """A QueryGallery from any hit objects (ranks default to their order, from 1)."""
    norm = [as_hit(h, rank=i + 1) for i, h in enumerate(hits)]
    for i, h in enumerate(norm):
        if h.rank <= 0:
            h.rank = i + 1
    return QueryGallery(str(query_path), norm, None if query_label is None else str(query_label))


# ---------------------------------------------------------------------------------------------
def _report(skipped: list[tuple[str, str]] | None, path: str | os.PathLike, reason: str) -> None:
    row = (str(path), reason)
    if skipped is not None and row not in skipped:
        log.warning("skipped %s: %s", path, reason)
        skipped.append(row)
    elif skipped is None:
        log.warning("skipped %s: %s", path, reason)


def thumbnail(path: str | os.PathLike, size: int, skipped: list[tuple[str, str]] | None = None) -> Image.Image:
    """The image fitted into size x size (RGB, aspect kept), read by the safe loader (JPEGs decoded at a
    reduced scale); a grey placeholder when it cannot be read, with ``(path, reason)`` appended to
    ``skipped`` (once per path and reason) and logged."""
    try:
        im = load_image(path, min_side=max(1, int(size)))
        im.thumbnail((size, size), Image.Resampling.BILINEAR)
        return im
    except ImageLoadError as exc:
        reason = exc.reason
    except Exception as exc:  # a thumbnail failure: the gallery still shows its slot
        reason = f"cannot make a thumbnail ({type(exc).__name__}: {exc})"
    _report(skipped, path, reason)
    return Image.new("RGB", (size, size), (128, 128, 128))


def jpeg_data_uri(path: str | os.PathLike, size: int = 160, quality: int = 82,
                  skipped: list[tuple[str, str]] | None = None) -> str:
    """A ``data:image/jpeg;base64,...`` URI of the image's thumbnail (for self-contained HTML)."""
    buf = io.BytesIO()
    thumbnail(path, size, skipped).save(buf, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _settings_rows(settings: Mapping[str, Any]) -> str:
    return "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in settings.items())


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;background:#fafafa;color:#222}
h1{font-size:22px} table.settings th{text-align:left;padding-right:12px;color:#555}
section.query{background:#fff;border:1px solid #ddd;border-radius:8px;padding:12px;margin:16px 0}
.row{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
figure{margin:0;width:var(--w);text-align:center;font-size:12px}
figure img{display:block;margin:auto;border:3px solid #ccc;border-radius:4px}
figure.q img{border-color:#1565c0} figure.hit img{border-color:#2e7d32} figure.miss img{border-color:#c62828}
figcaption{word-break:break-all} .score{font-weight:bold} .mark{font-weight:bold}
figure.hit .mark{color:#2e7d32} figure.miss .mark{color:#c62828}
"""


def render_html(galleries: Sequence[QueryGallery], settings: Mapping[str, Any] | None = None, *,
                thumb_size: int = 160, title: str = "Retrieval results",
                progress: ProgressFn | None = None, should_stop: ShouldStopFn | None = None,
                skipped: list[tuple[str, str]] | None = None) -> str:
    """The whole HTML page as a string; every image embedded as a base64 JPEG data URI. Images that
    cannot be read show a grey slot, are listed at the end of the page and appended to ``skipped``."""
    progress, should_stop = resolve(progress, should_stop)
    skipped = [] if skipped is None else skipped
    first_skip = len(skipped)
    settings = dict(settings or {})
    settings.setdefault("date", _dt.datetime.now().astimezone().isoformat(timespec="seconds"))
    parts = [
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<table class='settings'>{_settings_rows(settings)}</table>",
    ]
    style = f"style='--w:{thumb_size + 16}px'"
    total = len(galleries)
    for qi, g in enumerate(galleries):
        if should_stop():
            raise Cancelled("export cancelled")
        prec = g.precision()
        head = f"Query {qi + 1}: {html.escape(Path(g.query_path).name)}"
        if g.query_label is not None:
            head += f" — label {html.escape(g.query_label)}"
        if prec is not None:
            head += f" — precision@{len(g.hits)} = {prec:.3f}"
        parts.append(f"<section class='query'><h2>{head}</h2><div class='row'>")
        parts.append(f"<figure class='q' {style}><img src='{jpeg_data_uri(g.query_path, thumb_size, skipped=skipped)}' "
                     f"alt='query'><figcaption>query<br>{html.escape(g.query_path)}</figcaption></figure>")
        for h, mark in zip(g.hits, g.marks(), strict=True):
            cls = "" if mark is None else ("hit" if mark else "miss")
            sym = "" if mark is None else ("✓ " if mark else "✗ ")
            label = "" if h.label is None else f"<br>{html.escape(h.label)}"
            parts.append(
                f"<figure class='result {cls}' {style} data-rank='{h.rank}' data-score='{h.score:.6f}'>"
                f"<img src='{jpeg_data_uri(h.path, thumb_size, skipped=skipped)}' alt='rank {h.rank}'>"
                f"<figcaption><span class='mark'>{sym}</span>#{h.rank} "
                f"<span class='score'>{h.score:.4f}</span>{label}<br>{html.escape(Path(h.path).name)}"
                f"</figcaption></figure>")
        parts.append("</div></section>")
        progress(qi + 1, total, "html")
    if len(skipped) > first_skip:
        parts.append("<section class='skipped'><h2>Images that could not be read</h2><ul>")
        parts.extend(f"<li>{html.escape(p)}: {html.escape(why)}</li>" for p, why in skipped[first_skip:])
        parts.append("</ul></section>")
    parts.append("</body></html>\n")
    return "".join(parts)


def export_html(galleries: Sequence[QueryGallery], path: str | os.PathLike,
                settings: Mapping[str, Any] | None = None, **kwargs: Any) -> Path:
    """Write :func:`render_html` to ``path`` atomically; returns the path."""
    path = Path(path)
    write_target(path, render_html(galleries, settings, **kwargs))
    return path


def export_csv(galleries: Sequence[QueryGallery], path: str | os.PathLike,
               settings: Mapping[str, Any] | None = None) -> Path:
    """One row per (query, hit): query, query_label, rank, path, score, label, hit, + settings columns."""
    settings = dict(settings or {})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["query", "query_label", "rank", "path", "score", "label", "hit", *settings.keys()])
    extra = [str(v) for v in settings.values()]
    for g in galleries:
        for h, mark in zip(g.hits, g.marks(), strict=True):
            w.writerow([g.query_path, g.query_label or "", h.rank, h.path, f"{h.score:.6f}", h.label or "",
                        "" if mark is None else int(mark), *extra])
    path = Path(path)
    write_target(path, buf.getvalue())
    return path


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's own scalable font at ``size`` px (its bitmap fallback when FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """``text`` shortened in the middle with '…' until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    keep = len(text)
    while keep > 1:
        keep -= 1
        short = text[: (keep + 1) // 2] + "…" + text[len(text) - keep // 2:]
        if draw.textlength(short, font=font) <= width:
            return short
    return "…"


def render_contact_sheet(galleries: Sequence[QueryGallery], *, thumb_size: int = 128, columns: int = 5,
                         progress: ProgressFn | None = None, should_stop: ShouldStopFn | None = None,
                         skipped: list[tuple[str, str]] | None = None,
                         settings: Mapping[str, Any] | None = None) -> Image.Image:
    """One block per query: a header (the query image in a blue frame, its name, label and precision@k,
    and the ``settings``' model, descriptor and sizes when given),
    then its hits in a grid of ``columns`` (green frame = same label as the query, red = another, grey =
    unlabelled), each captioned "#rank score" and its file name. Unreadable images are grey and appended
    to ``skipped``."""
    progress, should_stop = resolve(progress, should_stop)
    if not galleries:
        raise ValueError("nothing to export: no queries")
    columns = max(1, min(int(columns), max(len(g.hits) for g in galleries) or 1))
    pad, line = 8, 15
    font, bold = _font(12), _font(15)
    cell_w, cell_h = thumb_size + pad, thumb_size + 2 * line + pad
    head_h = thumb_size + 2 * pad
    heights = [head_h + -(-len(g.hits) // columns) * cell_h + pad for g in galleries]
    width = pad + max(columns * cell_w, thumb_size + pad + 360)
    sheet = Image.new("RGB", (width, sum(heights) + pad), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)

    def tile(path: str, x0: int, y0: int, colour: tuple[int, int, int]) -> None:
        thumb = thumbnail(path, thumb_size - 6, skipped)
        draw.rectangle([x0, y0, x0 + thumb_size - 1, y0 + thumb_size - 1], outline=colour, width=3)
        sheet.paste(thumb, (x0 + 3 + (thumb_size - 6 - thumb.width) // 2,
                            y0 + 3 + (thumb_size - 6 - thumb.height) // 2))

    top = pad
    for qi, (g, block_h) in enumerate(zip(galleries, heights, strict=True)):
        if should_stop():
            raise Cancelled("export cancelled")
        if qi:
            draw.line([pad, top - pad // 2, width - pad, top - pad // 2], fill=(200, 200, 200), width=1)
        tile(g.query_path, pad, top, (21, 101, 192))
        tx, text_w = 2 * pad + thumb_size, width - 3 * pad - thumb_size
        draw.text((tx, top + 4), _fit(draw, f"Query {qi + 1}: {Path(g.query_path).name}", bold, text_w),
                  fill=(20, 20, 20), font=bold)
        facts = [f"label {g.query_label}" if g.query_label is not None else "no label"]
        prec = g.precision()
        if prec is not None:
            facts.append(f"precision@{len(g.hits)} = {prec:.3f}")
        draw.text((tx, top + 26), _fit(draw, " · ".join(facts), font, text_w), fill=(60, 60, 60), font=font)
        draw.text((tx, top + 44), _fit(draw, str(Path(g.query_path).parent), font, text_w), fill=(110, 110, 110),
                  font=font)
        searched = [f"{k} {settings[k]}" for k in ("model", "descriptor", "sizes") if settings and settings.get(k)]
        if searched:
            draw.text((tx, top + 62), _fit(draw, " · ".join(searched), font, text_w), fill=(60, 60, 60), font=font)
        for i, (h, mark) in enumerate(zip(g.hits, g.marks(), strict=True)):
            r, c = divmod(i, columns)
            x0, y0 = pad + c * cell_w, top + head_h + r * cell_h
            colour = (160, 160, 160) if mark is None else ((46, 125, 50) if mark else (198, 40, 40))
            tile(h.path, x0, y0, colour)
            draw.text((x0 + 2, y0 + thumb_size + 2), f"#{h.rank}  {h.score:.3f}", fill=(20, 20, 20), font=font)
            name = Path(h.path).name if h.label is None else f"{h.label}/{Path(h.path).name}"
            draw.text((x0 + 2, y0 + thumb_size + 2 + line), _fit(draw, name, font, thumb_size - 2),
                      fill=(90, 90, 90), font=font)
        top += block_h
        progress(qi + 1, len(galleries), "png")
    return sheet


def export_contact_sheet(galleries: Sequence[QueryGallery], path: str | os.PathLike, **kwargs: Any) -> Path:
    """Write :func:`render_contact_sheet` as a PNG atomically; returns the path."""
    buf = io.BytesIO()
    render_contact_sheet(galleries, **kwargs).save(buf, "PNG", optimize=True)
    path = Path(path)
    write_target(path, buf.getvalue())
    return path


def export_gallery(galleries: Sequence[QueryGallery], out_base: str | os.PathLike,
                   settings: Mapping[str, Any] | None = None, formats: Iterable[str] = FORMATS, *,
                   thumb_size: int = 160, progress: ProgressFn | None = None,
                   should_stop: ShouldStopFn | None = None,
                   skipped: list[tuple[str, str]] | None = None) -> list[Path]:
    """Write ``out_base`` + ``.html`` / ``.png`` / ``.csv`` for the chosen formats; returns the files.
    Every image that could not be read is appended to ``skipped`` as ``(path, reason)`` (and logged)."""
    formats = list(formats)
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown export format(s) {sorted(unknown)}: use {list(FORMATS)}")
    base = Path(out_base)
    if base.suffix.lower().lstrip(".") in FORMATS:
        base = base.with_suffix("")
    targets = {fmt: base.with_name(base.name + "." + fmt) for fmt in formats}
    for target in targets.values():  # a folder or a disk refused before any work
        target_kind(target)
    written = []
    for fmt, target in targets.items():
        if fmt == "html":
            written.append(export_html(galleries, target, settings, thumb_size=thumb_size,
                                       progress=progress, should_stop=should_stop, skipped=skipped))
        elif fmt == "png":
            written.append(export_contact_sheet(galleries, target, thumb_size=min(thumb_size, 128),
                                                progress=progress, should_stop=should_stop, skipped=skipped,
                                                settings=settings))
        else:
            written.append(export_csv(galleries, target, settings))
    return written


def _load_split(split: str | os.PathLike | Mapping[str, Sequence[str]]) -> dict:
    if isinstance(split, Mapping):
        return dict(split)
    return load_split(split)


def export_split(split: str | os.PathLike | Mapping[str, Sequence[str]], root: str | os.PathLike,
                 search: Callable[[str], Sequence[Any]], out_base: str | os.PathLike,
                 settings: Mapping[str, Any] | None = None, *, formats: Iterable[str] = FORMATS,
                 label_of: Callable[[str], str | None] | None = None, limit: int | None = None,
                 thumb_size: int = 128, progress: ProgressFn | None = None,
                 should_stop: ShouldStopFn | None = None,
                 skipped: list[tuple[str, str]] | None = None) -> list[Path]:
    """A gallery for every query of a split file (paths relative to ``root``; an entry outside the root
    is refused with engine.splits.SplitFileError).

    ``search(abs_path, retrieval)`` returns the ranked hits of one query among ``retrieval``, the split's
    retrieval list as a frozenset of absolute paths (None when the split has none: search everything);
    hits outside that list are dropped here too and the rest ranked again, so the mean precision@k is the
    split's query-to-retrieval figure. ``label_of(abs_path)`` gives a query's label (default: the parent
    folder's name). A query image that cannot be read (ImageLoadError) and every unreadable result image
    are left out or shown grey, and appended to ``skipped`` as ``(path, reason)``. Progress counts the
    searches, then the writing.
    """
    progress, should_stop = resolve(progress, should_stop)
    skipped = [] if skipped is None else skipped
    data = _load_split(split)
    if "query" not in data:
        raise ValueError("the split has no 'query' list")
    source = "the split" if isinstance(split, Mapping) else str(split)
    lists = resolve_split({k: data[k] for k in ("query", "retrieval") if k in data}, root, source)
    queries = [str(q) for q in lists["query"]][: limit or None]
    retrieval = frozenset(str(p) for p in lists["retrieval"]) if "retrieval" in lists else None
    if not queries:
        raise ValueError("the split's query list is empty")
    label_of = label_of or (lambda p: Path(p).parent.name)
    galleries = []
    first_skip = len(skipped)
    for i, q in enumerate(queries):
        if should_stop():
            raise Cancelled("export cancelled")
        try:
            hits = [as_hit(h, rank=j + 1) for j, h in enumerate(search(q, retrieval))]
        except ImageLoadError as exc:
            _report(skipped, q, f"query left out: {exc.reason}")
        else:
            if retrieval is not None:
                hits = [GalleryHit(h.path, h.score, j + 1, h.label)
                        for j, h in enumerate(h for h in hits if h.path in retrieval)]
            galleries.append(make_gallery(q, hits, label_of(q)))
        progress(i + 1, len(queries), f"searched {Path(q).name}")
    if not galleries:
        raise ValueError(f"none of the split's {len(queries)} query image(s) could be read; the first: "
                         f"{skipped[first_skip][0]}: {skipped[first_skip][1]}")
    settings = dict(settings or {})
    precs = [p for p in (g.precision() for g in galleries) if p is not None]
    if precs:
        settings["mean precision@k"] = f"{sum(precs) / len(precs):.4f}"
    settings["queries"] = len(galleries)
    settings["searched"] = ("the whole collection" if retrieval is None
                            else f"the split's retrieval list ({len(retrieval):,} images)")
    return export_gallery(galleries, out_base, settings, formats, thumb_size=thumb_size,
                          progress=progress, should_stop=should_stop, skipped=skipped)
