"""Opt-in (``Detector(..., fast=True)``) mask paste and keypoint decode in torch, on the device.

The exact path (``masks.py``, ``keypoints.py``) loops over detections with ``cv2.resize``
on the host. Here the same interpolations are written as gathers over all detections of
an image at once, with OpenCV's coefficients (``resize`` INTER_LINEAR: half-pixel centres,
``fx`` rounded to float32, taps clamped to the border, horizontal pass then vertical;
INTER_CUBIC: A = -0.75, taps clamped), so the results differ from OpenCV's only by float
rounding order (OpenCV's SIMD/FMA): a mask pixel whose probability sits at the 0.5
threshold can flip, a keypoint maximum can move between two equal-looking pixels. What
that costs is measured against the exact path in BENCHMARK.md; the exact path stays
the default. Only run lengths (mask) and (R, 4, J) rows (keypoints) leave the device.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pycocotools.mask as mask_util
import torch
from torch import Tensor

_CHUNK_ELEMENTS = 1 << 25   # float32 elements per intermediate (128 MiB): bounds memory on CPU and GPU


def _expanded_boxes(boxes: Tensor, m: int) -> Tensor:
    """``expand_boxes(boxes, (m + 2) / m).astype(int32)`` in float32 like Detectron's NumPy."""
    scale = (m + 2.0) / m
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    return torch.stack((x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half), dim=1).to(torch.int32)


@contextlib.contextmanager
def _float32_matmul(device: torch.device) -> Iterator[None]:
    """Plain float32 products even under TF32 or bf16 autocast (a threshold or an argmax
    on interpolated values must not see 10-bit mantissas)."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.autocast(device.type, enabled=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def _resize_matrix(index: Tensor, weight: Tensor, src: int) -> Tensor:
    """(N, length, src) interpolation matrices from per-output-pixel taps (N, length, k):
    a product with it is the resize along one axis (zeros add exactly)."""
    out = weight.new_zeros(index.shape[0], index.shape[1], src)
    return out.scatter_add_(2, index, weight)


def _linear_taps(origin: Tensor, size: Tensor, length: int, src: int) -> Tensor:
    """OpenCV INTER_LINEAR resize of ``src`` samples to ``size`` pixels placed at ``origin``
    (per detection), as (N, length, src) matrices over image pixels ``0..length-1``
    (rows outside the box are zero)."""
    u = torch.arange(length, device=origin.device, dtype=torch.float64)[None, :] - origin[:, None].to(torch.float64)
    size64 = size[:, None].to(torch.float64)
    scale = 1.0 / (size64 / src)
    fx = ((u + 0.5) * scale - 0.5).to(torch.float32)
    sx = torch.floor(fx)
    fx = fx - sx
    fx = torch.where((sx < 0) | (sx >= src - 1), torch.zeros_like(fx), fx)
    sx = sx.clamp(0, src - 1).to(torch.int64)
    inside = ((u >= 0) & (u < size64)).to(torch.float32)
    index = torch.stack((sx, (sx + 1).clamp(max=src - 1)), dim=2)
    weight = torch.stack(((1.0 - fx) * inside, fx * inside), dim=2)
    return _resize_matrix(index, weight, src)


def paste_masks(probs: Tensor, boxes: Tensor, im_h: int, im_w: int, thresh: float = 0.5) -> Tensor:
    """(N, im_h, im_w) bool masks from (N, M, M) probabilities and (N, 4) float32 boxes,
    as ``masks.paste_and_encode`` pastes them (zero-padded to M+2, expanded box, +1 size)."""
    m = probs.shape[1]
    padded = torch.nn.functional.pad(probs.to(torch.float32), (1, 1, 1, 1))
    ref = _expanded_boxes(boxes, m)
    widths = (ref[:, 2] - ref[:, 0] + 1).clamp(min=1)
    heights = (ref[:, 3] - ref[:, 1] + 1).clamp(min=1)
    wx = _linear_taps(ref[:, 0], widths, im_w, m + 2)     # (N, im_w, M+2)
    wy = _linear_taps(ref[:, 1], heights, im_h, m + 2)    # (N, im_h, M+2)
    with _float32_matmul(probs.device):
        out = wy @ (padded @ wx.transpose(1, 2))         # horizontal pass, then vertical
    inside = (wy.sum(2) > 0)[:, :, None] & (wx.sum(2) > 0)[:, None, :]
    return (out > thresh) & inside


def encode_masks(masks: Tensor) -> list[dict]:
    """COCO RLEs (counts as str) of (N, H, W) bool masks; only the run boundaries are
    copied to the host, pycocotools compresses them."""
    n, h, w = masks.shape
    if n == 0:
        return []
    flat = masks.transpose(1, 2).reshape(n, h * w).to(torch.int8)    # COCO's column-major order
    edges = torch.nn.functional.pad(flat, (1, 1))
    row, pos = torch.nonzero(edges[:, 1:] != edges[:, :-1], as_tuple=True)
    row, pos = row.cpu().numpy(), pos.cpu().numpy()
    splits = np.searchsorted(row, np.arange(1, n))
    counts = []
    for p in np.split(pos, splits):
        c = np.diff(np.concatenate(([0], p, [h * w]))).tolist()
        if len(c) > 1 and c[-1] == 0:     # the mask reaches the last pixel
            c.pop()
        counts.append(c)
    rles = mask_util.frPyObjects([{"counts": c, "size": [h, w]} for c in counts], h, w)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def paste_and_encode_fast(probs: Tensor, boxes: Tensor, im_h: int, im_w: int, thresh: float = 0.5) -> list[dict]:
    """``masks.paste_and_encode`` on the device, in chunks of detections that bound memory."""
    chunk = max(1, _CHUNK_ELEMENTS // max(1, (probs.shape[1] + 2) * im_w + im_h * im_w))
    out: list[dict] = []
    for s in range(0, probs.shape[0], chunk):
        out += encode_masks(paste_masks(probs[s:s + chunk], boxes[s:s + chunk], im_h, im_w, thresh))
    return out


def _cubic_taps(size: Tensor, length: int, src: int) -> Tensor:
    """OpenCV INTER_CUBIC (A = -0.75, taps clamped to the border) resize of ``src`` samples
    to ``size`` pixels, as (N, length, src) matrices (rows past ``size`` are don't-care)."""
    u = torch.arange(length, device=size.device, dtype=torch.float64)[None, :]
    scale = 1.0 / (size[:, None].to(torch.float64) / src)
    fx = ((u + 0.5) * scale - 0.5).to(torch.float32)
    sx = torch.floor(fx)
    x = fx - sx
    a = -0.75
    c0 = ((a * (x + 1) - 5 * a) * (x + 1) + 8 * a) * (x + 1) - 4 * a
    c1 = ((a + 2) * x - (a + 3)) * x * x + 1
    c2 = ((a + 2) * (1 - x) - (a + 3)) * (1 - x) * (1 - x) + 1
    c3 = 1.0 - c0 - c1 - c2
    index = (sx.to(torch.int64)[:, :, None] + torch.arange(-1, 3, device=size.device)).clamp(0, src - 1)
    return _resize_matrix(index, torch.stack((c0, c1, c2, c3), dim=2), src)


def _decode_chunk(maps: Tensor, rois: Tensor, map_w: Tensor, map_h: Tensor, max_w: int, max_h: int) -> Tensor:
    r, j = maps.shape[:2]
    wx = _cubic_taps(map_w, max_w, maps.shape[3])[:, None]     # (R, 1, max_w, M)
    wy = _cubic_taps(map_h, max_h, maps.shape[2])[:, None]     # (R, 1, max_h, M)
    with _float32_matmul(maps.device):
        full = wy @ (maps.to(torch.float32) @ wx.transpose(2, 3))   # (R, J, max_h, max_w)
    valid = (torch.arange(max_h, device=maps.device)[None, :, None] < map_h[:, None, None]) \
        & (torch.arange(max_w, device=maps.device)[None, None, :] < map_w[:, None, None])
    full = full.masked_fill(~valid[:, None], float("-inf")).reshape(r, j, -1)
    maxima, pos = full.max(dim=2)     # first maximum, as NumPy's argmax
    probs = 1.0 / torch.exp(full - maxima[:, :, None]).sum(dim=2)
    x_int = pos % max_w
    y_int = torch.div(pos, max_w, rounding_mode="floor")
    widths = torch.clamp(rois[:, 2] - rois[:, 0], min=1)
    heights = torch.clamp(rois[:, 3] - rois[:, 1], min=1)
    wc = (widths / map_w.to(torch.float32)).to(torch.float64)[:, None]
    hc = (heights / map_h.to(torch.float32)).to(torch.float64)[:, None]
    x = (x_int.to(torch.float64) + 0.5) * wc + rois[:, 0:1].to(torch.float64)
    y = (y_int.to(torch.float64) + 0.5) * hc + rois[:, 1:2].to(torch.float64)
    return torch.stack((x.to(torch.float32), y.to(torch.float32), maxima, probs.to(torch.float32)), dim=1)


def heatmaps_to_keypoints_fast(maps: Tensor, rois: Tensor, min_size: int = 0) -> Tensor:
    """``keypoints.heatmaps_to_keypoints`` on the device: (R, 4, J) float32 rows
    ``(x, y, logit, prob)``. The map sizes are read back once (they size the chunks)."""
    num_rois, num_kps = maps.shape[0], maps.shape[1]
    if num_rois == 0:
        return maps.new_zeros((0, 4, num_kps))
    sizes = torch.ceil(torch.stack((torch.clamp(rois[:, 2] - rois[:, 0], min=1),
                                    torch.clamp(rois[:, 3] - rois[:, 1], min=1)), dim=1))
    if min_size > 0:
        sizes = sizes.clamp(min=min_size)
    sizes = sizes.to(torch.int64)
    host = sizes.cpu().numpy()
    order = np.argsort(host[:, 0] * host[:, 1], kind="stable")   # similar sizes share a chunk: less padding
    host = host[order]
    perm = torch.from_numpy(order).to(maps.device)
    maps, rois, sizes = maps[perm], rois[perm], sizes[perm]
    out, s = [], 0
    while s < num_rois:
        e, max_w, max_h = s, 0, 0
        while e < num_rois:   # grow the chunk while the padded maps stay within budget
            w, h = max(max_w, int(host[e, 0])), max(max_h, int(host[e, 1]))
            if e > s and (e - s + 1) * num_kps * (h * w + maps.shape[2] * w) > _CHUNK_ELEMENTS:
                break
            max_w, max_h, e = w, h, e + 1
        out.append(_decode_chunk(maps[s:e], rois[s:e], sizes[s:e, 0], sizes[s:e, 1], max_w, max_h))
        s = e
    return torch.cat(out, dim=0)[torch.argsort(perm)]
