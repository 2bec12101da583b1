"""Per-detection parity between two COCO result files (e.g. Detectron's published
results of a zoo model and ours from the converted weights).

AP can agree to 0.1 while individual detections move; matching detections one to one is
the sharper oracle. Within each (image, category), pairs whose similarity (box IoU, mask
IoU, or an OKS-like keypoint similarity) reaches ``min_iou`` are matched greedily from the
most similar pair down. The report gives the fraction of each side matched, how far
matched pairs differ (1 - IoU, |score difference|, keypoint distance: median, p99, max),
how many are identical, and the worst images.

Everything is vectorised over all pairs of all images with NumPy (processed in chunks
to bound memory); only mask IoU loops over (image, category) groups, calling
``pycocotools.mask.iou`` once per group.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from detectron_parity.fileio import InputError
from parity.records import IOU_TYPES, NUM_KEYPOINTS, infer_iou_types, load_gt, load_results, validate_results

log = logging.getLogger(__name__)

# COCOeval's default keypoint OKS sigmas (pycocotools Params.setKpParams).
OKS_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10.0
_PAIR_CHUNK = 1 << 21  # pairs per vectorised chunk (bounds memory to a few tens of MB)


@dataclass(frozen=True)
class Distribution:
    """Median, 99th percentile and maximum of a non-negative difference (NaN if empty)."""

    count: int
    median: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: np.ndarray) -> Distribution:
        if values.size == 0:
            return cls(0, math.nan, math.nan, math.nan)
        return cls(int(values.size), float(np.median(values)), float(np.percentile(values, 99)), float(values.max()))


@dataclass(frozen=True)
class ImageReport:
    """Matching summary of one image (NaN where it has no matched pair)."""

    image_id: int
    n_a: int
    n_b: int
    matched: int
    min_iou: float
    max_score_diff: float

    @property
    def unmatched(self) -> int:
        return self.n_a + self.n_b - 2 * self.matched


@dataclass
class MatchReport:
    """Result of :func:`match_records`. ``iou_deficit`` is 1 - IoU of matched pairs
    (1 - the OKS-like similarity for keypoints)."""

    iou_type: str
    min_iou: float
    n_a: int
    n_b: int
    matched: int
    identical: int
    iou_deficit: Distribution
    score_diff: Distribution
    keypoint_distance: Distribution | None
    worst_images: list[ImageReport]

    @property
    def frac_matched_a(self) -> float:
        return self.matched / self.n_a if self.n_a else 1.0

    @property
    def frac_matched_b(self) -> float:
        return self.matched / self.n_b if self.n_b else 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN becomes ``None``)."""
        out = asdict(self)
        out["frac_matched_a"], out["frac_matched_b"] = self.frac_matched_a, self.frac_matched_b
        return _nan_to_none(out)

    def lines(self, name_a: str = "A", name_b: str = "B") -> list[str]:
        """Human-readable report."""
        what = {"bbox": "box 1-IoU", "segm": "mask 1-IoU", "keypoints": "keypoint 1-similarity"}[self.iou_type]
        lines = [
            f"{self.iou_type}: A = {name_a} ({self.n_a} detections), B = {name_b} ({self.n_b} detections)",
            f"matched one-to-one (same image and class, similarity >= {self.min_iou:g}): {self.matched} pairs = "
            f"{100 * self.frac_matched_a:.2f}% of A, {100 * self.frac_matched_b:.2f}% of B; identical pairs: {self.identical}",
            f"{'':<24}{'median':>12}{'p99':>12}{'max':>12}",
        ]
        dists = [(what, self.iou_deficit), ("|score difference|", self.score_diff)]
        if self.keypoint_distance is not None:
            dists.append(("keypoint distance (px)", self.keypoint_distance))
        for name, d in dists:
            lines.append(f"{name:<24}{d.median:>12.6g}{d.p99:>12.6g}{d.max:>12.6g}")
        if self.worst_images:
            lines.append(f"worst images: {'image_id':>12}{'A':>6}{'B':>6}{'matched':>9}{'unmatched':>11}"
                         f"{'min IoU':>10}{'max |ds|':>10}")
            for im in self.worst_images:
                lines.append(f"{'':<14}{im.image_id:>12}{im.n_a:>6}{im.n_b:>6}{im.matched:>9}{im.unmatched:>11}"
                             f"{im.min_iou:>10.4f}{im.max_score_diff:>10.4f}")
        return lines


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


@dataclass
class _Side:
    """Arrays of one result file, sorted by (image, category) group."""

    image: np.ndarray
    group: np.ndarray
    score: np.ndarray
    geometry: Any  # (N, 4) boxes, list of RLE dicts, or (N, 17, 3) keypoints
    start: np.ndarray  # first row of each group
    count: np.ndarray  # rows per group


def _columns(records: Sequence[Mapping], iou_type: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
    n = len(records)
    image = np.fromiter((r["image_id"] for r in records), np.int64, n)
    category = np.fromiter((r["category_id"] for r in records), np.int64, n)
    score = np.fromiter((r["score"] for r in records), np.float64, n)
    if iou_type == "bbox":
        geometry = np.array([r["bbox"] for r in records], np.float64).reshape(n, 4)
    elif iou_type == "segm":
        geometry = [r["segmentation"] for r in records]
    else:
        geometry = np.array([r["keypoints"] for r in records], np.float64).reshape(n, NUM_KEYPOINTS, 3)
    return image, category, score, geometry


def _take(geometry: Any, order: np.ndarray) -> Any:
    return [geometry[i] for i in order] if isinstance(geometry, list) else geometry[order]


def _sides(records_a: Sequence[Mapping], records_b: Sequence[Mapping], iou_type: str) -> tuple[_Side, _Side]:
    """Both sides sorted by a shared (image, category) group code."""
    cols = [_columns(records_a, iou_type), _columns(records_b, iou_type)]
    _, image_code = np.unique(np.concatenate([cols[0][0], cols[1][0]]), return_inverse=True)
    cats, cat_code = np.unique(np.concatenate([cols[0][1], cols[1][1]]), return_inverse=True)
    groups, group_code = np.unique(image_code.astype(np.int64) * len(cats) + cat_code, return_inverse=True)
    sides = []
    split = len(records_a)
    for (image, _, score, geometry), code in zip(cols, (group_code[:split], group_code[split:])):
        order = np.argsort(code, kind="stable")
        count = np.bincount(code, minlength=len(groups))
        sides.append(_Side(image[order], code[order], score[order], _take(geometry, order),
                           np.cumsum(count) - count, count))
    return sides[0], sides[1]


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of paired COCO [x, y, w, h] boxes (no +1, as pycocotools). Areas are taken
    from the corners so that identical boxes give exactly 1."""
    a_x2, a_y2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    b_x2, b_y2 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(a_x2, b_x2) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a_y2, b_y2) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    union = (a_x2 - a[:, 0]) * (a_y2 - a[:, 1]) + (b_x2 - b[:, 0]) * (b_y2 - b[:, 1]) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _keypoint_area(kps: np.ndarray) -> np.ndarray:
    """Area of the keypoints' bounding box, the object scale ``COCO.loadRes`` gives results."""
    return np.ptp(kps[..., 0], axis=-1) * np.ptp(kps[..., 1], axis=-1)


def _keypoint_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """OKS of paired keypoint sets with COCO sigmas, all 17 points counted, the object
    area being the mean of both keypoint-box areas (symmetric in A and B)."""
    d2 = ((a[..., :2] - b[..., :2]) ** 2).sum(-1)
    area = 0.5 * (_keypoint_area(a) + _keypoint_area(b)) + np.spacing(1)
    e = d2 / ((2 * OKS_SIGMAS) ** 2) / area[:, None] / 2
    return np.exp(-e).mean(-1)


def _candidate_pairs(a: _Side, b: _Side, iou_type: str, min_iou: float, progress: bool) -> tuple[np.ndarray, ...]:
    """(row in A, row in B, similarity) of every same-group pair with similarity >= min_iou."""
    if iou_type == "segm":
        return _mask_pairs(a, b, min_iou, progress)
    nb = b.count[a.group]
    ends = np.cumsum(nb)
    out_a, out_b, out_s = [], [], []
    cuts = np.searchsorted(ends, np.arange(_PAIR_CHUNK, int(ends[-1]) if len(ends) else 0, _PAIR_CHUNK), side="right")
    bounds = [0, *cuts.tolist(), len(nb)]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if lo == hi:
            continue
        reps = nb[lo:hi]
        pa = np.repeat(np.arange(lo, hi), reps)
        first = np.cumsum(reps) - reps
        pb = np.repeat(b.start[a.group[lo:hi]], reps) + np.arange(len(pa)) - np.repeat(first, reps)
        if iou_type == "bbox":
            sim = _box_iou(a.geometry[pa], b.geometry[pb])
        else:
            sim = _keypoint_similarity(a.geometry[pa], b.geometry[pb])
        keep = sim >= min_iou
        out_a.append(pa[keep])
        out_b.append(pb[keep])
        out_s.append(sim[keep])
    return _concat_pairs(out_a, out_b, out_s)


def _mask_pairs(a: _Side, b: _Side, min_iou: float, progress: bool) -> tuple[np.ndarray, ...]:
    from pycocotools import mask as mask_util
    from tqdm import tqdm

    groups = np.flatnonzero((a.count > 0) & (b.count > 0))
    out_a, out_b, out_s = [], [], []
    for g in tqdm(groups, desc="mask IoU", unit="group", disable=None if progress else True, leave=False):
        sa, na, sb, nb = a.start[g], a.count[g], b.start[g], b.count[g]
        ious = np.asarray(mask_util.iou(a.geometry[sa:sa + na], b.geometry[sb:sb + nb], [0] * nb)).reshape(na, nb)
        ra, rb = np.nonzero(ious >= min_iou)
        out_a.append(ra + sa)
        out_b.append(rb + sb)
        out_s.append(ious[ra, rb])
    return _concat_pairs(out_a, out_b, out_s)


def _concat_pairs(out_a: list, out_b: list, out_s: list) -> tuple[np.ndarray, ...]:
    """(rows in A, rows in B, similarities) from per-chunk lists; empty arrays for no chunk."""
    if not out_a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(out_a), np.concatenate(out_b), np.concatenate(out_s)


def greedy_match(pa: np.ndarray, pb: np.ndarray, sim: np.ndarray) -> np.ndarray:
    """One-to-one matching of candidate pairs, most similar first (ties: lower A row,
    then lower B row). Returns the indices of the accepted pairs.

    Vectorised as repeated mutual-best selection: a pair that is the best remaining pair
    of both its rows is exactly a pair sequential greedy takes, so each round accepts
    all such pairs at once and then drops the pairs touching a matched row.
    """
    order = np.lexsort((pb, pa, -sim))
    live = order
    accepted = []
    while live.size:
        _, first_a = np.unique(pa[live], return_index=True)
        _, first_b = np.unique(pb[live], return_index=True)
        best = np.intersect1d(live[first_a], live[first_b], assume_unique=True)
        accepted.append(best)
        used_a = np.isin(pa[live], pa[best])
        used_b = np.isin(pb[live], pb[best])
        live = live[~(used_a | used_b)]
    return np.concatenate(accepted) if accepted else np.zeros(0, np.int64)


def _same_geometry(a: _Side, b: _Side, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
    if isinstance(a.geometry, list):
        def rle(r: Mapping) -> tuple:
            counts = r["counts"]
            return tuple(r["size"]), counts.encode() if isinstance(counts, str) else counts
        return np.array([rle(a.geometry[i]) == rle(b.geometry[j]) for i, j in zip(rows_a, rows_b)], bool)
    axes = tuple(range(1, a.geometry.ndim))
    return (a.geometry[rows_a] == b.geometry[rows_b]).all(axis=axes)


def _worst_images(a: _Side, b: _Side, rows_a: np.ndarray, pair_sim: np.ndarray, score_diff: np.ndarray,
                  worst: int) -> list[ImageReport]:
    """Images with unmatched detections or imperfect pairs, worst first: most unmatched,
    then lowest pair similarity, then largest score difference."""
    images, code = np.unique(np.concatenate([a.image, b.image]), return_inverse=True)
    code_a, code_b = code[: len(a.image)], code[len(a.image):]
    n = len(images)
    n_a = np.bincount(code_a, minlength=n)
    n_b = np.bincount(code_b, minlength=n)
    matched = np.bincount(code_a[rows_a], minlength=n)
    min_sim = np.full(n, np.inf)
    np.minimum.at(min_sim, code_a[rows_a], pair_sim)
    max_sd = np.full(n, -np.inf)
    np.maximum.at(max_sd, code_a[rows_a], score_diff)
    min_sim[np.isinf(min_sim)] = np.nan
    max_sd[np.isinf(max_sd)] = np.nan
    unmatched = n_a + n_b - 2 * matched
    bad = np.flatnonzero((unmatched > 0) | (np.nan_to_num(min_sim, nan=1.0) < 1) | (np.nan_to_num(max_sd) > 0))
    order = np.lexsort((-np.nan_to_num(max_sd[bad]), np.nan_to_num(min_sim[bad], nan=-1.0), -unmatched[bad]))
    return [ImageReport(int(images[i]), int(n_a[i]), int(n_b[i]), int(matched[i]), float(min_sim[i]), float(max_sd[i]))
            for i in bad[order[:worst]]]


def match_records(records_a: Sequence[Mapping], records_b: Sequence[Mapping], iou_type: str,
                  min_iou: float = 0.5, min_score: float = 0.0, worst: int = 10,
                  progress: bool = False) -> MatchReport:
    """Match two lists of COCO result records of type ``iou_type`` (see module doc).

    Records below ``min_score`` are dropped first on both sides. Records are assumed
    valid (see :func:`parity.records.validate_results`).
    """
    if iou_type not in IOU_TYPES:
        raise InputError(f"unknown match type {iou_type!r}")
    if min_score > 0:
        records_a = [r for r in records_a if r["score"] >= min_score]
        records_b = [r for r in records_b if r["score"] >= min_score]
    a, b = _sides(records_a, records_b, iou_type)
    pa, pb, sim = _candidate_pairs(a, b, iou_type, min_iou, progress)
    best = greedy_match(pa, pb, sim)
    rows_a, rows_b, pair_sim = pa[best], pb[best], sim[best]
    score_diff = np.abs(a.score[rows_a] - b.score[rows_b])
    kp_dist = None
    if iou_type == "keypoints":
        kp_dist = np.sqrt(((a.geometry[rows_a, :, :2] - b.geometry[rows_b, :, :2]) ** 2).sum(-1)).mean(-1)
    identical = int(np.count_nonzero((score_diff == 0) & _same_geometry(a, b, rows_a, rows_b)))
    return MatchReport(
        iou_type=iou_type, min_iou=min_iou, n_a=len(a.score), n_b=len(b.score), matched=len(rows_a),
        identical=identical, iou_deficit=Distribution.of(1.0 - pair_sim), score_diff=Distribution.of(score_diff),
        keypoint_distance=None if kp_dist is None else Distribution.of(kp_dist),
        worst_images=_worst_images(a, b, rows_a, pair_sim, score_diff, worst),
    )


def match_files(path_a: str | os.PathLike, path_b: str | os.PathLike, iou_type: str | None = None,
                ann: str | os.PathLike | None = None, **kwargs: Any) -> MatchReport:
    """Load, validate (against ``ann`` when given) and match two result files.

    ``iou_type`` defaults to the most specific type both files hold (keypoints, then
    segm, then bbox); ``kwargs`` go to :func:`match_records`.
    """
    records_a, records_b = load_results(path_a), load_results(path_b)
    if iou_type is None:
        in_b = infer_iou_types(records_b, str(path_b))
        common = [t for t in infer_iou_types(records_a, str(path_a)) if t in in_b]
        if not common:
            raise InputError(f"{path_a} and {path_b} hold different result types")
        iou_type = common[-1]
    gt = load_gt(ann) if ann is not None else None
    validate_results(records_a, gt, iou_type, str(path_a))
    validate_results(records_b, gt, iou_type, str(path_b))
    log.info("matching %d and %d %s records", len(records_a), len(records_b), iou_type)
    return match_records(records_a, records_b, iou_type, **kwargs)
