"""Keypoint R-CNN training targets (``roi_data/keypoint_rcnn.py``, ``utils/keypoints.py``).

Keypoint RoIs are drawn *independently* of the box head's sample: every candidate
(ground truth and proposals) with IoU >= FG_THRESH whose best-overlapping ground truth
has at least one visible keypoint inside the candidate box, at most
``round(FG_FRACTION * BATCH_SIZE_PER_IM)`` per image. Each keypoint becomes one index
into the ``S x S`` heatmap for the spatial softmax loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class KeypointTargets:
    """RoIs of the keypoint head and their targets, for the whole minibatch.

    ``rois`` (N, 5) float32 ``[batch index, x1, y1, x2, y2]`` in scaled input coordinates;
    ``locations`` (N, J) int64 heatmap index ``y * S + x`` (0 where invalid);
    ``weights`` (N, J) float32, 1 for a visible keypoint inside its RoI, else 0.
    """

    rois: Tensor
    locations: Tensor
    weights: Tensor


def keypoints_within_boxes(keypoints: Tensor, boxes: Tensor) -> Tensor:
    """(N, J) bool: keypoint j of row n lies in box n, borders included (``_within_box``)."""
    x, y = keypoints[:, 0], keypoints[:, 1]
    return ((x >= boxes[:, 0:1]) & (x <= boxes[:, 2:3])
            & (y >= boxes[:, 1:2]) & (y <= boxes[:, 3:4]))


def keypoints_to_heatmap_labels(keypoints: Tensor, rois: Tensor, heatmap_size: int) -> tuple[Tensor, Tensor]:
    """Heatmap index and validity of each keypoint (``keypoints_to_heatmap_labels``).

    ``keypoints`` (N, 3, J) float32 rows (x, y, visibility) in original coordinates,
    ``rois`` (N, 4) float32. ``x_hm = floor((x - x1) * S / (x2 - x1))`` in float32 (no
    ``+1``); a keypoint exactly on ``x2`` (``y2``) maps to ``S - 1``. Valid when the index
    is inside ``[0, S)`` on both axes and the keypoint is visible.
    """
    x1, y1, x2, y2 = (rois[:, k:k + 1] for k in range(4))
    x, y = keypoints[:, 0], keypoints[:, 1]
    last = torch.tensor(heatmap_size - 1, dtype=rois.dtype, device=rois.device)
    x_hm = torch.where(x == x2, last, torch.floor((x - x1) * (heatmap_size / (x2 - x1))))
    y_hm = torch.where(y == y2, last, torch.floor((y - y1) * (heatmap_size / (y2 - y1))))
    valid = ((x_hm >= 0) & (y_hm >= 0) & (x_hm < heatmap_size) & (y_hm < heatmap_size)
             & (keypoints[:, 2] > 0))
    loc = torch.where(valid, y_hm * heatmap_size + x_hm, torch.zeros_like(x_hm))
    return loc.to(torch.int64), valid.to(rois.dtype)
