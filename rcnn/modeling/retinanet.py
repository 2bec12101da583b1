"""Detectron's ``retinanet`` model: FPN P3-P7 on a ResNet body and the RetinaNet heads.

``model_builder.py::build_generic_retinanet_model`` with ``FPN.py::add_fpn`` and
``retinanet_heads.py::add_fpn_retinanet_outputs``:

* the FPN levels are ``RPN_MIN_LEVEL..RPN_MAX_LEVEL`` (``get_min_max_levels`` with
  ``MULTILEVEL_ROIS`` off), so with levels 3-7 there is no P2 and no C2 lateral;
  above C5, ``EXTRA_CONV_LEVELS`` adds ``fpn_6`` (3x3 stride-2 conv on C5 itself, not
  on P5) and ``fpn_7`` (the same on ``ReLU(P6)``);
* class and box towers of ``NUM_CONVS`` 3x3 conv + ReLU, then a 3x3 prediction
  conv; the weights are created at the lowest level and shared by the others, so
  their ops carry that level's suffix (``retnet_cls_conv_n0_fpn3``,
  ``retnet_cls_pred_fpn3``, ``retnet_bbox_conv_n0_fpn3``, ``retnet_bbox_pred_fpn3``);
  ``SHARE_CLS_BBOX_TOWER`` feeds the box prediction from the class tower;
* ``retnet_cls_pred`` has ``A * (K - 1)`` channels ordered anchor-major
  (``a * (K - 1) + class``), ``retnet_bbox_pred`` ``A * 4`` (class-agnostic).

Components (``rcnn.naming``): ``backbone``, ``fpn``, ``retinanet``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rcnn.data.train_batch import TrainBatch
from rcnn.modeling.fpn import FPN
from rcnn.modeling.init import gaussian_fill, xavier_fill
from rcnn.modeling.resnet import FPN_BODY, build_body
from rcnn.modeling.retinanet_losses import RetinaNetLossParams, retinanet_losses
from rcnn.modeling.retinanet_targets import RetinaNetTargetParams, retinanet_targets
from rcnn.modeling.support import require as _require

HIGHEST_BACKBONE_LEVEL = 5


class ExtraLevelsFPN(FPN):
    """FPN from C``min_level``..C5 plus Detectron's conv levels ``fpn_6``.. above C5."""

    def __init__(self, in_channels: Sequence[int], stage_sum_names: Sequence[str], dim: int,
                 max_level: int) -> None:
        super().__init__(in_channels, stage_sum_names, dim, with_p6=False)
        self.extra_names = [f"fpn_{lvl}" for lvl in range(HIGHEST_BACKBONE_LEVEL + 1, max_level + 1)]
        dim_in = in_channels[-1]
        for name in self.extra_names:
            self.add_module(name, nn.Conv2d(dim_in, dim, 3, stride=2, padding=1))
            dim_in = dim

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """C``min``..C5 -> [P``min``, ..., P5, P6, ...] (inputs padded to ``FPN.COARSEST_STRIDE``)."""
        outs = super().forward(feats)
        x = feats[-1]
        for i, name in enumerate(self.extra_names):
            x = getattr(self, name)(F.relu(x) if i > 0 else x)
            outs.append(x)
        return outs


class RetinaNetHead(nn.Module):
    """Class and box towers shared over the levels (``add_fpn_retinanet_outputs``)."""

    def __init__(self, dim: int, num_convs: int, num_anchors: int, num_classes: int, min_level: int,
                 share_tower: bool) -> None:
        super().__init__()
        suffix = f"fpn{min_level}"
        self.cls_convs = [f"retnet_cls_conv_n{i}_{suffix}" for i in range(num_convs)]
        self.bbox_convs = [] if share_tower else [f"retnet_bbox_conv_n{i}_{suffix}" for i in range(num_convs)]
        for name in self.cls_convs + self.bbox_convs:
            self.add_module(name, nn.Conv2d(dim, dim, 3, padding=1))
        self.cls_pred = f"retnet_cls_pred_{suffix}"
        self.bbox_pred = f"retnet_bbox_pred_{suffix}"
        self.add_module(self.cls_pred, nn.Conv2d(dim, num_anchors * (num_classes - 1), 3, padding=1))
        self.add_module(self.bbox_pred, nn.Conv2d(dim, num_anchors * 4, 3, padding=1))

    def _tower(self, names: Sequence[str], x: Tensor) -> Tensor:
        for name in names:
            x = F.relu_(getattr(self, name)(x))
        return x

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: class logits (B, A * (K - 1), H, W) and box deltas (B, 4A, H, W)."""
        logits, deltas = [], []
        for x in feats:
            cls_feat = self._tower(self.cls_convs, x)
            logits.append(getattr(self, self.cls_pred)(cls_feat))
            box_feat = self._tower(self.bbox_convs, x) if self.bbox_convs else cls_feat
            deltas.append(getattr(self, self.bbox_pred)(box_feat))
        return logits, deltas


class RetinaNet(nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        _require(cfg.MODEL.TYPE == "retinanet" and cfg.RETINANET.RETINANET_ON,
                 "RetinaNet needs MODEL.TYPE retinanet and RETINANET.RETINANET_ON")
        _require(FPN_BODY.match(cfg.MODEL.CONV_BODY) is not None and cfg.FPN.FPN_ON,
                 f"MODEL.CONV_BODY {cfg.MODEL.CONV_BODY!r} (only FPN.add_fpn_ResNet{{50,101,152}}_conv5_body)")
        r, f = cfg.RETINANET, cfg.FPN
        _require(f.MULTILEVEL_RPN and not f.MULTILEVEL_ROIS, "RetinaNet needs FPN.MULTILEVEL_RPN only")
        _require(2 <= f.RPN_MIN_LEVEL <= HIGHEST_BACKBONE_LEVEL <= f.RPN_MAX_LEVEL,
                 f"FPN.RPN_MIN/MAX_LEVEL {f.RPN_MIN_LEVEL}/{f.RPN_MAX_LEVEL}")
        _require(f.EXTRA_CONV_LEVELS or f.RPN_MAX_LEVEL == HIGHEST_BACKBONE_LEVEL,
                 "RetinaNet levels above 5 need FPN.EXTRA_CONV_LEVELS")
        _require(not f.USE_GN, "FPN.USE_GN with RetinaNet")
        _require(not r.SOFTMAX and not r.CLASS_SPECIFIC_BBOX,
                 "RETINANET.SOFTMAX / RETINANET.CLASS_SPECIFIC_BBOX (no Detectron model uses them)")
        self.cfg = cfg   # the config it was built from (saved with checkpoints); the stages read the params
        self.levels = list(range(f.RPN_MIN_LEVEL, f.RPN_MAX_LEVEL + 1))
        self.target_params = RetinaNetTargetParams.from_cfg(cfg)
        self.loss_params = RetinaNetLossParams.from_cfg(cfg)
        self.backbone = build_body(cfg)
        first = f.RPN_MIN_LEVEL - 2
        self.fpn = ExtraLevelsFPN(self.backbone.out_channels[first:],
                                  [self.backbone.sum_name(s) for s in range(f.RPN_MIN_LEVEL, 6)], f.DIM,
                                  f.RPN_MAX_LEVEL)
        self.num_anchors = r.SCALES_PER_OCTAVE * len(r.ASPECT_RATIOS)
        self.retinanet = RetinaNetHead(f.DIM, r.NUM_CONVS, self.num_anchors, cfg.MODEL.NUM_CLASSES,
                                       f.RPN_MIN_LEVEL, r.SHARE_CLS_BBOX_TOWER)

    def forward(self, batch: TrainBatch, sampler: object = None) -> dict[str, Tensor]:
        """Training: Detectron's RetinaNet losses of a ``TrainBatch`` (nothing is sampled, so
        ``sampler``, part of the training loop's call, is unused)."""
        logits, deltas = self.head_outputs(self.features(batch.blob))
        targets = retinanet_targets([(x.shape[-2], x.shape[-1]) for x in logits], batch.image_info, batch.targets,
                                    self.target_params)
        return retinanet_losses(logits, deltas, targets, self.levels, self.loss_params)

    def features(self, blob: Tensor) -> list[Tensor]:
        """FPN levels P``min``..P``max`` of a (B, 3, H, W) blob padded to ``FPN.COARSEST_STRIDE``."""
        return self.fpn(self.backbone(blob)[self.levels[0] - 2:])

    def head_outputs(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: class logits (B, A * (K - 1), H, W) and deltas (B, 4A, H, W)."""
        return self.retinanet(feats)


@torch.no_grad()
def init_retinanet(model: RetinaNet, cfg, seed: int = 3) -> None:
    """Detectron's fills for the layers trained from scratch: ``XavierFill`` for the FPN
    convs (``fpn_6``/``fpn_7`` too), ``GaussianFill(0.01)`` for the towers and both
    predictions, biases 0 except the class prediction's prior ``-log((1 - pi) / pi)``
    with ``pi = RETINANET.PRIOR_PROB`` (``get_retinanet_bias_init``, sigmoid case)."""
    gen = torch.Generator().manual_seed(seed)
    head = model.retinanet
    plan: list[tuple[nn.Conv2d, Callable[[Tensor, torch.Generator], None]]] = [
        (m, xavier_fill) for m in model.fpn.children() if isinstance(m, nn.Conv2d)]
    plan += [(getattr(head, n), gaussian_fill(0.01)) for n in head.cls_convs + head.bbox_convs]
    plan += [(getattr(head, head.cls_pred), gaussian_fill(0.01)), (getattr(head, head.bbox_pred), gaussian_fill(0.01))]
    for module, fill in plan:
        fill(module.weight, gen)
        module.bias.zero_()  # type: ignore[union-attr]
    prior = cfg.RETINANET.PRIOR_PROB
    getattr(head, head.cls_pred).bias.fill_(-math.log((1 - prior) / prior))
