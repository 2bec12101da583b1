"""Box post-processing: Detectron's ``core/test.py::box_results_with_nms_and_limit``.

Batched over the images of a forward pass. Per image and foreground class:
keep ``score > SCORE_THRESH`` (float32), Detectron NMS (``rcnn.ops.nms``), then
over all classes keep every detection scoring ``>=`` the ``DETECTIONS_PER_IM``-th
largest score (so exact ties at the cut can keep more). Output order is
Detectron's: by class, then by RoI order (descending RPN probability).

``TEST.SOFT_NMS`` and ``TEST.BBOX_VOTE`` (``NmsVariants``) replace the NMS step by
Detectron's soft-NMS (``rcnn.ops.soft_nms``; a class's detections then come in the
order of its picks, with decayed scores) and/or refine the kept boxes by voting with
the class's candidates (``rcnn.ops.box_voting``), as ``box_results_with_nms_and_limit``
does; without them the computation is the plain one above.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from rcnn.ops.box_voting import box_voting
from rcnn.ops.nms import batched_nms, sort_desc
from rcnn.ops.soft_nms import soft_nms

logger = logging.getLogger(__name__)

# box_results_with_nms_and_limit calls soft_nms with this score threshold.
SOFT_NMS_SCORE_THRESH = 0.0001


@dataclass
class BoxDetections:
    """Detections of a batch, grouped by image: rows of image ``i`` are
    ``slice(offsets[i], offsets[i + 1])``."""

    boxes: Tensor     # (N, 4) float32, original-image coordinates
    scores: Tensor    # (N,) float32
    classes: Tensor   # (N,) int64, contiguous class index (1..K-1)
    offsets: list[int]
    image: Tensor | None = None   # (N,) int64 image of each row, on the device (no host round trip)


@dataclass(frozen=True)
class NmsVariants:
    """Detectron's ``TEST.SOFT_NMS`` / ``TEST.BBOX_VOTE`` choices (None: the option is off)."""

    soft_nms_method: str | None = None     # "linear" / "gaussian" (or "hard")
    soft_nms_sigma: float = 0.5
    vote_thresh: float | None = None
    vote_scoring: str = "ID"

    @classmethod
    def from_cfg(cls, cfg) -> NmsVariants | None:
        soft, vote = cfg.TEST.SOFT_NMS, cfg.TEST.BBOX_VOTE
        if not soft.ENABLED and not vote.ENABLED:
            return None
        if vote.ENABLED and vote.SCORING_METHOD_BETA != 1.0:
            # core/test.py never passes it: box_voting runs with its default beta=1.0.
            logger.warning("TEST.BBOX_VOTE.SCORING_METHOD_BETA=%s is ignored, as in Detectron (beta 1.0)",
                           vote.SCORING_METHOD_BETA)
        return cls(soft.METHOD if soft.ENABLED else None, soft.SIGMA,
                   vote.VOTE_TH if vote.ENABLED else None, vote.SCORING_METHOD)

    def suppress(self, boxes: Tensor, scores: Tensor, groups: Tensor,
                 nms_thresh: float) -> tuple[Tensor, Tensor, Tensor]:
        """Kept indices and their (possibly decayed, voted) scores and boxes."""
        if self.soft_nms_method is None:
            keep = batched_nms(boxes, scores, groups, nms_thresh)
            kept_scores = scores[keep]
        else:
            keep, kept_scores = soft_nms(boxes, scores, groups, self.soft_nms_sigma, nms_thresh,
                                         SOFT_NMS_SCORE_THRESH, self.soft_nms_method)
        kept_boxes = boxes[keep]
        if self.vote_thresh is not None:
            kept_boxes, kept_scores = box_voting(kept_boxes, kept_scores, groups[keep], boxes, scores, groups,
                                                 self.vote_thresh, self.vote_scoring)
        return keep, kept_scores, kept_boxes


def box_results_with_nms_and_limit(
    scores: Tensor,
    boxes: Tensor,
    image_index: Tensor,
    num_images: int,
    score_thresh: float,
    nms_thresh: float,
    detections_per_im: int,
    variants: NmsVariants | None = None,
) -> BoxDetections:
    """``scores`` (R, K) and class-tiled ``boxes`` (R, 4K) of RoIs grouped by image."""
    num_classes = scores.shape[1]
    thresh = torch.tensor(score_thresh, dtype=scores.dtype, device=scores.device)
    # Candidates in class-major, RoI-minor order (Detectron loops over classes).
    cls, roi = torch.nonzero(scores[:, 1:].t() > thresh, as_tuple=True)
    cls = cls + 1
    cand_scores = scores[roi, cls]
    cand_boxes = boxes.view(boxes.shape[0], num_classes, 4)[roi, cls]
    image = image_index[roi]
    if variants is None:
        keep = batched_nms(cand_boxes, cand_scores, image * num_classes + cls, nms_thresh)
        cand_scores, cand_boxes, cls, image = cand_scores[keep], cand_boxes[keep], cls[keep], image[keep]
    else:
        keep, cand_scores, cand_boxes = variants.suppress(cand_boxes, cand_scores, image * num_classes + cls,
                                                          nms_thresh)
        cls, image = cls[keep], image[keep]

    counts = torch.bincount(image, minlength=num_images)
    if detections_per_im > 0 and bool((counts > detections_per_im).any()):
        order = sort_desc(cand_scores)
        order = order[torch.sort(image[order], stable=True).indices]
        starts = torch.cumsum(counts, 0) - counts
        kth = order[(starts + detections_per_im - 1).clamp(max=max(len(order) - 1, 0))]
        image_thresh = torch.where(counts > detections_per_im, cand_scores[kth],
                                   torch.full_like(counts, -1, dtype=cand_scores.dtype))
        capped = cand_scores >= image_thresh[image]
        cand_scores, cand_boxes, cls, image = cand_scores[capped], cand_boxes[capped], cls[capped], image[capped]
        counts = torch.bincount(image, minlength=num_images)

    by_image = torch.sort(image, stable=True).indices
    offsets = [0] + torch.cumsum(counts, 0).tolist()
    return BoxDetections(cand_boxes[by_image], cand_scores[by_image], cls[by_image], offsets, image[by_image])
