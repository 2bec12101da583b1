"""Detectron's initialisation of the layers trained from scratch (docs/detectron.md §5.6).

Caffe2 fills, reproduced: ``XavierFill`` is uniform(+-sqrt(3 / fan_in)) with
``fan_in = numel / dim0``; ``MSRAFill`` is normal(0, sqrt(2 / fan_out)) with
``fan_out = numel / dim1`` (for a ConvTranspose weight (in, out, kh, kw) that is
in * kh * kw); ``GaussianFill`` normal(0, std); biases 0. The ResNet body comes
from the ImageNet ``R-50.pkl`` (``rcnn.engine.weights.load_imagenet_backbone``).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from rcnn.modeling.c4 import is_c4
from rcnn.modeling.generalized_rcnn import GeneralizedRCNN
from rcnn.modeling.group_norm import GroupNorm
from rcnn.modeling.support import UnsupportedModelError


def xavier_fill(w: Tensor, gen: torch.Generator) -> None:
    scale = math.sqrt(3.0 / (w.numel() // w.shape[0]))
    w.copy_(torch.rand(w.shape, generator=gen) * (2 * scale) - scale)


def msra_fill(w: Tensor, gen: torch.Generator) -> None:
    w.copy_(torch.randn(w.shape, generator=gen) * math.sqrt(2.0 / (w.numel() // w.shape[1])))


def gaussian_fill(std: float):
    def fill(w: Tensor, gen: torch.Generator) -> None:
        w.copy_(torch.randn(w.shape, generator=gen) * std)
    return fill


@torch.no_grad()
def init_heads(model: GeneralizedRCNN, cfg, seed: int = 3) -> None:
    """Initialise FPN, RPN and the heads like Detectron's model builder (biases zero, GroupNorm
    scale 1 and bias 0). The body is not touched: it comes from ImageNet weights (a GN body
    trained from scratch, ``scratch_*_gn.yaml``, is not initialised like Detectron here)."""
    if is_c4(cfg):
        raise UnsupportedModelError("training C4 models is not implemented (inference only)")
    gen = torch.Generator().manual_seed(seed)
    mask_fill = {"MSRAFill": msra_fill, "GaussianFill": gaussian_fill(0.001)}
    plan: list[tuple[nn.Module, object]] = [(m, xavier_fill) for m in model.fpn.children() if isinstance(m, nn.Conv2d)]
    plan += [(getattr(model.rpn, n), gaussian_fill(0.01)) for n in model.rpn.names]
    box = model.box_head
    plan += [(getattr(box, n), msra_fill) for n in getattr(box, "conv_names", ())]   # add_roi_Xconv1fc(_gn)_head
    plan += [(getattr(box, n), xavier_fill) for n in ("fc6", "fc7") if hasattr(box, n)]
    plan += [(box.cls_score, gaussian_fill(0.01)), (box.bbox_pred, gaussian_fill(0.001))]
    if cfg.MODEL.MASK_ON:
        m = model.mask_head
        conv_fill = mask_fill[cfg.MRCNN.CONV_INIT]
        plan += [(getattr(m, n), conv_fill) for n in m.conv_names] + [(m.conv5_mask, conv_fill)]
        # Class-agnostic masks use a Gaussian: fills based on fan-in can diverge (Detectron).
        plan.append((m.mask_fcn_logits, conv_fill if cfg.MRCNN.CLS_SPECIFIC_MASK else gaussian_fill(0.001)))
    if cfg.MODEL.KEYPOINTS_ON:
        k = model.keypoint_head
        conv_fill = {"MSRAFill": msra_fill, "GaussianFill": gaussian_fill(0.01)}[cfg.KRCNN.CONV_INIT]
        plan += [(getattr(k, n), conv_fill) for n in k.conv_names]
        plan.append((k.kps_score_lowres, {"MSRAFill": msra_fill, "GaussianFill": gaussian_fill(0.001)}[cfg.KRCNN.CONV_INIT]))
    for module, fill in plan:
        fill(module.weight, gen)
        if module.bias is not None:   # ConvGN convs have none
            module.bias.zero_()
    for name, module in model.named_modules():
        if isinstance(module, GroupNorm) and not name.startswith("backbone."):   # spatial_gn: ConstantFill 1, 0
            module.scale.fill_(1.0)
            module.bias.zero_()
