"""Mask head ``mask_rcnn_fcn_head_v1up4convs`` + ``add_mask_rcnn_outputs``.

Four 3x3 convs named ``_[mask]_fcn1..4`` (the brackets are part of Detectron's
blob names), a 2x2 stride-2 deconv ``conv5_mask``, and the per-class 1x1
``mask_fcn_logits`` (R, K, 28, 28).
"""
from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F


class MaskHead(nn.Module):
    def __init__(self, dim_in: int, dim: int, num_convs: int, dilation: int, num_classes: int,
                 cls_specific: bool = True) -> None:
        super().__init__()
        self.conv_names = [f"_[mask]_fcn{i}" for i in range(1, num_convs + 1)]
        for name in self.conv_names:
            self.add_module(name, nn.Conv2d(dim_in, dim, 3, padding=dilation, dilation=dilation))
            dim_in = dim
        self.conv5_mask = nn.ConvTranspose2d(dim, dim, 2, stride=2)
        self.mask_fcn_logits = nn.Conv2d(dim, num_classes if cls_specific else 1, 1)

    def forward(self, roi_feats: Tensor) -> Tensor:
        x = roi_feats
        for name in self.conv_names:
            x = F.relu(getattr(self, name)(x))
        return self.mask_fcn_logits(F.relu(self.conv5_mask(x)))
