"""Soft-NMS exactly as Detectron's ``utils/cython_nms.pyx::soft_nms`` (via ``utils/boxes.py::soft_nms``).

The Cython loop is sequential over picks and moves boxes around in its array, and
its order decides which of two equal scores is picked first, so this reproduces the
array itself, batched over groups (image x class) as a padded (G, M) layout:

- pick ``i``: the first maximum among positions ``i..N-1`` (strict ``<`` scan) is
  swapped into position ``i``;
- every later box overlapping it (``iw > 0`` and ``ih > 0``) gets its score
  multiplied by the weight, all at once (the updates are independent);
- overlapping boxes whose score fell below the threshold (boxes that do not overlap are
  not tested) are removed the Cython way: the scan
  replaces a removed box by the current last one, so removed slots left of the new
  end get the surviving boxes from the right end, last first.

Arithmetic is the compiled C's: ``x2 - x1 + 1`` is formed in double (the literal
becomes ``1.0``) and stored to float for the box area and ``iw``/``ih``; the union
adds the picked box's double area, the float area and the float ``iw * ih`` in double
and rounds once; ``ov = iw * ih / ua`` in float. Linear weights are ``1 - ov`` when
``ov > Nt``; Gaussian weights are ``float(np.exp(double(-(ov * ov) / sigma)))`` with
the quotient in float (NumPy's float64 ``exp`` on CPU).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

METHODS = {"hard": 0, "linear": 1, "gaussian": 2}


def _exp64(x: Tensor) -> Tensor:
    if x.device.type == "cpu":
        return torch.from_numpy(np.exp(x.numpy()))
    return torch.exp(x)


def _weights(ov: Tensor, method: int, sigma: Tensor, nt: Tensor) -> Tensor:
    one = torch.ones_like(ov)
    if method == 1:
        return torch.where(ov > nt, 1 - ov, one)
    if method == 2:
        return _exp64(((-(ov * ov)) / sigma).to(torch.float64)).to(ov.dtype)
    return torch.where(ov > nt, torch.zeros_like(ov), one)


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    groups: Tensor | None,
    sigma: float = 0.5,
    overlap_thresh: float = 0.3,
    score_thresh: float = 0.001,
    method: str = "linear",
) -> tuple[Tensor, Tensor]:
    """Soft-NMS run independently within each group.

    Args:
        boxes: (N, 4) float32; scores: (N,) float32; groups: (N,) integer ids or None.
        Within a group the input order is the order of Detectron's ``dets`` array.

    Returns:
        ``(keep, new_scores)``: indices of the surviving boxes and their decayed
        scores, by ascending group and, within a group, in Detectron's output order
        (the order of picks).
    """
    if method not in METHODS:
        raise ValueError(f"Unknown soft_nms method: {method}")
    mcode = METHODS[method]
    n = boxes.shape[0]
    dev = boxes.device
    if n == 0:
        return torch.empty(0, dtype=torch.long, device=dev), scores[:0]
    if groups is None:
        groups = torch.zeros(n, dtype=torch.long, device=dev)
    order = torch.sort(groups, stable=True).indices
    _, counts = torch.unique_consecutive(groups[order], return_counts=True)
    num_g, width = len(counts), int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    cols = torch.arange(width, device=dev)
    valid = cols[None, :] < counts[:, None]
    src = torch.where(valid, starts[:, None] + cols[None, :], torch.zeros_like(valid, dtype=torch.long))
    idx = torch.where(valid, order[src], torch.full_like(src, -1))
    box = boxes[order[src]] * valid[..., None]
    score = torch.where(valid, scores[order[src]], torch.zeros_like(box[..., 0]))

    f32, f64 = boxes.dtype, torch.float64
    sigma_t = torch.tensor(sigma, dtype=f32, device=dev)
    nt = torch.tensor(overlap_thresh, dtype=f32, device=dev)
    thr = torch.tensor(score_thresh, dtype=f32, device=dev)
    end = counts.clone()                       # Cython's N per group
    rows = torch.arange(num_g, device=dev)
    for i in range(width):
        active = end > i
        if not bool(active.any()):
            break
        # the first maximum of positions i..end-1 goes to position i
        live = (cols[None, :] >= i) & (cols[None, :] < end[:, None])
        maxpos = torch.where(live, score, torch.full_like(score, -float("inf"))).argmax(dim=1)
        maxpos = torch.where(active, maxpos, torch.full_like(maxpos, i))
        perm = cols.repeat(num_g, 1)
        perm[rows, maxpos] = i
        perm[:, i] = maxpos
        box, score, idx = box[rows[:, None], perm], score.gather(1, perm), idx.gather(1, perm)

        # decay the boxes after i that overlap the pick
        t = box[:, i]
        tx1, ty1, tx2, ty2 = (t[:, k, None] for k in range(4))
        x1, y1, x2, y2 = box.unbind(2)
        area = (((x2 - x1).to(f64) + 1) * ((y2 - y1).to(f64) + 1)).to(f32)
        iw = ((torch.minimum(tx2, x2) - torch.maximum(tx1, x1)).to(f64) + 1).to(f32)
        ih = ((torch.minimum(ty2, y2) - torch.maximum(ty1, y1)).to(f64) + 1).to(f32)
        t_area = ((tx2 - tx1).to(f64) + 1) * ((ty2 - ty1).to(f64) + 1)
        inter = iw * ih
        ua = (t_area + area.to(f64) - inter.to(f64)).to(f32)
        ov = inter / ua
        after = (cols[None, :] > i) & (cols[None, :] < end[:, None])
        hit = after & (iw > 0) & (ih > 0)
        score = torch.where(hit, _weights(ov, mcode, sigma_t, nt) * score, score)

        # remove the decayed boxes that fell below the threshold, Cython's way (a box
        # that does not overlap the pick is not tested, whatever its score)
        gone = hit & (score < thr)
        if not bool(gone.any()):
            continue
        kept = after & ~gone
        new_end = i + 1 + kept.sum(dim=1)
        inside = cols[None, :] < new_end[:, None]
        holes = gone & inside
        donors = kept & ~inside
        hole_rank = torch.cumsum(holes, 1) - 1
        donor_rank = torch.cumsum(donors.flip(1), 1).flip(1) - 1
        hole_at = torch.zeros((num_g, width), dtype=torch.long, device=dev)
        hr, hc = holes.nonzero(as_tuple=True)
        hole_at[hr, hole_rank[hr, hc]] = hc
        dr, dc = donors.nonzero(as_tuple=True)
        perm = cols.repeat(num_g, 1)
        perm[dr, hole_at[dr, donor_rank[dr, dc]]] = dc
        box, score, idx = box[rows[:, None], perm], score.gather(1, perm), idx.gather(1, perm)
        end = torch.where(active, new_end, end)

    out = cols[None, :] < end[:, None]
    return idx[out], score[out]
