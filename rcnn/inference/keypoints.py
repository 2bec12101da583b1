"""Keypoint decoding exactly as Detectron's ``utils/keypoints.py::heatmaps_to_keypoints``.

Each RoI's 56x56 logit maps are resized with ``cv2.resize`` (INTER_CUBIC) to
``ceil(w) x ceil(h)`` with ``w = max(x2 - x1, 1)`` (no ``+1`` here), the first
maximum of each map is taken, and ``x = x1 + (ix + 0.5) * w / ceil(w)`` is
computed in float64 and stored as float32, as NumPy did in Detectron.
"""
from __future__ import annotations

import cv2
import numpy as np


def heatmaps_to_keypoints(maps: np.ndarray, rois: np.ndarray, min_size: int = 0) -> np.ndarray:
    """(R, 4, J) float32 rows ``(x, y, logit, prob)`` from (R, J, M, M) logits and (R, 4) float32 boxes."""
    num_rois, num_kps = maps.shape[0], maps.shape[1]
    widths = np.maximum(rois[:, 2] - rois[:, 0], 1)
    heights = np.maximum(rois[:, 3] - rois[:, 1], 1)
    widths_ceil = np.ceil(widths)
    heights_ceil = np.ceil(heights)
    maps_hwc = np.transpose(maps, [0, 2, 3, 1])
    out = np.zeros((num_rois, 4, num_kps), dtype=np.float32)
    kps = np.arange(num_kps)
    for i in range(num_rois):
        map_w = int(max(widths_ceil[i], min_size)) if min_size > 0 else int(widths_ceil[i])
        map_h = int(max(heights_ceil[i], min_size)) if min_size > 0 else int(heights_ceil[i])
        width_correction = widths[i] / np.float32(map_w)
        height_correction = heights[i] / np.float32(map_h)
        roi_map = cv2.resize(maps_hwc[i], (map_w, map_h), interpolation=cv2.INTER_CUBIC)
        roi_map = roi_map.reshape(map_h, map_w, num_kps)   # cv2 drops a channel axis of size 1
        chw = np.ascontiguousarray(roi_map.transpose(2, 0, 1)).reshape(num_kps, -1)
        pos = chw.argmax(axis=1)
        x_int = pos % map_w
        y_int = (pos - x_int) // map_w
        maxima = chw[kps, pos]
        # Spatial softmax at the maximum: exp(0) / sum(exp(map - max)), as scores_to_probs.
        probs = np.exp(chw[kps, pos] - maxima) / np.sum(np.exp(chw - maxima[:, None]), axis=1)
        out[i, 0] = (x_int + 0.5) * np.float64(width_correction) + np.float64(rois[i, 0])
        out[i, 1] = (y_int + 0.5) * np.float64(height_correction) + np.float64(rois[i, 1])
        out[i, 2] = maxima
        out[i, 3] = probs
    return out
