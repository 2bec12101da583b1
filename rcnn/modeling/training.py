"""The losses of one training minibatch: Detectron's end-to-end training graph.

Per process: backbone + FPN, RPN losses against anchor targets, proposals (training
mode: top 2000 over the whole minibatch, no gradient, like Detectron's ops), RoI
sampling, and the box / mask / keypoint heads with their losses. Each loss is
normalised over this process's minibatch as Detectron normalises per GPU; averaging
gradients over processes (DDP) is its ``1 / NUM_GPUS`` scaling.
"""
from __future__ import annotations

import torch
from torch import Tensor

from rcnn.data.train_batch import TrainBatch
from rcnn.modeling.losses import fast_rcnn_losses, keypoint_loss, mask_loss, rpn_losses
from rcnn.modeling.proposals import ProposalParams, generate_proposals
from rcnn.modeling.roi_targets import RoITargetParams, sample_rois
from rcnn.modeling.rpn_targets import RPNTargetParams, Sampler, rpn_targets

METRICS = ("accuracy_cls",)


def training_losses(model, batch: TrainBatch, sampler: Sampler) -> dict[str, Tensor]:
    """Detectron's loss blobs (``loss_rpn_cls_fpn2``... ``loss_kps``) and ``accuracy_cls``."""
    cfg = model.cfg
    feats = model.features(batch.blob)
    logits, deltas = model.rpn(feats)
    ratios = cfg.FPN.RPN_ASPECT_RATIOS
    anchors = rpn_targets([x.shape[-2:] for x in logits], batch.im_info, batch.targets, model.rpn_levels,
                          model.anchor_sizes, ratios, RPNTargetParams.from_cfg(cfg), sampler)
    out = rpn_losses(logits, deltas, anchors, model.rpn_levels, cfg.TRAIN.RPN_BATCH_SIZE_PER_IM,
                     len(batch.targets))
    with torch.no_grad():
        proposals, _ = generate_proposals([torch.sigmoid(x) for x in logits], deltas, batch.im_info,
                                          model.rpn_levels, model.anchor_sizes, ratios,
                                          ProposalParams.from_cfg(cfg, train=True))
    rois = sample_rois(proposals, batch.im_info, batch.targets, RoITargetParams.from_cfg(cfg), sampler)
    out.update(fast_rcnn_losses(*model.box_outputs(feats, rois.rois), rois))
    if cfg.MODEL.MASK_ON:
        out.update(mask_loss(model.mask_logits(feats, rois.masks.rois), rois.masks, cfg.MRCNN.WEIGHT_LOSS_MASK))
    if cfg.MODEL.KEYPOINTS_ON:
        normalizer = None
        if not cfg.KRCNN.NORMALIZE_BY_VISIBLE_KEYPOINTS:
            normalizer = (cfg.TRAIN.IMS_PER_BATCH * cfg.TRAIN.BATCH_SIZE_PER_IM * cfg.TRAIN.FG_FRACTION
                          * cfg.KRCNN.NUM_KEYPOINTS)
        out.update(keypoint_loss(model.keypoint_logits(feats, rois.keypoints.rois), rois.keypoints,
                                 cfg.KRCNN.LOSS_WEIGHT, normalizer))
    return out
