"""Bounding-box voting exactly as Detectron's ``utils/boxes.py::box_voting``.

Each kept box becomes the score-weighted average of every candidate of its group with
``IoU >= thresh`` (``bbox_overlaps``, float32 threshold), optionally with a new score.
Detectron does this with NumPy 1 on float32 arrays, and the order of its sums is part
of the result:

- ``np.average(boxes, axis=0, weights=ws)``: the numerator ``sum(boxes * ws)`` runs over
  the voters one after the other (axis 0 of an (n, 4) array), the denominator
  ``ws.sum()`` is a 1-D reduction, which NumPy does pairwise (8 accumulators, blocks of
  128, see ``_numpy_sum``); the quotient is float32;
- ``mean`` is that pairwise sum divided by ``n``; scalar ``**`` and ``/`` with Python
  floats ran in float64 (pre-NEP 50 promotion) and were stored to float32.

All voters of all kept boxes are handled at once (padded to the largest voter count);
``log``/``exp``/``pow`` are NumPy's on CPU.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from rcnn.ops import boxes as box_ops

SCORING_METHODS = ("ID", "TEMP_AVG", "AVG", "IOU_AVG", "GENERALIZED_AVG", "QUASI_SUM")


def _numpy_pairwise(x: Tensor) -> Tensor:
    """NumPy's ``pairwise_sum`` of each row of a (G, n) float tensor."""
    n = x.shape[1]
    if n < 8:
        res = torch.full(x.shape[:1], -0.0, dtype=x.dtype, device=x.device)
        for j in range(n):
            res = res + x[:, j]
        return res
    if n <= 128:
        r = x[:, :8]
        last = n - n % 8
        for i in range(8, last, 8):
            r = r + x[:, i:i + 8]
        res = ((r[:, 0] + r[:, 1]) + (r[:, 2] + r[:, 3])) + ((r[:, 4] + r[:, 5]) + (r[:, 6] + r[:, 7]))
        for k in range(last, n):
            res = res + x[:, k]
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return _numpy_pairwise(x[:, :n2]) + _numpy_pairwise(x[:, n2:])


def _numpy_sum(values: Tensor, counts: Tensor) -> Tensor:
    """``arr.sum()`` of each row's first ``counts[g]`` values (NumPy 1-D float reduction)."""
    out = torch.zeros(values.shape[0], dtype=values.dtype, device=values.device)
    for n in torch.unique(counts).tolist():
        rows = torch.nonzero(counts == n, as_tuple=True)[0]
        out[rows] = 0 + _numpy_pairwise(values[rows, :n])
    return out


def _np(fn, x: Tensor) -> Tensor:
    """NumPy's float32 ``fn`` on CPU (``log``/``exp``/``**`` differ from torch's in the last bit)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return torch.from_numpy(np.asarray(fn(x.cpu().numpy()))).to(x.device)


def _scalar_pow(base: Tensor, exponents: list[float]) -> Tensor:
    """``np.float32 ** float`` of NumPy 1: C ``pow`` in double, stored to float32."""
    return torch.tensor([float(b) ** e for b, e in zip(base.tolist(), exponents)],
                        dtype=torch.float64, device=base.device).to(base.dtype)


def box_voting(
    top_boxes: Tensor,
    top_scores: Tensor,
    top_groups: Tensor,
    all_boxes: Tensor,
    all_scores: Tensor,
    all_groups: Tensor,
    thresh: float,
    scoring_method: str = "ID",
    beta: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Voted boxes and scores of the kept detections ``top_*`` (T rows).

    ``all_*`` are the candidates before NMS (A rows), in Detectron's ``dets`` order
    within each group; a kept box votes with the candidates of its own group.
    """
    if scoring_method not in SCORING_METHODS:
        raise NotImplementedError(f"Unknown scoring method {scoring_method}")
    dev, f32, f64 = top_boxes.device, top_boxes.dtype, torch.float64
    t_count = top_boxes.shape[0]
    if t_count == 0:
        return top_boxes.clone(), top_scores.clone()
    order = torch.sort(all_groups, stable=True).indices
    uniq, counts = torch.unique_consecutive(all_groups[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    g = torch.searchsorted(uniq, top_groups)
    # every (top, candidate of its group) pair, candidates in ascending order
    n_pairs = counts[g]
    t_idx = torch.repeat_interleave(torch.arange(t_count, device=dev), n_pairs)
    local = torch.arange(len(t_idx), device=dev) - torch.repeat_interleave(torch.cumsum(n_pairs, 0) - n_pairs,
                                                                           n_pairs)
    a_idx = order[starts[g][t_idx] + local]
    ovr = box_ops.paired_iou(top_boxes[t_idx], all_boxes[a_idx])
    vote = ovr >= torch.tensor(thresh, dtype=f32, device=dev)
    t_idx, a_idx, ovr = t_idx[vote], a_idx[vote], ovr[vote]

    # voters padded to (T, V), in ascending candidate order
    n_vote = torch.bincount(t_idx, minlength=t_count)
    width = int(n_vote.max())
    col = torch.arange(len(t_idx), device=dev) - torch.repeat_interleave(torch.cumsum(n_vote, 0) - n_vote, n_vote)
    ws = torch.zeros((t_count, width), dtype=f32, device=dev)
    ws[t_idx, col] = all_scores[a_idx]
    weighted = torch.zeros((t_count, width, 4), dtype=f32, device=dev)
    weighted[t_idx, col] = all_boxes[a_idx] * all_scores[a_idx, None]
    num = torch.zeros((t_count, 4), dtype=f32, device=dev)
    for j in range(width):                       # axis-0 sum: one voter after the other
        num = num + weighted[:, j]
    out_boxes = num / _numpy_sum(ws, n_vote)[:, None]

    n32 = n_vote.to(f32)
    if scoring_method == "ID":
        out_scores = top_scores.clone()
    elif scoring_method == "AVG":
        out_scores = _numpy_sum(ws, n_vote) / n32
    elif scoring_method == "IOU_AVG":
        iou = torch.zeros((t_count, width), dtype=f32, device=dev)
        iou[t_idx, col] = ovr
        out_scores = _numpy_sum(ws * iou, n_vote) / _numpy_sum(iou, n_vote)
    elif scoring_method == "GENERALIZED_AVG":
        powered = _np(lambda a: a ** beta, ws)                  # NumPy's float32 array ** float
        mean = _numpy_sum(powered, n_vote) / n32
        out_scores = mean if beta == 1.0 else _scalar_pow(mean, [1.0 / beta] * t_count)
    elif scoring_method == "QUASI_SUM":
        sums = _numpy_sum(ws, n_vote).to(f64)
        out_scores = (sums / torch.tensor([float(n) ** beta for n in n_vote.tolist()], dtype=f64,
                                          device=dev)).to(f32)
    else:  # TEMP_AVG
        p = torch.stack((ws, 1.0 - ws))
        x = _np(np.log, p / p.max(dim=0).values)
        x_exp = _np(np.exp, x / torch.tensor(beta, dtype=f32, device=dev))
        p_temp = x_exp[0] / (x_exp[0] + x_exp[1])
        out_scores = _numpy_sum(p_temp, n_vote) / n32
    return out_boxes, out_scores
