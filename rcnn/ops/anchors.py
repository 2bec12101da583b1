"""Detectron's RPN anchors (``modeling/generate_anchors.py``).

Cell anchors are built from a base box ``[0, 0, stride - 1, stride - 1]``
(centre ``(stride - 1) / 2``) with sizes *rounded* to integers, so their areas are
not exact (Detectron issue #227); detectron2's and torchvision's differ. All
values are integers or half-integers, hence exact in float32.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor


def _whctrs(anchor: np.ndarray) -> tuple[float, float, float, float]:
    w = anchor[2] - anchor[0] + 1
    h = anchor[3] - anchor[1] + 1
    return w, h, anchor[0] + 0.5 * (w - 1), anchor[1] + 0.5 * (h - 1)


def _mkanchors(ws: np.ndarray, hs: np.ndarray, x_ctr: float, y_ctr: float) -> np.ndarray:
    ws = ws[:, None]
    hs = hs[:, None]
    return np.hstack((x_ctr - 0.5 * (ws - 1), y_ctr - 0.5 * (hs - 1), x_ctr + 0.5 * (ws - 1), y_ctr + 0.5 * (hs - 1)))


def cell_anchors(stride: int, sizes: Sequence[float], aspect_ratios: Sequence[float]) -> np.ndarray:
    """(len(ratios) * len(sizes), 4) float64 anchors centred on cell (0, 0).

    Ordered ratio-major, like ``generate_anchors``: for each aspect ratio, each size.
    """
    base = np.array([1, 1, stride, stride], dtype=np.float64) - 1
    w, h, x_ctr, y_ctr = _whctrs(base)
    size_ratios = w * h / np.array(aspect_ratios, dtype=np.float64)
    ws = np.round(np.sqrt(size_ratios))
    hs = np.round(ws * np.array(aspect_ratios, dtype=np.float64))
    ratio_anchors = _mkanchors(ws, hs, x_ctr, y_ctr)
    scales = np.array(sizes, dtype=np.float64) / stride
    out = []
    for anchor in ratio_anchors:
        w, h, x_ctr, y_ctr = _whctrs(anchor)
        out.append(_mkanchors(w * scales, h * scales, x_ctr, y_ctr))
    return np.vstack(out)


@lru_cache(maxsize=64)
def _grid_anchors(stride: int, sizes: tuple, aspect_ratios: tuple, height: int, width: int,
                  device: torch.device) -> Tensor:
    cell = torch.from_numpy(cell_anchors(stride, sizes, aspect_ratios)).to(torch.float32)
    shift_x = torch.arange(width, dtype=torch.float32) * stride
    shift_y = torch.arange(height, dtype=torch.float32) * stride
    sy, sx = torch.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = torch.stack((sx.reshape(-1), sy.reshape(-1), sx.reshape(-1), sy.reshape(-1)), dim=1)
    return (shifts[:, None, :] + cell[None, :, :]).reshape(-1, 4).to(device)


def grid_anchors(
    stride: int,
    sizes: Sequence[float],
    aspect_ratios: Sequence[float],
    height: int,
    width: int,
    device: torch.device | str = "cpu",
) -> Tensor:
    """All anchors of an (H, W) feature map, float32 (H * W * A, 4).

    Row ``(y * W + x) * A + a`` is cell anchor ``a`` shifted by ``(x, y) * stride``:
    the order in which Detectron flattens RPN scores and deltas. Cached per shape and
    device (callers must not modify the result).
    """
    return _grid_anchors(int(stride), tuple(sizes), tuple(aspect_ratios), int(height), int(width),
                         torch.device(device))


def retinanet_cell_anchors(level: int, scales_per_octave: int, aspect_ratios: Sequence[float],
                           anchor_scale: float) -> np.ndarray:
    """(scales_per_octave * len(ratios), 4) float64 RetinaNet anchors of one FPN level.

    ``core/test_retinanet.py::_create_cell_anchors``: octave-major (for each octave
    ``2 ** (o / scales_per_octave)``, each aspect ratio), each one ``generate_anchors``
    of size ``stride * octave_scale * anchor_scale``. The sizes are not integers, so
    these anchors are not exact in float32: callers add them to the shifts in float64.
    """
    stride = 2.0 ** level
    rows = []
    for octave in range(scales_per_octave):
        octave_scale = 2 ** (octave / float(scales_per_octave))
        for aspect in aspect_ratios:
            rows.append(cell_anchors(int(stride), (stride * octave_scale * anchor_scale,), (aspect,)))
    return np.vstack(rows)
