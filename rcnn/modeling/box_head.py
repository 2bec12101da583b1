"""Fast R-CNN box head: ``add_roi_2mlp_head`` + ``add_fast_rcnn_outputs``.

RoI features (R, 256, 7, 7) -> ``fc6`` -> ReLU -> ``fc7`` -> ReLU -> ``cls_score``
(softmax at test) and ``bbox_pred`` (4 deltas per class, background included).
"""
from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F


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
        x = F.relu(self.fc6(roi_feats.flatten(1)))
        x = F.relu(self.fc7(x))
        return self.cls_score(x), self.bbox_pred(x)
