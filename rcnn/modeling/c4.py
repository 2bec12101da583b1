"""Detectron's ResNet-C4 models (``MODEL.CONV_BODY: ResNet.add_ResNet{50,101}_conv4_body``).

No FPN: the body stops after res4 (one feature map at stride 16), the RPN runs on that
one level with ``RPN.SIZES x RPN.ASPECT_RATIOS`` anchors (``rpn_heads.py::
add_single_scale_rpn_outputs``), and res5 becomes the per-RoI box head
(``ResNet.py::add_ResNet_roi_conv5_head``): RoIAlign 14x14 at 1/16, res5 with a
stride-2 first block, 7x7 average pooling, then ``cls_score``/``bbox_pred``. The mask
head ``mask_rcnn_fcn_head_v0upshare`` re-runs the *same* res5 weights on the mask RoIs
at test time (Detectron names them ``_[mask]_res5_*`` and fills them from ``res5_*``;
here the module is shared, so the state dict has one ``res5`` and the blob names are
exactly the checkpoint's), then a 2x2 ConvTranspose to 14x14 and ``mask_fcn_logits``.

The stages (``features``, ``proposals``, ``box_outputs``, ``mask_logits``) are the
ones ``GeneralizedRCNN`` exposes, so ``rcnn.inference.detector.Detector`` runs both.
Why each rule: ``docs/c4.md``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import roi_align

from rcnn.data.im_info import ImInfo
from rcnn.modeling.proposals import ProposalParams, generate_proposals
from rcnn.modeling.resnet import C4_BODY, Bottleneck, ResNetConv4Body, build_body
from rcnn.modeling.rpn import RPNHead
from rcnn.modeling.support import UnsupportedModelError
from rcnn.modeling.support import require as _require
from rcnn.ops.pooler import RoIXform

__all__ = ["C4_LEVEL", "MaskHeadV0UpShare", "Res5Head", "ResNetC4RCNN", "ResNetConv4Body", "is_c4"]
# res4 is at stride 16 = 2**4: the level the single-scale RPN and the RoI heads use.
C4_LEVEL = 4


def is_c4(cfg) -> bool:
    """Whether ``cfg`` describes a C4 model (conv4 body, no FPN)."""
    return C4_BODY.match(cfg.MODEL.CONV_BODY) is not None


class Res5Head(nn.Module):
    """``add_ResNet_roi_conv5_head`` + ``fast_rcnn_heads.add_fast_rcnn_outputs``.

    ``res5`` is ``add_stage('res5', 'pool5', 3, ...)``: the first block's stride is
    ``stride_init = int(ROI_XFORM_RESOLUTION / 7)`` (2 for 14x14 RoIs) and sits on the
    1x1 or the 3x3 conv as ``RESNETS.STRIDE_1X1`` says; then ``AveragePool(kernel=7)``.
    """

    def __init__(self, dim_in: int, dim_inner: int, stride_init: int, stride_1x1: bool, num_classes: int,
                 cls_agnostic_bbox_reg: bool = False) -> None:
        super().__init__()
        dim_out = 2048
        self.res5 = nn.ModuleList(
            Bottleneck(dim_in if i == 0 else dim_out, dim_inner, dim_out, stride_init if i == 0 else 1, 1, stride_1x1)
            for i in range(3))
        self.cls_score = nn.Linear(dim_out, num_classes)
        self.bbox_pred = nn.Linear(dim_out, 4 * (2 if cls_agnostic_bbox_reg else num_classes))

    def res5_features(self, pooled: Tensor) -> Tensor:
        """``res5_2_sum`` (R, 2048, 7, 7) of RoI features (R, 1024, 14, 14)."""
        x = pooled
        for block in self.res5:
            x = block(x)
        return x

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """Class logits (R, K) and box deltas (R, 4K) of RoI features."""
        x = F.avg_pool2d(self.res5_features(pooled), kernel_size=7, stride=1).flatten(1)
        return self.cls_score(x), self.bbox_pred(x)


class MaskHeadV0UpShare(nn.Module):
    """``mask_rcnn_fcn_head_v0upshare`` + ``add_mask_rcnn_outputs`` on res5 features:
    ``conv5_mask`` (ConvTranspose 2x2, stride 2, 7x7 -> 14x14), ReLU, ``mask_fcn_logits``."""

    conv_names: tuple[str, ...] = ()   # no 3x3 convs (the FPN heads' ``_[mask]_fcnN``)

    def __init__(self, dim_in: int, dim_reduced: int, num_classes: int, cls_specific: bool = True) -> None:
        super().__init__()
        self.conv5_mask = nn.ConvTranspose2d(dim_in, dim_reduced, 2, stride=2)
        self.mask_fcn_logits = nn.Conv2d(dim_reduced, num_classes if cls_specific else 1, 1)

    def forward(self, res5: Tensor) -> Tensor:
        return self.mask_fcn_logits(F.relu_(self.conv5_mask(res5)))


class ResNetC4RCNN(nn.Module):
    """Faster / Mask R-CNN (or RPN only) with a ResNet-C4 body, at inference."""

    def __init__(self, cfg) -> None:
        super().__init__()
        _require(is_c4(cfg), f"MODEL.CONV_BODY {cfg.MODEL.CONV_BODY!r} is not a C4 body")
        _require(not cfg.FPN.FPN_ON, "a conv4 body with FPN.FPN_ON")
        # End to end (MODEL.FASTER_RCNN), RPN only, or Fast R-CNN on precomputed proposals (no RPN).
        _require(cfg.MODEL.TYPE in ("generalized_rcnn", "rpn"), f"MODEL.TYPE {cfg.MODEL.TYPE!r}")
        _require(not cfg.MODEL.KEYPOINTS_ON, "C4 keypoint models")
        self.cfg = cfg   # the config it was built from (checkpoints save it); the stages read the params below
        self.aspect_ratios = tuple(cfg.RPN.ASPECT_RATIOS)
        self.box_xform = RoIXform.from_node(cfg.FAST_RCNN)
        self.mask_xform = RoIXform.from_node(cfg.MRCNN)
        r = cfg.RESNETS
        self.backbone = build_body(cfg)
        dim = self.backbone.out_channels[-1]
        self.anchor_sizes = [tuple(cfg.RPN.SIZES)]
        if cfg.RPN.RPN_ON:
            self.rpn = RPNHead(dim, len(cfg.RPN.SIZES) * len(cfg.RPN.ASPECT_RATIOS), None)
        if cfg.MODEL.RPN_ONLY:
            return
        f = cfg.FAST_RCNN
        _require(f.ROI_BOX_HEAD == "ResNet.add_ResNet_roi_conv5_head", f"FAST_RCNN.ROI_BOX_HEAD {f.ROI_BOX_HEAD!r}")
        _require(f.ROI_XFORM_METHOD == "RoIAlign", f"FAST_RCNN.ROI_XFORM_METHOD {f.ROI_XFORM_METHOD!r}")
        self.box_head = Res5Head(dim, r.NUM_GROUPS * r.WIDTH_PER_GROUP * 8, int(f.ROI_XFORM_RESOLUTION / 7),
                                 r.STRIDE_1X1, cfg.MODEL.NUM_CLASSES, cfg.MODEL.CLS_AGNOSTIC_BBOX_REG)
        if cfg.MODEL.MASK_ON:
            m = cfg.MRCNN
            _require(m.ROI_MASK_HEAD == "mask_rcnn_heads.mask_rcnn_fcn_head_v0upshare",
                     f"MRCNN.ROI_MASK_HEAD {m.ROI_MASK_HEAD!r} with a C4 body")
            _require(m.ROI_XFORM_METHOD == "RoIAlign", f"MRCNN.ROI_XFORM_METHOD {m.ROI_XFORM_METHOD!r}")
            # The shared res5 is the box head's: same RoI size and no dilation (Detectron asserts the first).
            _require(m.ROI_XFORM_RESOLUTION == f.ROI_XFORM_RESOLUTION and m.DILATION == 1,
                     "MRCNN.ROI_XFORM_RESOLUTION != FAST_RCNN.ROI_XFORM_RESOLUTION or MRCNN.DILATION != 1")
            _require(m.UPSAMPLE_RATIO == 1 and not m.USE_FC_OUTPUT, "MRCNN.UPSAMPLE_RATIO != 1 or MRCNN.USE_FC_OUTPUT")
            self.mask_head = MaskHeadV0UpShare(2048, m.DIM_REDUCED, cfg.MODEL.NUM_CLASSES, m.CLS_SPECIFIC_MASK)

    def forward(self, batch, sampler) -> dict[str, Tensor]:
        raise UnsupportedModelError("training C4 models is not implemented (inference only)")

    # -- stages (as GeneralizedRCNN's) -------------------------------------------
    def features(self, blob: Tensor) -> list[Tensor]:
        """``[res4_{n}_sum]``: the one feature map (stride 16) of an unpadded (B, 3, H, W) blob."""
        return [self.backbone(blob)[-1]]

    def rpn_outputs(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Single-level objectness logits (B, A, H, W) and deltas (B, 4A, H, W)."""
        return self.rpn(feats)

    def proposals(self, feats: list[Tensor], im_info: ImInfo, params: ProposalParams) -> tuple[Tensor, Tensor]:
        """Single-level RPN and ``GenerateProposals`` (``rois`` = ``rpn_rois``, no collection)."""
        logits, deltas = self.rpn_outputs(feats)
        return generate_proposals([torch.sigmoid(x) for x in logits], deltas, im_info, [C4_LEVEL], self.anchor_sizes,
                                  self.aspect_ratios, params)

    def _pool(self, feats: list[Tensor], rois: Tensor, xform: RoIXform) -> Tensor:
        """Caffe2 ``RoIAlign`` at 1/16 (``sampling_ratio`` 0: adaptive ``ceil(roi / resolution)``)."""
        return roi_align(feats[0], rois.to(feats[0].dtype), xform.resolution, spatial_scale=1.0 / 2**C4_LEVEL,
                         sampling_ratio=xform.sampling_ratio, aligned=False)

    def box_outputs(self, feats: list[Tensor], rois: Tensor) -> tuple[Tensor, Tensor]:
        """Class logits (R, K) and deltas (R, 4K) for (R, 5) rois."""
        return self.box_head(self._pool(feats, rois, self.box_xform))

    def mask_logits(self, feats: list[Tensor], rois: Tensor) -> Tensor:
        """Mask logits (R, K, 14, 14): res5 recomputed on the mask RoIs (``_[mask]_pool5``)."""
        return self.mask_head(self.box_head.res5_features(self._pool(feats, rois, self.mask_xform)))
