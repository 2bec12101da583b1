"""RoI -> FPN level mapping and multi-level RoIAlign (Detectron's ``RoIFeatureTransform``)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import roi_align

from rcnn.config import get_default_cfg
from rcnn.ops.boxes import boxes_area

_FPN_DEFAULTS = get_default_cfg().FPN


@dataclass(frozen=True)
class RoIXform:
    """A head's ``ROI_XFORM_RESOLUTION`` and ``ROI_XFORM_SAMPLING_RATIO`` (``FAST_RCNN``,
    ``MRCNN`` or ``KRCNN`` node of the config)."""

    resolution: int
    sampling_ratio: int

    @classmethod
    def from_node(cls, node) -> RoIXform:
        return cls(node.ROI_XFORM_RESOLUTION, node.ROI_XFORM_SAMPLING_RATIO)


def map_rois_to_levels(
    boxes: Tensor, k_min: int, k_max: int, canonical_scale: int = _FPN_DEFAULTS.ROI_CANONICAL_SCALE,
    canonical_level: int = _FPN_DEFAULTS.ROI_CANONICAL_LEVEL,
) -> Tensor:
    """FPN level of each box: ``floor(4 + log2(sqrt(area) / 224 + 1e-6))`` clipped.

    Computed in float32 with the ``+1`` area, like ``FPN.map_rois_to_fpn_levels``
    on Detectron's float32 RoI blobs.
    """
    s = torch.sqrt(boxes_area(boxes))
    eps = torch.tensor(1e-6, dtype=s.dtype, device=s.device)
    lvls = torch.floor(canonical_level + torch.log2(s / canonical_scale + eps))
    return lvls.clamp(k_min, k_max).to(torch.int64)


def multilevel_roi_align(
    features: Sequence[Tensor],
    rois: Tensor,
    levels: Sequence[int],
    output_size: int,
    sampling_ratio: int,
    canonical_scale: int = _FPN_DEFAULTS.ROI_CANONICAL_SCALE,
    canonical_level: int = _FPN_DEFAULTS.ROI_CANONICAL_LEVEL,
) -> Tensor:
    """RoIAlign each RoI on the level it maps to; output rows in ``rois`` order.

    Args:
        features: one (B, C, H, W) map per level in ``levels`` (strides 2**level).
        rois: (R, 5) float32 ``[batch_index, x1, y1, x2, y2]`` in input-image pixels.

    Caffe2's ``RoIAlign`` has no half-pixel shift and clamps RoI sizes to >= 1
    feature pixel: that is ``torchvision.ops.roi_align(aligned=False)``.
    """
    lvls = map_rois_to_levels(rois[:, 1:5], levels[0], levels[-1], canonical_scale, canonical_level)
    out = rois.new_zeros((rois.shape[0], features[0].shape[1], output_size, output_size), dtype=features[0].dtype)
    for feat, lvl in zip(features, levels):
        idx = torch.nonzero(lvls == lvl, as_tuple=True)[0]
        if idx.numel() == 0:
            continue
        out[idx] = roi_align(
            feat, rois[idx].to(feat.dtype), output_size, spatial_scale=1.0 / 2**lvl,
            sampling_ratio=sampling_ratio, aligned=False,
        )
    return out
