"""Is this pair of images the same picture, edited, or two pictures of similar content? (issue 29)

The second stage of engine.duplicates: the descriptors propose candidate pairs (recall first), this
module checks each one with OpenCV (opencv-python-headless, pinned in constraints.txt):

0. **a cheap first test** settles most pairs of different pictures without local features: both images,
   decoded at a JPEG's reduced scale, are squeezed to THUMB_SIDE x THUMB_SIDE grey thumbnails, blurred;
   ``thumb`` is the best correlation inside a central disc of one with the other turned by THUMB_ANGLES,
   mirrored or not (~1 ms per image, ~10 us per pair). A copy keeps its thumbnail through every edit the
   benchmark makes (its lowest on cub100: 0.77-0.83, crops and captions); a pair below the Checker's ``floor``
   (DEFAULT_RULE.min_thumb) is not checked further (its ORB evidence stays empty), and the mirrored image
   is described and matched in step 2 only when the mirrored thumbnails reach the floor
   (``thumb_mirrored``: a mirrored copy keeps them, >= 0.81 on cub100);
1. both images are decoded small (engine.images.load_image with draft decoding) and brought to
   :data:`WORK_SIDE` pixels on the long side (small images are enlarged, so that a thumbnail and its
   original meet at one scale); ORB key points (:data:`ORB_POINTS`) on the grey image;
2. matches by Hamming distance with Lowe's ratio test, then a similarity transform (rotation, uniform
   scale, translation: ``cv2.estimateAffinePartial2D``, RANSAC): every edit a copy goes through (resize,
   crop, rotation) is one; the mirrored image is tried when the direct one finds no transform;
3. with the transform, the two images are compared where they overlap: each block of a grid holds a
   band-pass correlation (insensitive to brightness and colour casts; the band follows the smaller
   image's real resolution), and the check's **score** is the share of textured blocks that agree
   (a caption changes a band of blocks; another photo of the same scene changes most);
4. **containment**: a copy's content lies inside the other image (a crop, a rotation whose corners are
   black), while two frames of a burst each hold textured content the other lacks: ``outside`` is the
   smaller of the two shares of textured pixels that fall outside the other image;
5. **where they disagree**: a copy holds all its content in the one transform, so what differs once the
   two are aligned (low-passed at the smaller image's resolution, the grey levels matched by their
   histograms) is spread thin (JPEG noise, resampling) or a thin band (a caption); a subject that moved
   between two frames leaves a compact region of disagreement. ``blob`` is the shorter side, in cells of
   a BLOB_GRID x BLOB_GRID grid, of the largest connected region of cells whose mean difference exceeds
   BLOB_LEVEL grey levels.

:func:`check_pair` gives the evidence (:class:`PairCheck`); :func:`is_copy` applies the thresholds
(:data:`DEFAULT_RULE`, chosen on the training species by benchmarks/duplicates.py). :class:`Checker`
caches decoded images and verdicts in memory; :func:`verify_pairs` is the long-running plain function
(progress / should_stop). Also here: the facts the keep-best rule reads from the pixels (upscaling,
JPEG re-encoding) of :mod:`engine.duplicates`.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from engine.callbacks import Cancelled, ProgressFn, ShouldStopFn, resolve
from engine.images import file_stamp

log = logging.getLogger(__name__)

#: long side (pixels) of the images the check works on: small photos are enlarged to it
WORK_SIDE = 320
#: ORB key points per image
ORB_POINTS = 500
#: Lowe's ratio test: best match distance < RATIO x the second best
RATIO = 0.8
#: RANSAC reprojection threshold (pixels at WORK_SIDE)
RANSAC_PIXELS = 4.0
#: blocks per side of the aligned comparison's grid
GRID = 12
#: the aligned comparison is made only for transforms with at least this many inliers
PRECHECK_INLIERS = 8
#: images decoded and described kept in memory by a Checker
CACHE_IMAGES = 2_000
#: cells per side of the grid where the aligned images' disagreement is measured (PairCheck.blob)
BLOB_GRID = 16
#: a cell disagrees when its mean absolute difference (grey levels, after histogram matching) exceeds this
BLOB_LEVEL = 15.0
#: the cheap first test (PairCheck.thumb): thumbnails of THUMB_SIDE x THUMB_SIDE, blurred by THUMB_BLUR
#: pixels, compared inside a disc of THUMB_RADIUS x the side, one turned by each of THUMB_ANGLES (degrees)
THUMB_SIDE = 24
THUMB_BLUR = 1.2
THUMB_RADIUS = 0.45
THUMB_ANGLES = (-6.0, 0.0, 6.0)
#: thumbnails kept in memory by a Checker (16 KB each)
CACHE_THUMBS = 4_000


@dataclass(frozen=True)
class CopyRule:
    """The thresholds of :func:`is_copy`: at least ``min_inliers`` RANSAC inliers making at least
    ``min_inlier_ratio`` of the ratio-test matches, an aligned ``score`` >= ``min_score``, at most
    ``max_outside`` of the textured content of both images outside the other one, a second model of at
    most ``max_second`` inliers, no region of disagreement thicker than ``max_blob`` cells and thumbnails that
    correlate at least ``min_thumb`` (the first test; a Checker skips the rest below it)."""

    min_inliers: int = 30
    min_inlier_ratio: float = 0.3
    min_score: float = 0.6
    max_outside: float = 0.06
    max_second: int = 10_000
    max_blob: int = 6
    #: the cheap first test: a pair whose thumbnails correlate less (PairCheck.thumb) is no copy
    min_thumb: float = 0.7


#: chosen on the 50 training species of cub100 by benchmarks/duplicates.py (docs/BENCHMARKS.md): the
#: highest minimum recall over the kinds of edit at precision >= 0.99 on every kind, on all edits at once
#: and on the generated bursts and textures (1,440 rules tried; with the blob, the second model's limit
#: no longer helps: it stays evidence, unlimited by default); the first test's min_thumb is then the highest
#: of its grid at least 0.1 below every verified copy there (lowest: 0.83)
DEFAULT_RULE = CopyRule()
#: the mirrored image is tried when the direct one gives fewer inliers than this, or fewer than
#: MIRROR_BELOW_RATIO of the matches (the values the benchmark's evidence was measured with)
MIRROR_BELOW_INLIERS = 12
MIRROR_BELOW_RATIO = 0.25


@dataclass
class PairCheck:
    """The evidence about one pair (a, b). ``matches``: ratio-test matches; ``inliers``: those the
    transform explains; ``mirrored``: b was mirrored to match a; ``scale``: b's size in a's pixels
    (full resolution; > 1: b is larger); ``angle`` (degrees); ``score``: the share of textured blocks
    that agree once aligned (0..1); ``outside_a``/``outside_b``: the share of a's (b's) textured content
    that lies outside the other image; ``error``: why the pair could not be checked ('' when it was)."""

    matches: int = 0
    inliers: int = 0
    mirrored: bool = False
    scale: float = 0.0
    angle: float = 0.0
    score: float = 0.0
    outside_a: float = 1.0
    outside_b: float = 1.0
    #: inliers of a second, different transform among the outliers of the first (a moved subject)
    second: int = 0
    #: the shorter side (cells of BLOB_GRID) of the largest region where the aligned images disagree
    blob: int = BLOB_GRID
    #: the cheap first test's correlation of the two thumbnails (1.0: not measured); below the Checker's
    #: floor the local features were not compared (matches, inliers ... stay 0)
    thumb: float = 1.0
    #: the same with the thumbnails mirrored (1.0: not measured); below the floor, no mirror was tried
    thumb_mirrored: float = 1.0
    error: str = ""

    @property
    def inlier_ratio(self) -> float:
        return self.inliers / self.matches if self.matches else 0.0

    @property
    def outside(self) -> float:
        """The content of the image that lies (most) inside the other that falls outside it."""
        return min(self.outside_a, self.outside_b)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["inlier_ratio"] = round(self.inlier_ratio, 4)
        for k in ("scale", "angle", "score", "outside_a", "outside_b", "thumb", "thumb_mirrored"):
            d[k] = round(float(d[k]), 4)
        return d


def is_copy(check: PairCheck, rule: CopyRule = DEFAULT_RULE) -> bool:
    """The verdict on a pair's evidence: the same picture, edited."""
    return (not check.error and check.inliers >= rule.min_inliers
            and check.inlier_ratio >= rule.min_inlier_ratio and check.score >= rule.min_score
            and check.outside <= rule.max_outside and check.second <= rule.max_second
            and check.blob <= rule.max_blob and check.thumb >= rule.min_thumb)


# --- images --------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """One image made ready: ``grey`` (H, W) uint8 at WORK_SIDE on the long side, ``size`` the file's
    (width, height) in pixels, ``factor`` = grey pixels per file pixel, ORB ``points`` (K, 2) float32
    and ``desc`` (K, 32) uint8, and the same for the mirrored image (computed when first needed)."""

    grey: np.ndarray
    size: tuple[int, int]
    factor: float
    points: np.ndarray
    desc: np.ndarray | None
    mirror_points: np.ndarray | None = None
    mirror_desc: np.ndarray | None = None
    texture: np.ndarray | None = None


def _orb(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """ORB points (K, 2) and descriptors (K, 32), spread over the image: at most ORB_POINTS / 36 of the
    strongest per cell of a 6 x 6 grid (else a caption's sharp strokes take every point)."""
    import cv2

    orb = cv2.ORB_create(nfeatures=ORB_POINTS * 4, fastThreshold=8, edgeThreshold=15, patchSize=31)
    kps = orb.detect(grey, None)
    if kps:
        h, w = grey.shape
        xy = np.array([k.pt for k in kps], np.float32)
        resp = np.array([k.response for k in kps], np.float32)
        cell = (np.minimum(xy[:, 1] * 6 / h, 5).astype(int) * 6 + np.minimum(xy[:, 0] * 6 / w, 5).astype(int))
        order = np.lexsort((-resp, cell))  # by cell, strongest first within one
        first = np.searchsorted(cell[order], np.arange(36))
        rank = np.arange(order.size) - first[cell[order]]
        keep = order[rank < max(1, ORB_POINTS // 36)]
        kps, desc = orb.compute(grey, [kps[x] for x in keep.tolist()])
    else:
        desc = None
    pts = np.array([k.pt for k in kps], np.float32).reshape(-1, 2)
    return pts, desc


def prepare(path: str | os.PathLike) -> Prepared:
    """Decode ``path`` small and describe it (raises engine.images.ImageLoadError for a bad file)."""
    import cv2
    from PIL import Image

    from engine.images import load_image

    img = load_image(path, min_side=WORK_SIDE // 2)
    w, h = img.size
    with Image.open(path) as im:
        size = (int(im.size[0]), int(im.size[1]))
    if (size[0] > size[1]) != (w > h) and size[0] != size[1]:
        size = (size[1], size[0])  # turned by its EXIF orientation
    f = WORK_SIDE / max(w, h)
    nw, nh = max(8, round(w * f)), max(8, round(h * f))
    grey = np.asarray(img.convert("L"), np.uint8)
    grey = cv2.resize(grey, (nw, nh), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC)
    pts, desc = _orb(grey)
    return Prepared(grey, size, nw / size[0], pts, desc)


def _mirror(p: Prepared) -> tuple[np.ndarray, np.ndarray | None]:
    if p.mirror_points is None:
        p.mirror_points, p.mirror_desc = _orb(np.ascontiguousarray(p.grey[:, ::-1]))
    return p.mirror_points, p.mirror_desc


# --- the cheap first test --------------------------------------------------------------------------
@dataclass
class Thumbs:
    """An image's thumbnails for the first test: ``base`` (S*S,) float32 the grey thumbnail (S =
    THUMB_SIDE), blurred, zero-mean and unit-norm inside the disc (zero outside), ``turned`` (2T, S*S) the
    same turned by each of the T THUMB_ANGLES, each also mirrored."""

    base: np.ndarray
    turned: np.ndarray


_DISC: np.ndarray | None = None


def _disc() -> np.ndarray:
    """(S, S) float32: 1 inside the disc of THUMB_RADIUS x the side around the centre, 0 outside."""
    global _DISC
    if _DISC is None:
        c = (THUMB_SIDE - 1) / 2
        yy, xx = np.mgrid[0:THUMB_SIDE, 0:THUMB_SIDE]
        _DISC = (((yy - c) ** 2 + (xx - c) ** 2) <= (THUMB_RADIUS * THUMB_SIDE) ** 2).astype(np.float32)
    return _DISC


def _unit(g: np.ndarray) -> np.ndarray:
    """(N, S, S) thumbnails -> (N, S*S): zero-mean and unit-norm inside the disc, zero outside."""
    disc = _disc()
    g = g * disc
    g = (g - (g.sum((1, 2)) / disc.sum())[:, None, None]) * disc
    return (g / (np.sqrt((g * g).sum((1, 2))) + 1e-3)[:, None, None]).reshape(g.shape[0], -1)


def thumbnails(path: str | os.PathLike) -> Thumbs:
    """The first test's thumbnails of ``path``, decoded small (raises engine.images.ImageLoadError)."""
    import cv2

    from engine.images import load_image

    s = THUMB_SIDE
    with load_image(path, min_side=2 * s) as img:
        g = np.asarray(img.convert("L"), np.float32)
    g = cv2.resize(g, (2 * s, 2 * s), interpolation=cv2.INTER_AREA)
    turned = []
    for angle in THUMB_ANGLES:
        r = g if angle == 0 else cv2.warpAffine(g, cv2.getRotationMatrix2D((s - 0.5, s - 0.5), angle, 1.0),
                                                (2 * s, 2 * s), flags=cv2.INTER_LINEAR,
                                                borderMode=cv2.BORDER_REFLECT)
        r = cv2.GaussianBlur(cv2.resize(r, (s, s), interpolation=cv2.INTER_AREA), (0, 0), THUMB_BLUR)
        turned += [r, r[:, ::-1]]
    units = _unit(np.stack(turned))
    return Thumbs(units[2 * THUMB_ANGLES.index(0.0)].copy(), units)


def thumb_scores(a: Thumbs, b: Thumbs) -> tuple[float, float]:
    """The first test: the best correlation of one image's thumbnail with the other's turned by one of
    THUMB_ANGLES, either way round (-1..1; 1: the same), as it is and mirrored: (direct, mirrored)."""
    ab, ba = b.turned @ a.base, a.turned @ b.base  # rows: each angle as it is, then mirrored
    return float(max(ab[0::2].max(), ba[0::2].max())), float(max(ab[1::2].max(), ba[1::2].max()))


def thumb_score(a: Thumbs, b: Thumbs) -> float:
    """The first test (PairCheck.thumb): the better of :func:`thumb_scores`."""
    return max(thumb_scores(a, b))


# --- the check -----------------------------------------------------------------------------------
def _match(da: np.ndarray | None, db: np.ndarray | None) -> list[tuple[int, int]]:
    import cv2

    if da is None or db is None or len(da) < 2 or len(db) < 2:
        return []
    knn = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(db, da, k=2)
    return [(m[0].trainIdx, m[0].queryIdx) for m in knn
            if len(m) == 2 and m[0].distance < RATIO * m[1].distance]


def _transform(pa: np.ndarray, pb: np.ndarray, pairs: list[tuple[int, int]]) -> tuple[np.ndarray | None, int]:
    """The similarity transform taking b's points onto a's: (2, 3) matrix or None, inliers."""
    import cv2

    if len(pairs) < 4:
        return None, 0
    ia = np.array([p[0] for p in pairs])
    ib = np.array([p[1] for p in pairs])
    m, mask = cv2.estimateAffinePartial2D(pb[ib], pa[ia], method=cv2.RANSAC,
                                          ransacReprojThreshold=RANSAC_PIXELS, maxIters=2000,
                                          confidence=0.995)
    if m is None or mask is None:
        return None, 0
    return m, int(mask.sum())


def _second_model(pa: np.ndarray, pb: np.ndarray, pairs: list[tuple[int, int]], m: np.ndarray) -> int:
    """Inliers of a second similarity transform among the matches the first leaves out, when it moves
    points differently from the first (by more than 3 RANSAC thresholds): a subject that moved between two
    frames of one scene. A caption or a colour change brings no second model (0)."""
    import cv2

    if len(pairs) < 8:
        return 0
    ia = np.array([p[0] for p in pairs])
    ib = np.array([p[1] for p in pairs])
    src, dst = pb[ib], pa[ia]
    err = np.linalg.norm(src @ m[:, :2].T + m[:, 2] - dst, axis=1)
    out = err > RANSAC_PIXELS
    if out.sum() < 6:
        return 0
    m2, mask = cv2.estimateAffinePartial2D(src[out], dst[out], method=cv2.RANSAC,
                                           ransacReprojThreshold=RANSAC_PIXELS, maxIters=1000,
                                           confidence=0.99)
    if m2 is None or mask is None:
        return 0
    keep = mask.ravel().astype(bool)
    moved = src[out][keep]
    shift = np.linalg.norm((moved @ m2[:, :2].T + m2[:, 2]) - (moved @ m[:, :2].T + m[:, 2]), axis=1)
    return int(keep.sum()) if np.median(shift) > 3 * RANSAC_PIXELS else 0


def _texture(grey: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels with local contrast (black rotation corners and flat fills have none)."""
    import cv2

    g = grey.astype(np.float32)
    mean = cv2.blur(g, (7, 7))
    var = cv2.blur(g * g, (7, 7)) - mean * mean
    return var > 9.0


def _textured(p: Prepared, mirrored: bool = False) -> np.ndarray:
    if p.texture is None:
        p.texture = _texture(p.grey)
    return p.texture[:, ::-1] if mirrored else p.texture


def _outside(tex_b: np.ndarray, m: np.ndarray, shape_a: tuple[int, int]) -> float:
    """The share of b's textured pixels that ``m`` (b -> a) puts outside a's frame."""
    ys, xs = np.nonzero(tex_b[::2, ::2])
    if xs.size == 0:
        return 0.0
    pts = np.stack([xs * 2.0, ys * 2.0], 1) @ m[:, :2].T + m[:, 2]
    h, w = shape_a
    out = (pts[:, 0] < -1) | (pts[:, 1] < -1) | (pts[:, 0] > w) | (pts[:, 1] > h)
    return float(out.mean())


def _block_sums(x: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """(GRID, GRID) sums of ``x`` over the blocks cut at rows ``ys`` and columns ``xs``."""
    return np.add.reduceat(np.add.reduceat(x, ys[:-1], axis=0), xs[:-1], axis=1)


def _resolution_sigma(smaller_side: float) -> float:
    """The blur (pixels at WORK_SIDE) that brings both images to the band the smaller one really holds:
    it follows the smaller image's enlargement to WORK_SIDE."""
    return max(1.0, 0.7 * WORK_SIDE / max(smaller_side, 1.0))


def _aligned_score(a: Prepared, wb: np.ndarray, valid: np.ndarray, smaller_side: float) -> float:
    """The share of textured blocks of a (GRID x GRID) whose band-pass correlation with b warped onto a
    (``wb``, covering ``valid``) is >= 0.5, over the blocks b covers."""
    import cv2

    h, w = a.grey.shape
    sigma = _resolution_sigma(smaller_side)

    def band(g: np.ndarray) -> np.ndarray:
        g = g.astype(np.float32)
        return cv2.GaussianBlur(g, (0, 0), sigma) - cv2.GaussianBlur(g, (0, 0), 3 * sigma)

    ba, bb = band(a.grey), band(wb)
    ys = np.linspace(0, h, GRID + 1).astype(int)
    xs = np.linspace(0, w, GRID + 1).astype(int)
    area = np.outer(np.diff(ys), np.diff(xs)).astype(np.float64)
    cover = _block_sums(valid, ys, xs) / area
    sa, sb = _block_sums(ba, ys, xs) / area, _block_sums(bb, ys, xs) / area
    va = _block_sums(ba * ba, ys, xs) / area - sa * sa
    vb = _block_sums(bb * bb, ys, xs) / area - sb * sb
    cov = _block_sums(ba * bb, ys, xs) / area - sa * sb
    da, db = np.sqrt(np.maximum(va, 0)), np.sqrt(np.maximum(vb, 0))
    used = (cover >= 0.9) & ((da >= 1.0) | (db >= 1.0))  # a flat block says nothing
    corr = cov / np.maximum(da * db, 1e-6)
    total = int(used.sum())
    return float((used & (corr >= 0.5)).sum() / total) if total else 0.0


def _filled(g: np.ndarray) -> np.ndarray:
    """(H, W) bool: flat black or white pixels (a rotation's filled corners)."""
    import cv2

    mean = cv2.blur(g, (5, 5))
    var = cv2.blur(g * g, (5, 5)) - mean * mean
    return (var < 4.0) & ((g <= 10) | (g >= 245))


def _disagreement_blob(a: Prepared, wb: np.ndarray, valid: np.ndarray, smaller_side: float) -> int:
    """The shorter side (cells of BLOB_GRID x BLOB_GRID over a) of the bounding box of the largest
    8-connected region of cells where a and b warped onto a (``wb``) differ by more than BLOB_LEVEL grey
    levels on average, both low-passed to the smaller image's resolution and b's grey levels matched to a's
    by their histograms over the overlap (brightness, contrast and colour casts do not count). Cells less
    than 70 % covered by the overlap (without filled corners) are left out. 0: nowhere."""
    import cv2

    ga = a.grey.astype(np.float32)
    gw = wb.astype(np.float32)
    use = cv2.erode((valid > 0.5).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    use &= ~_filled(ga) & ~_filled(gw)
    if use.sum() < 100:
        return BLOB_GRID
    sigma = 1.5 * _resolution_sigma(smaller_side)
    la = cv2.GaussianBlur(ga, (0, 0), sigma)
    lw = cv2.GaussianBlur(gw, (0, 0), sigma)
    q = np.linspace(0, 100, 33)
    qa, qw = np.percentile(la[use], q), np.percentile(lw[use], q)
    qw = np.maximum.accumulate(qw + np.arange(q.size) * 1e-4)  # strictly increasing for np.interp
    diff = np.abs(la - np.interp(lw, qw, qa)).astype(np.float32) * use
    h, w = ga.shape
    ys = np.linspace(0, h, BLOB_GRID + 1).astype(int)
    xs = np.linspace(0, w, BLOB_GRID + 1).astype(int)
    cover = _block_sums(use.astype(np.float32), ys, xs)
    mean = _block_sums(diff, ys, xs) / np.maximum(cover, 1.0)
    bad = ((mean > BLOB_LEVEL) & (cover >= 0.7 * np.outer(np.diff(ys), np.diff(xs)))).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(bad, connectivity=8)
    if n <= 1:
        return 0
    big = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return int(min(stats[big, cv2.CC_STAT_WIDTH], stats[big, cv2.CC_STAT_HEIGHT]))


def check_prepared(a: Prepared, b: Prepared, mirror: bool = True) -> PairCheck:
    """The evidence about prepared images ``a`` and ``b`` (see :class:`PairCheck`). The aligned score and
    the containment are measured only when the transform has at least PRECHECK_INLIERS inliers (else
    they stay 0 and 1: no pair that weak is a copy). ``mirror``: b mirrored may be tried (when the direct
    match is weak)."""
    import cv2

    pairs = _match(a.desc, b.desc)
    m, inl = _transform(a.points, b.points, pairs)
    mirrored = False
    if mirror and (m is None or inl < MIRROR_BELOW_INLIERS or inl < MIRROR_BELOW_RATIO * len(pairs)):
        mp, md = _mirror(b)
        mpairs = _match(a.desc, md)
        mm, minl = _transform(a.points, mp, mpairs)
        if mm is not None and minl > inl:
            m, inl, pairs, mirrored = mm, minl, mpairs, True
    out = PairCheck(matches=len(pairs), inliers=inl, mirrored=mirrored)
    if m is None:
        return out
    out.second = _second_model(a.points, (_mirror(b)[0] if mirrored else b.points), pairs, m) \
        if inl >= PRECHECK_INLIERS else 0
    s = float(np.hypot(m[0, 0], m[1, 0]))  # a's work pixels per b's work pixel
    if not 1e-3 < s < 1e3:
        return out
    out.scale = a.factor / (s * b.factor)  # b's full-resolution pixels per a's
    out.angle = float(np.degrees(np.arctan2(m[1, 0], m[0, 0])))
    if inl < PRECHECK_INLIERS:
        return out
    gb = np.ascontiguousarray(b.grey[:, ::-1]) if mirrored else b.grey
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    out.outside_b = _outside(_textured(b, mirrored), m, a.grey.shape)
    out.outside_a = _outside(_textured(a), inv, gb.shape)
    smaller = min(max(a.size), max(b.size))
    h, w = a.grey.shape
    wb = cv2.warpAffine(gb, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    valid = cv2.warpAffine(np.ones(gb.shape, np.float32), m, (w, h), flags=cv2.INTER_NEAREST)
    out.score = _aligned_score(a, wb, valid, smaller)
    out.blob = _disagreement_blob(a, wb, valid, smaller)
    return out


class Checker:
    """Checks pairs of files, caching decoded images (up to ``capacity``), thumbnails and verdicts in
    memory; a file is known by its path, size and mtime, so an edited file is decoded again. A pair whose
    first test (PairCheck.thumb) is below ``floor`` is settled there (default: DEFAULT_RULE.min_thumb;
    None: every pair gets the whole check, as the benchmark needs to choose the rule)."""

    def __init__(self, capacity: int = CACHE_IMAGES, floor: float | None = DEFAULT_RULE.min_thumb) -> None:
        self.capacity = capacity
        self.floor = -np.inf if floor is None else float(floor)
        self._images: OrderedDict[tuple, Prepared | str] = OrderedDict()
        self._thumbs: OrderedDict[tuple, Thumbs | str] = OrderedDict()
        self._pairs: dict[tuple, PairCheck] = {}

    @staticmethod
    def _key(path: str) -> tuple:
        try:
            return (str(path), *file_stamp(path))
        except OSError:
            return (str(path), -1, -1)

    def _cached(self, cache: OrderedDict, capacity: int, path: str, make: Callable[[str], Any]) -> Any:
        """``make(path)`` kept in ``cache`` (least recently used first out), or a string saying why the
        file cannot be read (a bad file is evidence too: its pairs are not verified)."""
        key = self._key(path)
        got = cache.get(key)
        if got is not None:
            cache.move_to_end(key)
            return got
        try:
            got = make(path)
        except Exception as exc:
            got = str(exc) or type(exc).__name__
        cache[key] = got
        while len(cache) > capacity:
            cache.popitem(last=False)
        return got

    def prepared(self, path: str) -> Prepared | str:
        """The prepared image, or a string saying why it cannot be read."""
        return self._cached(self._images, self.capacity, path, prepare)

    def thumbs(self, path: str) -> Thumbs | str:
        """The image's first-test thumbnails, or a string saying why it cannot be read."""
        return self._cached(self._thumbs, CACHE_THUMBS, path, thumbnails)

    def known(self, path_a: str, path_b: str) -> PairCheck | None:
        """The evidence about this pair when it was checked before (else None)."""
        return self._pairs.get((self._key(path_a), self._key(path_b)))

    def remember(self, path_a: str, path_b: str, check: PairCheck) -> None:
        """Keep evidence found elsewhere (verify_pairs' worker processes)."""
        self._pairs[(self._key(path_a), self._key(path_b))] = check

    def check(self, path_a: str, path_b: str) -> PairCheck:
        """The evidence about files ``path_a`` and ``path_b`` (cached)."""
        key = (self._key(path_a), self._key(path_b))
        got = self._pairs.get(key)
        if got is not None:
            return got
        got = self._check(path_a, path_b)
        self._pairs[key] = got
        return got

    def _check(self, path_a: str, path_b: str) -> PairCheck:
        ta, tb = self.thumbs(path_a), self.thumbs(path_b)
        if isinstance(ta, str) or isinstance(tb, str):
            return PairCheck(error=ta if isinstance(ta, str) else str(tb))
        direct, mirrored = thumb_scores(ta, tb)
        thumb = max(direct, mirrored)
        if thumb < self.floor:
            return PairCheck(thumb=thumb, thumb_mirrored=mirrored)
        a, b = self.prepared(path_a), self.prepared(path_b)
        if isinstance(a, str) or isinstance(b, str):
            return PairCheck(error=a if isinstance(a, str) else str(b), thumb=thumb, thumb_mirrored=mirrored)
        got = check_prepared(a, b, mirror=mirrored >= self.floor)
        got.thumb, got.thumb_mirrored = thumb, mirrored
        return got


# --- the evidence kept between runs ------------------------------------------------------------------
#: what shapes the evidence: a store written under other values is not read (the version counts changes
#: of the check's code)
EVIDENCE_VERSION = 2
_EVIDENCE_FIELDS = ("matches", "inliers", "mirrored", "scale", "angle", "score", "outside_a", "outside_b",
                    "second", "blob", "thumb", "thumb_mirrored")


def evidence_signature(floor: float) -> str:
    """The check's constants and the first test's ``floor``: evidence is reused only under the same."""
    return repr((EVIDENCE_VERSION, WORK_SIDE, ORB_POINTS, RATIO, RANSAC_PIXELS, GRID, PRECHECK_INLIERS,
                 BLOB_GRID, BLOB_LEVEL, MIRROR_BELOW_INLIERS, MIRROR_BELOW_RATIO, THUMB_SIDE, THUMB_BLUR,
                 THUMB_RADIUS, THUMB_ANGLES, round(float(floor), 6)))


def save_evidence(path: str | os.PathLike, items: Sequence[tuple[str, str, PairCheck]], floor: float) -> int:
    """Keep the evidence about pairs of files (path_a, path_b, evidence), found by a Checker of first-test
    ``floor``, in ``path`` (npz, written atomically), each file with its size and mtime: :func:`load_evidence`
    gives back only the pairs whose two files are unchanged. Returns the pairs written."""
    from engine.atomic import atomic_open

    files: dict[tuple, int] = {}
    rows: list[tuple[int, int, PairCheck]] = []
    for a, b, check in items:
        ka, kb = Checker._key(a), Checker._key(b)
        if ka[1] >= 0 and kb[1] >= 0:
            rows.append((files.setdefault(ka, len(files)), files.setdefault(kb, len(files)), check))
    keys = list(files)
    arrays = {f: np.array([getattr(c, f) for _, _, c in rows]) for f in _EVIDENCE_FIELDS}
    with atomic_open(path, "wb", durable=False) as fh:  # a cache: rebuilt when lost
        np.savez(fh, signature=np.array(evidence_signature(floor)), files=np.array([k[0] for k in keys], dtype=str),
                 size=np.array([k[1] for k in keys], np.int64), mtime=np.array([k[2] for k in keys], np.int64),
                 a=np.array([r[0] for r in rows], np.int64), b=np.array([r[1] for r in rows], np.int64),
                 error=np.array([c.error for _, _, c in rows], dtype=str), **arrays)
    return len(rows)


def load_evidence(path: str | os.PathLike, checker: Checker) -> int:
    """Teach ``checker`` the evidence kept in ``path`` by :func:`save_evidence` about files that have not
    changed since (their size and mtime), if it was found under the same check (:func:`evidence_signature`).
    A missing store gives nothing; an unreadable one gives nothing and a warning in the log. Returns the
    pairs learnt."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["signature"]) != evidence_signature(checker.floor):
                return 0
            z = {k: z[k] for k in z.files}
    except FileNotFoundError:
        return 0
    except Exception as exc:  # a damaged cache is no reason to stop: the pairs are checked again
        log.warning("ignoring unreadable duplicate evidence %s: %s", path, exc)
        return 0
    now = [Checker._key(str(f)) for f in z["files"].tolist()]
    same = np.array([k[1] == s and k[2] == m for k, s, m in zip(now, z["size"].tolist(), z["mtime"].tolist(),
                                                                  strict=True)], bool)
    learnt = 0
    for n in np.flatnonzero(same[z["a"]] & same[z["b"]] if z["a"].size else np.zeros(0, bool)).tolist():
        check = PairCheck(**{f: z[f][n].item() for f in _EVIDENCE_FIELDS}, error=str(z["error"][n]))
        checker._pairs[(now[int(z["a"][n])], now[int(z["b"][n])])] = check
        learnt += 1
    return learnt


#: below this many pairs to check, verify_pairs works in its own process (starting workers costs ~1 s)
PARALLEL_MIN_PAIRS = 400
#: pairs per task handed to a worker process (each worker works through one run of locality_order's pairs)
PARALLEL_CHUNK = 64

_worker_checker: Checker | None = None


def _worker_init(floor: float) -> None:
    import cv2

    global _worker_checker
    cv2.setNumThreads(1)  # one process per core already
    _worker_checker = Checker(floor=floor)


def _worker_chunk(pairs: list[tuple[str, str]]) -> list[PairCheck]:
    assert _worker_checker is not None
    return [_worker_checker.check(a, b) for a, b in pairs]


def default_workers() -> int:
    """Worker processes for verify_pairs: the cores this process may use, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def verify_pairs(pairs: Sequence[tuple[str, str]], checker: Checker | None = None, *,
                 progress: ProgressFn | None = None, should_stop: ShouldStopFn | None = None,
                 workers: int | None = None, keep: Callable[[int, PairCheck], None] | None = None,
                 min_parallel: int = PARALLEL_MIN_PAIRS) -> list[PairCheck]:
    """The evidence about each pair of files (a list as long as ``pairs``). With ``workers`` > 1 (default:
    :func:`default_workers`) and at least ``min_parallel`` pairs, the pairs are checked by that many
    processes (:func:`_verify_parallel`; the verdicts are the same: each check is deterministic given its
    two images and the checker's first-test floor). ``checker`` answers the pairs it has seen and learns the new ones; ``keep(n,
    check)`` is called as each pair's evidence arrives, so that a caller keeps what was checked when
    ``should_stop()`` stops the work (Cancelled is raised then)."""
    report, stop = resolve(progress, should_stop)
    checker = checker or Checker()
    out: list[PairCheck | None] = [None] * len(pairs)

    def done(n: int, c: PairCheck) -> None:
        out[n] = c
        checker.remember(pairs[n][0], pairs[n][1], c)
        if keep is not None:
            keep(n, c)

    todo = []
    for n, (a, b) in enumerate(pairs):
        known = checker.known(a, b)
        if known is not None:
            done(n, known)
        else:
            todo.append(n)
    workers = default_workers() if workers is None else max(1, int(workers))
    if workers > 1 and len(todo) >= max(min_parallel, 2):
        _verify_parallel(pairs, todo, workers, checker.floor, done, report, stop)
        for n in [n for n in todo if out[n] is None]:  # none: each chunk comes back once (a safety net)
            done(n, checker.check(*pairs[n]))
    else:
        for x, n in enumerate(todo):
            if x % 16 == 0:
                if stop():
                    raise Cancelled("verification stopped")
                report(x, len(todo), "verifying candidate pairs")
            done(n, checker.check(*pairs[n]))
    report(len(todo), len(todo), "verifying candidate pairs")
    return [c for c in out if c is not None]


def locality_order(pairs: Sequence[tuple[str, str]], todo: Sequence[int]) -> list[int]:
    """``todo`` (indices into ``pairs``) reordered so that pairs sharing a file come close together: the
    files are numbered in breadth-first order over the graph the pairs make, and the pairs sorted by their
    files' numbers (the lower first). Cut into runs, each run then holds few files another run needs, and a
    worker's cache of decoded files rarely has to decode one twice."""
    from collections import deque

    node: dict[str, int] = {}
    for n in todo:
        for f in pairs[n]:
            node.setdefault(f, len(node))
    nbrs: list[list[int]] = [[] for _ in node]
    ends = [(node[pairs[n][0]], node[pairs[n][1]]) for n in todo]
    for a, b in ends:
        nbrs[a].append(b)
        nbrs[b].append(a)
    rank = [-1] * len(node)
    seen = 0
    for root in range(len(node)):
        if rank[root] >= 0:
            continue
        rank[root] = seen
        seen += 1
        queue = deque([root])
        while queue:
            for x in nbrs[queue.popleft()]:
                if rank[x] < 0:
                    rank[x] = seen
                    seen += 1
                    queue.append(x)
    keys = [(min(rank[a], rank[b]), max(rank[a], rank[b])) for a, b in ends]
    return [todo[x] for x in sorted(range(len(todo)), key=keys.__getitem__)]


def _verify_parallel(pairs: Sequence[tuple[str, str]], todo: list[int], workers: int, floor: float,
                     done: Callable[[int, PairCheck], None], report: Callable[[int, int, str], None],
                     stop: Callable[[], bool]) -> None:
    """verify_pairs' worker processes (spawned: safe beside the window's threads). The pairs, in
    :func:`locality_order`, are cut into one run per worker, each worker its own process and cache: a file
    is decoded and described by one worker, mostly once. A worker done with its run takes over the second
    half of the not yet started chunks of the one with most left (the first test settles pairs at very
    different costs)."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ordered = locality_order(pairs, todo)
    per = -(-len(ordered) // workers)
    runs = [ordered[x:x + per] for x in range(0, len(ordered), per)]
    finished = 0
    report(0, len(todo), "verifying candidate pairs")
    context = multiprocessing.get_context("spawn")
    pools = [ProcessPoolExecutor(1, mp_context=context, initializer=_worker_init, initargs=(floor,))
             for _ in runs]
    queued: list[list[tuple[Any, list[int]]]] = [[] for _ in runs]  # each worker's chunks, in order
    running: dict[Any, tuple[int, list[int]]] = {}

    def submit(w: int, chunk: list[int]) -> None:
        fut = pools[w].submit(_worker_chunk, [tuple(pairs[n]) for n in chunk])
        queued[w].append((fut, chunk))
        running[fut] = (w, chunk)

    def steal(idle: int) -> None:
        """Hand the idle worker the not yet started second half of the busiest one's chunks."""
        busy = max(range(len(pools)), key=lambda w: len(queued[w]))
        tail = queued[busy][len(queued[busy]) // 2 + 1:]
        taken = [(f, c) for f, c in tail if f.cancel()]
        for f, c in taken:
            queued[busy].remove((f, c))
            running.pop(f)
        for _, c in taken:
            submit(idle, c)

    try:
        for w, run in enumerate(runs):
            for x in range(0, len(run), PARALLEL_CHUNK):  # one worker each: its chunks in this order
                submit(w, run[x:x + PARALLEL_CHUNK])
        while running:
            ready, _ = wait(running, timeout=0.25, return_when=FIRST_COMPLETED)
            if stop():
                raise Cancelled("verification stopped")
            for fut in ready:
                w, chunk = running.pop(fut)
                queued[w] = [(f, c) for f, c in queued[w] if f is not fut]
                for n, c in zip(chunk, fut.result(), strict=True):
                    done(n, c)
                finished += len(chunk)
                report(finished, len(todo), "verifying candidate pairs")
            for w in range(len(pools)):
                if not queued[w] and running:
                    steal(w)
    finally:
        for fut in running:
            fut.cancel()
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)


# --- what the pixels say about which file came first (the keep-best rule of engine.duplicates) ----
#: a lossless file whose 8 x 8 grid holds this much more contrast than the rest was decoded from a JPEG
BLOCKING_RATIO = 1.15
#: an image has no detail beyond a smaller one when shrinking it to that size and back keeps this
#: share of its band-pass energy or more (chosen with RESAMPLING_PEAK on the training species of cub100:
#: benchmarks/duplicates.py --calibrate-upscaling)
UPSCALED_KEEPS = 0.93
#: ... or when its second derivative's strength varies with the period an enlargement from that size
#: leaves (resampling_peak) this many times more than at the frequencies around
RESAMPLING_PEAK = 5.0
LOSSLESS_FORMATS = frozenset({"PNG", "TIFF", "BMP", "WEBP", "PPM", "GIF"})


def _grey_full(path: str | os.PathLike) -> np.ndarray:
    from engine.images import load_image

    return np.asarray(load_image(path).convert("L"), np.float32)


def jpeg_blocking(path: str | os.PathLike) -> float:
    """How much more the pixel differences across one phase of an 8-pixel grid exceed the others
    (the best phase, either axis): ~1.0 for a camera or lossless picture, > BLOCKING_RATIO for one that
    was a JPEG once (a decoded JPEG saved as PNG keeps its blocks, even mirrored)."""
    g = _grey_full(path)
    out = 1.0
    for d in (np.abs(np.diff(g, axis=1)).mean(0), np.abs(np.diff(g, axis=0)).mean(1)):
        if d.size < 32:
            continue
        phase = np.array([d[p::8].mean() for p in range(8)])
        rest = (phase.sum() - phase.max()) / 7
        out = max(out, float(phase.max() / max(rest, 1e-6)))
    return out


def image_format(path: str | os.PathLike) -> str:
    """The format PIL reads in the file's header ('' when unreadable)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return str(im.format or "")
    except Exception:
        return ""


def reencoded_from(path_x: str | os.PathLike, path_y: str | os.PathLike) -> bool:
    """Both JPEGs of one size: is x a re-encoding of y? Each is saved again with the other's quantisation
    tables; the one that comes out closer to its own file was made that way (a re-encoding is
    reproduced almost exactly; the original is not, its own first compression is lost)."""
    import io

    from PIL import Image

    def again(src: str | os.PathLike, like: str | os.PathLike) -> float:
        with Image.open(like) as ref:
            tables = ref.quantization
            target = np.asarray(ref.convert("RGB"), np.float32)
        with Image.open(src) as im:
            buf = io.BytesIO()
            im.convert("RGB").save(buf, "JPEG", qtables=tables, subsampling=2)
        with Image.open(buf) as back:
            redone = np.asarray(back.convert("RGB"), np.float32)
        return float(np.abs(redone - target).mean()) if redone.shape == target.shape else np.inf

    try:
        return again(path_y, path_x) < 0.5 * again(path_x, path_y)
    except Exception as exc:
        log.debug("no re-encoding test for %s / %s: %s", path_x, path_y, exc)
        return False


def resampling_peak(grey: np.ndarray, smaller_side: int) -> float:
    """How strongly the image was interpolated from ``smaller_side`` pixels on its long side: an
    enlargement by s puts each new pixel at a fractional position of the old grid that cycles with
    frequency 1/s (folded to 0..0.5 cycles per pixel), and the strength of the second derivative cycles
    with it (Gallagher, "Detection of linear and cubic interpolation in JPEG compressed images", 2005).
    Returns the spectrum of the row- (column-) averaged |second derivative| at that frequency over its
    median around it (+-0.06, JPEG's 8-pixel harmonics left out), the geometric mean of both axes; 0 when
    the frequency falls on a JPEG harmonic (blocks cycle there too: no evidence either way)."""
    h, w = grey.shape
    fp = (smaller_side / max(h, w)) % 1.0
    fp = min(fp, 1.0 - fp)
    if min(abs(fp - j / 8) for j in range(5)) < 2.5 / max(h, w) or min(h, w) < 32:
        return 0.0
    out = []
    for v in (np.abs(np.diff(grey, 2, axis=1)).mean(0), np.abs(np.diff(grey, 2, axis=0)).mean(1)):
        n = v.size
        spec = np.abs(np.fft.rfft((v - v.mean()) * np.hanning(n)))
        f = np.fft.rfftfreq(n)
        k = int(round(fp * n))
        near = (np.abs(f - fp) < 0.06) & (np.abs(f - fp) > 2.5 / n)
        for j in range(1, 5):
            near &= np.abs(f - j / 8) > 2.5 / n
        if not near.any():
            return 0.0
        out.append(spec[max(0, k - 1):k + 2].max() / (np.median(spec[near]) + 1e-9))
    return float(np.sqrt(out[0] * out[1]))


def band_kept(grey: np.ndarray, smaller_side: int) -> float:
    """The share of the image's band-pass energy it keeps when shrunk to ``smaller_side`` pixels on its
    long side and enlarged back (1.0: it has no detail beyond that size; 0.0 when it has no such band)."""
    import cv2

    h, w = grey.shape
    f = smaller_side / max(h, w)
    small = cv2.resize(grey, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    back = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    hp = grey - cv2.GaussianBlur(grey, (0, 0), 1.0 / max(f, 1e-3))
    lost = grey - back
    energy = float((hp * hp).mean())
    return 1.0 - float((lost * lost).mean()) / energy if energy > 0 else 0.0


def upscaled_from(path_x: str | os.PathLike, smaller_side: int) -> bool:
    """Is x an enlargement of a picture of ``smaller_side`` pixels on its long side? Either it has no detail
    beyond that size (:func:`band_kept` >= UPSCALED_KEEPS), or the interpolation's period shows
    (:func:`resampling_peak` >= RESAMPLING_PEAK: a JPEG's noise reads as detail, but keeps that period)."""
    g = _grey_full(path_x)
    if smaller_side / max(g.shape) >= 0.95:
        return False
    return resampling_peak(g, smaller_side) >= RESAMPLING_PEAK or band_kept(g, smaller_side) >= UPSCALED_KEEPS


def filled_corners(path: str | os.PathLike) -> bool:
    """Are at least three corners of the image a flat fill (black or white), as a rotation that keeps its
    frame leaves them? (A small square at each corner, every pixel <= 8 or every pixel >= 247.)"""
    g = _grey_full(path)
    h, w = g.shape
    k = max(2, min(h, w) // 60)
    corners = (g[:k, :k], g[:k, -k:], g[-k:, :k], g[-k:, -k:])
    return sum(bool((c <= 8).all() or (c >= 247).all()) for c in corners) >= 3
