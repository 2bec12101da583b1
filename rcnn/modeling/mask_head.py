"""Mask heads ``mask_rcnn_fcn_head_v1up4convs`` / ``_v1up`` / ``_v1up4convs_gn`` +
``add_mask_rcnn_outputs`` (``modeling/mask_rcnn_heads.py``).

3x3 convs named ``_[mask]_fcn1..N`` (the brackets are part of Detectron's blob names),
a 2x2 stride-2 deconv ``conv5_mask``, and the per-class 1x1 ``mask_fcn_logits``
(R, K, 28, 28). The GroupNorm head (``mask_rcnn_fcn_head_v1upXconvs_gn``) names its convs
``_mask_fcn1..4`` (no brackets), has no conv bias, a GN op ``_mask_fcnI_gn`` after each,
and passes ``MRCNN.DILATION`` as padding only (its ``ConvGN`` call has no dilation).
"""
from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from rcnn.modeling.group_norm import GroupNormSpec


class MaskHead(nn.Module):
    def __init__(self, dim_in: int, dim: int, num_convs: int, dilation: int, num_classes: int,
                 cls_specific: bool = True, gn: GroupNormSpec | None = None) -> None:
        super().__init__()
        prefix = "_[mask]_fcn" if gn is None else "_mask_fcn"
        self.conv_names = [f"{prefix}{i}" for i in range(1, num_convs + 1)]
        self.use_gn = gn is not None
        for name in self.conv_names:
            if gn is None:
                self.add_module(name, nn.Conv2d(dim_in, dim, 3, padding=dilation, dilation=dilation))
            else:
                self.add_module(name, nn.Conv2d(dim_in, dim, 3, padding=dilation, bias=False))
                self.add_module(f"{name}_gn", gn(dim))
            dim_in = dim
        self.conv5_mask = nn.ConvTranspose2d(dim, dim, 2, stride=2)
        self.mask_fcn_logits = nn.Conv2d(dim, num_classes if cls_specific else 1, 1)

    def forward(self, roi_feats: Tensor) -> Tensor:
        x = roi_feats
        for name in self.conv_names:
            x = getattr(self, name)(x)
            x = F.relu_(getattr(self, f"{name}_gn")(x) if self.use_gn else x)
        return self.mask_fcn_logits(F.relu_(self.conv5_mask(x)))
