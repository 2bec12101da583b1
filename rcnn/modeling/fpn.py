"""Feature Pyramid Network on the ResNet body (``modeling/FPN.py::add_fpn``).

Ops are named after Detectron's output blobs: ``fpn_inner_res5_2_sum`` (1x1 on
C5), ``fpn_inner_res4_5_sum_lateral`` (laterals), ``fpn_res4_5_sum`` (3x3 output
convs). Top-down is nearest x2 upsampling plus the lateral; P6 is a stride-2,
kernel-1 max-pool of P5. No ReLU anywhere.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn
from torch.nn import functional as F


class FPN(nn.Module):
    def __init__(self, in_channels: Sequence[int], stage_sum_names: Sequence[str], dim: int = 256,
                 with_p6: bool = True) -> None:
        """``in_channels``/``stage_sum_names`` list C2..C5 (e.g. ``res2_2_sum``)."""
        super().__init__()
        self.stage_sum_names = list(stage_sum_names)
        top = self.stage_sum_names[-1]
        self.add_module(f"fpn_inner_{top}", nn.Conv2d(in_channels[-1], dim, 1))
        for name, c in zip(self.stage_sum_names[:-1], in_channels[:-1]):
            self.add_module(f"fpn_inner_{name}_lateral", nn.Conv2d(c, dim, 1))
        for name in self.stage_sum_names:
            self.add_module(f"fpn_{name}", nn.Conv2d(dim, dim, 3, padding=1))
        self.with_p6 = with_p6

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """C2..C5 -> [P2, P3, P4, P5(, P6)]; inputs must be padded to a multiple of 32."""
        names = self.stage_sum_names
        inner = getattr(self, f"fpn_inner_{names[-1]}")(feats[-1])
        outs = [getattr(self, f"fpn_{names[-1]}")(inner)]
        for name, feat in zip(reversed(names[:-1]), reversed(feats[:-1])):
            lateral = getattr(self, f"fpn_inner_{name}_lateral")(feat)
            inner = lateral + F.interpolate(inner, scale_factor=2, mode="nearest")
            outs.insert(0, getattr(self, f"fpn_{name}")(inner))
        if self.with_p6:
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return outs
