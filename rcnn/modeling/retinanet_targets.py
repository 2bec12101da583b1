"""RetinaNet training targets: Detectron's ``roi_data/retinanet.py::add_retinanet_blobs``.

Detectron labels a *field* of anchors, not the feature map: per level a square grid of
``ceil(COARSEST_STRIDE * ceil(TRAIN.MAX_SIZE / COARSEST_STRIDE) / stride)`` cells
(``data_utils.get_field_of_anchors``), anchors ``float32(float64 cell + shift)`` in
(level, octave, aspect, y, x) order, no straddle filter. Per image, over that field:

* every anchor reaching some ground-truth box's best IoU (ties included) takes the class
  of *its own* best box, then every anchor with IoU >= ``POSITIVE_OVERLAP`` too;
* the foreground count is taken now; then anchors with IoU < ``NEGATIVE_OVERLAP`` are set
  to background (0), overriding a low-IoU best anchor, which stays counted as foreground;
  the rest are ignored (-1);
* regression targets (weights 1, 1, 1, 1) for the foreground anchors.

The labels are then cut to the feature map (``int(blob size / stride)``), and the box
loss uses the anchors whose cut label is > 0. ``fg_num`` (the loss normaliser) is the
sum over the minibatch's images of (#foreground + 1), counted over the whole field.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from rcnn.data.im_info import ImInfo
from rcnn.data.train_batch import ImageTargets
from rcnn.ops import boxes as box_ops
from rcnn.ops.anchors import retinanet_cell_anchors


@dataclass(frozen=True)
class RetinaNetTargetParams:
    levels: tuple[int, ...]
    scales_per_octave: int
    aspect_ratios: tuple[float, ...]
    anchor_scale: float
    field_extent: float          # COARSEST_STRIDE * ceil(TRAIN.MAX_SIZE / COARSEST_STRIDE)
    positive_overlap: float
    negative_overlap: float

    @classmethod
    def from_cfg(cls, cfg) -> RetinaNetTargetParams:
        r, stride = cfg.RETINANET, cfg.FPN.COARSEST_STRIDE
        return cls(tuple(range(cfg.FPN.RPN_MIN_LEVEL, cfg.FPN.RPN_MAX_LEVEL + 1)), r.SCALES_PER_OCTAVE,
                   tuple(r.ASPECT_RATIOS), r.ANCHOR_SCALE, stride * np.ceil(cfg.TRAIN.MAX_SIZE / float(stride)),
                   r.POSITIVE_OVERLAP, r.NEGATIVE_OVERLAP)


@dataclass
class RetinaNetTargets:
    """Per level: ``labels`` (B, A, H, W) int64 (class, 0 background, -1 ignored), and the
    foreground locations ``fg_locs`` (M, 4) ``[image, anchor, y, x]`` with their regression
    ``fg_targets`` (M, 4) float32; ``fg_num`` the float32 normaliser."""

    labels: list[Tensor]
    fg_locs: list[Tensor]
    fg_targets: list[Tensor]
    fg_num: Tensor


@lru_cache(maxsize=8)
def _field(params: RetinaNetTargetParams, device: torch.device) -> tuple[Tensor, tuple[int, ...]]:
    """All field anchors (N, 4) float32 in (level, anchor, y, x) order, and each level's field size."""
    parts, sizes = [], []
    for lvl in params.levels:
        stride = 2.0 ** lvl
        size = int(np.ceil(params.field_extent / stride))
        cell = retinanet_cell_anchors(lvl, params.scales_per_octave, params.aspect_ratios, params.anchor_scale)
        shifts = np.arange(0, size) * stride
        sx, sy = np.meshgrid(shifts, shifts)
        grid = np.stack((sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()), axis=1)
        parts.append((cell[:, None, :] + grid[None, :, :]).reshape(-1, 4).astype(np.float32))
        sizes.append(size)
    return torch.from_numpy(np.concatenate(parts)).to(device), tuple(sizes)


def _image_labels(anchors: Tensor, gt: Tensor, gt_classes: Tensor,
                  params: RetinaNetTargetParams) -> tuple[Tensor, Tensor, int]:
    """Labels (N,) and regression targets (N, 4) of the field anchors for one image; #foreground."""
    iou = box_ops.pairwise_iou(anchors, gt)
    max_iou, argmax = iou.max(dim=1)
    labels = torch.full((anchors.shape[0],), -1, dtype=torch.int64, device=anchors.device)
    best = (iou == iou.max(dim=0).values[None, :]).any(dim=1)
    labels[best] = gt_classes[argmax[best]]
    above = max_iou >= params.positive_overlap
    labels[above] = gt_classes[argmax[above]]
    fg = torch.nonzero(labels >= 1, as_tuple=True)[0]
    labels[max_iou < params.negative_overlap] = 0
    targets = anchors.new_zeros(anchors.shape)
    targets[fg] = box_ops.encode(anchors[fg], gt[argmax[fg]], (1.0, 1.0, 1.0, 1.0))
    return labels, targets, fg.numel()


@torch.no_grad()
def retinanet_targets(feature_sizes: Sequence[tuple[int, int]], im_info: ImInfo, targets: Sequence[ImageTargets],
                      params: RetinaNetTargetParams) -> RetinaNetTargets:
    """Targets for a minibatch; ``feature_sizes`` (H, W) per level, ``im_info``: only its scale is used."""
    device = im_info.device
    anchors, sizes = _field(params, device)
    num_anchors = params.scales_per_octave * len(params.aspect_ratios)
    per_image, fg_num = [], 0.0
    for i, t in enumerate(targets):
        keep = ~t.is_crowd & (t.classes > 0)
        if not bool(keep.any()):   # Detectron asserts too (its roidb filter drops such images)
            raise ValueError(f"image {t.image_id}: RetinaNet training needs a non-crowd ground-truth box")
        gt = t.boxes[keep].to(device) * im_info.scale[i]
        labels, deltas, num_fg = _image_labels(anchors, gt, t.classes[keep].to(device), params)
        per_image.append((labels, deltas))
        fg_num += num_fg + 1.0
    out = RetinaNetTargets([], [], [], torch.tensor(fg_num, dtype=torch.float32, device=device))
    start = 0
    for size, (h, w) in zip(sizes, feature_sizes):
        end = start + num_anchors * size * size
        labels = torch.stack([lb[start:end] for lb, _ in per_image]).view(-1, num_anchors, size, size)
        deltas = torch.stack([d[start:end] for _, d in per_image]).view(-1, num_anchors, size, size, 4)
        labels, deltas = labels[:, :, :h, :w], deltas[:, :, :h, :w]
        locs = torch.nonzero(labels > 0)
        out.labels.append(labels.contiguous())
        out.fg_locs.append(locs)
        out.fg_targets.append(deltas[locs[:, 0], locs[:, 1], locs[:, 2], locs[:, 3]])
        start = end
    return out
