"""Detectron's ``generalized_rcnn`` with an FPN ResNet/ResNeXt body (AffineChannel or
GroupNorm): the network itself.

The components are the top-level children whose names start every state-dict
key (see ``rcnn.naming``). Each stage is a method so that inference
(``rcnn.inference.detector``) and training can run them with their own
post-processing in between; nothing here leaves the device. The stages read
typed parameters built once from the config here, never the config itself
(docs/architecture.md).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from rcnn.data.im_info import ImInfo
from rcnn.modeling.box_head import BoxHead, ConvFCBoxHead
from rcnn.modeling.fpn import FPN
from rcnn.modeling.group_norm import GroupNormSpec
from rcnn.modeling.keypoint_head import KeypointHead
from rcnn.modeling.mask_head import MaskHead
from rcnn.modeling.proposals import ProposalParams, generate_proposals
from rcnn.modeling.resnet import FPN_BODY, build_body
from rcnn.modeling.rpn import RPNHead
from rcnn.modeling.support import UnsupportedModelError
from rcnn.modeling.support import require as _require
from rcnn.modeling.training import TrainingParams, training_losses
from rcnn.ops.pooler import RoIXform, multilevel_roi_align

# model_builder.py: the deprecated MODEL.TYPEs that build generalized_rcnn unchanged.
_GENERALIZED_RCNN_TYPES = ("generalized_rcnn", "fast_rcnn", "mask_rcnn", "keypoint_rcnn", "mask_and_keypoint_rcnn")
# MRCNN.ROI_MASK_HEAD -> (number of 3x3 convs, GroupNorm)
_MASK_HEAD_CONVS = {
    "mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs": (4, False),
    "mask_rcnn_heads.mask_rcnn_fcn_head_v1up": (2, False),
    "mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs_gn": (4, True),
}
__all__ = ["GeneralizedRCNN", "UnsupportedModelError"]


def _check_fpn_body(cfg) -> None:
    """The checks of the end-to-end FPN ResNet/ResNeXt family."""
    body = FPN_BODY.match(cfg.MODEL.CONV_BODY)
    _require(body is not None and cfg.FPN.FPN_ON,
             f"MODEL.CONV_BODY {cfg.MODEL.CONV_BODY!r} (only FPN.add_fpn_ResNet{{50,101,152}}_conv5_body)")
    _require(cfg.MODEL.TYPE in _GENERALIZED_RCNN_TYPES, f"MODEL.TYPE {cfg.MODEL.TYPE!r}")
    # RPN-only models have no RoI heads; precomputed-proposal models (FASTER_RCNN False) no RPN.
    _require((cfg.FPN.MULTILEVEL_RPN or not cfg.RPN.RPN_ON) and (cfg.FPN.MULTILEVEL_ROIS or cfg.MODEL.RPN_ONLY),
             "FPN.MULTILEVEL_RPN/ROIS must be True")
    _require(not cfg.FPN.EXTRA_CONV_LEVELS, "FPN.EXTRA_CONV_LEVELS")
    _require(cfg.FPN.RPN_MAX_LEVEL == 6 and cfg.FPN.ROI_MAX_LEVEL == 5 and cfg.FPN.RPN_MIN_LEVEL == 2
             and cfg.FPN.ROI_MIN_LEVEL == 2, "FPN levels other than RPN 2-6 / RoI 2-5")


def _box_head(cfg, dim: int, gn: GroupNormSpec) -> nn.Module:
    """``FAST_RCNN.ROI_BOX_HEAD``: the 2-fc MLP or the X-conv + 1-fc head (GN or not)."""
    c, head = cfg.FAST_RCNN, cfg.FAST_RCNN.ROI_BOX_HEAD
    if head == "fast_rcnn_heads.add_roi_2mlp_head":
        return BoxHead(dim, c.ROI_XFORM_RESOLUTION, c.MLP_HEAD_DIM, cfg.MODEL.NUM_CLASSES,
                       cfg.MODEL.CLS_AGNOSTIC_BBOX_REG)
    _require(head in ("fast_rcnn_heads.add_roi_Xconv1fc_head", "fast_rcnn_heads.add_roi_Xconv1fc_gn_head"),
             f"FAST_RCNN.ROI_BOX_HEAD {head!r}")
    return ConvFCBoxHead(dim, c.ROI_XFORM_RESOLUTION, c.NUM_STACKED_CONVS, c.CONV_HEAD_DIM, c.MLP_HEAD_DIM,
                         cfg.MODEL.NUM_CLASSES, cfg.MODEL.CLS_AGNOSTIC_BBOX_REG,
                         gn if head.endswith("_gn_head") else None)


class GeneralizedRCNN(nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        _check_fpn_body(cfg)
        self.cfg = cfg   # the config it was built from (checkpoints save it); the stages read the params below
        gn = GroupNormSpec.from_cfg(cfg)
        self.backbone = build_body(cfg)
        sums = [self.backbone.sum_name(s) for s in range(2, 6)]
        dim = cfg.FPN.DIM
        self.fpn = FPN(self.backbone.out_channels, sums, dim, gn=gn if cfg.FPN.USE_GN else None)
        self.rpn_levels = list(range(cfg.FPN.RPN_MIN_LEVEL, cfg.FPN.RPN_MAX_LEVEL + 1))
        self.roi_levels = list(range(cfg.FPN.ROI_MIN_LEVEL, cfg.FPN.ROI_MAX_LEVEL + 1))
        self.anchor_sizes = [cfg.FPN.RPN_ANCHOR_START_SIZE * 2 ** (lvl - cfg.FPN.RPN_MIN_LEVEL)
                             for lvl in self.rpn_levels]
        self.aspect_ratios = tuple(cfg.FPN.RPN_ASPECT_RATIOS)
        self.canonical_scale, self.canonical_level = cfg.FPN.ROI_CANONICAL_SCALE, cfg.FPN.ROI_CANONICAL_LEVEL
        self.box_xform = RoIXform.from_node(cfg.FAST_RCNN)
        self.mask_xform = RoIXform.from_node(cfg.MRCNN)
        self.keypoint_xform = RoIXform.from_node(cfg.KRCNN)
        self.end_to_end = cfg.MODEL.FASTER_RCNN
        self.train_params = TrainingParams.from_cfg(cfg)
        if cfg.RPN.RPN_ON:
            self.rpn = RPNHead(dim, len(cfg.FPN.RPN_ASPECT_RATIOS), cfg.FPN.RPN_MIN_LEVEL)
        if cfg.MODEL.RPN_ONLY:
            return
        self.box_head = _box_head(cfg, dim, gn)
        if cfg.MODEL.MASK_ON:
            _require(cfg.MRCNN.ROI_MASK_HEAD in _MASK_HEAD_CONVS, f"MRCNN.ROI_MASK_HEAD {cfg.MRCNN.ROI_MASK_HEAD!r}")
            _require(cfg.MRCNN.UPSAMPLE_RATIO == 1 and not cfg.MRCNN.USE_FC_OUTPUT,
                     "MRCNN.UPSAMPLE_RATIO != 1 or MRCNN.USE_FC_OUTPUT")
            num_convs, use_gn = _MASK_HEAD_CONVS[cfg.MRCNN.ROI_MASK_HEAD]
            self.mask_head = MaskHead(dim, cfg.MRCNN.DIM_REDUCED, num_convs, cfg.MRCNN.DILATION, cfg.MODEL.NUM_CLASSES,
                                      cfg.MRCNN.CLS_SPECIFIC_MASK, gn if use_gn else None)
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
        _require(self.end_to_end, "training other than end to end (MODEL.FASTER_RCNN)")
        return training_losses(self, batch, sampler)

    # -- stages ---------------------------------------------------------------
    def features(self, blob: Tensor) -> list[Tensor]:
        """FPN levels P2..P6 of a (B, 3, H, W) blob padded to a multiple of 32."""
        return self.fpn(self.backbone(blob))

    def rpn_outputs(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per RPN level: objectness logits (B, A, H, W) and deltas (B, 4A, H, W)."""
        return self.rpn(feats)

    def proposals_from_outputs(self, logits: list[Tensor], deltas: list[Tensor], im_info: ImInfo,
                               params: ProposalParams) -> tuple[Tensor, Tensor]:
        """Proposal generation and collection from ``rpn_outputs`` (training and inference)."""
        return generate_proposals([torch.sigmoid(x) for x in logits], deltas, im_info, self.rpn_levels,
                                  self.anchor_sizes, self.aspect_ratios, params)

    def proposals(self, feats: list[Tensor], im_info: ImInfo, params: ProposalParams) -> tuple[Tensor, Tensor]:
        """RPN on P2..P6, then proposal generation and collection."""
        return self.proposals_from_outputs(*self.rpn_outputs(feats), im_info, params)

    def _pool(self, feats: list[Tensor], rois: Tensor, xform: RoIXform) -> Tensor:
        n = len(self.roi_levels)
        return multilevel_roi_align(feats[:n], rois, self.roi_levels, xform.resolution, xform.sampling_ratio,
                                    self.canonical_scale, self.canonical_level)

    def box_outputs(self, feats: list[Tensor], rois: Tensor) -> tuple[Tensor, Tensor]:
        """Class logits (R, K) and deltas (R, 4K) for (R, 5) rois."""
        return self.box_head(self._pool(feats, rois, self.box_xform))

    def mask_logits(self, feats: list[Tensor], rois: Tensor) -> Tensor:
        """Mask logits (R, K, 28, 28)."""
        return self.mask_head(self._pool(feats, rois, self.mask_xform))

    def keypoint_logits(self, feats: list[Tensor], rois: Tensor) -> Tensor:
        """Keypoint heatmap logits (R, J, 56, 56)."""
        return self.keypoint_head(self._pool(feats, rois, self.keypoint_xform))
