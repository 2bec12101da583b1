"""Box post-processing: Detectron's ``core/test.py::box_results_with_nms_and_limit``.

Batched over the images of a forward pass. Per image and foreground class:
keep ``score > SCORE_THRESH`` (float32), Detectron NMS (``rcnn.ops.nms``), then
over all classes keep every detection scoring ``>=`` the ``DETECTIONS_PER_IM``-th
largest score (so exact ties at the cut can keep more). Output order is
Detectron's: by class, then by RoI order (descending RPN probability).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rcnn.ops.nms import batched_nms, sort_desc


@dataclass
class BoxDetections:
    """Detections of a batch, grouped by image: rows of image ``i`` are
    ``slice(offsets[i], offsets[i + 1])``."""

    boxes: Tensor     # (N, 4) float32, original-image coordinates
    scores: Tensor    # (N,) float32
    classes: Tensor   # (N,) int64, contiguous class index (1..K-1)
    offsets: list[int]
    image: Tensor | None = None   # (N,) int64 image of each row, on the device (no host round trip)


def box_results_with_nms_and_limit(
    scores: Tensor,
    boxes: Tensor,
    image_index: Tensor,
    num_images: int,
    score_thresh: float,
    nms_thresh: float,
    detections_per_im: int,
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
    keep = batched_nms(cand_boxes, cand_scores, image * num_classes + cls, nms_thresh)
    cand_scores, cand_boxes, cls, image = cand_scores[keep], cand_boxes[keep], cls[keep], image[keep]

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
