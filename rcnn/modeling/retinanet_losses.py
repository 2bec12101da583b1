"""RetinaNet's losses (``retinanet_heads.py::add_fpn_retinanet_losses``), per process.

The Caffe2 operators (``modules/detectron``) and what they compute, per FPN level:

* ``SigmoidFocalLoss`` (``sigmoid_focal_loss_op.cu``): for logit ``x`` of class ``d`` at
  anchor ``a`` with label ``t``, ``p = sigmoid(x)``, ``N = max(fg_num, 1)``:
  ``-alpha / N * (1 - p)^gamma * log(max(p, FLT_MIN))`` if ``t == d + 1``, and
  ``-(1 - alpha) / N * p^gamma * log(1 - p)`` (``log(1 - p)`` as a stable log-sigmoid) if
  ``t`` is neither -1 nor ``d + 1``; 0 for ignored anchors; summed.
* ``SelectSmoothL1Loss`` (``select_smooth_l1_loss_op.cu``): the smooth-L1 (``beta =
  RETINANET.BBOX_REG_BETA``) of the predicted deltas at the foreground locations against
  their targets, summed, divided by ``max(fg_num, 1)``, times ``RETINANET.BBOX_REG_WEIGHT``.

``fg_num`` is the minibatch's (#foreground + 1 per image) (``rcnn.modeling.retinanet_targets``).
Detectron's ``1 / NUM_GPUS`` loss scale is the gradient averaging over processes, as in
``rcnn.modeling.losses``. Autograd gives the operators' hand-written gradients (they are
the exact derivatives).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from rcnn.modeling.retinanet_targets import RetinaNetTargets

FLT_MIN = torch.finfo(torch.float32).tiny


def sigmoid_focal_loss(logits: Tensor, labels: Tensor, fg_num: Tensor, gamma: float, alpha: float) -> Tensor:
    """``SigmoidFocalLoss`` of one level: logits (B, A * C, H, W), labels (B, A, H, W)."""
    b, _, h, w = logits.shape
    num_anchors = labels.shape[1]
    x = logits.view(b, num_anchors, -1, h, w)
    classes = torch.arange(1, x.shape[2] + 1, device=x.device).view(1, 1, -1, 1, 1)
    t = labels[:, :, None]
    pos = t == classes
    neg = (t != -1) & ~pos
    p = torch.sigmoid(x)
    norm = torch.clamp(fg_num, min=1.0)
    pos_term = (1 - p).pow(gamma) * torch.log(torch.clamp(p, min=FLT_MIN))
    neg_term = p.pow(gamma) * F.logsigmoid(-x)
    loss = -(pos * pos_term).sum() * (alpha / norm) - (neg * neg_term).sum() * ((1 - alpha) / norm)
    return loss


def select_smooth_l1_loss(deltas: Tensor, locs: Tensor, targets: Tensor, fg_num: Tensor, beta: float) -> Tensor:
    """``SelectSmoothL1Loss`` of one level: deltas (B, 4A, H, W) at ``locs`` (M, 4) [image, anchor, y, x]."""
    if locs.shape[0] == 0:
        return deltas.sum() * 0
    b, _, h, w = deltas.shape
    pred = deltas.view(b, -1, 4, h, w)[locs[:, 0], locs[:, 1], :, locs[:, 2], locs[:, 3]]
    diff = (pred - targets).abs()
    per = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    return per.sum() / torch.clamp(fg_num, min=1.0)


@dataclass(frozen=True)
class RetinaNetLossParams:
    """``RETINANET.BBOX_REG_WEIGHT`` / ``BBOX_REG_BETA`` / ``LOSS_GAMMA`` / ``LOSS_ALPHA``."""

    bbox_reg_weight: float
    bbox_reg_beta: float
    gamma: float
    alpha: float

    @classmethod
    def from_cfg(cls, cfg) -> RetinaNetLossParams:
        r = cfg.RETINANET
        return cls(r.BBOX_REG_WEIGHT, r.BBOX_REG_BETA, r.LOSS_GAMMA, r.LOSS_ALPHA)


def retinanet_losses(logits: Sequence[Tensor], deltas: Sequence[Tensor], targets: RetinaNetTargets,
                     levels: Sequence[int], params: RetinaNetLossParams) -> dict[str, Tensor]:
    """Detectron's loss blobs ``retnet_loss_bbox_fpn{l}`` and ``fl_fpn{l}`` (its json_stats keys)."""
    out = {}
    for i, lvl in enumerate(levels):
        out[f"retnet_loss_bbox_fpn{lvl}"] = params.bbox_reg_weight * select_smooth_l1_loss(
            deltas[i], targets.fg_locs[i], targets.fg_targets[i], targets.fg_num, params.bbox_reg_beta)
    for i, lvl in enumerate(levels):
        out[f"fl_fpn{lvl}"] = sigmoid_focal_loss(logits[i], targets.labels[i], targets.fg_num, params.gamma,
                                                 params.alpha)
    return out
