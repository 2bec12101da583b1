"""Fast R-CNN RoI sampling and targets, with the mask and keypoint targets of the sample.

This is the training branch of ``ops/collect_and_distribute_fpn_rpn_proposals.py``:
``json_dataset.add_proposals(crowd_thresh=0)``, ``roidb.add_bbox_regression_targets``
and ``roi_data/fast_rcnn.py::_sample_rois``. Per image:

* candidates are the image's ground-truth rows (crowd included) followed by its
  collected proposals, scaled back to original coordinates by ``1 / im_scale``;
* a proposal's overlap and class come from the ground truth of highest IoU over *all*
  ground truth, crowd included (IoU 0: background, no match); a non-crowd ground-truth
  row has overlap 1 and its class, a crowd row overlap -1, so it is never sampled;
* up to ``round(FG_FRACTION * BATCH_SIZE_PER_IM)`` foreground (IoU >= FG_THRESH) are
  drawn without replacement, then background (IoU in [BG_THRESH_LO, BG_THRESH_HI)) fill
  the rest without replacement (fewer when not enough);
* rows with IoU >= BBOX_THRESH regress towards the non-crowd ground truth of highest
  IoU, encoded with ``MODEL.BBOX_REG_WEIGHTS``, into the 4 columns of their class
  (of the best overall match, which may be a crowd box);
* the sampled boxes are multiplied by ``im_scale`` again for the heads; the FPN level
  of each RoI is chosen when pooling (``rcnn.ops.pooler``).

Draws go through the :data:`~rcnn.modeling.sampler.Sampler`, per image in
Detectron's order: foreground, background, then keypoint RoIs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from rcnn.data.im_info import ImInfo
from rcnn.data.train_batch import ImageTargets
from rcnn.modeling.keypoint_targets import KeypointTargets, keypoints_to_heatmap_labels, keypoints_within_boxes
from rcnn.modeling.mask_targets import MaskTargets, image_mask_targets
from rcnn.modeling.sampler import Sampler
from rcnn.ops import boxes as box_ops

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoITargetParams:
    batch_size_per_im: int = 512
    fg_fraction: float = 0.25
    fg_thresh: float = 0.5
    bg_thresh_hi: float = 0.5
    bg_thresh_lo: float = 0.0
    bbox_thresh: float = 0.5
    bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    num_classes: int = 81
    cls_agnostic_bbox_reg: bool = False
    mask_resolution: int | None = None        # MRCNN.RESOLUTION when MODEL.MASK_ON
    keypoint_heatmap_size: int | None = None  # KRCNN.HEATMAP_SIZE when MODEL.KEYPOINTS_ON

    @classmethod
    def from_cfg(cls, cfg) -> RoITargetParams:
        t = cfg.TRAIN
        return cls(t.BATCH_SIZE_PER_IM, t.FG_FRACTION, t.FG_THRESH, t.BG_THRESH_HI, t.BG_THRESH_LO, t.BBOX_THRESH,
                   tuple(cfg.MODEL.BBOX_REG_WEIGHTS), cfg.MODEL.NUM_CLASSES, cfg.MODEL.CLS_AGNOSTIC_BBOX_REG,
                   cfg.MRCNN.RESOLUTION if cfg.MODEL.MASK_ON else None,
                   cfg.KRCNN.HEATMAP_SIZE if cfg.MODEL.KEYPOINTS_ON else None)

    @property
    def fg_per_image(self) -> int:
        """``int(np.round(FG_FRACTION * BATCH_SIZE_PER_IM))`` (round half to even, like NumPy)."""
        return int(round(self.fg_fraction * self.batch_size_per_im))


@dataclass
class RoITargets:
    """The sampled RoIs of a minibatch, images in order, foreground first within each.

    ``rois`` (S, 5) float32 ``[batch index, x1, y1, x2, y2]`` in scaled input coordinates;
    ``labels`` (S,) int64 class, 0 = background (foreground rows: ``labels > 0``);
    ``bbox_targets``, ``bbox_inside_weights``, ``bbox_outside_weights`` (S, 4C) float32
    with C = NUM_CLASSES (2 when class-agnostic), non-zero in the 4 columns of the class;
    ``gt_index`` (S,) int64: row of the image's :class:`ImageTargets` with the highest IoU
    (the row itself for ground truth; -1 when nothing overlaps);
    ``masks`` / ``keypoints``: targets of the mask / keypoint heads when enabled.
    """

    rois: Tensor
    labels: Tensor
    bbox_targets: Tensor
    bbox_inside_weights: Tensor
    bbox_outside_weights: Tensor
    gt_index: Tensor
    masks: MaskTargets | None = None
    keypoints: KeypointTargets | None = None


def _with_batch_index(boxes: Tensor, i: int) -> Tensor:
    return torch.cat((boxes.new_full((boxes.shape[0], 1), float(i)), boxes), dim=1)


def _candidates(props: Tensor, t: ImageTargets) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Boxes, max overlap, class and matched GT row of GT rows + proposals (``add_proposals``)."""
    device = props.device
    gt = t.boxes.to(device)
    classes = t.classes.to(device)
    crowd = t.is_crowd.to(device)
    g, p = gt.shape[0], props.shape[0]
    boxes = torch.cat((gt, props))
    max_ov = torch.cat((torch.where(crowd, -1.0, 1.0).to(props.dtype), props.new_zeros(p)))
    max_cls = torch.cat((torch.where(crowd, torch.zeros_like(classes), classes),
                         torch.zeros(p, dtype=torch.int64, device=device)))
    gt_index = torch.cat((torch.arange(g, device=device), torch.full((p,), -1, dtype=torch.int64, device=device)))
    if g > 0 and p > 0:
        best, arg = box_ops.pairwise_iou(props, gt).max(dim=1)
        hit = best > 0
        max_ov[g:] = best
        max_cls[g:] = torch.where(hit, classes[arg], 0)
        gt_index[g:] = torch.where(hit, arg, -1)
    return boxes, max_ov, max_cls, gt_index


def _regression_targets(boxes: Tensor, max_ov: Tensor, max_cls: Tensor, t: ImageTargets,
                        params: RoITargetParams) -> tuple[Tensor, Tensor]:
    """Class-specific targets and inside weights (S, 4C) (``compute_bbox_regression_targets``
    + ``_expand_bbox_targets``)."""
    num_reg = 2 if params.cls_agnostic_bbox_reg else params.num_classes
    targets = boxes.new_zeros((boxes.shape[0], 4 * num_reg))
    weights = torch.zeros_like(targets)
    gt = t.boxes.to(boxes.device)[~t.is_crowd.to(boxes.device)]
    if gt.shape[0] == 0:
        return targets, weights
    rows = torch.nonzero(max_ov >= params.bbox_thresh, as_tuple=True)[0]
    ex = boxes[rows]
    assign = box_ops.pairwise_iou(ex, gt).argmax(dim=1)
    deltas = box_ops.encode(ex, gt[assign], params.bbox_reg_weights)
    cls = torch.ones_like(rows) if params.cls_agnostic_bbox_reg else max_cls[rows]
    cols = 4 * cls[:, None] + torch.arange(4, device=boxes.device)
    targets[rows[:, None], cols] = deltas
    weights[rows[:, None], cols] = 1.0
    return targets, weights


def _keypoint_sample(boxes: Tensor, max_ov: Tensor, gt_index: Tensor, t: ImageTargets, params: RoITargetParams,
                     sampler: Sampler) -> tuple[Tensor, Tensor]:
    """Indices of the keypoint RoIs among the candidates and their GT keypoints (N, 3, J)."""
    if t.keypoints is None:
        raise ValueError(f"image {t.image_id}: keypoint targets need ImageTargets.keypoints")
    kps = t.keypoints.to(boxes.device)
    if kps.shape[0] == 0:
        return gt_index.new_zeros(0), kps.new_zeros((0,) + kps.shape[1:])
    pts = kps[gt_index.clamp(min=0)]
    visible_inside = ((pts[:, 2] > 0) & keypoints_within_boxes(pts, boxes)).any(dim=1) & (gt_index >= 0)
    inds = torch.nonzero((max_ov >= params.fg_thresh) & visible_inside, as_tuple=True)[0]
    if inds.numel() > params.fg_per_image:
        inds = sampler(inds, params.fg_per_image, False)
    return inds, kps[gt_index[inds]]


@torch.no_grad()
def sample_rois(
    proposals: Tensor,
    im_info: ImInfo,
    targets: list[ImageTargets],
    params: RoITargetParams,
    sampler: Sampler,
) -> RoITargets:
    """Sample the RoIs of a minibatch and build their box, mask and keypoint targets.

    Args:
        proposals: (R, 5) float32 ``[batch index, x1, y1, x2, y2]`` in scaled input
            coordinates: ``generate_proposals`` in training mode (top 2000 over the batch),
            which carry no gradient (Detectron's proposal ops have none).
        im_info: the images' ``[height, width, im_scale]`` (only the scale is used).
        targets: ground truth per image in original coordinates.
    """
    device = proposals.device
    parts: dict[str, list[Tensor]] = {k: [] for k in ("rois", "labels", "bbox_targets", "inside", "gt_index",
                                                       "mask_rois", "mask_targets", "mask_classes",
                                                       "kp_rois", "kp_loc", "kp_w")}
    for i, t in enumerate(targets):
        im_scale = im_info.scale[i]
        inv_scale = (1.0 / im_scale.double()).to(proposals.dtype)   # NumPy: 1. / float32 is float64
        props = proposals[proposals[:, 0] == i, 1:5] * inv_scale
        boxes, max_ov, max_cls, gt_index = _candidates(props, t)

        fg = torch.nonzero(max_ov >= params.fg_thresh, as_tuple=True)[0]
        num_fg = min(params.fg_per_image, fg.numel())
        if fg.numel() > 0:
            fg = sampler(fg, num_fg, False)
        bg = torch.nonzero((max_ov < params.bg_thresh_hi) & (max_ov >= params.bg_thresh_lo), as_tuple=True)[0]
        num_bg = min(params.batch_size_per_im - num_fg, bg.numel())
        if bg.numel() > 0:
            bg = sampler(bg, num_bg, False)
        keep = torch.cat((fg, bg))
        labels = max_cls[keep]
        labels[num_fg:] = 0
        sampled = boxes[keep]
        reg_targets, inside = _regression_targets(sampled, max_ov[keep], max_cls[keep], t, params)
        parts["rois"].append(_with_batch_index(sampled * im_scale, i))
        parts["labels"].append(labels)
        parts["bbox_targets"].append(reg_targets)
        parts["inside"].append(inside)
        parts["gt_index"].append(gt_index[keep])
        logger.debug("image %d: %d fg + %d bg RoIs of %d candidates", i, num_fg, keep.numel() - num_fg, boxes.shape[0])

        if params.mask_resolution is not None:
            is_fg = labels > 0
            if bool(is_fg.any()):
                m_boxes = sampled[is_fg]
                m_targets = image_mask_targets(m_boxes, t.segms, t.is_crowd, params.mask_resolution).to(device)
                m_classes = labels[is_fg]
            else:
                # No foreground: the first RoI stands in, with an all-ignored mask and class 0.
                m_boxes = sampled[:1]
                r = params.mask_resolution
                m_targets = torch.full((m_boxes.shape[0], r, r), -1, dtype=torch.int32, device=device)
                m_classes = labels[:1]
            parts["mask_rois"].append(_with_batch_index(m_boxes * im_scale, i))
            parts["mask_targets"].append(m_targets)
            parts["mask_classes"].append(m_classes)

        if params.keypoint_heatmap_size is not None:
            k_inds, k_points = _keypoint_sample(boxes, max_ov, gt_index, t, params, sampler)
            k_boxes = boxes[k_inds]
            loc, w = keypoints_to_heatmap_labels(k_points, k_boxes, params.keypoint_heatmap_size)
            parts["kp_rois"].append(_with_batch_index(k_boxes * im_scale, i))
            parts["kp_loc"].append(loc)
            parts["kp_w"].append(w)

    inside = torch.cat(parts["inside"])
    out = RoITargets(torch.cat(parts["rois"]), torch.cat(parts["labels"]), torch.cat(parts["bbox_targets"]),
                     inside, (inside > 0).to(inside.dtype), torch.cat(parts["gt_index"]))
    if params.mask_resolution is not None:
        out.masks = MaskTargets(torch.cat(parts["mask_rois"]), torch.cat(parts["mask_targets"]),
                                torch.cat(parts["mask_classes"]))
    if params.keypoint_heatmap_size is not None:
        out.keypoints = KeypointTargets(torch.cat(parts["kp_rois"]), torch.cat(parts["kp_loc"]),
                                        torch.cat(parts["kp_w"]))
    return out
