"""MSRA ResNet and ResNeXt bodies as Detectron builds them (``modeling/ResNet.py``).

The stride of each stage's first block sits on the 1x1 ``branch2a`` conv
(``RESNETS.STRIDE_1X1``) and batch norm is folded into a frozen per-channel
affine map, ``AffineChannel``: ``y = x * s + b`` with no epsilon, so that a
Detectron ``*_bn_s``/``*_bn_b`` pair is applied exactly. The GroupNorm bodies of
``04_2018_gn_baselines`` use ``rcnn.modeling.group_norm`` instead.
"""
from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rcnn.modeling.group_norm import GroupNormSpec
from rcnn.modeling.support import require

# Blocks per stage (res2..res5) for the bodies Detectron names in MODEL.CONV_BODY.
BLOCK_COUNTS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
# MODEL.CONV_BODY of the conv5 bodies (FPN, RetinaNet) and of the conv4 bodies (C4).
FPN_BODY = re.compile(r"^FPN\.add_fpn_ResNet(50|101|152)_conv5_body$")
C4_BODY = re.compile(r"^ResNet\.add_ResNet(50|101)_conv4_body$")
# (RESNETS.STEM_FUNC, TRANS_FUNC, SHORTCUT_FUNC) of the AffineChannel and the GroupNorm bodies.
_BN_FUNCS = ("basic_bn_stem", "bottleneck_transformation", "basic_bn_shortcut")
_GN_FUNCS = ("basic_gn_stem", "bottleneck_gn_transformation", "basic_gn_shortcut")


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
    """``bottleneck_transformation`` + ``basic_bn_shortcut`` (or their GroupNorm twins
    ``bottleneck_gn_transformation`` + ``basic_gn_shortcut``); children are named after
    Detectron's ops (``branch2a``, ``branch2a_bn`` or ``branch2a_gn``, ..., ``branch1``).

    ``groups`` > 1 (ResNeXt) groups the 3x3 ``branch2b`` conv only.
    """

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, stride: int, dilation: int = 1,
                 stride_1x1: bool = True, groups: int = 1, gn: GroupNormSpec | None = None) -> None:
        super().__init__()
        str1x1, str3x3 = (stride, 1) if stride_1x1 else (1, stride)
        norm, suffix = _norm(gn)
        self.norm_names = {b: f"{b}_{suffix}" for b in ("branch1", "branch2a", "branch2b", "branch2c")}
        if dim_in != dim_out:
            self.branch1 = nn.Conv2d(dim_in, dim_out, 1, stride=stride, bias=False)
            self.add_module(self.norm_names["branch1"], norm(dim_out))
        self.branch2a = nn.Conv2d(dim_in, dim_inner, 1, stride=str1x1, bias=False)
        self.add_module(self.norm_names["branch2a"], norm(dim_inner))
        self.branch2b = nn.Conv2d(dim_inner, dim_inner, 3, stride=str3x3, padding=dilation,
                                  dilation=dilation, groups=groups, bias=False)
        self.add_module(self.norm_names["branch2b"], norm(dim_inner))
        self.branch2c = nn.Conv2d(dim_inner, dim_out, 1, bias=False)
        self.add_module(self.norm_names["branch2c"], norm(dim_out))

    def _conv_norm(self, branch: str, x: Tensor) -> Tensor:
        return getattr(self, self.norm_names[branch])(getattr(self, branch)(x))

    def forward(self, x: Tensor) -> Tensor:
        shortcut = self._conv_norm("branch1", x) if hasattr(self, "branch1") else x
        y = F.relu_(self._conv_norm("branch2a", x))
        y = F.relu_(self._conv_norm("branch2b", y))
        y = self._conv_norm("branch2c", y)
        # Inference adds into the fresh branch output (the same sum, without a new tensor).
        return F.relu_(y + shortcut if torch.is_grad_enabled() else y.add_(shortcut))


def _norm(gn: GroupNormSpec | None) -> tuple[Callable[[int], nn.Module], str]:
    """The normalisation after each body conv and its op-name suffix: ``ConvAffine``'s
    ``_bn`` (frozen AffineChannel) or ``ConvGN``'s ``_gn`` (trainable GroupNorm)."""
    return (AffineChannel, "bn") if gn is None else (gn, "gn")


def block_stride(dim_in: int, dim_out: int, dilation: int, stride_init: int = 2) -> int:
    """``add_residual_block``: a block that changes the width strides, except after the stem
    (``dim_in == 64``, which max-pooling already subsampled) and in a dilated stage."""
    return stride_init if dim_in != dim_out and dim_in != 64 and dilation == 1 else 1


class ResNetBody(nn.Module):
    """Stem and stages ``res2``..``res5`` (``add_ResNet_convX_body``).

    The stem is ``conv1`` + ``res_conv1_bn`` (``basic_bn_stem``) or ``conv1`` + ``conv1_gn``
    (``basic_gn_stem``), then a 3x3 stride-2 max-pool. Stage ``res{S}`` has fixed output width
    ``256 * 2**(S-2)`` and bottleneck width ``NUM_GROUPS * WIDTH_PER_GROUP * 2**(S-2)``; for
    ResNet (1 x 64) that is the familiar 64/128/256/512, for X-101-64x4d 256/512/1024/2048.
    ``forward`` returns the stage outputs C2..C5 (``res{S}_{n-1}_sum`` in Detectron).
    ``num_stages`` (class attribute) = 3 stops after res4, like ``add_ResNet_convX_body``
    with three block counts (the C4 body, ``rcnn.modeling.c4``).
    """

    num_stages = 4

    def __init__(self, depth: int = 50, stride_1x1: bool = True, res5_dilation: int = 1,
                 width_per_group: int = 64, num_groups: int = 1, freeze_at: int = 2,
                 gn: GroupNormSpec | None = None) -> None:
        super().__init__()
        if depth not in BLOCK_COUNTS:
            raise ValueError(f"unsupported ResNet depth {depth}; known: {sorted(BLOCK_COUNTS)}")
        self.block_counts = BLOCK_COUNTS[depth][: self.num_stages]
        norm, _ = _norm(gn)
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.stem_norm_name = "res_conv1_bn" if gn is None else "conv1_gn"
        self.add_module(self.stem_norm_name, norm(64))
        dim_in, dim_bottleneck = 64, num_groups * width_per_group
        self.stage_names = []
        for stage, blocks in enumerate(self.block_counts, start=2):
            dim_out, dim_inner = 256 * 2 ** (stage - 2), dim_bottleneck * 2 ** (stage - 2)
            dilation = res5_dilation if stage == 5 else 1
            layers = []
            for _ in range(blocks):
                layers.append(Bottleneck(dim_in, dim_inner, dim_out, block_stride(dim_in, dim_out, dilation),
                                         dilation, stride_1x1, num_groups, gn))
                dim_in = dim_out
            self.add_module(f"res{stage}", nn.ModuleList(layers))
            self.stage_names.append(f"res{stage}")
        self.out_channels = (256, 512, 1024, 2048)[: self.num_stages]
        self._freeze(freeze_at)

    def _freeze(self, freeze_at: int) -> None:
        """TRAIN.FREEZE_AT: Detectron's StopGradient after res{freeze_at} (0 = nothing, 1 = stem,
        2 = stem + res2...): no gradient reaches the stem (GroupNorm included) or those stages."""
        frozen: list[nn.Module] = [self.conv1, getattr(self, self.stem_norm_name)] if freeze_at >= 1 else []
        frozen += [getattr(self, f"res{s}") for s in range(2, freeze_at + 1)]
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)

    def sum_name(self, stage: int) -> str:
        """Detectron's name of a stage output, e.g. ``res4_5_sum``."""
        return f"res{stage}_{self.block_counts[stage - 2] - 1}_sum"

    def forward(self, x: Tensor) -> list[Tensor]:
        x = F.relu_(getattr(self, self.stem_norm_name)(self.conv1(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        outs = []
        for name in self.stage_names:
            for block in getattr(self, name):
                x = block(x)
            outs.append(x)
        return outs


class ResNetConv4Body(ResNetBody):
    """``add_ResNet_convX_body`` with three block counts: stem and res2..res4 (the C4 body)."""

    num_stages = 3


def body_uses_gn(cfg) -> bool:
    """GroupNorm body (``04_2018_gn_baselines``) or AffineChannel body; no mixtures."""
    funcs = (cfg.RESNETS.STEM_FUNC, cfg.RESNETS.TRANS_FUNC, cfg.RESNETS.SHORTCUT_FUNC)
    require(funcs in (_BN_FUNCS, _GN_FUNCS), f"RESNETS.STEM_FUNC/TRANS_FUNC/SHORTCUT_FUNC {funcs}")
    return funcs == _GN_FUNCS


def build_body(cfg) -> ResNetBody:
    """The body ``MODEL.CONV_BODY`` names, as every model family builds it:
    ``FPN.add_fpn_ResNet{50,101,152}_conv5_body`` (res2..res5, ``RESNETS.RES5_DILATION``) or
    ``ResNet.add_ResNet{50,101}_conv4_body`` (res2..res4), with ``RESNETS.*`` widths, groups and
    ``STRIDE_1X1``, frozen up to ``TRAIN.FREEZE_AT``, GroupNorm when ``RESNETS.*_FUNC`` say so."""
    name = cfg.MODEL.CONV_BODY
    conv5, conv4 = FPN_BODY.match(name), C4_BODY.match(name)
    require(conv5 is not None or conv4 is not None,
            f"MODEL.CONV_BODY {name!r} (only FPN.add_fpn_ResNet{{50,101,152}}_conv5_body or "
            "ResNet.add_ResNet{50,101}_conv4_body)")
    r = cfg.RESNETS
    gn = GroupNormSpec.from_cfg(cfg) if body_uses_gn(cfg) else None
    if conv4 is not None:
        return ResNetConv4Body(int(conv4.group(1)), r.STRIDE_1X1, 1, r.WIDTH_PER_GROUP, r.NUM_GROUPS,
                               cfg.TRAIN.FREEZE_AT, gn)
    assert conv5 is not None
    return ResNetBody(int(conv5.group(1)), r.STRIDE_1X1, r.RES5_DILATION, r.WIDTH_PER_GROUP, r.NUM_GROUPS,
                      cfg.TRAIN.FREEZE_AT, gn)
