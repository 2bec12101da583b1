"""Mask pasting exactly as Detectron's ``core/test.py::segm_results``.

Each 28x28 probability map is zero-padded to 30x30, its box expanded by 30/28
(float32, then truncated to int32), resized with ``cv2.resize`` (INTER_LINEAR)
to the expanded box's ``+1`` size, thresholded with ``> 0.5`` and pasted, clipped
to the image. OpenCV's resize arithmetic is what Detectron's masks are made of,
so this step runs on the host with OpenCV (reference §4.9).
"""
from __future__ import annotations

import cv2
import numpy as np
import pycocotools.mask as mask_util


def expand_boxes(boxes: np.ndarray, scale: float) -> np.ndarray:
    """Detectron's ``expand_boxes`` on float32 boxes (result float64, like it)."""
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    w_half *= scale
    h_half *= scale
    out = np.zeros(boxes.shape)
    out[:, 0] = x_c - w_half
    out[:, 2] = x_c + w_half
    out[:, 1] = y_c - h_half
    out[:, 3] = y_c + h_half
    return out


def paste_masks(probs: np.ndarray, boxes: np.ndarray, im_h: int, im_w: int,
                thresh: float = 0.5) -> np.ndarray:
    """Binary masks (N, im_h, im_w) uint8 from (N, M, M) float32 probabilities
    and (N, 4) float32 boxes in original-image coordinates."""
    n, m = probs.shape[0], probs.shape[1]
    ref_boxes = expand_boxes(boxes, (m + 2.0) / m).astype(np.int32)
    padded = np.zeros((m + 2, m + 2), dtype=np.float32)
    out = np.zeros((n, im_h, im_w), dtype=np.uint8)
    for i in range(n):
        padded[1:-1, 1:-1] = probs[i]
        x0, y0, x1, y1 = (int(v) for v in ref_boxes[i])
        w = max(x1 - x0 + 1, 1)
        h = max(y1 - y0 + 1, 1)
        mask = cv2.resize(padded, (w, h)) > thresh
        xa, xb = max(x0, 0), min(x1 + 1, im_w)
        ya, yb = max(y0, 0), min(y1 + 1, im_h)
        if xa < xb and ya < yb:
            out[i, ya:yb, xa:xb] = mask[ya - y0:yb - y0, xa - x0:xb - x0]
    return out


def encode_masks(masks: np.ndarray) -> list[dict]:
    """COCO RLEs (counts as str, as Detectron writes them) of (N, H, W) uint8 masks."""
    if masks.shape[0] == 0:
        return []
    rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles
