"""The losses of one training minibatch: Detectron's end-to-end training graph.

Per process: backbone + FPN, RPN losses against anchor targets, proposals (training
mode: top 2000 over the whole minibatch, no gradient, like Detectron's ops), RoI
sampling, and the box / mask / keypoint heads with their losses. Each loss is
normalised over this process's minibatch as Detectron normalises per GPU; averaging
gradients over processes (DDP) is its ``1 / NUM_GPUS`` scaling.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rcnn.data.train_batch import TrainBatch
from rcnn.modeling.losses import fast_rcnn_losses, keypoint_loss, mask_loss, rpn_losses
from rcnn.modeling.proposals import ProposalParams
from rcnn.modeling.roi_targets import RoITargetParams, sample_rois
from rcnn.modeling.rpn_targets import RPNTargetParams, rpn_targets
from rcnn.modeling.sampler import Sampler

METRICS = ("accuracy_cls",)


@dataclass(frozen=True)
class TrainingParams:
    """What one training step reads of the config, built once with the model."""

    rpn_targets: RPNTargetParams
    proposals: ProposalParams
    roi_targets: RoITargetParams
    rpn_batch_size_per_im: int
    mask_loss_weight: float | None        # MRCNN.WEIGHT_LOSS_MASK when MODEL.MASK_ON
    keypoint_loss_weight: float | None    # KRCNN.LOSS_WEIGHT when MODEL.KEYPOINTS_ON
    keypoint_normalizer: float | None     # None: normalise by the visible keypoints

    @classmethod
    def from_cfg(cls, cfg) -> TrainingParams:
        normalizer = None
        if not cfg.KRCNN.NORMALIZE_BY_VISIBLE_KEYPOINTS:
            normalizer = (cfg.TRAIN.IMS_PER_BATCH * cfg.TRAIN.BATCH_SIZE_PER_IM * cfg.TRAIN.FG_FRACTION
                          * cfg.KRCNN.NUM_KEYPOINTS)
        return cls(RPNTargetParams.from_cfg(cfg), ProposalParams.from_cfg(cfg, train=True),
                   RoITargetParams.from_cfg(cfg), cfg.TRAIN.RPN_BATCH_SIZE_PER_IM,
                   cfg.MRCNN.WEIGHT_LOSS_MASK if cfg.MODEL.MASK_ON else None,
                   cfg.KRCNN.LOSS_WEIGHT if cfg.MODEL.KEYPOINTS_ON else None, normalizer)


def training_losses(model, batch: TrainBatch, sampler: Sampler) -> dict[str, Tensor]:
    """Detectron's loss blobs (``loss_rpn_cls_fpn2``... ``loss_kps``) and ``accuracy_cls``
    (``model.train_params``: a ``TrainingParams``)."""
    params: TrainingParams = model.train_params
    feats = model.features(batch.blob)
    logits, deltas = model.rpn_outputs(feats)
    anchors = rpn_targets([x.shape[-2:] for x in logits], batch.image_info, batch.targets, model.rpn_levels,
                          model.anchor_sizes, model.aspect_ratios, params.rpn_targets, sampler)
    out = rpn_losses(logits, deltas, anchors, model.rpn_levels, params.rpn_batch_size_per_im, len(batch.targets))
    with torch.no_grad():
        proposals, _ = model.proposals_from_outputs(logits, deltas, batch.image_info, params.proposals)
    rois = sample_rois(proposals, batch.image_info, batch.targets, params.roi_targets, sampler)
    out.update(fast_rcnn_losses(*model.box_outputs(feats, rois.rois), rois))
    if params.mask_loss_weight is not None:
        out.update(mask_loss(model.mask_logits(feats, rois.masks.rois), rois.masks, params.mask_loss_weight))
    if params.keypoint_loss_weight is not None:
        out.update(keypoint_loss(model.keypoint_logits(feats, rois.keypoints.rois), rois.keypoints,
                                 params.keypoint_loss_weight, params.keypoint_normalizer))
    return out
