"""Proposal recall exactly as Detectron scores RPN models (AR@100/1000 per area range).

Detectron does not use COCOeval for proposals but its own greedy matcher,
``datasets/json_dataset_evaluator.py::evaluate_box_proposals``, called by
``core/rpn_generator.py::evaluate_proposal_file`` through
``datasets/task_evaluation.py::evaluate_box_proposals``:

* the roidb is ``get_roidb(gt=True, proposal_file=...)``: ground truth by Detectron's roidb
  rules (``rcnn.data.roidb.gt_roidb``), proposals clipped / de-duplicated / with sides > 2 px
  (``rcnn.data.proposal_file.image_proposals``, no limit there);
* positives are non-crowd ground truth whose ``area`` field (the segmentation area, not the
  box's) lies in the closed range ``[lo, hi]``: all ``[0, 1e10]``, small ``[0, 32^2]``,
  medium ``[32^2, 96^2]``, large ``[96^2, 1e10]``; crowd boxes are neither positives nor
  excluded proposals;
* the first ``limit`` proposals of an image (score order) are matched greedily: repeatedly the
  positive with the highest float32 IoU (``cython_bbox.bbox_overlaps``, +1 widths) to any unused
  proposal takes it (``argmax``: first index on ties), for ``min(#proposals, #positives)``
  rounds; unmatched positives count IoU 0; an image without proposals adds its positives
  to the count only;
* recall at each IoU threshold of ``arange(0.5, 0.95 + 1e-5, 0.05)`` is
  ``count(IoU >= t) / num_pos`` (float64), AR their NumPy mean; with no positive in a range
  it is NaN (0 / 0.0), as in Detectron.

This module does the same NumPy operations in the same order, so the numbers are
bit-identical (``tests/fixtures/golden/proposals_eval.json``).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

logger = logging.getLogger(__name__)

# Detectron's names, in its result order (task_evaluation._empty_box_proposal_results).
AR_NAMES = ("AR@100", "ARs@100", "ARm@100", "ARl@100", "AR@1000", "ARs@1000", "ARm@1000", "ARl@1000")
AREA_RANGES = {"all": (0**2, 1e5**2), "small": (0**2, 32**2), "medium": (32**2, 96**2), "large": (96**2, 1e5**2),
               "96-128": (96**2, 128**2), "128-256": (128**2, 256**2), "256-512": (256**2, 512**2),
               "512-inf": (512**2, 1e5**2)}
_SUFFIX = {"all": "", "small": "s", "medium": "m", "large": "l"}


class GroundTruth(Protocol):
    """What the evaluator reads of a roidb entry (``rcnn.data.roidb.RoidbEntry`` has it)."""

    boxes: np.ndarray        # (G, 4) float32
    gt_classes: np.ndarray   # (G,) int32, > 0
    is_crowd: np.ndarray     # (G,) bool
    seg_areas: np.ndarray    # (G,) float32


@dataclass(frozen=True)
class ProposalStats:
    """Detectron's ``box_proposal`` results: :data:`AR_NAMES` and their values."""

    stats: tuple[float, ...]

    def __getitem__(self, name: str) -> float:
        return self.stats[AR_NAMES.index(name)]

    def to_dict(self) -> dict[str, Any]:
        """``{"names", "stats"}`` with NaN (no positive in a range) written as ``null``."""
        return {"names": list(AR_NAMES), "stats": [None if np.isnan(v) else v for v in self.stats]}

    def lines(self) -> list[str]:
        """Detectron's ``log_box_proposal_results`` lines."""
        pad = max(len(k) for k in AR_NAMES)
        return [f"{k.ljust(pad)}: {v:.3f}" for k, v in zip(AR_NAMES, self.stats)]


def _overlaps(boxes: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    import torch

    from rcnn.ops.boxes import pairwise_iou

    return pairwise_iou(torch.from_numpy(boxes), torch.from_numpy(gt_boxes)).numpy()


def _greedy_coverage(overlaps: np.ndarray) -> np.ndarray:
    """Per matching round, the IoU with which the best-covered positive is covered."""
    overlaps = overlaps.copy()
    covered = np.zeros(overlaps.shape[1])
    for j in range(min(overlaps.shape)):
        best = overlaps.max(axis=0)
        gt = best.argmax()
        box = overlaps[:, gt].argmax()
        covered[j] = overlaps[box, gt]
        overlaps[box, :] = -1
        overlaps[:, gt] = -1
    return covered


def box_proposal_recall(gt: Sequence[GroundTruth], proposals: Sequence[np.ndarray], area: str = "all",
                        limit: int | None = None, thresholds: np.ndarray | None = None,
                        class_specific: bool = False) -> dict[str, Any]:
    """``evaluate_box_proposals`` for one area range and proposal limit.

    ``proposals[i]`` are image i's (R, 4) float32 proposals after ``image_proposals``.
    Returns ``{'ar', 'recalls', 'thresholds', 'gt_overlaps', 'num_pos'}`` like Detectron.
    ``class_specific`` keeps Detectron's indexing, which reads the classes of the first
    positives of the image rather than of the area-filtered ones.
    """
    lo, hi = AREA_RANGES[area]
    gt_overlaps = np.zeros(0)
    gt_classes = np.zeros(0)
    num_pos = 0
    for entry, boxes in zip(gt, proposals, strict=True):
        positive = np.flatnonzero((entry.gt_classes > 0) & (entry.is_crowd == 0))
        areas = entry.seg_areas[positive]
        in_range = np.flatnonzero((areas >= lo) & (areas <= hi))
        gt_boxes = entry.boxes[positive][in_range]
        gt_classes = np.hstack((gt_classes, entry.gt_classes[in_range]))
        num_pos += len(in_range)
        if boxes.shape[0] == 0:
            continue
        if limit is not None and boxes.shape[0] > limit:
            boxes = boxes[:limit]
        overlaps = _overlaps(boxes.astype(np.float32, copy=False), gt_boxes.astype(np.float32, copy=False))
        gt_overlaps = np.hstack((gt_overlaps, _greedy_coverage(overlaps)))

    if thresholds is None:
        thresholds = np.arange(0.5, 0.95 + 1e-5, 0.05)
    with np.errstate(divide="ignore", invalid="ignore"):
        if not class_specific:
            gt_overlaps = np.sort(gt_overlaps)
            recalls = np.zeros_like(thresholds)
            for i, t in enumerate(thresholds):
                recalls[i] = (gt_overlaps >= t).sum() / float(num_pos)
            ar = recalls.mean()
        else:
            classes = np.unique(gt_classes)
            recalls = np.zeros((classes.shape[0], thresholds.shape[0]))
            for i, c in enumerate(classes):
                inds = gt_classes == c
                for j, t in enumerate(thresholds):
                    recalls[i][j] = (gt_overlaps[inds] >= t).sum() / float(inds.sum())
            ar = recalls.mean(axis=1).mean()
    return {"ar": ar, "recalls": recalls, "thresholds": thresholds, "gt_overlaps": gt_overlaps, "num_pos": num_pos}


def box_proposal_stats(gt: Sequence[GroundTruth], proposals: Sequence[np.ndarray],
                       class_specific: bool = False) -> ProposalStats:
    """The 8 numbers of Detectron's ``task_evaluation.evaluate_box_proposals``."""
    values = {}
    for limit in (100, 1000):
        for area, suffix in _SUFFIX.items():
            values[f"AR{suffix}@{limit}"] = float(box_proposal_recall(gt, proposals, area, limit,
                                                                      class_specific=class_specific)["ar"])
    return ProposalStats(tuple(values[k] for k in AR_NAMES))


def evaluate_proposal_file(dataset: Any, proposal_file: str | os.PathLike, image_ids: Sequence[int] | None = None,
                           class_specific: bool = False) -> ProposalStats:
    """Score a Detectron proposal file against a ``rcnn.data.datasets.COCODataset``
    (``core/rpn_generator.py::evaluate_proposal_file``).

    ``image_ids`` restricts the evaluation (default: every image of the dataset, all of which
    must have proposals). Bad files raise ``rcnn.data.proposal_file.ProposalFileError`` with a one-line message.
    """
    from rcnn.data.proposal_file import proposals_for_images, read_proposal_file
    from rcnn.data.roidb import gt_entry

    ids = list(dataset.image_ids if image_ids is None else image_ids)
    gt = [gt_entry(dataset, i) for i in ids]
    props = proposals_for_images(read_proposal_file(proposal_file), [(e.image_id, e.height, e.width) for e in gt],
                                 os.fspath(proposal_file))
    return box_proposal_stats(gt, [props[i] for i in ids], class_specific)
