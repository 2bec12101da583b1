"""MSRA ResNet body as Detectron builds it (``modeling/ResNet.py``).

The stride of each stage's first block sits on the 1x1 ``branch2a`` conv
(``RESNETS.STRIDE_1X1``) and batch norm is folded into a frozen per-channel
affine map, ``AffineChannel``: ``y = x * s + b`` with no epsilon, so that a
Detectron ``*_bn_s``/``*_bn_b`` pair is applied exactly.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

# Blocks per stage (res2..res5) for the bodies Detectron names in MODEL.CONV_BODY.
BLOCK_COUNTS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


class AffineChannel(nn.Module):
    """Frozen per-channel ``x * scale + bias`` (Caffe2 ``AffineChannel``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        scale = self.scale.view(1, -1, 1, 1)
        bias = self.bias.view(1, -1, 1, 1)
        if torch.is_grad_enabled():
            return x * scale + bias
        # Inference: the conv output is not needed elsewhere; same two roundings.
        return x.mul_(scale).add_(bias)


class Bottleneck(nn.Module):
    """``bottleneck_transformation`` + ``basic_bn_shortcut``; children are named
    after Detectron's ops (``branch2a``, ``branch2a_bn``, ..., ``branch1``)."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, stride: int, dilation: int = 1,
                 stride_1x1: bool = True) -> None:
        super().__init__()
        str1x1, str3x3 = (stride, 1) if stride_1x1 else (1, stride)
        if dim_in != dim_out:
            self.branch1 = nn.Conv2d(dim_in, dim_out, 1, stride=stride, bias=False)
            self.branch1_bn = AffineChannel(dim_out)
        self.branch2a = nn.Conv2d(dim_in, dim_inner, 1, stride=str1x1, bias=False)
        self.branch2a_bn = AffineChannel(dim_inner)
        self.branch2b = nn.Conv2d(dim_inner, dim_inner, 3, stride=str3x3, padding=dilation,
                                  dilation=dilation, bias=False)
        self.branch2b_bn = AffineChannel(dim_inner)
        self.branch2c = nn.Conv2d(dim_inner, dim_out, 1, bias=False)
        self.branch2c_bn = AffineChannel(dim_out)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = self.branch1_bn(self.branch1(x)) if hasattr(self, "branch1") else x
        y = F.relu_(self.branch2a_bn(self.branch2a(x)))
        y = F.relu_(self.branch2b_bn(self.branch2b(y)))
        y = self.branch2c_bn(self.branch2c(y))
        return F.relu_(y + shortcut)


class ResNetBody(nn.Module):
    """Stem (``conv1``, ``res_conv1_bn``, max-pool) and stages ``res2``..``res5``.

    ``forward`` returns the stage outputs C2..C5 (``res{S}_{n-1}_sum`` in Detectron).
    ``num_stages`` (class attribute) = 3 stops after res4, like ``add_ResNet_convX_body``
    with three block counts (the C4 body, ``rcnn.modeling.c4``).
    """

    num_stages = 4

    def __init__(self, depth: int = 50, stride_1x1: bool = True, res5_dilation: int = 1,
                 width_per_group: int = 64, num_groups: int = 1, freeze_at: int = 2) -> None:
        super().__init__()
        if num_groups != 1:
            raise NotImplementedError("grouped (ResNeXt) bodies are not supported yet")
        if depth not in BLOCK_COUNTS:
            raise ValueError(f"unsupported ResNet depth {depth}; known: {sorted(BLOCK_COUNTS)}")
        self.block_counts = BLOCK_COUNTS[depth][: self.num_stages]
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.res_conv1_bn = AffineChannel(64)
        dim_in, dim_inner = 64, width_per_group
        self.stage_names = []
        for stage, blocks in enumerate(self.block_counts, start=2):
            dim_out = dim_inner * 4
            stride = 1 if stage == 2 else (1 if stage == 5 and res5_dilation > 1 else 2)
            dilation = res5_dilation if stage == 5 else 1
            layers = []
            for i in range(blocks):
                layers.append(Bottleneck(dim_in, dim_inner, dim_out, stride if i == 0 else 1, dilation, stride_1x1))
                dim_in = dim_out
            self.add_module(f"res{stage}", nn.ModuleList(layers))
            self.stage_names.append(f"res{stage}")
            dim_inner *= 2
        self.out_channels = (256, 512, 1024, 2048)[: self.num_stages]
        self._freeze(freeze_at)

    def _freeze(self, freeze_at: int) -> None:
        """TRAIN.FREEZE_AT: conv1 (0 = nothing, 1 = stem, 2 = stem + res2...) gets no gradient."""
        frozen: list[nn.Module] = [self.conv1] if freeze_at >= 1 else []
        frozen += [getattr(self, f"res{s}") for s in range(2, freeze_at + 1)]
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)

    def sum_name(self, stage: int) -> str:
        """Detectron's name of a stage output, e.g. ``res4_5_sum``."""
        return f"res{stage}_{self.block_counts[stage - 2] - 1}_sum"

    def forward(self, x: Tensor) -> list[Tensor]:
        x = F.relu_(self.res_conv1_bn(self.conv1(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        outs = []
        for name in self.stage_names:
            for block in getattr(self, name):
                x = block(x)
            outs.append(x)
        return outs
