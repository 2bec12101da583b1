"""Detectron's ``generalized_rcnn`` with an FPN ResNet body: the network itself.

The components are the top-level children whose names start every state-dict
key (see ``rcnn.naming``). Each stage is a method so that inference
(``rcnn.inference.detector``) and training can run them with their own
post-processing in between; nothing here leaves the device.
"""
from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from rcnn.modeling.box_head import BoxHead
from rcnn.modeling.fpn import FPN
from rcnn.modeling.keypoint_head import KeypointHead
from rcnn.modeling.mask_head import MaskHead
from rcnn.modeling.proposals import ProposalParams, generate_proposals
from rcnn.modeling.resnet import ResNetBody
from rcnn.modeling.rpn import RPNHead
from rcnn.modeling.training import training_losses
from rcnn.ops.pooler import multilevel_roi_align

_FPN_BODY = re.compile(r"^FPN\.add_fpn_ResNet(50|101|152)_conv5_body$")
_MASK_HEAD_CONVS = {
    "mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs": 4,
    "mask_rcnn_heads.mask_rcnn_fcn_head_v1up": 2,
}


class UnsupportedModelError(ValueError):
    """The config asks for a Detectron model family this project does not build."""


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise UnsupportedModelError(f"unsupported config: {what}")


class GeneralizedRCNN(nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        body = _FPN_BODY.match(cfg.MODEL.CONV_BODY)
        _require(body is not None and cfg.FPN.FPN_ON,
                 f"MODEL.CONV_BODY {cfg.MODEL.CONV_BODY!r} (only FPN.add_fpn_ResNet{{50,101,152}}_conv5_body)")
        _require(cfg.MODEL.TYPE == "generalized_rcnn", f"MODEL.TYPE {cfg.MODEL.TYPE!r}")
        # RPN-only models have no RoI heads; precomputed-proposal models (FASTER_RCNN False) no RPN.
        _require((cfg.FPN.MULTILEVEL_RPN or not cfg.RPN.RPN_ON) and (cfg.FPN.MULTILEVEL_ROIS or cfg.MODEL.RPN_ONLY),
                 "FPN.MULTILEVEL_RPN/ROIS must be True")
        _require(not cfg.FPN.EXTRA_CONV_LEVELS and not cfg.FPN.USE_GN, "FPN.EXTRA_CONV_LEVELS / FPN.USE_GN")
        _require(cfg.FPN.RPN_MAX_LEVEL == 6 and cfg.FPN.ROI_MAX_LEVEL == 5 and cfg.FPN.RPN_MIN_LEVEL == 2
                 and cfg.FPN.ROI_MIN_LEVEL == 2, "FPN levels other than RPN 2-6 / RoI 2-5")
        _require(cfg.MODEL.RPN_ONLY or cfg.FAST_RCNN.ROI_BOX_HEAD.endswith("add_roi_2mlp_head"),
                 f"FAST_RCNN.ROI_BOX_HEAD {cfg.FAST_RCNN.ROI_BOX_HEAD!r}")
        self.cfg = cfg
        self.backbone = ResNetBody(int(body.group(1)), cfg.RESNETS.STRIDE_1X1, cfg.RESNETS.RES5_DILATION,
                                   cfg.RESNETS.WIDTH_PER_GROUP, cfg.RESNETS.NUM_GROUPS, cfg.TRAIN.FREEZE_AT)
        sums = [self.backbone.sum_name(s) for s in range(2, 6)]
        dim = cfg.FPN.DIM
        self.fpn = FPN(self.backbone.out_channels, sums, dim)
        self.rpn_levels = list(range(cfg.FPN.RPN_MIN_LEVEL, cfg.FPN.RPN_MAX_LEVEL + 1))
        self.roi_levels = list(range(cfg.FPN.ROI_MIN_LEVEL, cfg.FPN.ROI_MAX_LEVEL + 1))
        self.anchor_sizes = [cfg.FPN.RPN_ANCHOR_START_SIZE * 2 ** (lvl - cfg.FPN.RPN_MIN_LEVEL)
                             for lvl in self.rpn_levels]
        if cfg.RPN.RPN_ON:
            self.rpn = RPNHead(dim, len(cfg.FPN.RPN_ASPECT_RATIOS), cfg.FPN.RPN_MIN_LEVEL)
        if cfg.MODEL.RPN_ONLY:
            return
        self.box_head = BoxHead(dim, cfg.FAST_RCNN.ROI_XFORM_RESOLUTION, cfg.FAST_RCNN.MLP_HEAD_DIM,
                                cfg.MODEL.NUM_CLASSES, cfg.MODEL.CLS_AGNOSTIC_BBOX_REG)
        if cfg.MODEL.MASK_ON:
            _require(cfg.MRCNN.ROI_MASK_HEAD in _MASK_HEAD_CONVS, f"MRCNN.ROI_MASK_HEAD {cfg.MRCNN.ROI_MASK_HEAD!r}")
            _require(cfg.MRCNN.UPSAMPLE_RATIO == 1 and not cfg.MRCNN.USE_FC_OUTPUT,
                     "MRCNN.UPSAMPLE_RATIO != 1 or MRCNN.USE_FC_OUTPUT")
            self.mask_head = MaskHead(dim, cfg.MRCNN.DIM_REDUCED, _MASK_HEAD_CONVS[cfg.MRCNN.ROI_MASK_HEAD],
                                      cfg.MRCNN.DILATION, cfg.MODEL.NUM_CLASSES, cfg.MRCNN.CLS_SPECIFIC_MASK)
        if cfg.MODEL.KEYPOINTS_ON:
            _require(cfg.KRCNN.ROI_KEYPOINTS_HEAD.endswith("add_roi_pose_head_v1convX"),
                     f"KRCNN.ROI_KEYPOINTS_HEAD {cfg.KRCNN.ROI_KEYPOINTS_HEAD!r}")
            _require(cfg.KRCNN.USE_DECONV_OUTPUT and not cfg.KRCNN.USE_DECONV and cfg.KRCNN.UP_SCALE == 2,
                     "KRCNN.USE_DECONV_OUTPUT=True, USE_DECONV=False, UP_SCALE=2 only")
            self.keypoint_head = KeypointHead(dim, cfg.KRCNN.CONV_HEAD_DIM, cfg.KRCNN.NUM_STACKED_CONVS,
                                              cfg.KRCNN.CONV_HEAD_KERNEL, cfg.KRCNN.NUM_KEYPOINTS,
                                              cfg.KRCNN.DECONV_KERNEL, cfg.KRCNN.UP_SCALE)

    def forward(self, batch, sampler) -> dict[str, Tensor]:
        """Training: the losses of a ``TrainBatch`` (``rcnn.modeling.training``). Inference
        runs the stages below through ``rcnn.inference.detector.Detector``."""
        _require(self.cfg.MODEL.FASTER_RCNN, "training other than end to end (MODEL.FASTER_RCNN)")
        return training_losses(self, batch, sampler)

    # -- stages ---------------------------------------------------------------
    def features(self, blob: Tensor) -> list[Tensor]:
        """FPN levels P2..P6 of a (B, 3, H, W) blob padded to a multiple of 32."""
        return self.fpn(self.backbone(blob))

    def proposals(self, feats: list[Tensor], im_info: Tensor, params: ProposalParams) -> tuple[Tensor, Tensor]:
        """RPN on P2..P6, then proposal generation and collection."""
        logits, deltas = self.rpn(feats)
        return generate_proposals([torch.sigmoid(x) for x in logits], deltas, im_info, self.rpn_levels, self.anchor_sizes,
                                  self.cfg.FPN.RPN_ASPECT_RATIOS, params)

    def _pool(self, feats: list[Tensor], rois: Tensor, resolution: int, sampling_ratio: int) -> Tensor:
        n = len(self.roi_levels)
        return multilevel_roi_align(feats[:n], rois, self.roi_levels, resolution, sampling_ratio,
                                    self.cfg.FPN.ROI_CANONICAL_SCALE, self.cfg.FPN.ROI_CANONICAL_LEVEL)

    def box_outputs(self, feats: list[Tensor], rois: Tensor) -> tuple[Tensor, Tensor]:
        """Class logits (R, K) and deltas (R, 4K) for (R, 5) rois."""
        c = self.cfg.FAST_RCNN
        return self.box_head(self._pool(feats, rois, c.ROI_XFORM_RESOLUTION, c.ROI_XFORM_SAMPLING_RATIO))

    def mask_logits(self, feats: list[Tensor], rois: Tensor) -> Tensor:
        """Mask logits (R, K, 28, 28)."""
        c = self.cfg.MRCNN
        return self.mask_head(self._pool(feats, rois, c.ROI_XFORM_RESOLUTION, c.ROI_XFORM_SAMPLING_RATIO))

    def keypoint_logits(self, feats: list[Tensor], rois: Tensor) -> Tensor:
        """Keypoint heatmap logits (R, J, 56, 56)."""
        c = self.cfg.KRCNN
        return self.keypoint_head(self._pool(feats, rois, c.ROI_XFORM_RESOLUTION, c.ROI_XFORM_SAMPLING_RATIO))
