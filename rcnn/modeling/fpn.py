"""Feature Pyramid Network on the ResNet body (``modeling/FPN.py::add_fpn``).

Ops are named after Detectron's output blobs: ``fpn_inner_res5_2_sum`` (1x1 on
C5), ``fpn_inner_res4_5_sum_lateral`` (laterals), ``fpn_res4_5_sum`` (3x3 output
convs). Top-down is nearest x2 upsampling plus the lateral; P6 is a stride-2,
kernel-1 max-pool of P5. No ReLU anywhere. With ``FPN.USE_GN`` each of these
convs is a ``ConvGN``: no conv bias, then a GroupNorm op ``<conv>_gn``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rcnn.modeling.group_norm import GroupNormSpec


class FPN(nn.Module):
    def __init__(self, in_channels: Sequence[int], stage_sum_names: Sequence[str], dim: int = 256,
                 with_p6: bool = True, gn: GroupNormSpec | None = None) -> None:
        """``in_channels``/``stage_sum_names`` list C2..C5 (e.g. ``res2_2_sum``)."""
        super().__init__()
        self.stage_sum_names = list(stage_sum_names)
        self.use_gn = gn is not None
        top = self.stage_sum_names[-1]
        convs = [(f"fpn_inner_{top}", in_channels[-1], 1)]
        convs += [(f"fpn_inner_{name}_lateral", c, 1) for name, c in zip(self.stage_sum_names[:-1], in_channels[:-1])]
        convs += [(f"fpn_{name}", dim, 3) for name in self.stage_sum_names]
        for name, c, k in convs:
            self.add_module(name, nn.Conv2d(c, dim, k, padding=k // 2, bias=gn is None))
            if gn is not None:
                self.add_module(f"{name}_gn", gn(dim))
        self.with_p6 = with_p6

    def _conv(self, name: str, x: Tensor) -> Tensor:
        x = getattr(self, name)(x)
        return getattr(self, f"{name}_gn")(x) if self.use_gn else x

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """C2..C5 -> [P2, P3, P4, P5(, P6)]; inputs must be padded to a multiple of 32."""
        names = self.stage_sum_names
        inner = self._conv(f"fpn_inner_{names[-1]}", feats[-1])
        outs = [self._conv(f"fpn_{names[-1]}", inner)]
        for name, feat in zip(reversed(names[:-1]), reversed(feats[:-1])):
            lateral = self._conv(f"fpn_inner_{name}_lateral", feat)
            top_down = F.interpolate(inner, scale_factor=2, mode="nearest")
            inner = lateral + top_down if torch.is_grad_enabled() else lateral.add_(top_down)
            outs.insert(0, self._conv(f"fpn_{name}", inner))
        if self.with_p6:
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return outs
