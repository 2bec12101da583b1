"""RoIs from precomputed proposals (Fast R-CNN / Mask / Keypoint with ``MODEL.FASTER_RCNN: False``).

``core/test.py::im_detect_bbox`` with ``boxes`` given: the proposals (original-image float32,
as Detectron's roidb keeps them) are projected with ``_get_rois_blob`` (float64 product,
stored as float32: ``rcnn.inference.detector.rois_for_heads``); RoIs that coincide after
scaling by ``DEDUP_BOXES`` (1/16) and rounding are computed once, and every duplicate takes
the first one's scores *and* box (Detectron maps ``scores`` and ``pred_boxes`` back with the
inverse index). The distinct RoIs then go through the FPN level mapping and the box head
exactly like RPN RoIs, but the boxes the deltas are applied to are the proposals themselves.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def batch_proposals(proposals: Sequence[np.ndarray], device: torch.device) -> tuple[Tensor, Tensor]:
    """Concatenated (R, 4) float32 proposals of a batch and the image index of each."""
    counts = torch.tensor([len(p) for p in proposals], device=device)
    boxes = torch.from_numpy(np.concatenate([np.asarray(p, np.float32).reshape(-1, 4) for p in proposals])).to(device)
    return boxes, torch.repeat_interleave(torch.arange(len(proposals), device=device), counts)


def dedup_rois(rois: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """``(first, inverse)``: indices of the distinct RoIs (first occurrence of each) and, per
    RoI, its position in ``first``; ``rois[first][inverse]`` is what Detectron computes on.

    Detectron hashes ``round(rois * scale) . (1, 1e3, 1e6, 1e9, 1e12)`` per image; for images
    under 16000 px the rounded coordinates are below 1000, so equal hashes are equal rounded
    rows, which is what is compared here (with the image index, for batches).
    """
    n = rois.shape[0]
    every = torch.arange(n, device=rois.device)
    if scale <= 0 or n == 0:
        return every, every
    key = torch.cat((rois[:, :1], torch.round(rois[:, 1:] * scale)), dim=1)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), n, dtype=torch.int64, device=rois.device)
    first.scatter_reduce_(0, inverse, every, reduce="amin")
    return first, inverse
