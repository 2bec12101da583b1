"""Mask pasting exactly as Detectron's ``core/test.py::segm_results``.

Each 28x28 probability map is zero-padded to 30x30, its box expanded by 30/28
(float32, then truncated to int32), resized with ``cv2.resize`` (INTER_LINEAR)
to the expanded box's ``+1`` size, thresholded with ``> 0.5`` and pasted, clipped
to the image. OpenCV's resize arithmetic is what Detectron's masks are made of,
so this step runs on the host with OpenCV (docs/detectron.md §4.9).
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


def _pasted(probs: np.ndarray, boxes: np.ndarray, im_h: int, im_w: int, thresh: float):
    """Each detection's binary mask as Detectron pastes it: (mask crop, x0, y0) in image
    pixels, or None when the expanded box lies outside the image."""
    n, m = probs.shape[0], probs.shape[1]
    ref_boxes = expand_boxes(boxes, (m + 2.0) / m).astype(np.int32)
    padded = np.zeros((m + 2, m + 2), dtype=np.float32)
    for i in range(n):
        padded[1:-1, 1:-1] = probs[i]
        x0, y0, x1, y1 = (int(v) for v in ref_boxes[i])
        w = max(x1 - x0 + 1, 1)
        h = max(y1 - y0 + 1, 1)
        mask = cv2.resize(padded, (w, h)) > thresh
        xa, xb = max(x0, 0), min(x1 + 1, im_w)
        ya, yb = max(y0, 0), min(y1 + 1, im_h)
        yield (mask[ya - y0:yb - y0, xa - x0:xb - x0], xa, ya) if xa < xb and ya < yb else None


def _run_lengths(crop: np.ndarray, xa: int, ya: int, im_h: int, im_w: int) -> list[int]:
    """COCO's column-major run lengths (zeros first) of an image that is zero outside
    ``crop`` placed at (xa, ya), without building the image."""
    h, w = crop.shape
    padded = np.zeros((w, h + 2), dtype=np.int8)
    padded[:, 1:-1] = crop.T                      # one row per image column
    step = np.diff(padded, axis=1)
    sc, sr = np.nonzero(step == 1)
    ec, er = np.nonzero(step == -1)
    starts = (xa + sc) * im_h + ya + sr
    ends = (xa + ec) * im_h + ya + er
    # A run may continue from the bottom of one column into the next (full-height crops).
    joined = np.nonzero(ends[:-1] == starts[1:])[0]
    starts = np.delete(starts, joined + 1)
    ends = np.delete(ends, joined)
    edges = np.empty(2 * len(starts) + 2, dtype=np.int64)
    edges[0], edges[-1] = 0, im_h * im_w
    edges[1:-1:2], edges[2:-1:2] = starts, ends
    counts = np.diff(edges).tolist()
    if len(counts) > 1 and counts[-1] == 0:       # the mask reaches the last pixel
        counts.pop()
    return counts


def paste_and_encode(probs: np.ndarray, boxes: np.ndarray, im_h: int, im_w: int,
                     thresh: float = 0.5) -> list[dict]:
    """COCO RLEs (counts as str, as Detectron writes them) of the pasted masks.

    No full-image mask is built: the run lengths are read off each pasted crop and
    pycocotools compresses them, giving the strings ``mask_util.encode`` gives for the
    pasted full-image masks (2.6x faster for 100 masks at 480x640)."""
    counts = [_run_lengths(*p, im_h, im_w) if p is not None else [im_h * im_w]
              for p in _pasted(probs, boxes, im_h, im_w, thresh)]
    if not counts:
        return []
    rles = mask_util.frPyObjects([{"counts": c, "size": [im_h, im_w]} for c in counts], im_h, im_w)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles
