"""Detectron's training losses with its exact normalisations, per process.

Each function returns a dict keyed by Detectron's loss blob names (the keys of its
``json_stats`` log lines). Detectron multiplies every loss by ``1 / NUM_GPUS`` and sums
the gradients over GPUs; here that is the job of gradient averaging, so no such factor
appears. The Caffe2 operators and what they compute:

* ``SigmoidCrossEntropyLoss`` (``modules/detectron/sigmoid_cross_entropy_loss_op.cu``):
  per element ``-x (t - [x >= 0]) + log(1 + exp(x - 2 x [x >= 0]))``, 0 where the target
  is -1; summed, divided by ``max(#targets != -1, 1e-5)`` when ``normalize=1`` (the
  default), then times ``scale``.
* ``SmoothL1Loss`` (``modules/detectron/smooth_l1_loss_op.cu``):
  ``scale / N * sum(w_out * f(w_in * (pred - target)))`` with N the *first dimension*
  of the prediction, ``f(x) = 0.5 x^2 / beta`` if ``|x| < beta`` else ``|x| - 0.5 beta``
  (``beta`` defaults to 1).
* ``SoftmaxWithLoss`` (``caffe2/operators/softmax_with_loss_op.cc``, ``spatial=0``):
  ``scale * sum(w_i * CE_i) / sum(w_i)`` over rows (``w_i = 1`` without a weight input;
  0 when the weights sum to 0).
* ``Accuracy`` (``caffe2/operators/accuracy_op.cc``): a row is right when no class has a
  higher probability than the label's and no lower-indexed class an equal one.

Cross-entropies use log-sum-exp / softplus forms (``F.cross_entropy``,
``F.binary_cross_entropy_with_logits``), which equal the formulas above.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from rcnn.modeling.keypoint_targets import KeypointTargets
from rcnn.modeling.mask_targets import MaskTargets
from rcnn.modeling.roi_targets import RoITargets
from rcnn.modeling.rpn_targets import RPNTargets


def smooth_l1(pred: Tensor, target: Tensor, inside_w: Tensor, outside_w: Tensor, beta: float) -> Tensor:
    """``sum(w_out * f(w_in * (pred - target)))``: the numerator of Caffe2's SmoothL1Loss."""
    x = inside_w * (pred - target)
    ax = x.abs()
    return (outside_w * torch.where(ax < beta, 0.5 * x * x / beta, ax - 0.5 * beta)).sum()


def rpn_losses(
    logits: Sequence[Tensor],
    deltas: Sequence[Tensor],
    targets: RPNTargets,
    levels: Sequence[int],
    batch_size_per_im: int = 256,
    ims_per_batch: int = 2,
) -> dict[str, Tensor]:
    """``loss_rpn_cls_fpnL`` and ``loss_rpn_bbox_fpnL`` per level (``FPN.py::add_fpn_rpn_losses``).

    Classification: BCE summed over the labelled anchors of the level and divided by
    ``RPN_BATCH_SIZE_PER_IM * IMS_PER_BATCH`` (``normalize=0``), not by their count.
    Regression: smooth L1 with ``beta = 1/9``; the outside weights already hold
    ``1 / #labelled anchors of the image``, and the op divides by the number of images
    (the first dimension of the deltas).
    """
    out: dict[str, Tensor] = {}
    denom = float(batch_size_per_im * ims_per_batch)
    for lvl, x, d, labels, bt, wi, wo in zip(levels, logits, deltas, targets.labels, targets.bbox_targets,
                                             targets.bbox_inside_weights, targets.bbox_outside_weights):
        valid = labels >= 0
        bce = F.binary_cross_entropy_with_logits(x, labels.clamp(min=0).to(x.dtype), reduction="none")
        out[f"loss_rpn_cls_fpn{lvl}"] = torch.where(valid, bce, torch.zeros_like(bce)).sum() / denom
        out[f"loss_rpn_bbox_fpn{lvl}"] = smooth_l1(d, bt, wi, wo, 1.0 / 9.0) / d.shape[0]
    return out


def fast_rcnn_losses(cls_logits: Tensor, bbox_deltas: Tensor, targets: RoITargets) -> dict[str, Tensor]:
    """``loss_cls``, ``loss_bbox`` and ``accuracy_cls`` (``fast_rcnn_heads.py::add_fast_rcnn_losses``).

    ``loss_cls`` is the mean softmax cross-entropy over the sampled RoIs of the
    minibatch; ``loss_bbox`` the smooth L1 (beta 1) over the target class's 4 columns
    divided by the number of RoIs (the op's first dimension), not of foreground RoIs.
    """
    n = cls_logits.shape[0]
    if n == 0:
        zero = cls_logits.sum() + bbox_deltas.sum()
        return {"loss_cls": zero, "loss_bbox": zero, "accuracy_cls": zero.detach()}
    loss_cls = F.cross_entropy(cls_logits, targets.labels)
    loss_bbox = smooth_l1(bbox_deltas, targets.bbox_targets, targets.bbox_inside_weights,
                          targets.bbox_outside_weights, 1.0) / n
    with torch.no_grad():
        accuracy = (torch.softmax(cls_logits, dim=1).argmax(dim=1) == targets.labels).to(cls_logits.dtype).mean()
    return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "accuracy_cls": accuracy}


def mask_loss(mask_logits: Tensor, targets: MaskTargets, weight: float = 1.0) -> dict[str, Tensor]:
    """``loss_mask`` (``mask_rcnn_heads.py::add_mask_rcnn_losses``, ``MRCNN.WEIGHT_LOSS_MASK``).

    Detectron's targets are class-specific: -1 in every channel but the RoI's class.
    Only that channel of the (M, K, R, R) logits is therefore read (channel 0 of a
    class-agnostic head), and the BCE is averaged over the non-ignored elements.
    """
    if mask_logits.shape[1] > 1:
        logits = mask_logits[torch.arange(mask_logits.shape[0], device=mask_logits.device), targets.classes]
    else:
        logits = mask_logits[:, 0]
    t = targets.targets
    valid = t >= 0
    bce = F.binary_cross_entropy_with_logits(logits, t.clamp(min=0).to(logits.dtype), reduction="none")
    total = torch.where(valid, bce, torch.zeros_like(bce)).sum()
    count = valid.sum().to(logits.dtype).clamp(min=1e-5)
    return {"loss_mask": total / count * weight}


def keypoint_loss(kps_logits: Tensor, targets: KeypointTargets, weight: float = 1.0,
                  fixed_normalizer: float | None = None) -> dict[str, Tensor]:
    """``loss_kps`` (``keypoint_rcnn_heads.py::add_keypoint_losses``, ``KRCNN.LOSS_WEIGHT``).

    A softmax over the S*S heatmap locations of each (RoI, keypoint), cross-entropy
    weighted by validity and divided by the number of valid keypoints
    (``KRCNN.NORMALIZE_BY_VISIBLE_KEYPOINTS``). With that option off, pass
    ``fixed_normalizer = IMS_PER_BATCH * BATCH_SIZE_PER_IM * FG_FRACTION * NUM_KEYPOINTS``:
    Detectron then multiplies by ``#valid / fixed_normalizer``, i.e. divides the sum by it.
    """
    n, j, size_y, size_x = kps_logits.shape
    x = kps_logits.reshape(n * j, size_y * size_x)
    w = targets.weights.reshape(-1).to(x.dtype)
    ce = F.cross_entropy(x, targets.locations.reshape(-1), reduction="none")
    summed = (ce * w).sum()
    if fixed_normalizer is not None:
        loss = summed / fixed_normalizer
    else:
        # Weights are 0/1: without any valid keypoint the sum is 0 and so is the loss, as in Caffe2.
        loss = summed / w.sum().clamp(min=1.0)
    return {"loss_kps": loss * weight}
