"""GroupNorm as Detectron's ``ConvGN`` applies it (``modeling/detector.py``).

``ConvGN(prefix)`` is a conv *without* bias (``no_conv_bias=1``) followed by Caffe2's
``GroupNorm`` op named ``prefix + '_gn'``, whose learnable gamma/beta are the blobs
``<prefix>_gn_s`` and ``<prefix>_gn_b`` (caffe2 ``brew.spatial_gn``). The module below
names them ``scale``/``bias`` so that ``rcnn.naming``'s one rule spells those blobs. The
group count is ``utils/net.py::get_group_gn`` and eps is ``GROUP_NORM.EPSILON``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class GroupNorm(nn.Module):
    """``(x - mean) / sqrt(var + eps) * scale + bias`` over groups of channels; trainable."""

    def __init__(self, channels: int, num_groups: int, eps: float) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x, self.num_groups, self.scale, self.bias, self.eps)


@dataclass(frozen=True)
class GroupNormSpec:
    """``cfg.GROUP_NORM``: exactly one of ``dim_per_gp`` and ``num_groups`` is -1."""

    dim_per_gp: int = -1
    num_groups: int = 32
    eps: float = 1e-5

    @classmethod
    def from_cfg(cls, cfg) -> GroupNormSpec:
        g = cfg.GROUP_NORM
        if not (g.DIM_PER_GP == -1 or g.NUM_GROUPS == -1):
            raise ValueError("GROUP_NORM: set only one of DIM_PER_GP and NUM_GROUPS (the other -1)")
        return cls(int(g.DIM_PER_GP), int(g.NUM_GROUPS), float(g.EPSILON))

    def groups(self, dim: int) -> int:
        """``get_group_gn``: ``dim // DIM_PER_GP`` or ``NUM_GROUPS``; ``ConvGN`` raises < 1 to 1."""
        if self.dim_per_gp > 0:
            divisor, count = self.dim_per_gp, dim // self.dim_per_gp
        else:
            divisor, count = self.num_groups, self.num_groups
        if dim % divisor:
            raise ValueError(f"GroupNorm: {dim} channels are not divisible by {divisor} ({self})")
        return max(1, count)

    def __call__(self, dim: int) -> GroupNorm:
        return GroupNorm(dim, self.groups(dim), self.eps)
