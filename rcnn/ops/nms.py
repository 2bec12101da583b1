"""Greedy NMS with Detectron's semantics, vectorised and on the device.

Detectron's ``cython_nms.nms`` differs from ``torchvision.ops.nms`` in three ways
that change detections (docs/detectron.md §4.14): widths and heights are ``+1``, a box
is suppressed when ``IoU >= thresh`` (float32 threshold), and the kept indices
come back in ascending *input* order, not by score. The overlap is computed with
the same float32 operations in the same order as the Cython loop.

Tie rule (the only documented deviation): Detectron visits boxes in
``argsort(scores)[::-1]`` order, whose order among exactly equal scores is
NumPy's quicksort's. Here equal scores are visited in ascending input index
(a stable descending sort). The same rule is used for every top-k in the project.

The greedy pass is computed as the fixed point of ``keep[j] = not any(keep[i]
and suppresses[i, j] for i before j)``, iterated from "keep all": after ``t``
rounds the first ``t`` boxes are final, so it ends at the greedy answer, usually
after a handful of rounds, without a Python loop over boxes.
"""
from __future__ import annotations

import torch
from torch import Tensor


def sort_desc(scores: Tensor) -> Tensor:
    """Indices ordering ``scores`` descending, equal scores by ascending index."""
    return torch.sort(scores, descending=True, stable=True).indices


def _suppression_edges(boxes: Tensor, group_end: Tensor, thresh: float, max_group: int) -> tuple[Tensor, Tensor]:
    """Pairs (i, j), i before j in the same group, with IoU(i, j) >= thresh.

    Boxes are already sorted by (group, score); box ``i`` can only suppress the
    boxes after it up to ``group_end[i]``, so the IoU is computed on a band of
    width ``max_group - 1`` instead of the full N x N matrix.
    """
    n = boxes.shape[0]
    band = max_group - 1
    if band <= 0:
        empty = torch.empty(0, dtype=torch.long, device=boxes.device)
        return empty, empty
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    thresh_t = torch.tensor(thresh, dtype=boxes.dtype, device=boxes.device)
    edges_i, edges_j = [], []
    # Rows in chunks bound the memory of the band to ~16M entries.
    chunk = max(1, (16 << 20) // band)
    offsets = torch.arange(1, band + 1, device=boxes.device)
    for start in range(0, n, chunk):
        i = torch.arange(start, min(n, start + chunk), device=boxes.device)
        j = i[:, None] + offsets[None, :]
        valid = j < group_end[i, None]
        j = j.clamp(max=n - 1)
        xx1 = torch.maximum(x1[i, None], x1[j])
        yy1 = torch.maximum(y1[i, None], y1[j])
        xx2 = torch.minimum(x2[i, None], x2[j])
        yy2 = torch.minimum(y2[i, None], y2[j])
        w = (xx2 - xx1 + 1).clamp(min=0)
        h = (yy2 - yy1 + 1).clamp(min=0)
        inter = w * h
        ovr = inter / (areas[i, None] + areas[j] - inter)
        hit = (ovr >= thresh_t) & valid
        rows, cols = hit.nonzero(as_tuple=True)
        edges_i.append(i[rows])
        edges_j.append(j[rows, cols])
    return torch.cat(edges_i), torch.cat(edges_j)


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor | None, thresh: float) -> Tensor:
    """Detectron NMS run independently within each group (image, class, level...).

    Args:
        boxes: (N, 4) float32 ``[x1, y1, x2, y2]``.
        scores: (N,) float32.
        groups: (N,) integer group ids, or None for a single group.
        thresh: IoU threshold; ``IoU >= thresh`` suppresses (compared in the boxes' dtype).

    Returns:
        Indices of the kept boxes in ascending input order (so within a group
        they are in input order, as Detectron's ``np.where(suppressed == 0)``).
    """
    n = boxes.shape[0]
    device = boxes.device
    if n == 0:
        return torch.empty(0, dtype=torch.long, device=device)
    if groups is None:
        groups = torch.zeros(n, dtype=torch.long, device=device)
    order = sort_desc(scores)
    order = order[torch.sort(groups[order], stable=True).indices]
    sorted_groups = groups[order]
    _, counts = torch.unique_consecutive(sorted_groups, return_counts=True)
    ends = torch.cumsum(counts, 0)
    group_end = torch.repeat_interleave(ends, counts)
    ei, ej = _suppression_edges(boxes[order], group_end, thresh, int(counts.max()))

    keep = torch.ones(n, dtype=torch.bool, device=device)
    while True:
        suppressed = torch.zeros(n, dtype=torch.bool, device=device)
        suppressed[ej[keep[ei]]] = True
        new_keep = ~suppressed
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return torch.sort(order[keep]).values
