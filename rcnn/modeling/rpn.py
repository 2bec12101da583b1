"""RPN head shared over the FPN levels (``FPN.py::add_fpn_rpn_outputs``).

Detectron creates the weights at the lowest RPN level and reuses them for the
others, so the ops carry that level's suffix (``conv_rpn_fpn2``...). The
single-level RPN of C4 models (``rpn_heads.py::add_single_scale_rpn_outputs``)
is the same head without a suffix (``min_level=None``: ``conv_rpn``...).
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn import functional as F


class RPNHead(nn.Module):
    def __init__(self, dim: int, num_anchors: int, min_level: int | None = 2) -> None:
        super().__init__()
        suffix = "" if min_level is None else f"_fpn{min_level}"
        self.names = tuple(f"{op}{suffix}" for op in ("conv_rpn", "rpn_cls_logits", "rpn_bbox_pred"))
        self.add_module(self.names[0], nn.Conv2d(dim, dim, 3, padding=1))
        self.add_module(self.names[1], nn.Conv2d(dim, num_anchors, 1))
        self.add_module(self.names[2], nn.Conv2d(dim, 4 * num_anchors, 1))

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: objectness logits (B, A, H, W) and deltas (B, 4A, H, W)."""
        conv, cls, bbox = (getattr(self, n) for n in self.names)
        logits, deltas = [], []
        for x in feats:
            h = F.relu_(conv(x))
            logits.append(cls(h))
            deltas.append(bbox(h))
        return logits, deltas
