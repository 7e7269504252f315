"""Near-duplicate detection: precision and recall per kind of edit against the threshold, for every
descriptor of the index and for imagehash's pHash (the anchor), on edited cub100 images (issue 14).

The collection it builds (once, into --work):

- originals: ``--per-class`` images of every cub100 species (3 x 100 = 300 by default);
- their edits, one of each kind per original: ``jpeg`` (re-encoded at quality 50-90), ``resize``
  (30-80 % of the side), ``crop`` (up to 10 % of each side in all, at a random offset), ``rotate``
  (2-8 degrees either way, black corners), ``flip`` (mirrored left-right), ``colour`` (brightness,
  saturation and a channel cast of up to +-20 %), ``text`` (a caption in white on black outline);
- distinct images: every other photo of every species (``--negatives N``: only N per species), never
  edited: the hard negatives (the same kind of bird, another photo), at cub100's real density of about
  59 photos per species.

Scoring. A pair is a true duplicate when both images come from one original. cub100 itself holds copies
of some photos (CUB_COPIES, seen by eye): pairs between their images are left out of the count. For the
edit kind K the
collection is the originals, the distinct images and the edits of kind K; precision = the share of the
pairs scoring >= t that are true duplicates, recall = the share of (original, its K edit) pairs scoring
>= t. ``all``: every edit at once (an edit and another edit of the same original are duplicates too).
The species are split as cub100's class_split.json: the threshold is chosen on the 50 training species
(calibration) by the rule "the highest recall on 'all' at a threshold where every kind of edit has
precision >= 0.95", then reported on the 50 test species. pHash similarity is 1 - Hamming distance / 64.

Also: connected components against complete linkage at the chosen threshold (groups that join
different originals), and the time of engine.duplicates.find_duplicates on the collection.

    python benchmarks/duplicates.py --data ../shared/data/cub100 [--work DIR] [--per-class 3] [--negatives 6]

Markdown tables on stdout, progress on stderr. Extraction goes through `retrieval-explorer index` (all
five descriptors from one backbone pass, the fastest installed CPU runtime).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

#: pairs of cub100 photos that are copies of one picture already (the same photo twice, mirrored, cropped or
#: recoloured; one across two species), seen by eye among the unedited pairs any descriptor scores >= 0.92.
#: The benchmark leaves pairs between their images (and their edits) out of the count: they are neither
#: "distinct photos" nor planted copies. Two more pairs scored that high and were kept as distinct photos:
#: Indigo_Bunting 0029/0039 (two photos) and Black_capped_Vireo 0002/0022 (two frames of one sitting).
CUB_COPIES = (
    ("Pigeon_Guillemot/0028.jpg", "Pigeon_Guillemot/0043.jpg"),
    ("Bobolink/0026.jpg", "Bobolink/0045.jpg"),
    ("Bronzed_Cowbird/0058.jpg", "Bronzed_Cowbird/0004.jpg"),
    ("Hooded_Oriole/0014.jpg", "Hooded_Oriole/0042.jpg"),
    ("Summer_Tanager/0023.jpg", "Summer_Tanager/0020.jpg"),
    ("Black_capped_Vireo/0025.jpg", "Black_capped_Vireo/0012.jpg"),
    ("Golden_winged_Warbler/0049.jpg", "Golden_winged_Warbler/0022.jpg"),
    ("Red_cockaded_Woodpecker/0022.jpg", "Red_cockaded_Woodpecker/0011.jpg"),
    ("Le_Conte_Sparrow/0058.jpg", "Le_Conte_Sparrow/0036.jpg"),
    ("Cerulean_Warbler/0034.jpg", "Cerulean_Warbler/0000.jpg"),
    ("Chuck_will_Widow/0015.jpg", "Whip_poor_Will/0005.jpg"),
    ("Green_Kingfisher/0001.jpg", "Green_Kingfisher/0041.jpg"),
    ("Whip_poor_Will/0030.jpg", "Whip_poor_Will/0002.jpg"),
)
KINDS = ("jpeg", "resize", "crop", "rotate", "flip", "colour", "text")
DESCRIPTORS = ("spoc", "gem", "mac", "rmac", "fc")
TARGET_PRECISION = 0.95
#: thresholds tried: cosine similarity for the descriptors, 1 - bits / 64 for pHash (every bit count)
COSINE_GRID = np.round(np.arange(0.70, 1.0001, 0.01), 2)
PHASH_GRID = 1.0 - np.arange(24, -1, -1) / 64.0


def eprint(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


# --- the edited collection -------------------------------------------------------------------------
def edit(img, kind: str, rng: np.random.Generator):
    """(edited PIL image, save keyword arguments, a short description) of one edit."""
    from PIL import Image, ImageDraw, ImageEnhance, ImageFont

    w, h = img.size
    png: dict = {"format": "PNG"}
    if kind == "jpeg":
        q = int(rng.integers(50, 91))
        return img, {"format": "JPEG", "quality": q}, f"q{q}"
    if kind == "resize":
        f = float(rng.uniform(0.3, 0.8))
        size = (max(1, round(w * f)), max(1, round(h * f)))
        return img.resize(size, Image.Resampling.BICUBIC), png, f"{f:.2f}"
    if kind == "crop":
        fx, fy = float(rng.uniform(0.0, 0.1)), float(rng.uniform(0.0, 0.1))
        cw, ch = round(w * fx), round(h * fy)
        x0, y0 = int(rng.integers(0, cw + 1)), int(rng.integers(0, ch + 1))
        return img.crop((x0, y0, w - (cw - x0), h - (ch - y0))), png, f"{fx:.2f}x{fy:.2f}"
    if kind == "rotate":
        a = float(rng.uniform(2, 8)) * (1 if rng.random() < 0.5 else -1)
        return img.rotate(a, resample=Image.Resampling.BICUBIC), png, f"{a:+.1f}deg"
    if kind == "flip":
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), png, "lr"
    if kind == "colour":
        b, s = float(rng.uniform(0.8, 1.2)), float(rng.uniform(0.8, 1.2))
        gains = rng.uniform(0.8, 1.2, 3)
        out = ImageEnhance.Color(ImageEnhance.Brightness(img).enhance(b)).enhance(s)
        arr = np.clip(np.asarray(out, np.float32) * gains, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "RGB"), png, f"b{b:.2f} s{s:.2f} g{'/'.join(f'{g:.2f}' for g in gains)}"
    if kind == "text":
        out = img.copy()
        draw = ImageDraw.Draw(out)
        size = int(h * rng.uniform(0.08, 0.14))
        font = ImageFont.load_default(size=size)
        text = ["(c) 2024 J. Smith", "holiday 2023", "IMG_4512", "birdwatch.org"][int(rng.integers(0, 4))]
        x, y = int(rng.integers(2, max(3, w // 4))), int(rng.integers(2, max(3, h - size - 4)))
        draw.text((x, y), text, fill=(255, 255, 255), font=font, stroke_width=max(1, size // 12),
                  stroke_fill=(0, 0, 0))
        return out, png, f"'{text}' {size}px"
    raise ValueError(kind)


def build_set(data: Path, work: Path, per_class: int, negatives: int,
              seed: int = 0) -> tuple[Path, list[dict]]:
    """Write the collection into ``work/images/<species>/`` once; returns (folder, one record per image:
    relpath, species, source (original id or -1 for a distinct image), kind ('original', 'distinct' or an
    edit))."""
    from PIL import Image

    folder = work / f"set-{per_class}-{negatives}-{seed}"
    manifest = folder / "manifest.json"
    if manifest.is_file():
        return folder / "images", json.loads(manifest.read_text())
    rng = np.random.default_rng(seed)
    records: list[dict] = []
    species = sorted(p.name for p in (data / "images").iterdir() if p.is_dir())
    source = 0
    for s, name in enumerate(species):
        files = sorted((data / "images" / name).glob("*.jpg"))
        pick = rng.permutation(len(files))
        pick = pick[: per_class + negatives] if negatives >= 0 else pick
        out = folder / "images" / name
        out.mkdir(parents=True, exist_ok=True)
        for n, idx in enumerate(pick):
            src = files[int(idx)]
            img = Image.open(src).convert("RGB")
            if n >= per_class:
                dst = out / f"distinct_{src.stem}.jpg"
                dst.write_bytes(src.read_bytes())
                records.append({"relpath": f"{name}/{dst.name}", "species": name, "source": -1,
                                "kind": "distinct"})
                continue
            dst = out / f"orig{source:04d}_{src.stem}.jpg"
            dst.write_bytes(src.read_bytes())
            records.append({"relpath": f"{name}/{dst.name}", "species": name, "source": source,
                            "kind": "original"})
            for kind in KINDS:
                im, save, what = edit(img, kind, rng)
                ext = "jpg" if save["format"] == "JPEG" else "png"
                dst = out / f"orig{source:04d}_{kind}.{ext}"
                im.save(dst, **save)
                records.append({"relpath": f"{name}/{dst.name}", "species": name, "source": source,
                                "kind": kind,
                                "edit": what})
            source += 1
        if s % 10 == 0:
            eprint(f"edited images: species {s + 1}/{len(species)}")
    manifest.write_text(json.dumps(records))
    return folder / "images", records


# --- scores --------------------------------------------------------------------------------------
def index_and_load(folder: Path, cache: Path, relpaths: list[str]) -> dict[str, np.ndarray]:
    """Index ``folder`` with every descriptor (the CLI, in process) -> {descriptor: (N, D) in relpaths
    order}."""
    from engine.cli import main
    from engine.collection import Collection
    from engine.vocabulary import ModelSpec

    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = main(["index", str(folder), "--cache-dir", str(cache), "--json"])
    if code != 0:
        raise SystemExit(f"indexing failed ({code}): {out.getvalue()[-2000:]}")
    summary = json.loads(out.getvalue())
    eprint(f"indexed in {time.perf_counter() - t:.0f} s ({summary['extracted']} read, "
           f"runtime {summary['runtime']})")
    vectors = {}
    for d in DESCRIPTORS:
        c = Collection.open(folder, model_spec=ModelSpec(descriptor=d), cache_dir=cache)
        row = {p: i for i, p in enumerate(c.relpaths)}
        vectors[d] = c.vectors[[row[p] for p in relpaths]]
    return vectors


def phash_bits(folder: Path, relpaths: list[str]) -> np.ndarray:
    """pHash (64 bits) of every image -> (N,) uint64."""
    import imagehash
    from PIL import Image

    out = np.zeros(len(relpaths), np.uint64)
    for n, rel in enumerate(relpaths):
        with Image.open(folder / rel) as im:
            bits = imagehash.phash(im.convert("RGB")).hash.flatten()
        out[n] = np.uint64(int("".join("1" if b else "0" for b in bits), 2))
    return out


def cub_file(records: list[dict]) -> list[str]:
    """The cub100 photo each image comes from ('Species/NNNN.jpg')."""
    by_source = {r["source"]: r["relpath"].split("/")[1].split("_", 1)[1] for r in records
                 if r["kind"] == "original"}
    out = []
    for r in records:
        stem = r["relpath"].split("/")[1].split("_", 1)[1] if r["kind"] in ("original", "distinct") \
            else by_source[r["source"]]
        out.append(f"{r['species']}/{Path(stem).stem}.jpg")
    return out


def pair_table(sim: np.ndarray, floor: float,
               ignore: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upper-triangle pairs (a, b, score) of an (N, N) similarity matrix scoring >= floor, less the pairs
    whose ``a * N + b`` key is in ``ignore``."""
    a, b = np.nonzero(np.triu(sim >= floor, 1))
    if ignore is not None and ignore.size:
        keep = ~np.isin(a.astype(np.int64) * sim.shape[0] + b, ignore)
        a, b = a[keep], b[keep]
    return a, b, sim[a, b]


def copy_pair_keys(records: list[dict]) -> np.ndarray:
    """``a * N + b`` (a < b) of every pair of images made from two cub100 photos of CUB_COPIES."""
    files = cub_file(records)
    rows: dict[str, list[int]] = {}
    for n, f in enumerate(files):
        rows.setdefault(f, []).append(n)
    n_rec = len(records)
    keys = []
    for f, g in CUB_COPIES:
        for a in rows.get(f, []):
            for b in rows.get(g, []):
                keys.append(min(a, b) * n_rec + max(a, b))
    return np.array(sorted(keys), np.int64)


def metrics(records: list[dict], rows: np.ndarray, a: np.ndarray, b: np.ndarray, s: np.ndarray, kind: str,
            thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(precision (T,), recall (T,)) of edit ``kind`` ('all' for every edit) among ``rows`` (one half)."""
    kinds = np.array([r["kind"] for r in records])
    source = np.array([r["source"] for r in records])
    in_half = np.zeros(len(records), bool)
    in_half[rows] = True
    unedited = np.isin(kinds, ["original", "distinct"])
    member = in_half & (unedited | ((kinds == kind) if kind != "all" else ~unedited))
    keep = member[a] & member[b]
    a, b, s = a[keep], b[keep], s[keep]
    true = (source[a] == source[b]) & (source[a] >= 0)
    n_src = np.bincount(source[member & (source >= 0)], minlength=source.max() + 1)
    n_true = int((n_src * (n_src - 1) // 2).sum())
    order = np.argsort(-s, kind="stable")
    s, true = s[order], true[order]
    tp_cum = np.concatenate([[0], np.cumsum(true)])
    n = np.searchsorted(-s, -(np.asarray(thresholds) - 1e-6), side="right")  # pairs scoring >= t
    tp = tp_cum[n]
    prec = np.where(n > 0, tp / np.maximum(n, 1), 1.0)
    rec = tp / n_true if n_true else np.full(len(thresholds), np.nan)
    return prec, rec


def min_precision(per_kind: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """(T,) the lowest precision over the edit kinds at each threshold, among the kinds the method finds
    at all there (recall > 0: pHash never finds a mirrored copy, and its precision on mirrors says nothing
    about its threshold)."""
    prec = np.stack([p for p, _ in per_kind])
    found = np.stack([r > 0 for _, r in per_kind])
    return np.where(found, prec, 1.0).min(0)


def choose(pmin: np.ndarray, rec_all: np.ndarray) -> int:
    """The rule: the highest recall on 'all' at a threshold where every edit kind has precision >=
    TARGET_PRECISION (the highest such precision when none reaches it; ties: the higher threshold)."""
    ok = np.flatnonzero(pmin >= TARGET_PRECISION)
    if ok.size == 0:
        return int(np.flatnonzero(pmin >= pmin.max() - 1e-12).max())
    best = rec_all[ok].max()
    return int(ok[rec_all[ok] >= best - 1e-12].max())


def recall_at_precision(prec: np.ndarray, rec: np.ndarray) -> float:
    ok = prec >= TARGET_PRECISION
    return float(rec[ok].max()) if ok.any() else 0.0


def group_purity(records: list[dict], rows: np.ndarray, a: np.ndarray, b: np.ndarray, s: np.ndarray,
                 threshold: float) -> dict[str, dict[str, float]]:
    """Both grouping rules of engine.duplicates at ``threshold`` on the half ``rows`` with every edit: groups,
    groups joining different originals (or a distinct image), and the pairwise precision/recall of 'same
    group'."""
    from engine.duplicates import group_rows

    source = np.array([r["source"] for r in records])
    keep = np.isin(a, rows) & np.isin(b, rows)
    a, b, s = a[keep], b[keep], s[keep]
    order = np.argsort(-s, kind="stable")
    a, b, s = a[order], b[order], s[order]
    n_src = np.bincount(source[rows][source[rows] >= 0])
    n_true = int((n_src * (n_src - 1) // 2).sum())
    out = {}
    for rule in ("components", "complete"):
        groups = group_rows(len(records), a, b, s, threshold, rule)
        mixed = sum(1 for g in groups if len(set(source[g].tolist())) > 1 or (source[g] < 0).any())
        pairs = sum(len(g) * (len(g) - 1) // 2 for g in groups)
        tp = 0
        for g in groups:
            src = source[g]
            for v in np.unique(src[src >= 0]):
                m = int((src == v).sum())
                tp += m * (m - 1) // 2
        largest = max((len(g) for g in groups), default=0)
        out[rule] = {"groups": len(groups), "mixed": mixed, "largest": largest,
                     "precision": tp / pairs if pairs else 1.0,
                     "recall": tp / n_true if n_true else float("nan")}
    return out


# --- main ----------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/cub100")
    ap.add_argument("--work", type=Path, default=None,
                    help="where the edited images and their index are kept "
                    "(default: a folder under the system's temporary folder, reused by later runs)")
    ap.add_argument("--per-class", type=int, default=3, help="originals per species (default 3)")
    ap.add_argument("--negatives", type=int, default=-1,
                    help="distinct, unedited photos per species (default -1: all the others)")
    args = ap.parse_args()
    start = time.perf_counter()
    work = args.work or Path(tempfile.gettempdir()) / "retrieval-explorer-bench-duplicates"
    folder, records = build_set(args.data, work, args.per_class, args.negatives)
    relpaths = [r["relpath"] for r in records]
    split = json.loads((args.data / "class_split.json").read_text())
    train = set(split["train_classes"])
    halves = {"calibration": np.array([n for n, r in enumerate(records) if r["species"] in train]),
              "test": np.array([n for n, r in enumerate(records) if r["species"] not in train])}
    vectors = index_and_load(folder, folder.parent / "cache", relpaths)
    t = time.perf_counter()
    bits = phash_bits(folder, relpaths)
    phash_s = time.perf_counter() - t
    eprint(f"pHash of {len(bits)} images in {phash_s:.1f} s")

    methods = [*DESCRIPTORS, "phash"]
    grids = {m: PHASH_GRID if m == "phash" else COSINE_GRID for m in methods}
    ignore = copy_pair_keys(records)
    pairs = {}
    for m in methods:  # one (N, N) matrix at a time
        if m == "phash":
            sim = 1.0 - np.bitwise_count(bits[:, None] ^ bits[None, :]).astype(np.float32) / 64.0
        else:
            sim = vectors[m] @ vectors[m].T
        pairs[m] = pair_table(sim, float(grids[m][0]) - 1e-6, ignore)
        del sim
    kinds = [*KINDS, "all"]
    table = {(m, h, k): metrics(records, halves[h], *pairs[m], k, grids[m]) for m in methods for h in halves
             for k in kinds}
    pmin = {(m, h): min_precision([table[(m, h, k)] for k in KINDS]) for m in methods for h in halves}

    n_orig = sum(r["kind"] == "original" for r in records)
    n_dist = sum(r["kind"] == "distinct" for r in records)
    print(f"## Near-duplicates: {len(records):,} images ({n_orig} cub100 originals, "
          f"{n_orig * len(KINDS)} edits, "
          f"{n_dist:,} other photos of the same species), EfficientNet-Lite0 ImageNet\n")
    load = os.getloadavg()
    print(f"Machine: {os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
          f"(1 / 5 / 15 min) at the end of extraction.\n")

    chosen = {m: choose(pmin[(m, "calibration")], table[(m, "calibration", "all")][1]) for m in methods}

    def shown(m: str, t: float) -> str:
        return f"{t:.2f}" if m != "phash" else f"{t:.3f} (<= {round((1 - t) * 64)} bits)"

    print("### Chosen threshold per method and its precision / recall on the test species\n")
    print("Rule, on the 50 calibration species: the highest recall on 'all' at a threshold where every kind "
          f"of "
          f"edit has precision >= {TARGET_PRECISION} (kinds a method never finds left out of that minimum). "
          "calib P: that minimum; calib R: recall on 'all'. Test cells: precision / recall; **bold**: both "
          f">= {TARGET_PRECISION}.\n")
    print("| method | threshold | calib P | calib R | " + " | ".join(f"test {k}" for k in kinds) + " |")
    print("|---|---|---|---|" + "---|" * len(kinds))
    for m in methods:
        c = chosen[m]
        grid = grids[m]
        pc, rc = pmin[(m, "calibration")], table[(m, "calibration", "all")][1]
        cells = []
        for k in kinds:
            p, r = table[(m, "test", k)]
            cell = f"{p[c]:.3f} / {r[c]:.3f}"
            cells.append(f"**{cell}**" if min(p[c], r[c]) >= TARGET_PRECISION else cell)
        print(f"| {m} | {shown(m, grid[c])} | {pc[c]:.3f} | {rc[c]:.3f} | " + " | ".join(cells) + " |")

    print(f"\n### Recall at precision >= {TARGET_PRECISION}, the descriptors against pHash at equal "
          "precision (test species; the best threshold of each cell, an upper bound a single threshold does "
          "not reach)\n")
    print("| method | " + " | ".join(kinds) + " |")
    print("|---|" + "---|" * len(kinds))
    for m in methods:
        cells = [f"{recall_at_precision(*table[(m, 'test', k)]):.3f}" for k in kinds]
        print(f"| {m} | " + " | ".join(cells) + " |")

    for m in methods:
        grid = grids[m]
        show = [x for x, t in enumerate(grid) if (m == "phash" and t >= 1 - 20 / 64)
                or (m != "phash" and t >= 0.70 and round(t * 100) % 2 == 0)]
        print(f"\n### {m}: precision / recall per edit against the threshold (test species)\n")
        print("| threshold | " + " | ".join(kinds) + " |")
        print("|---|" + "---|" * len(kinds))
        for x in show:
            cells = []
            for k in kinds:
                p, r = table[(m, "test", k)]
                cells.append(f"{p[x]:.2f} / {r[x]:.2f}")
            print(f"| {shown(m, grid[x])} | " + " | ".join(cells) + " |")

    print("\n### Grouping (test species, every edit): connected components against complete linkage, at the "
          "chosen threshold and below it\n")
    print("| method | threshold | rule | groups | groups mixing originals | largest | pair precision | "
          "pair recall |")
    print("|---|---|---|---|---|---|---|---|")
    for m in ("spoc", "mac", "phash"):
        c = chosen[m]
        for x in sorted({max(0, c - 4), max(0, c - 2), c}) if m != "phash" else sorted({max(0, c - 2), c}):
            thr = float(grids[m][x])
            for rule, g in group_purity(records, halves["test"], *pairs[m], thr - 1e-6).items():
                print(f"| {m} | {shown(m, thr)} | {rule} | {g['groups']} | {g['mixed']} | {g['largest']} | "
                      f"{g['precision']:.3f} | {g['recall']:.3f} |")

    from engine.collection import Collection
    from engine.duplicates import find_duplicates
    from engine.vocabulary import ModelSpec

    c = Collection.open(folder, model_spec=ModelSpec(descriptor="spoc"), cache_dir=folder.parent / "cache")
    thr = float(COSINE_GRID[chosen["spoc"]])
    t = time.perf_counter()
    dup = find_duplicates(c, threshold=thr)
    search_s = time.perf_counter() - t
    t = time.perf_counter()
    for v in np.linspace(dup.pairs.floor, 1.0, 20):
        dup.groups(float(v))
    regroup_ms = (time.perf_counter() - t) / 20 * 1000
    print("\nDefault thresholds (engine.duplicates.DEFAULT_THRESHOLDS): "
          + ", ".join(f'"{m}": {COSINE_GRID[chosen[m]]:.2f}' for m in DESCRIPTORS))
    print(f"\nengine.duplicates on this collection ({len(c):,} images, spoc): search and headers "
          f"{search_s:.2f} s ({'exact' if dup.pairs.exact else 'HNSW'}, {dup.pairs.queries} index calls, "
          f"{len(dup.pairs):,} pairs >= {dup.pairs.floor:.2f}); regrouping {regroup_ms:.1f} ms per "
          "threshold. "
          f"pHash of all images: {phash_s:.1f} s. Whole run: {time.perf_counter() - start:.0f} s.")


if __name__ == "__main__":
    main()
