"""RPN proposal generation over FPN levels, batched over images.

Per level and image (``ops/generate_proposals.py``): sort anchors by sigmoid
probability and keep the top ``pre_nms_top_n``, decode with weights (1, 1, 1, 1),
clip to ``im_info`` (``rcnn.data.im_info``: the *padded* blob size at test time), drop degenerate boxes
(HEAD's ``_filter_boxes``), NMS at ``nms_thresh`` and keep ``post_nms_top_n``.
Then ``collect`` (``ops/collect_and_distribute_fpn_rpn_proposals.py``) keeps the
top ``post_nms_top_n`` over all levels: per image at test time, per *batch* in
training (Detectron issue #459 — kept because the zoo models were trained so).

Orders follow the project's tie rule (``rcnn.ops.nms``): equal probabilities are
ranked by anchor index within a level, and by level order when collecting.
All per-level work for all images is done in one batched pass, and one grouped
NMS call covers every (image, level) pair.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from rcnn.data.im_info import ImInfo
from rcnn.ops import boxes as box_ops
from rcnn.ops.anchors import grid_anchors
from rcnn.ops.nms import batched_nms, sort_desc


@dataclass(frozen=True)
class ProposalParams:
    pre_nms_top_n: int
    post_nms_top_n: int
    nms_thresh: float
    min_size: float
    per_image_collect: bool = True

    @classmethod
    def from_cfg(cls, cfg, train: bool) -> ProposalParams:
        c = cfg.TRAIN if train else cfg.TEST
        return cls(c.RPN_PRE_NMS_TOP_N, c.RPN_POST_NMS_TOP_N, c.RPN_NMS_THRESH, c.RPN_MIN_SIZE,
                   per_image_collect=not train)


def _rank_in_runs(keys: Tensor) -> Tensor:
    """Position of each element within its run of equal consecutive ``keys``."""
    _, counts = torch.unique_consecutive(keys, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(keys.numel(), device=keys.device) - torch.repeat_interleave(starts, counts)


def generate_proposals(
    cls_probs: Sequence[Tensor],
    bbox_deltas: Sequence[Tensor],
    im_info: ImInfo,
    levels: Sequence[int],
    anchor_sizes: Sequence[float | Sequence[float]],
    aspect_ratios: Sequence[float],
    params: ProposalParams,
) -> tuple[Tensor, Tensor]:
    """Proposals for a batch.

    Args:
        cls_probs / bbox_deltas: per level, sigmoid objectness (B, A, H, W) and
            deltas (B, 4A, H, W).
        im_info: ``[height, width, scale]`` per image; proposals are clipped to its height and width.
        levels / anchor_sizes: FPN level (stride ``2**level``) and anchor size of each
            entry; a sequence of sizes gives one anchor per (ratio, size), as the
            single-level C4 RPN's ``RPN.SIZES`` at level 4 (stride 16).

    Returns:
        rois (R, 5) float32 ``[batch_index, x1, y1, x2, y2]`` in descending
        probability, grouped by image when ``per_image_collect``; and their
        probabilities (R,).
    """
    device = im_info.device
    num_images = len(im_info)
    num_levels = len(levels)
    im_h = im_info.height[:, None]
    im_w = im_info.width[:, None]
    im_scale = im_info.scale[:, None]
    min_size = max(params.min_size, 1)

    cand_boxes, cand_scores, cand_groups = [], [], []
    for li, (lvl, size, probs, deltas) in enumerate(zip(levels, anchor_sizes, cls_probs, bbox_deltas)):
        h, w = probs.shape[-2:]
        probs = probs.permute(0, 2, 3, 1).reshape(num_images, -1)
        deltas = deltas.permute(0, 2, 3, 1).reshape(num_images, -1, 4)
        sizes = tuple(size) if isinstance(size, Sequence) else (size,)
        anchors = grid_anchors(2**lvl, sizes, aspect_ratios, h, w, device)
        k = probs.shape[1]
        if 0 < params.pre_nms_top_n < k:
            k = params.pre_nms_top_n
        order = sort_desc(probs)[:, :k]
        scores = torch.gather(probs, 1, order)
        boxes = box_ops.decode(anchors[order.reshape(-1)],
                               torch.gather(deltas, 1, order[..., None].expand(-1, -1, 4)).reshape(-1, 4))
        boxes = boxes.reshape(num_images, k, 4)
        boxes = box_ops.clip_tiled(boxes.reshape(-1, 4), im_h.repeat_interleave(k, 0),
                                   im_w.repeat_interleave(k, 0)).reshape(num_images, k, 4)
        # HEAD's _filter_boxes: sides >= max(min_size, 1) in original pixels, centre inside.
        x1, y1, x2, y2 = boxes.unbind(-1)
        ws = x2 - x1 + 1
        hs = y2 - y1 + 1
        valid = (
            ((x2 - x1) / im_scale + 1 >= min_size)
            & ((y2 - y1) / im_scale + 1 >= min_size)
            & (x1 + ws / 2.0 < im_w)
            & (y1 + hs / 2.0 < im_h)
        )
        groups = torch.arange(num_images, device=device)[:, None] * num_levels + li
        cand_boxes.append(boxes[valid])
        cand_scores.append(scores[valid])
        cand_groups.append(groups.expand(-1, k)[valid])

    boxes = torch.cat(cand_boxes)
    scores = torch.cat(cand_scores)
    groups = torch.cat(cand_groups)
    if params.nms_thresh > 0:
        keep = batched_nms(boxes, scores, groups, params.nms_thresh)
        if params.post_nms_top_n > 0:
            keep = keep[_rank_in_runs(groups[keep]) < params.post_nms_top_n]
        boxes, scores, groups = boxes[keep], scores[keep], groups[keep]

    image = torch.div(groups, num_levels, rounding_mode="floor")
    return collect(boxes, scores, image, params.post_nms_top_n, params.per_image_collect)


def collect(boxes: Tensor, scores: Tensor, image: Tensor, post_nms_top_n: int,
            per_image: bool = True) -> tuple[Tensor, Tensor]:
    """Keep the ``post_nms_top_n`` most probable proposals over all levels.

    Candidates come in (level, image, rank) order, so the stable sort keeps level
    order among equal probabilities, as Detectron's concatenation does.
    ``per_image=False`` ranks the whole batch together (Detectron's training).
    """
    order = sort_desc(scores)
    if per_image:
        order = order[torch.sort(image[order], stable=True).indices]
        order = order[_rank_in_runs(image[order]) < post_nms_top_n]
    else:
        order = order[:post_nms_top_n]
    rois = torch.cat((image[order, None].to(boxes.dtype), boxes[order]), dim=1)
    return rois, scores[order]
