"""Keypoint head ``add_roi_pose_head_v1convX`` + ``add_keypoint_outputs``.

Eight 3x3 convs ``conv_fcn1..8`` (512 channels), the deconv
``kps_score_lowres`` (k4, s2, p1) to 28x28, and ``kps_score``: Detectron's
``BilinearInterpolation`` x2, a ConvTranspose with a *fixed* bilinear kernel.
It is kept as a transposed conv (not an interpolate) because the two differ on
the border of the 56x56 heatmap, which moves keypoints (docs/detectron.md §4.14).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def bilinear_upsample_kernel(channels: int, factor: int) -> Tensor:
    """The (C, C, 2f, 2f) ConvTranspose weight of ``BilinearInterpolation``: an
    FCN ``upsample_filt`` on the diagonal, zeros elsewhere."""
    size = 2 * factor - factor % 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float64)
    filt = 1 - (og - center).abs() / factor
    kernel = (filt[:, None] * filt[None, :]).to(torch.float32)
    weight = torch.zeros(channels, channels, size, size)
    weight[torch.arange(channels), torch.arange(channels)] = kernel
    return weight


class BilinearUpsample(nn.Module):
    """Fixed x``factor`` upsampling; weight/bias are buffers (never trained)."""

    def __init__(self, channels: int, factor: int) -> None:
        super().__init__()
        self.stride = factor
        self.padding = factor // 2
        self.register_buffer("weight", bilinear_upsample_kernel(channels, factor))
        self.register_buffer("bias", torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv_transpose2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding)


class KeypointHead(nn.Module):
    def __init__(self, dim_in: int, dim: int, num_convs: int, kernel: int, num_keypoints: int,
                 deconv_kernel: int = 4, up_scale: int = 2) -> None:
        super().__init__()
        self.conv_names = [f"conv_fcn{i}" for i in range(1, num_convs + 1)]
        for name in self.conv_names:
            self.add_module(name, nn.Conv2d(dim_in, dim, kernel, padding=kernel // 2))
            dim_in = dim
        self.kps_score_lowres = nn.ConvTranspose2d(dim, num_keypoints, deconv_kernel, stride=2,
                                                   padding=deconv_kernel // 2 - 1)
        self.kps_score = BilinearUpsample(num_keypoints, up_scale)

    def forward(self, roi_feats: Tensor) -> Tensor:
        """Heatmap logits (R, K, 56, 56); no softmax (decoding takes the argmax)."""
        x = roi_feats
        for name in self.conv_names:
            x = F.relu_(getattr(self, name)(x))
        return self.kps_score(self.kps_score_lowres(x))
