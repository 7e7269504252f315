"""engine.copycheck and the two tiers of engine.duplicates (issue 29): an edited copy is verified, another
picture of similar content is not; the keep-best rule never keeps an upscaled, re-encoded or cropped copy;
'not copies' and 'keep all' survive reindexing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from engine import copycheck
from engine.collection import Collection
from engine.copycheck import (
    DEFAULT_RULE,
    RESAMPLING_PEAK,
    Checker,
    _grey_full,
    is_copy,
    jpeg_blocking,
    load_evidence,
    locality_order,
    reencoded_from,
    resampling_peak,
    save_evidence,
    upscaled_from,
    verify_pairs,
)
from engine.duplicates import BestRule, Decisions, find_duplicates
from tests.test_duplicates import SPEC, TinyImage


def scene(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A generated photo-like picture: a textured background and 40 random shapes. Two seeds give two
    pictures of the same kind of content (the same statistics, nothing in common)."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.normal(128, 20, (h // 8, w // 8, 3))
    arr = np.kron(base, np.ones((8, 8, 1)))[:h, :w] + rng.normal(0, 8, (h, w, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(40):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(6, 30))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = int(rng.integers(0, 3))
        if shape == 0:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        elif shape == 1:
            draw.rectangle((x - r, y - r // 2, x + r, y + r // 2), fill=colour, outline=(0, 0, 0))
        else:
            draw.line((x, y, x + int(rng.integers(-60, 60)), y + int(rng.integers(-60, 60))), fill=colour,
                      width=3)
    return img


def edited(img: Image.Image, kind: str) -> Image.Image:
    w, h = img.size
    if kind == "rotate":
        return img.rotate(6, resample=Image.Resampling.BICUBIC)
    if kind == "crop":
        return img.crop((int(w * 0.08), int(h * 0.05), w - int(w * 0.02), h - int(h * 0.06)))
    if kind == "mirror":
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if kind == "text":
        out = img.copy()
        ImageDraw.Draw(out).text((10, h // 2), "(c) 2024 J. Smith", fill=(255, 255, 255),
                                 font=ImageFont.load_default(size=h // 9), stroke_width=2, stroke_fill=(0, 0, 0))
        return out
    if kind == "upscaled":
        return img.resize((w * 2, h * 2), Image.Resampling.BICUBIC)
    if kind == "small":
        return img.resize((w * 2 // 5, h * 2 // 5), Image.Resampling.BICUBIC)
    if kind == "colour":
        arr = np.asarray(img, np.float32) * np.array([1.15, 0.9, 0.85])
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    raise ValueError(kind)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pictures")
    scene(1).save(root / "original.jpg", quality=92)
    original = Image.open(root / "original.jpg").convert("RGB")
    for kind in ("rotate", "crop", "mirror", "text", "upscaled", "small", "colour"):
        edited(original, kind).save(root / f"{kind}.png")
    original.save(root / "reencoded.jpg", quality=60)
    for seed in (2, 3):
        scene(seed).save(root / f"other{seed}.jpg", quality=92)
    # the same scene, the camera moved: two frames that overlap by 80 % (a burst, not a copy)
    wide = scene(4, (400, 240))
    wide.crop((0, 0, 320, 240)).save(root / "burst_a.jpg", quality=92)
    wide.crop((80, 0, 400, 240)).save(root / "burst_b.jpg", quality=92)
    # the same scene, a subject moved: a smooth subject (few points of its own: the geometry of the
    # background alone says "copy") 20 % of the width further right
    for name, x in (("moved_a.jpg", 70), ("moved_b.jpg", 134)):
        frame = scene(5)
        ImageDraw.Draw(frame).ellipse((x, 60, x + 120, 180), fill=(200, 170, 60))
        frame.save(root / name, quality=92)
    # an enlargement saved as JPEG: its noise reads as detail, the interpolation's period stays
    original.resize((480, 360), Image.Resampling.BICUBIC).save(root / "upscaled.jpg", quality=90)
    return root


@pytest.mark.parametrize("kind", ["rotate", "crop", "mirror", "text", "upscaled", "small", "colour"])
def test_an_edited_copy_is_verified(pictures, kind):
    chk = Checker().check(str(pictures / "original.jpg"), str(pictures / f"{kind}.png"))
    assert is_copy(chk), chk
    assert chk.mirrored == (kind == "mirror")
    assert chk.score >= 0.6 and chk.inliers >= 12
    assert chk.thumb >= DEFAULT_RULE.min_thumb  # the first test lets every edit through
    if kind == "mirror":  # ... and the mirror is tried only for pairs whose mirrored thumbnails pass it
        assert chk.thumb_mirrored >= DEFAULT_RULE.min_thumb
    if kind == "upscaled":
        assert chk.scale == pytest.approx(2.0, rel=0.05)
    if kind == "rotate":
        assert abs(abs(chk.angle) - 6) < 1


@pytest.mark.parametrize("other", ["other2.jpg", "other3.jpg", "burst_b.jpg", "moved_b.jpg"])
def test_a_different_picture_of_similar_content_is_not(pictures, other):
    first = {"burst_b.jpg": "burst_a.jpg", "moved_b.jpg": "moved_a.jpg"}.get(other, "original.jpg")
    assert not is_copy(Checker().check(str(pictures / first), str(pictures / other)))
    # the later checks tell it too, where the first test would let a pair through
    chk = Checker(floor=None).check(str(pictures / first), str(pictures / other))
    assert not is_copy(chk), chk
    if other == "burst_b.jpg":  # the geometry matches (one camera shift) but each frame holds its own part
        assert chk.inliers >= 12 and chk.outside >= 0.1
    if other == "moved_b.jpg":  # one transform holds the background and the smooth subject brings no second
        # model: only the thick region where the aligned frames disagree tells it
        assert chk.inliers >= DEFAULT_RULE.min_inliers and chk.score >= DEFAULT_RULE.min_score
        assert chk.second <= 6 and chk.blob > DEFAULT_RULE.max_blob


def test_the_first_test_settles_other_pictures_without_local_features(pictures):
    checker = Checker()
    chk = checker.check(str(pictures / "original.jpg"), str(pictures / "other2.jpg"))
    assert chk.thumb < DEFAULT_RULE.min_thumb and not is_copy(chk)
    assert chk.matches == 0 and not checker._images  # neither image was described
    # above the floor the evidence is the whole check's, the same as without the first test
    a, b = str(pictures / "original.jpg"), str(pictures / "text.png")
    fast, whole = Checker().check(a, b), Checker(floor=None).check(a, b)
    assert fast == whole and fast.inliers > 0
    # without the floor, the local features are compared all the same (what the benchmark chooses on)
    assert Checker(floor=None).check(str(pictures / "original.jpg"), str(pictures / "other2.jpg")).matches > 0


def test_a_caption_is_a_thin_disagreement(pictures):
    chk = Checker().check(str(pictures / "original.jpg"), str(pictures / "text.png"))
    assert 0 < chk.blob <= DEFAULT_RULE.max_blob
    assert Checker().check(str(pictures / "original.jpg"), str(pictures / "colour.png")).blob <= 1


def test_worker_processes_give_the_same_evidence(pictures):
    names = ["rotate.png", "mirror.png", "text.png", "other2.jpg", "small.png"]
    pairs = [(str(pictures / "original.jpg"), str(pictures / n)) for n in names]
    kept = {}
    here = verify_pairs(pairs, workers=1)
    there = verify_pairs(pairs, workers=2, min_parallel=0, keep=kept.__setitem__)
    assert [is_copy(c) for c in there] == [is_copy(c) for c in here] == [True, True, True, False, True]
    assert [c.inliers for c in there] == [c.inliers for c in here]
    assert sorted(kept) == list(range(len(pairs)))

    # the workers' order keeps pairs that share a file together
    chain = [("a", "b"), ("x", "y"), ("b", "c"), ("y", "z"), ("c", "d")]
    order = locality_order(chain, range(len(chain)))
    assert sorted(order) == list(range(len(chain)))
    assert [chain[n] for n in order] == [("a", "b"), ("b", "c"), ("c", "d"), ("x", "y"), ("y", "z")]


def test_an_unreadable_file_is_evidence_not_a_crash(pictures, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a picture")
    chk = Checker().check(str(pictures / "original.jpg"), str(bad))
    assert chk.error and not is_copy(chk)


def test_what_the_pixels_say_about_the_original(pictures):
    assert upscaled_from(pictures / "upscaled.png", 320)
    assert upscaled_from(pictures / "upscaled.jpg", 320)
    assert resampling_peak(_grey_full(pictures / "upscaled.jpg"), 320) >= RESAMPLING_PEAK
    assert resampling_peak(_grey_full(pictures / "original.jpg"), 128) < RESAMPLING_PEAK
    assert not upscaled_from(pictures / "original.jpg", 128)
    assert jpeg_blocking(pictures / "mirror.png") > 1.15  # a decoded JPEG saved losslessly keeps its blocks
    assert reencoded_from(pictures / "reencoded.jpg", pictures / "original.jpg")
    assert not reencoded_from(pictures / "original.jpg", pictures / "reencoded.jpg")


def _collection(root: Path, cache: Path) -> Collection:
    c = Collection.open(root, model_spec=SPEC, cache_dir=cache, index="exact")
    c.update(TinyImage())
    return c


def test_two_tiers_and_the_keep_best_rule(pictures, tmp_path):
    c = _collection(pictures, tmp_path / "cache")
    dup = find_duplicates(c, threshold=0.5, floor=-1.0)
    assert dup.verify() == len(dup.pairs)
    groups = dup.copy_groups()
    copies = {it.relpath for it in groups[0].items}
    assert {"original.jpg", "upscaled.png", "crop.png", "rotate.png", "reencoded.jpg"} <= copies
    assert not copies & {"other2.jpg", "other3.jpg", "burst_a.jpg", "burst_b.jpg"}
    best = groups[0].best
    # the upscaled copy has 4 x the pixels, PNGs are larger files: by resolution it would win
    assert best.relpath == "original.jpg", [(it.relpath, it.derived) for it in groups[0].items]
    assert "not an upscaled, re-encoded or cropped copy" in groups[0].best_reason
    up = next(it for it in groups[0].items if it.relpath == "upscaled.png")
    assert any("upscaled copy of" in d for d in up.derived)
    assert groups[0].tier == "copies" and groups[0].evidence
    assert {"matches", "inliers", "score", "mirrored"} <= set(groups[0].evidence[0])
    # resolution first: the upscaled copy wins, and the reason says so
    by_size = dup.copy_groups(best_rule=BestRule(("resolution", "derived", "bytes", "date", "folder")))
    assert by_size[0].best.relpath == "upscaled.png" and by_size[0].best_reason == "largest resolution"
    # the similar tier holds no verified pair
    copy_pairs = {frozenset((e["a"], e["b"])) for g in groups for e in g.evidence}
    for g in dup.similar_groups(0.5):
        rel = [it.relpath for it in g.items]
        assert not any(frozenset((a, b)) in copy_pairs for a in rel for b in rel if a < b)
    with pytest.raises(ValueError, match="keep-best criteria"):
        BestRule(("resolution", "size"))


def test_the_evidence_is_kept_until_a_file_changes(pictures, tmp_path):
    import os
    import shutil

    a, b = tmp_path / "a.jpg", tmp_path / "b.png"
    shutil.copy(pictures / "original.jpg", a)
    shutil.copy(pictures / "rotate.png", b)
    first = Checker()
    check = first.check(str(a), str(b))
    store = tmp_path / "evidence.npz"
    assert save_evidence(store, [(str(a), str(b), check)], first.floor) == 1
    second = Checker()
    assert load_evidence(store, second) == 1 and second.known(str(a), str(b)) == check
    assert load_evidence(store, Checker(floor=None)) == 0  # found under another first test: not reused
    os.utime(b, ns=(b.stat().st_atime_ns, b.stat().st_mtime_ns + 10**9))  # the file changed
    assert load_evidence(store, Checker()) == 0
    store.write_bytes(b"damaged")
    assert load_evidence(store, Checker()) == 0


def test_decisions_survive_reindexing(pictures, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    c = _collection(pictures, cache)
    dup = find_duplicates(c, threshold=0.5, floor=-1.0)
    dup.verify()
    groups = dup.copy_groups()
    n = len(groups)
    dup.decisions.mark_not_copies([it.relpath for it in groups[0].items])
    saved = json.loads((Path(c.state_dir).parent / "duplicate-decisions.json").read_text())
    assert saved["not_copies"]
    # reindex from scratch: new rows, same paths; the dismissed group stays dismissed
    again = Collection.open(pictures, model_spec=SPEC, cache_dir=cache, index="exact", rebuild=True)
    again.update(TinyImage())
    dup2 = find_duplicates(again, threshold=0.5, floor=-1.0)
    # the evidence was kept beside the decisions: files unchanged by the reindexing are not checked again
    monkeypatch.setattr(copycheck, "thumbnails", lambda path: pytest.fail(f"{path} was checked again"))
    dup2.verify()
    assert len(dup2.copy_groups()) == n - 1
    kept = Decisions.for_collection(again)
    assert kept.dismissed("original.jpg", "crop.png")


def test_keep_all_hides_the_group_until_it_changes(pictures, tmp_path):
    c = _collection(pictures, tmp_path / "cache")
    dup = find_duplicates(c, threshold=0.5, floor=-1.0)
    dup.verify()
    group = dup.copy_groups()[0]
    members = [it.relpath for it in group.items]
    dup.decisions.mark_keep_all(members)
    again = find_duplicates(c, threshold=0.5, floor=-1.0)  # decisions read back from the file
    again.verify()
    assert members not in [[it.relpath for it in g.items] for g in again.copy_groups()]
    assert again.decisions.kept(members) and not again.decisions.kept([*members, "new.jpg"])


def test_cli_json_gives_both_tiers_the_evidence_and_the_reason(pictures, tmp_path, capsys):
    from engine.cli import main

    cache = tmp_path / "cache"
    _collection(pictures, cache)  # the stand-in model's collection, as `index` would leave it
    spec_args = ["--cache-dir", str(cache), "--backbone", "stand-in", "--weights", "random", "--descriptor",
                 "spoc", "--image-size", "48"]
    code = main(["duplicates", str(pictures), "--threshold", "-1", "--json", *spec_args])
    out = capsys.readouterr().out
    assert code == 0, out
    data = json.loads(out)
    assert data["copies"] and data["copies"][0]["tier"] == "copies"
    top = data["copies"][0]
    assert Path(top["best"]).name == "original.jpg" and top["best_reason"].startswith("not an upscaled")
    ev = top["evidence"][0]
    assert {"a", "b", "matches", "inliers", "inlier_ratio", "score", "mirrored", "outside_a"} <= set(ev)
    mirrored = [e for e in top["evidence"] if "mirror.png" in (e["a"], e["b"])]
    assert mirrored and all(e["mirrored"] for e in mirrored)
    up = next(i for i in top["images"] if i["path"].endswith("upscaled.png"))
    assert not up["keep"] and any("upscaled" in d for d in up["derived"])
    names = {Path(i["path"]).name for g in data["copies"] for i in g["images"]}
    assert not names & {"other2.jpg", "other3.jpg", "burst_a.jpg", "burst_b.jpg"}
    assert "similar" in data and data["keep_best"].startswith("not an upscaled")
    # a dismissed group is not listed again by the CLI
    Decisions.for_collection(Collection.open(pictures, model_spec=SPEC, cache_dir=cache)).mark_not_copies(
        [Path(i["path"]).relative_to(pictures).as_posix() for i in top["images"]])
    assert main(["duplicates", str(pictures), "--threshold", "-1", "--json", *spec_args]) == 0
    again = json.loads(capsys.readouterr().out)
    assert len(again["copies"]) == len(data["copies"]) - 1
