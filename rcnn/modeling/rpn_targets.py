"""RPN training targets for FPN (``roi_data/rpn.py::_get_rpn_blobs``, FPN branch).

Per image, over the anchors of all levels together:

1. anchors entirely inside the *unpadded* scaled image (``RPN_STRADDLE_THRESH`` 0) are
   labelled, the others ignored (-1);
2. IoU with the non-crowd ground truth scaled by ``im_scale`` (crowd boxes play no
   part in the RPN);
3. positive: for each GT the anchor(s) of its highest IoU, *all* ties, then every
   anchor with IoU >= 0.7;
4. too many positives: ``#pos - 128`` of them, drawn without replacement, are *disabled*;
5. ``256 - #pos`` negatives are drawn **with replacement** among the anchors with
   IoU < 0.3 (``npr.randint``), so repeats leave fewer than 256 examples; this pass
   runs after the positive one and may turn a "best anchor" whose IoU is below 0.3
   negative;
6. regression targets ``encode(anchor, best gt, (1, 1, 1, 1))`` for the positives of
   step 4 (an anchor turned negative in step 5 keeps its targets but gets inside weight
   0); inside weights 1 on the final positives; outside weights ``1 / #labelled`` on
   positives and negatives.

Detectron enumerates anchors on a fixed ``ceil(1344 / stride)`` square grid and crops
the label blobs to the feature map (``SpatialNarrowAs``). Here anchors are enumerated on
the feature map itself. Both give the same blobs: an anchor of shift ``(x, y) * stride``
has ``x2 > shift + stride - 1``, so an inside anchor has ``x < im_w / stride <= W``
(and likewise for y). The crop therefore drops only ignored anchors, and the inside
anchors come in the same (level, y, x, anchor) order, so the same random draws pick the
same anchors.

Random draws go through a :data:`~rcnn.modeling.sampler.Sampler`, so tests can replay
Detectron's ``numpy.random`` calls; the default draws from a ``torch.Generator``.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from rcnn.config import get_default_cfg
from rcnn.data.im_info import ImInfo
from rcnn.data.train_batch import ImageTargets
from rcnn.modeling.sampler import RandomSampler, Sampler
from rcnn.ops import boxes as box_ops
from rcnn.ops.anchors import grid_anchors

logger = logging.getLogger(__name__)
# RandomSampler stays importable from here (older callers); its home is rcnn.modeling.sampler.
__all__ = ["RPNTargetParams", "RPNTargets", "RandomSampler", "Sampler", "rpn_targets"]


_TRAIN_DEFAULTS = get_default_cfg().TRAIN


@dataclass(frozen=True)
class RPNTargetParams:
    """``TRAIN.RPN_*`` (defaults: the config's)."""

    positive_overlap: float = _TRAIN_DEFAULTS.RPN_POSITIVE_OVERLAP
    negative_overlap: float = _TRAIN_DEFAULTS.RPN_NEGATIVE_OVERLAP
    fg_fraction: float = _TRAIN_DEFAULTS.RPN_FG_FRACTION
    batch_size_per_im: int = _TRAIN_DEFAULTS.RPN_BATCH_SIZE_PER_IM
    straddle_thresh: float = _TRAIN_DEFAULTS.RPN_STRADDLE_THRESH

    @classmethod
    def from_cfg(cls, cfg) -> RPNTargetParams:
        t = cfg.TRAIN
        return cls(t.RPN_POSITIVE_OVERLAP, t.RPN_NEGATIVE_OVERLAP, t.RPN_FG_FRACTION, t.RPN_BATCH_SIZE_PER_IM,
                   t.RPN_STRADDLE_THRESH)


@dataclass
class RPNTargets:
    """Per RPN level, Detectron's ``rpn_*_fpnL`` blobs after ``SpatialNarrowAs``.

    ``labels`` (B, A, H, W) int64: 1 positive, 0 negative, -1 ignored.
    ``bbox_targets``, ``bbox_inside_weights``, ``bbox_outside_weights`` (B, 4A, H, W)
    float32, channel ``4 * a + j`` like the RPN head's deltas.
    """

    labels: list[Tensor]
    bbox_targets: list[Tensor]
    bbox_inside_weights: list[Tensor]
    bbox_outside_weights: list[Tensor]


def _image_targets(anchors: Tensor, im_h: Tensor, im_w: Tensor, gt: Tensor, params: RPNTargetParams,
                   sampler: Sampler) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Labels (N,), targets, inside and outside weights (N, 4) of one image's anchors."""
    n_all = anchors.shape[0]
    t = params.straddle_thresh
    if t >= 0:
        inside = ((anchors[:, 0] >= -t) & (anchors[:, 1] >= -t)
                  & (anchors[:, 2] < im_w + t) & (anchors[:, 3] < im_h + t))
        inds_inside = torch.nonzero(inside, as_tuple=True)[0]
    else:
        inds_inside = torch.arange(n_all, device=anchors.device)
    anchors = anchors[inds_inside]
    n = anchors.shape[0]
    labels = torch.full((n,), -1, dtype=torch.int64, device=anchors.device)

    if gt.shape[0] > 0:
        iou = box_ops.pairwise_iou(anchors, gt)
        max_iou, argmax = iou.max(dim=1)
        # Every anchor that reaches some GT's best IoU, ties included (also when that best is 0).
        best_for_gt = iou.max(dim=0).values
        labels[(iou == best_for_gt[None, :]).any(dim=1)] = 1
        labels[max_iou >= params.positive_overlap] = 1
    else:
        # No non-crowd GT (Detectron never trains on such an image): negatives only.
        max_iou = anchors.new_zeros(n)
        argmax = torch.zeros(n, dtype=torch.int64, device=anchors.device)

    num_fg = int(params.fg_fraction * params.batch_size_per_im)
    fg_inds = torch.nonzero(labels == 1, as_tuple=True)[0]
    if fg_inds.numel() > num_fg:
        labels[sampler(fg_inds, fg_inds.numel() - num_fg, False)] = -1
        fg_inds = torch.nonzero(labels == 1, as_tuple=True)[0]

    num_bg = params.batch_size_per_im - fg_inds.numel()
    bg_inds = torch.nonzero(max_iou < params.negative_overlap, as_tuple=True)[0]
    if bg_inds.numel() > num_bg:
        bg_inds = sampler(bg_inds, num_bg, True)
    labels[bg_inds] = 0

    targets = anchors.new_zeros((n, 4))
    if fg_inds.numel() > 0:
        targets[fg_inds] = box_ops.encode(anchors[fg_inds], gt[argmax[fg_inds]], (1.0, 1.0, 1.0, 1.0))
    inside_w = (labels == 1).to(anchors.dtype)[:, None].expand(n, 4)
    labelled = labels >= 0
    # float64 1 / #labelled rounded to float32, as NumPy; computed on the device (no sync)
    weight = (1.0 / labelled.sum().double()).to(anchors.dtype)
    outside_w = torch.where(labelled, weight, torch.zeros_like(weight))[:, None].expand(n, 4)

    def unmap(values: Tensor, fill: float) -> Tensor:
        full = values.new_full((n_all,) + values.shape[1:], fill)
        full[inds_inside] = values
        return full

    return unmap(labels, -1), unmap(targets, 0), unmap(inside_w, 0), unmap(outside_w, 0)


@torch.no_grad()
def rpn_targets(
    feature_sizes: Sequence[tuple[int, int]],
    im_info: ImInfo,
    targets: Sequence[ImageTargets],
    levels: Sequence[int],
    anchor_sizes: Sequence[float],
    aspect_ratios: Sequence[float],
    params: RPNTargetParams,
    sampler: Sampler,
) -> RPNTargets:
    """RPN labels and regression targets for a minibatch, on ``im_info``'s device.

    Args:
        feature_sizes: (H, W) of each RPN level's feature map, in ``levels`` order.
        im_info: the unpadded scaled images' ``[height, width, im_scale]`` (``ImInfo.of_images``).
        targets: ground truth per image in original coordinates (scaled here by im_scale).
        levels / anchor_sizes: FPN level and anchor size of each entry (stride ``2**level``).
        sampler: draws the positive / negative subsets; called per image in order,
            positives first, exactly where Detectron calls ``numpy.random``.
    """
    device = im_info.device
    anchors_per_level = [grid_anchors(2**lvl, (size,), aspect_ratios, h, w, device)
                         for lvl, size, (h, w) in zip(levels, anchor_sizes, feature_sizes)]
    anchors = torch.cat(anchors_per_level)
    per_image: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    for i, t in enumerate(targets):
        keep = ~t.is_crowd & (t.classes > 0)
        gt = t.boxes[keep].to(device) * im_info.scale[i]
        per_image.append(_image_targets(anchors, im_info.height[i], im_info.width[i], gt, params, sampler))
        if logger.isEnabledFor(logging.DEBUG):
            labels = per_image[-1][0]
            logger.debug("image %d: %d positive, %d negative anchors", i, int((labels == 1).sum()),
                         int((labels == 0).sum()))

    stacked = [torch.stack(x) for x in zip(*per_image)]   # (B, N) labels, (B, N, 4) the rest
    out: list[list[Tensor]] = [[], [], [], []]
    start = 0
    for (h, w), lvl_anchors in zip(feature_sizes, anchors_per_level):
        end = start + lvl_anchors.shape[0]
        for k, x in enumerate(stacked):
            # rows (y, x, a) of the level -> (B, A, H, W), or (B, 4A, H, W) with channel 4a + j
            out[k].append(x[:, start:end].reshape(len(targets), h, w, -1).permute(0, 3, 1, 2).contiguous())
        start = end
    return RPNTargets(*out)
