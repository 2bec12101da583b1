"""Mask R-CNN training targets (``roi_data/mask_rcnn.py::add_mask_rcnn_blobs``, ``utils/segms.py``).

Each foreground RoI gets the polygon mask of the non-crowd ground truth whose *tight
polygon box* overlaps it most (not the GT its box label came from), rasterised by
pycocotools into an ``M x M`` grid laid over the RoI. Crowd regions (RLE) are never
read. Rasterisation runs on the host with float32 arithmetic in Detectron's order
(broadcast over the RoIs that share a polygon, one pycocotools call per image), so the
polygons pycocotools sees are the same floats and the masks are identical.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pycocotools.mask as mask_util
import torch
from torch import Tensor

from rcnn.ops.boxes import pairwise_iou


@dataclass
class MaskTargets:
    """RoIs of the mask head and their targets, for the whole minibatch.

    ``rois`` (M, 5) float32 ``[batch index, x1, y1, x2, y2]`` in scaled input coordinates;
    ``targets`` (M, R, R) int32 with 1 inside the object, 0 outside, -1 ignored;
    ``classes`` (M,) int64: the channel of the class-specific mask logits each row trains
    (0 only for the all-ignored background placeholder of an image without foreground).
    """

    rois: Tensor
    targets: Tensor
    classes: Tensor


def polys_to_boxes(polys: Sequence[Sequence[Sequence[float]]]) -> np.ndarray:
    """(N, 4) float32 tight boxes ``[min x, min y, max x, max y]`` of each object's polygons."""
    out = np.zeros((len(polys), 4), dtype=np.float32)
    for i, poly in enumerate(polys):
        out[i] = [min(min(p[::2]) for p in poly), min(min(p[1::2]) for p in poly),
                  max(max(p[::2]) for p in poly), max(max(p[1::2]) for p in poly)]
    return out


def polys_to_mask_wrt_box(polygons: Sequence[Sequence[float]], box: np.ndarray, resolution: int) -> np.ndarray:
    """(R, R) uint8 mask of ``polygons`` rasterised in ``box`` (float32 ``[x1, y1, x2, y2]``).

    Coordinates are mapped with ``(p - x1) * R / max(x2 - x1, 1)`` in float32 (no ``+1``),
    exactly as Detectron computes them before handing them to pycocotools.
    """
    one = np.float32(1)
    w = np.maximum(box[2] - box[0], one)
    h = np.maximum(box[3] - box[1], one)
    m = np.float32(resolution)
    norm = []
    for poly in polygons:
        p = np.array(poly, dtype=np.float32)
        p[0::2] = (p[0::2] - box[0]) * m / w
        p[1::2] = (p[1::2] - box[1]) * m / h
        norm.append(p)
    rle = mask_util.frPyObjects(norm, resolution, resolution)
    return (mask_util.decode(rle).sum(axis=2) > 0).astype(np.uint8)


def image_mask_targets(fg_boxes: Tensor, segms: Sequence, is_crowd: Tensor, resolution: int) -> Tensor:
    """(N, R, R) int32 targets of one image's foreground RoIs, on the CPU.

    Args:
        fg_boxes: (N, 4) float32 RoIs in original image coordinates.
        segms: the image's segmentations, one per ground-truth row.
        is_crowd: (G,) bool per ground-truth row; only the non-crowd rows (polygons) are read.

    An image whose only ground truth is crowd can still have foreground RoIs (their best
    IoU is with a crowd box); Detectron would fail there, here they get ignored (-1) masks.
    """
    n = fg_boxes.shape[0]
    out = torch.full((n, resolution, resolution), -1, dtype=torch.int32)
    noncrowd = torch.nonzero(~is_crowd.cpu(), as_tuple=True)[0].tolist()
    polys = [segms[k] for k in noncrowd]
    for k, p in zip(noncrowd, polys):
        if isinstance(p, dict):
            raise ValueError(f"non-crowd ground truth {k} has an RLE mask; Detectron trains on polygons only")
    if n == 0 or not polys:
        return out
    boxes = fg_boxes.detach().cpu()
    best = pairwise_iou(boxes, torch.from_numpy(polys_to_boxes(polys))).argmax(dim=1).numpy()
    masks = rasterize_in_boxes(polys, best, boxes.numpy(), resolution)
    return torch.from_numpy(masks.astype(np.int32))


def rasterize_in_boxes(polys: Sequence[Sequence[Sequence[float]]], owner: np.ndarray, boxes: np.ndarray,
                       resolution: int) -> np.ndarray:
    """(N, R, R) uint8: ``polys_to_mask_wrt_box(polys[owner[i]], boxes[i], R)`` for every row i.

    The same float32 arithmetic, broadcast over all rows sharing a polygon, then one
    pycocotools call for all the polygons of all rows (instead of one per row) and the union
    of each row's polygons by one reduction over the polygons sorted by row (no loop over rows).
    """
    n = len(owner)
    one, m = np.float32(1), np.float32(resolution)
    x1, y1 = boxes[:, 0], boxes[:, 1]
    w = np.maximum(boxes[:, 2] - x1, one)
    h = np.maximum(boxes[:, 3] - y1, one)
    flat: list[np.ndarray] = []
    poly_rows = []
    for k in np.unique(owner):        # per ground truth, not per RoI
        rows = np.flatnonzero(owner == k)
        for poly in polys[k]:
            p = np.array(poly, dtype=np.float32)
            xy = np.empty((len(rows), p.shape[0]), np.float32)
            xy[:, 0::2] = (p[None, 0::2] - x1[rows, None]) * m / w[rows, None]
            xy[:, 1::2] = (p[None, 1::2] - y1[rows, None]) * m / h[rows, None]
            flat.extend(xy)
            poly_rows.append(rows)
    out = np.zeros((n, resolution, resolution), np.uint8)
    if not flat:
        return out
    decoded = mask_util.decode(mask_util.frPyObjects(flat, resolution, resolution))   # (R, R, P)
    row_of = np.concatenate(poly_rows)
    order = np.argsort(row_of, kind="stable")
    has, starts = np.unique(row_of[order], return_index=True)
    summed = np.add.reduceat(decoded[:, :, order].astype(np.int32), starts, axis=2)
    out[has] = (summed > 0).transpose(2, 0, 1)
    return out
