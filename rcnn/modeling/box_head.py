"""Fast R-CNN box heads + ``add_fast_rcnn_outputs`` (``modeling/fast_rcnn_heads.py``).

``BoxHead`` (``add_roi_2mlp_head``): RoI features (R, 256, 7, 7) -> ``fc6`` -> ReLU ->
``fc7`` -> ReLU. ``ConvFCBoxHead`` (``add_roi_Xconv1fc_head`` and its GroupNorm twin
``add_roi_Xconv1fc_gn_head``): ``NUM_STACKED_CONVS`` 3x3 convs ``head_conv1..N`` of
``CONV_HEAD_DIM`` channels with ReLU (the GN ones without conv bias, GN op ``head_convI_gn``),
then ``fc6`` -> ReLU. Both end in ``cls_score`` (softmax at test) and ``bbox_pred``
(4 deltas per class, background included).
"""
from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from rcnn.modeling.group_norm import GroupNormSpec


class BoxHead(nn.Module):
    def __init__(self, dim_in: int, resolution: int, hidden: int, num_classes: int,
                 cls_agnostic_bbox_reg: bool = False) -> None:
        super().__init__()
        self.fc6 = nn.Linear(dim_in * resolution * resolution, hidden)
        self.fc7 = nn.Linear(hidden, hidden)
        self.cls_score = nn.Linear(hidden, num_classes)
        self.bbox_pred = nn.Linear(hidden, 4 * (2 if cls_agnostic_bbox_reg else num_classes))

    def forward(self, roi_feats: Tensor) -> tuple[Tensor, Tensor]:
        """Class logits (R, K) and box deltas (R, 4K)."""
        x = F.relu_(self.fc6(roi_feats.flatten(1)))
        x = F.relu_(self.fc7(x))
        return self.cls_score(x), self.bbox_pred(x)


class ConvFCBoxHead(nn.Module):
    def __init__(self, dim_in: int, resolution: int, num_convs: int, conv_dim: int, hidden: int,
                 num_classes: int, cls_agnostic_bbox_reg: bool = False, gn: GroupNormSpec | None = None) -> None:
        super().__init__()
        self.conv_names = [f"head_conv{i}" for i in range(1, num_convs + 1)]
        self.use_gn = gn is not None
        for name in self.conv_names:
            self.add_module(name, nn.Conv2d(dim_in, conv_dim, 3, padding=1, bias=gn is None))
            if gn is not None:
                self.add_module(f"{name}_gn", gn(conv_dim))
            dim_in = conv_dim
        self.fc6 = nn.Linear(dim_in * resolution * resolution, hidden)
        self.cls_score = nn.Linear(hidden, num_classes)
        self.bbox_pred = nn.Linear(hidden, 4 * (2 if cls_agnostic_bbox_reg else num_classes))

    def forward(self, roi_feats: Tensor) -> tuple[Tensor, Tensor]:
        """Class logits (R, K) and box deltas (R, 4K)."""
        x = roi_feats
        for name in self.conv_names:
            x = getattr(self, name)(x)
            x = F.relu_(getattr(self, f"{name}_gn")(x) if self.use_gn else x)
        x = F.relu_(self.fc6(x.flatten(1)))
        return self.cls_score(x), self.bbox_pred(x)
