"""Gallery export: HTML parses and embeds every image, CSV rows, PNG size, split export."""

from __future__ import annotations

import base64
import csv
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from engine.callbacks import Cancelled
from engine.export import (
    GalleryHit,
    QueryGallery,
    export_contact_sheet,
    export_csv,
    export_gallery,
    export_html,
    export_split,
    make_gallery,
    render_contact_sheet,
)


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.figures, self.stack = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        if tag == "figure":
            self.figures.append(a)


def _gallery(root: Path) -> QueryGallery:
    paths = sorted(root.rglob("*.jpg"))
    query = paths[0]
    hits = [{"path": str(p), "score": 1.0 - 0.1 * i, "rank": i + 1, "label": p.parent.name}
            for i, p in enumerate(paths[1:6])]
    return make_gallery(query, hits, query.parent.name)


def test_html_is_self_contained_and_lists_every_hit(image_folder, tmp_path):
    g = _gallery(image_folder(n_classes=2, per_class=3))
    out = export_html([g], tmp_path / "r.html", {"model": "m0", "descriptor": "rmac", "index": "hnsw"})
    text = out.read_text(encoding="utf-8")
    p = _Collect()
    p.feed(text)
    p.close()
    assert len(p.imgs) == 1 + len(g.hits)  # query + every result
    for img in p.imgs:  # embedded, decodable JPEGs; no file references
        assert img["src"].startswith("data:image/jpeg;base64,")
        Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1]))).verify()
    results = [f for f in p.figures if "result" in f.get("class", "")]
    assert [int(f["data-rank"]) for f in results] == [1, 2, 3, 4, 5]
    assert [float(f["data-score"]) for f in results] == pytest.approx([h.score for h in g.hits])
    for h in g.hits:
        assert f"{h.score:.4f}" in text and Path(h.path).name in text
    # marks: hand-worked from the folder labels (class_00 has 2 more images, then class_01)
    marks = g.marks()
    assert marks == [True, True, False, False, False]
    assert sum("hit" in f["class"].split() for f in results) == 2
    assert "precision@5 = 0.400" in text
    for word in ("m0", "rmac", "hnsw", "date"):
        assert word in text


def test_csv_rows_match_hits(image_folder, tmp_path):
    g = _gallery(image_folder(n_classes=2, per_class=3))
    out = export_csv([g, g], tmp_path / "r.csv", {"model": "m0"})
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert len(rows) == 2 * len(g.hits)
    assert [int(r["rank"]) for r in rows[:5]] == [1, 2, 3, 4, 5]
    assert [float(r["score"]) for r in rows[:5]] == pytest.approx([1.0, 0.9, 0.8, 0.7, 0.6])
    assert [r["hit"] for r in rows[:5]] == ["1", "1", "0", "0", "0"]
    assert all(r["model"] == "m0" for r in rows)


def test_png_contact_sheet_is_a_grid_with_a_header(image_folder, tmp_path):
    root = image_folder(n_classes=2, per_class=6)
    paths = sorted(root.rglob("*.jpg"))
    hits = [{"path": str(p), "score": 0.9 - 0.01 * i, "rank": i + 1, "label": p.parent.name}
            for i, p in enumerate(paths[1:12])]
    g = make_gallery(paths[0], hits, paths[0].parent.name)
    out = export_contact_sheet([g], tmp_path / "r.png", thumb_size=64)
    im = Image.open(out).convert("RGB")
    # 11 hits in rows of 5 under a header: a grid, not one long strip
    assert im.width < 2 * im.height, im.size
    pad, cell_w, cell_h, head_h = 8, 72, 64 + 2 * 15 + 8, 64 + 16
    assert im.height == pad + head_h + 3 * cell_h + pad
    # the query's blue frame in the header, then the first row: hits (green) and misses (red)
    assert im.getpixel((pad + 1, pad + 1)) == (21, 101, 192)
    row0 = pad + head_h + 1
    assert im.getpixel((pad + 1, row0)) == (46, 125, 50)
    assert im.getpixel((pad + 4 * cell_w + 1, row0)) == (46, 125, 50)  # paths[5]: class_00 too
    assert im.getpixel((pad + 1, row0 + cell_h)) == (198, 40, 40)  # the 6th hit: class_01
    # captions: the rank, a space, the score (drawn apart, not "#10.900"), under each tile
    from PIL import ImageDraw

    from engine.export import _font

    caption_strip = im.crop((pad, row0 + 64, pad + 64, row0 + 64 + 15))
    assert len(caption_strip.getcolors(maxcolors=4096) or []) > 2  # text is drawn there
    font = _font(12)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    assert draw.textlength("#1  0.900", font=font) > draw.textlength("#10.900", font=font) + 4
    # several queries: one block each
    two = render_contact_sheet([g, g], thumb_size=64)
    assert two.height == 2 * (im.height - pad) + pad


def test_unlabelled_and_unreadable(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    g = QueryGallery(str(bad), [GalleryHit(str(bad), 0.5, 1)])
    assert g.marks() == [None] and g.precision() is None
    files = export_gallery([g], tmp_path / "out.html", {}, ("html", "csv"))
    assert [f.name for f in files] == ["out.html", "out.csv"]
    with pytest.raises(ValueError, match="unknown export format"):
        export_gallery([g], tmp_path / "x", {}, ("pdf",))
    with pytest.raises(ValueError, match="needs a 'path'"):
        make_gallery("q.jpg", [{"score": 1.0}])


def test_split_export_runs_every_query(image_folder, tmp_path):
    root = image_folder(n_classes=2, per_class=3)
    rel = sorted(str(p.relative_to(root)) for p in root.rglob("*.jpg"))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"query": rel[:2], "retrieval": rel[2:]}))
    searched, progress = [], []

    def search(path, retrieval):
        searched.append(path)
        assert retrieval == {str(root / r) for r in rel[2:]}
        return [{"path": str(root / r), "score": 0.5, "rank": 1} for r in rel[2:4]]

    files = export_split(split, root, search, tmp_path / "g", {"model": "m"},
                         progress=lambda d, t, m: progress.append((d, t)))
    assert searched == [str(root / r) for r in rel[:2]]
    assert {f.suffix for f in files} == {".html", ".png", ".csv"}
    rows = list(csv.DictReader((tmp_path / "g.csv").open(encoding="utf-8")))
    assert len(rows) == 4 and rows[0]["queries"] == "2"
    assert (2, 2) in progress
    with pytest.raises(Cancelled):
        export_split(split, root, search, tmp_path / "h", should_stop=lambda: True)


def _run_with_timeout(fn, seconds: float, unblock=None):
    """fn() in a daemon thread: (finished, result or exception); ``unblock()`` frees a hung thread."""
    import threading

    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed back to the test
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    finished = not t.is_alive()
    if not finished and unblock is not None:
        unblock()
        t.join(10)
    if "error" in box:
        raise box["error"]
    return finished, box.get("result")


def test_a_fifo_among_the_results_is_skipped_not_waited_on(image_folder, tmp_path):
    import os

    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this system")
    root = image_folder(n_classes=2, per_class=2)
    rel = sorted(str(p.relative_to(root)) for p in root.rglob("*.jpg"))
    fifo = root / rel[0].split("/")[0] / "pipe.jpg"
    os.mkfifo(fifo)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"query": rel[:2], "retrieval": rel[2:] + [str(fifo.relative_to(root))]}))

    def search(path, retrieval):
        return [{"path": str(fifo), "score": 0.9, "rank": 1}, {"path": str(root / rel[3]), "score": 0.5, "rank": 2}]

    def unblock():  # a reader blocked on the pipe returns once a writer opens it
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)

    skipped: list = []
    finished, files = _run_with_timeout(
        lambda: export_split(split, root, search, tmp_path / "g", skipped=skipped), 60, unblock)
    assert finished, "the export waited on a named pipe"
    assert {f.suffix for f in files} == {".html", ".png", ".csv"}
    assert skipped == [(str(fifo), "not a regular file (a pipe, socket or device)")]
    page = (tmp_path / "g.html").read_text(encoding="utf-8")
    assert "could not be read" in page and str(fifo) in page


def test_unreadable_query_left_out_and_named(image_folder, tmp_path):
    from engine.images import ImageLoadError

    root = image_folder(n_classes=2, per_class=2)
    rel = sorted(str(p.relative_to(root)) for p in root.rglob("*.jpg"))

    def search(path, retrieval):
        if path.endswith(rel[0]):
            raise ImageLoadError(path, "corrupt image data (test)")
        return [{"path": str(root / rel[3]), "score": 0.5, "rank": 1}]

    skipped: list = []
    export_split({"query": rel[:2], "retrieval": rel[2:]}, root, search, tmp_path / "g", skipped=skipped,
                 formats=["csv"])
    assert skipped == [(str(root / rel[0]), "query left out: corrupt image data (test)")]
    rows = list(csv.DictReader((tmp_path / "g.csv").open(encoding="utf-8")))
    assert [r["query"] for r in rows] == [str(root / rel[1])]


def test_split_entries_outside_the_root_refused(image_folder, tmp_path):
    from engine.splits import SplitFileError

    root = image_folder(n_classes=1, per_class=2)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"query": ["../../etc/passwd"], "retrieval": ["a.jpg"]}))
    searched = []
    with pytest.raises(SplitFileError, match="outside the image root"):
        export_split(split, root, lambda p, r: searched.append(p) or [], tmp_path / "g")
    assert searched == []


def test_thumbnail_decodes_a_large_jpeg_at_reduced_scale(tmp_path, decoded_jpeg_sizes):
    # draft must come before the decode: the size the JPEG decoder works at is recorded

    from engine.export import thumbnail

    p = tmp_path / "big.jpg"
    img = Image.new("RGB", (3200, 2400), (30, 30, 30))
    img.paste((255, 255, 255), (0, 0, 400, 2400))  # a white stripe on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated a quarter turn clockwise: the stripe on top
    img.save(p, "JPEG", exif=exif)
    decoded = decoded_jpeg_sizes
    th = thumbnail(p, 160)
    assert th.size == (120, 160)  # portrait after the EXIF rotation
    assert decoded and max(w * h for w, h in decoded) <= (3200 // 8) * (2400 // 8)
    assert sum(th.getpixel((60, 5))) > 700 and sum(th.getpixel((60, 155))) < 150


def test_split_export_searches_the_retrieval_list_only(image_folder, tmp_path):
    """The gallery of a split is query -> retrieval list: other queries and images outside the list are
    never results, even when the search callable returns them, and the ranks close up."""
    root = image_folder(n_classes=2, per_class=4)
    rel = sorted(str(p.relative_to(root)) for p in root.rglob("*.jpg"))
    queries, retrieval = [rel[0], rel[4]], [r for r in rel if r not in (rel[0], rel[4], rel[7])]
    everything = [str(root / r) for r in rel]

    def search(path, among):  # a careless search: everything, the other query and rel[7] included
        return [{"path": p, "score": 1.0 - 0.1 * i, "rank": i + 1, "label": Path(p).parent.name}
                for i, p in enumerate(everything) if p != path]

    export_split({"query": queries, "retrieval": retrieval}, root, search, tmp_path / "g", formats=["csv"])
    rows = list(csv.DictReader((tmp_path / "g.csv").open(encoding="utf-8")))
    allowed = {str(root / r) for r in retrieval}
    assert rows and {r["path"] for r in rows} <= allowed
    for q in queries:
        mine = [r for r in rows if r["query"] == str(root / q)]
        assert [int(r["rank"]) for r in mine] == list(range(1, len(allowed) + 1))
    # 5 retrieval images: class_00/001-003 and class_01/001-002
    first = [r for r in rows if r["query"] == str(root / rel[0])]
    assert [r["hit"] for r in first] == ["1", "1", "1", "0", "0"]
    assert rows[0]["mean precision@k"] == f"{(3 / 5 + 2 / 5) / 2:.4f}"
    assert "retrieval list (5 images)" in rows[0]["searched"]


def test_exported_files_get_the_usual_permissions(image_folder, tmp_path):
    import os
    import stat

    from engine.atomic import atomic_write_bytes

    g = _gallery(image_folder(n_classes=2, per_class=3))
    old = os.umask(0o022)
    try:
        files = export_gallery([g], tmp_path / "out", {})
        atomic_write_bytes(tmp_path / "plain.bin", b"x")
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "private.bin", b"x")
    finally:
        os.umask(old)
    for f in [*files, tmp_path / "plain.bin"]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
    assert stat.S_IMODE((tmp_path / "private.bin").stat().st_mode) == 0o600
