"""Box arithmetic with Detectron's ``+1`` convention (``utils/boxes.py``).

Boxes are ``[x1, y1, x2, y2]`` with inclusive pixel corners, so a box's width is
``x2 - x1 + 1``. Every function here performs the same float32 operations in the
same order as Detectron's NumPy code (run under NumPy 1, which kept float32 when a
float64 scalar such as ``BBOX_XFORM_CLIP`` met a float32 array), so results agree
to the last bit.

``exp`` and ``log`` are NumPy's on CPU: torch's float32 ``exp`` differs from
NumPy's by one ulp in ~39 % of elements, enough to move a box by 5e-4 px and flip
a mask pixel (docs/detectron.md §4.14). On GPU torch's are used; results there differ in
the last bits anyway (conv kernels).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from rcnn.config import get_default_cfg

# Detectron's cfg.BBOX_XFORM_CLIP: the largest dw/dh fed to exp().
BBOX_XFORM_CLIP = get_default_cfg().BBOX_XFORM_CLIP


def _scalar(value: float, like: Tensor) -> Tensor:
    """A 0-dim tensor of ``like``'s dtype: arithmetic then stays in that dtype
    with the scalar rounded once, as NumPy 1 did with float32 arrays."""
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def _numpy_on_cpu(fn_np, fn_torch, x: Tensor) -> Tensor:
    if x.device.type == "cpu" and not x.requires_grad:
        return torch.from_numpy(fn_np(x.contiguous().numpy()))
    return fn_torch(x)


def exp(x: Tensor) -> Tensor:
    """Elementwise exp, bit-identical to NumPy's on CPU."""
    return _numpy_on_cpu(np.exp, torch.exp, x)


def log(x: Tensor) -> Tensor:
    """Elementwise log, bit-identical to NumPy's on CPU."""
    return _numpy_on_cpu(np.log, torch.log, x)


def boxes_area(boxes: Tensor) -> Tensor:
    """``(x2 - x1 + 1) * (y2 - y1 + 1)``."""
    return (boxes[..., 2] - boxes[..., 0] + 1) * (boxes[..., 3] - boxes[..., 1] + 1)


def decode(
    boxes: Tensor,
    deltas: Tensor,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    clip: float = BBOX_XFORM_CLIP,
) -> Tensor:
    """Apply regression ``deltas`` (R, 4K) to ``boxes`` (R, 4): Detectron's
    ``bbox_transform``. Boxes are cast to the deltas' dtype first, like Detectron."""
    if boxes.shape[0] == 0:
        return deltas.new_zeros((0, deltas.shape[1]))
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0] + 1.0
    heights = boxes[:, 3] - boxes[:, 1] + 1.0
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights

    wx, wy, ww, wh = (_scalar(w, deltas) for w in weights)
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = torch.minimum(deltas[:, 2::4] / ww, _scalar(clip, deltas))
    dh = torch.minimum(deltas[:, 3::4] / wh, _scalar(clip, deltas))

    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = exp(dw) * widths[:, None]
    pred_h = exp(dh) * heights[:, None]

    pred = torch.empty_like(deltas)
    pred[:, 0::4] = pred_ctr_x - 0.5 * pred_w
    pred[:, 1::4] = pred_ctr_y - 0.5 * pred_h
    # "- 1" is Detectron's: x2 is an inclusive pixel index.
    pred[:, 2::4] = pred_ctr_x + 0.5 * pred_w - 1
    pred[:, 3::4] = pred_ctr_y + 0.5 * pred_h - 1
    return pred


def encode(boxes: Tensor, gt_boxes: Tensor, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """Regression targets taking ``boxes`` to ``gt_boxes``: ``bbox_transform_inv``."""
    ex_w = boxes[:, 2] - boxes[:, 0] + 1.0
    ex_h = boxes[:, 3] - boxes[:, 1] + 1.0
    ex_cx = boxes[:, 0] + 0.5 * ex_w
    ex_cy = boxes[:, 1] + 0.5 * ex_h
    gt_w = gt_boxes[:, 2] - gt_boxes[:, 0] + 1.0
    gt_h = gt_boxes[:, 3] - gt_boxes[:, 1] + 1.0
    gt_cx = gt_boxes[:, 0] + 0.5 * gt_w
    gt_cy = gt_boxes[:, 1] + 0.5 * gt_h
    wx, wy, ww, wh = (_scalar(w, boxes) for w in weights)
    return torch.stack(
        (
            wx * (gt_cx - ex_cx) / ex_w,
            wy * (gt_cy - ex_cy) / ex_h,
            ww * log(gt_w / ex_w),
            wh * log(gt_h / ex_h),
        ),
        dim=1,
    )


def clip_tiled(boxes: Tensor, height: Tensor | float, width: Tensor | float) -> Tensor:
    """Clip (R, 4K) boxes to ``[0, width - 1] x [0, height - 1]`` (``clip_tiled_boxes``).

    ``height``/``width`` may be per-row tensors of shape (R, 1) for a batch of
    images, in the boxes' dtype (Detectron's ``im_info`` is float32).
    """
    out = torch.empty_like(boxes)
    zero = _scalar(0.0, boxes)
    height = height if isinstance(height, Tensor) else _scalar(height, boxes)
    width = width if isinstance(width, Tensor) else _scalar(width, boxes)
    out[:, 0::4] = torch.maximum(torch.minimum(boxes[:, 0::4], width - 1), zero)
    out[:, 1::4] = torch.maximum(torch.minimum(boxes[:, 1::4], height - 1), zero)
    out[:, 2::4] = torch.maximum(torch.minimum(boxes[:, 2::4], width - 1), zero)
    out[:, 3::4] = torch.maximum(torch.minimum(boxes[:, 3::4], height - 1), zero)
    return out


def pairwise_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU matrix (N, M) with ``+1`` widths, as compiled ``cython_bbox.bbox_overlaps``.

    Cython emits the literal ``1`` of ``x2 - x1 + 1`` as ``1.0``, so box areas and
    the union are formed in float64 and rounded once to float32; the
    intersection and the final division stay float32.
    """
    return paired_iou(a[:, None, :], b[None, :, :])


def paired_iou(a: Tensor, b: Tensor) -> Tensor:
    """``bbox_overlaps`` of broadcastable (..., 4) boxes ``a`` (its ``boxes``) and ``b`` (its
    ``query_boxes``), element by element: the arithmetic of ``pairwise_iou``."""
    f64 = torch.float64
    area_a = (a[..., 2] - a[..., 0]).to(f64).add_(1) * (a[..., 3] - a[..., 1]).to(f64).add_(1)
    area_b = ((b[..., 2] - b[..., 0]).to(f64).add_(1) * (b[..., 3] - b[..., 1]).to(f64).add_(1)).to(a.dtype)
    iw = torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0]) + 1
    ih = torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1]) + 1
    inter = iw * ih
    union = (area_a + area_b.to(f64) - inter.to(f64)).to(a.dtype)
    return torch.where((iw > 0) & (ih > 0), inter / union, torch.zeros_like(inter))


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """``[x1, y1, x2 - x1 + 1, y2 - y1 + 1]``: COCO json boxes from Detectron's."""
    return torch.cat((boxes[:, :2], boxes[:, 2:4] - boxes[:, :2] + 1), dim=1)


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``[x, y, x + max(0, w - 1), y + max(0, h - 1)]``: Detectron's reading of COCO boxes."""
    return torch.cat((boxes[:, :2], boxes[:, :2] + (boxes[:, 2:4] - 1).clamp(min=0)), dim=1)
