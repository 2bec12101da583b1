"""RetinaNet's test-time box path: ``core/test_retinanet.py::im_detect_bbox``, batched.

Per image and level, on the sigmoid probabilities raveled as ``(anchor, class, y, x)``:
keep ``prob > RETINANET.INFERENCE_TH`` (0.0 at the coarsest level, so no image ends
with nothing), then the ``RETINANET.PRE_NMS_TOP_N`` most probable; their anchors are
``float32(float64(float32(x, y) * stride) + cell_anchor)`` (the float64 cell anchors
of ``_create_cell_anchors`` are added to a float32 array in place), decoded with
weights (1, 1, 1, 1) when ``TEST.BBOX_REG``, divided by the float32 image scale and
clipped to the original image. Then over all levels: NMS per class at ``TEST.NMS``,
and the ``TEST.DETECTIONS_PER_IM`` best of the image (a hard cut: unlike
``box_results_with_nms_and_limit``, ties at the cut are not all kept).

Order and ties (the project's rule, ``rcnn.ops.nms``): Detectron's ``argpartition``
and quicksorts order equal scores arbitrarily; here a candidate's index is its
position in (image, class, level, raveled index) order, and equal scores rank the
lower index first in the top-k, in NMS and in the final cut. Output is Detectron's
``cls_boxes`` order: by class, then by descending score.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from rcnn.data.preprocess import PreparedImage
from rcnn.inference.postprocess import BoxDetections
from rcnn.modeling.proposals import _rank_in_runs
from rcnn.modeling.retinanet import RetinaNet
from rcnn.modeling.support import UnsupportedModelError
from rcnn.ops import boxes as box_ops
from rcnn.ops.anchors import retinanet_cell_anchors
from rcnn.ops.nms import batched_nms, sort_desc


@dataclass(frozen=True)
class RetinaNetTestParams:
    levels: tuple[int, ...]
    cell_anchors: tuple[np.ndarray, ...]   # per level, (A, 4) float64
    inference_th: float
    pre_nms_top_n: int
    nms_thresh: float
    detections_per_im: int
    bbox_reg: bool
    bbox_xform_clip: float

    @classmethod
    def from_cfg(cls, cfg) -> RetinaNetTestParams:
        if cfg.TEST.SOFT_NMS.ENABLED or cfg.TEST.BBOX_VOTE.ENABLED:
            raise UnsupportedModelError("unsupported config: TEST.SOFT_NMS / TEST.BBOX_VOTE with RetinaNet")
        r = cfg.RETINANET
        levels = tuple(range(cfg.FPN.RPN_MIN_LEVEL, cfg.FPN.RPN_MAX_LEVEL + 1))
        anchors = tuple(retinanet_cell_anchors(lvl, r.SCALES_PER_OCTAVE, r.ASPECT_RATIOS, r.ANCHOR_SCALE)
                        for lvl in levels)
        return cls(levels, anchors, r.INFERENCE_TH, r.PRE_NMS_TOP_N, cfg.TEST.NMS, cfg.TEST.DETECTIONS_PER_IM,
                   cfg.TEST.BBOX_REG, cfg.BBOX_XFORM_CLIP)


def _level_candidates(probs: Tensor, deltas: Tensor, level: int, cell: np.ndarray, thresh: float,
                      scales: Tensor, heights: Tensor, widths: Tensor,
                      params: RetinaNetTestParams) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(boxes, scores, classes, image) of one level's top-n candidates, in (image, raveled index) order."""
    num_images, channels, h, w = probs.shape
    num_anchors = cell.shape[0]
    num_classes = channels // num_anchors
    flat = probs.reshape(num_images, -1)
    image, idx = torch.nonzero(flat > torch.tensor(thresh, dtype=flat.dtype, device=flat.device), as_tuple=True)
    scores = flat[image, idx]
    order = sort_desc(scores)
    order = order[torch.sort(image[order], stable=True).indices]
    order = torch.sort(order[_rank_in_runs(image[order]) < params.pre_nms_top_n]).values
    image, idx, scores = image[order], idx[order], scores[order]

    anchor = torch.div(idx, num_classes * h * w, rounding_mode="floor")
    cls = torch.div(idx, h * w, rounding_mode="floor") % num_classes
    y = torch.div(idx, w, rounding_mode="floor") % h
    x = idx % w
    shifts = torch.stack((x, y, x, y), dim=1).to(torch.float32) * (2.0 ** level)
    cell64 = torch.from_numpy(cell).to(probs.device)
    boxes = (shifts.to(torch.float64) + cell64[anchor]).to(torch.float32)
    if params.bbox_reg:
        box_deltas = deltas.view(num_images, num_anchors, 4, h, w)[image, anchor, :, y, x]
        boxes = box_ops.decode(boxes, box_deltas, (1.0, 1.0, 1.0, 1.0), params.bbox_xform_clip)
    boxes = boxes / scales[image, None]
    boxes = box_ops.clip_tiled(boxes, heights[image, None], widths[image, None])
    return boxes, scores, cls + 1, image


def retinanet_box_results(cls_probs: Sequence[Tensor], box_deltas: Sequence[Tensor], scales: Tensor,
                          heights: Tensor, widths: Tensor, params: RetinaNetTestParams) -> BoxDetections:
    """Detections of a batch from per-level probabilities (B, A * (K - 1), H, W) and deltas
    (B, 4A, H, W); ``scales``, ``heights``, ``widths``: (B,) float32 image scales and original sizes."""
    num_images = scales.shape[0]
    per_level = [
        _level_candidates(p, d, lvl, cell, params.inference_th if lvl < params.levels[-1] else 0.0,
                          scales, heights, widths, params)
        for lvl, cell, p, d in zip(params.levels, params.cell_anchors, cls_probs, box_deltas)
    ]
    boxes, scores, cls, image = (torch.cat(parts) for parts in zip(*per_level))
    num_classes = cls_probs[0].shape[1] // params.cell_anchors[0].shape[0] + 1
    group = image * num_classes + cls
    canonical = torch.sort(group, stable=True).indices     # (image, class, level, raveled index)
    boxes, scores, cls, image, group = (t[canonical] for t in (boxes, scores, cls, image, group))
    keep = batched_nms(boxes, scores, group, params.nms_thresh)
    boxes, scores, cls, image = boxes[keep], scores[keep], cls[keep], image[keep]

    order = sort_desc(scores)
    order = order[torch.sort(image[order], stable=True).indices]
    if params.detections_per_im > 0:
        order = order[_rank_in_runs(image[order]) < params.detections_per_im]
    order = order[torch.sort(cls[order], stable=True).indices]
    order = order[torch.sort(image[order], stable=True).indices]
    counts = torch.bincount(image[order], minlength=num_images)
    offsets = [0] + torch.cumsum(counts, 0).tolist()
    return BoxDetections(boxes[order], scores[order], cls[order], offsets)


def retinanet_detections(model: RetinaNet, blob: Tensor, batch: Sequence[PreparedImage],
                         params: RetinaNetTestParams) -> BoxDetections:
    """The network and ``retinanet_box_results`` for a padded blob of prepared images."""
    dev = blob.device
    logits, deltas = model.head_outputs(model.features(blob))
    scales = torch.tensor([p.scale for p in batch], dtype=torch.float32, device=dev)
    heights = torch.tensor([p.orig_height for p in batch], dtype=torch.float32, device=dev)
    widths = torch.tensor([p.orig_width for p in batch], dtype=torch.float32, device=dev)
    return retinanet_box_results([torch.sigmoid(x) for x in logits], deltas, scales, heights, widths, params)
