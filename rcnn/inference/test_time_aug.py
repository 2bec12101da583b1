"""Test-time augmentation as Detectron's ``core/test.py`` (``TEST.BBOX_AUG``, ``TEST.MASK_AUG``, ``TEST.KPS_AUG``).

One image at a time. Each view is the image flipped (``im[:, ::-1]``), rescaled (another
target size) or stretched in width (``utils/image.py::aspect_ratio_rel``, cv2 bilinear to
``int(round(ar * w))``), prepared like any image; its predictions are mapped back to
the original image (``flip_boxes``: ``x1' = W - x2 - 1``; ``aspect_ratio``: ``x * float32(1/ar)``).

- boxes (``im_detect_bbox_aug``): views in Detectron's order (flip, then each scale and
  its flip, then each aspect ratio and its flip, the identity last); per-RoI scores and
  class boxes are stacked (UNION), averaged (AVG: NumPy's sequential float32 sum / n)
  or the identity's (ID), then go through the usual NMS and cap;
- masks / keypoints (``im_detect_{mask,keypoints}_aug``): the final boxes are mapped into
  each view (identity first), the head's probabilities / heatmaps are flipped back
  (channel swap of left/right keypoints) and combined (SOFT_AVG, SOFT_MAX, LOGIT_AVG;
  HM_AVG, HM_MAX, optionally size-dependent: ``combine_heatmaps_size_dep``).

The network stages are the model's (``features``, ``proposals``, ``box_outputs``,
``mask_logits``, ``keypoint_logits``); the result is a ``DeviceOutputs`` that
``Detector`` finishes (mask paste, keypoint decode) like any other.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from detectron_parity.errors import UserError
from rcnn.data.datasets import COCO_KEYPOINT_NAMES
from rcnn.data.im_info import ImInfo
from rcnn.data.preprocess import PreparedImage, images_to_blob, prepare
from rcnn.data.roidb import keypoint_flip_permutation
from rcnn.inference.postprocess import box_results_with_nms_and_limit
from rcnn.inference.stages import DeviceOutputs, class_boxes, rois_for_heads
from rcnn.ops import boxes as box_ops

logger = logging.getLogger(__name__)


class AugmentationError(UserError, ValueError):
    """A combination of TEST.*_AUG options that Detectron refuses."""


@dataclass(frozen=True)
class View:
    """One transformed input: target size, max size, width aspect ratio (None: none), flip."""

    scale: int
    max_size: int
    aspect_ratio: float | None = None
    hflip: bool = False

    def image(self, im: np.ndarray) -> np.ndarray:
        if self.aspect_ratio is not None:
            im = aspect_ratio_rel(im, self.aspect_ratio)
        return im[:, ::-1, :] if self.hflip else im

    def to_view(self, boxes: Tensor, width: int) -> Tensor:
        """Original-image boxes (R, 4k) into this view's original-size frame."""
        if self.aspect_ratio is not None:
            boxes = scale_widths(boxes, self.aspect_ratio)
            width = aspect_ratio_width(width, self.aspect_ratio)
        return flip_boxes(boxes, width) if self.hflip else boxes

    def from_view(self, boxes: Tensor, width: int) -> Tensor:
        """This view's boxes (R, 4k) back into the original image."""
        if self.hflip:
            boxes = flip_boxes(boxes, aspect_ratio_width(width, self.aspect_ratio)
                               if self.aspect_ratio is not None else width)
        return scale_widths(boxes, 1.0 / self.aspect_ratio) if self.aspect_ratio is not None else boxes


def aspect_ratio_width(width: int, aspect_ratio: float) -> int:
    # Python 3's round (half to even), as Detectron's code runs here.
    return round(aspect_ratio * width)


def aspect_ratio_rel(im: np.ndarray, aspect_ratio: float) -> np.ndarray:
    """``utils/image.py::aspect_ratio_rel``: width scaled by ``aspect_ratio`` (cv2 bilinear)."""
    return cv2.resize(im, dsize=(aspect_ratio_width(im.shape[1], aspect_ratio), im.shape[0]))


def flip_boxes(boxes: Tensor, width: int) -> Tensor:
    """``utils/boxes.py::flip_boxes`` on (R, 4k) float32 boxes: ``x1' = (W - x2) - 1``."""
    w = torch.tensor(width, dtype=boxes.dtype, device=boxes.device)
    out = boxes.clone()
    out[:, 0::4] = w - boxes[:, 2::4] - 1
    out[:, 2::4] = w - boxes[:, 0::4] - 1
    return out


def scale_widths(boxes: Tensor, aspect_ratio: float) -> Tensor:
    """``utils/boxes.py::aspect_ratio``: x coordinates times float32(aspect_ratio)."""
    r = torch.tensor(aspect_ratio, dtype=boxes.dtype, device=boxes.device)
    out = boxes.clone()
    out[:, 0::4] = r * boxes[:, 0::4]
    out[:, 2::4] = r * boxes[:, 2::4]
    return out


def numpy_mean(xs: list[Tensor]) -> Tensor:
    """``np.mean(xs, axis=0)`` of float32 arrays: sequential sum, then float32 division."""
    acc = torch.zeros_like(xs[0])
    for x in xs:
        acc = acc + x
    return acc / torch.tensor(len(xs), dtype=acc.dtype, device=acc.device)


def head_views(aug, test_scale: int, test_max_size: int) -> list[View]:
    """Views of ``im_detect_{mask,keypoints}_aug``: identity, flip, scales (+flip), aspect ratios (+flip)."""
    views = [View(test_scale, test_max_size)]
    if aug.H_FLIP:
        views.append(View(test_scale, test_max_size, hflip=True))
    for s in aug.SCALES:
        views.append(View(s, aug.MAX_SIZE))
        if aug.SCALE_H_FLIP:
            views.append(View(s, aug.MAX_SIZE, hflip=True))
    for ar in aug.ASPECT_RATIOS:
        views.append(View(test_scale, test_max_size, ar))
        if aug.ASPECT_RATIO_H_FLIP:
            views.append(View(test_scale, test_max_size, ar, hflip=True))
    return views


def box_views(aug, test_scale: int, test_max_size: int) -> list[View]:
    """Views of ``im_detect_bbox_aug``: flip, scales (+flip), aspect ratios (+flip), identity last."""
    views = head_views(aug, test_scale, test_max_size)
    return views[1:] + views[:1]


def check_cfg(cfg) -> None:
    """Detectron's assertions in ``im_detect_bbox_aug`` / ``im_detect_mask_aug``."""
    b = cfg.TEST.BBOX_AUG
    if b.ENABLED:
        if b.SCALE_SIZE_DEP:
            raise AugmentationError("TEST.BBOX_AUG.SCALE_SIZE_DEP: size dependent scaling not implemented")
        if (b.SCORE_HEUR == "UNION") != (b.COORD_HEUR == "UNION"):
            raise AugmentationError("TEST.BBOX_AUG: score and coord heuristics must both be UNION or neither")
        if cfg.MODEL.FASTER_RCNN and b.SCORE_HEUR != "UNION":
            raise AugmentationError("TEST.BBOX_AUG: the UNION heuristic must be used to combine Faster R-CNN "
                                   "(RPN) predictions")
        for name, heur in (("SCORE_HEUR", b.SCORE_HEUR), ("COORD_HEUR", b.COORD_HEUR)):
            if heur not in ("ID", "AVG", "UNION"):
                raise AugmentationError(f"TEST.BBOX_AUG.{name} {heur} not supported")
    if cfg.TEST.MASK_AUG.ENABLED:
        if cfg.TEST.MASK_AUG.SCALE_SIZE_DEP:
            raise AugmentationError("TEST.MASK_AUG.SCALE_SIZE_DEP: size dependent scaling not implemented")
        if cfg.TEST.MASK_AUG.HEUR not in ("SOFT_AVG", "SOFT_MAX", "LOGIT_AVG"):
            raise AugmentationError(f"TEST.MASK_AUG.HEUR {cfg.TEST.MASK_AUG.HEUR} not supported")
    if cfg.TEST.KPS_AUG.ENABLED and cfg.TEST.KPS_AUG.HEUR not in ("HM_AVG", "HM_MAX"):
        raise AugmentationError(f"TEST.KPS_AUG.HEUR {cfg.TEST.KPS_AUG.HEUR} not supported")


def combine_boxes(scores_ts: list[Tensor], boxes_ts: list[Tensor], score_heur: str,
                  coord_heur: str) -> tuple[Tensor, Tensor]:
    """The merge of ``im_detect_bbox_aug``; the identity's predictions come last."""
    def merge(xs: list[Tensor], heur: str) -> Tensor:
        if heur == "ID":
            return xs[-1]
        if heur == "AVG":
            return numpy_mean(xs)
        return torch.cat(xs)
    return merge(scores_ts, score_heur), merge(boxes_ts, coord_heur)


def combine_masks(probs_ts: list[Tensor], heur: str) -> Tensor:
    """The merge of ``im_detect_mask_aug`` (soft masks in [0, 1], float32)."""
    if heur == "SOFT_AVG":
        return numpy_mean(probs_ts)
    if heur == "SOFT_MAX":
        return torch.stack(probs_ts).amax(dim=0)
    # LOGIT_AVG: -1.0 * log((1 - y) / max(y, 1e-20)), averaged, then 1 / (1 + exp(-x))
    tiny = torch.tensor(1e-20, dtype=probs_ts[0].dtype, device=probs_ts[0].device)
    with np.errstate(divide="ignore"):                       # y == 1 gives -inf, as in Detectron
        logits = [-box_ops.log((1.0 - y) / torch.maximum(y, tiny)) for y in probs_ts]
    return 1.0 / (1.0 + box_ops.exp(-numpy_mean(logits)))


def combine_heatmaps(hms_ts: list[Tensor], ds_ts: list[bool], us_ts: list[bool], boxes: Tensor, heur: str,
                     size_dep: bool, area_th: float) -> Tensor:
    """The merge of ``im_detect_keypoints_aug`` (+ ``combine_heatmaps_size_dep``)."""
    if not size_dep:
        return numpy_mean(hms_ts) if heur == "HM_AVG" else torch.stack(hms_ts).amax(dim=0)
    small = box_ops.boxes_area(boxes) < torch.tensor(area_th, dtype=boxes.dtype, device=boxes.device)
    # per object: drop downscaled views for small/medium objects, upscaled ones for large objects
    use = [torch.where(small, torch.tensor(not ds), torch.tensor(not us)) for ds, us in zip(ds_ts, us_ts)]
    if heur == "HM_MAX":
        lowest = torch.tensor(-float("inf"), dtype=hms_ts[0].dtype, device=hms_ts[0].device)
        return torch.stack([torch.where(u[:, None, None, None], h, lowest) for h, u in zip(hms_ts, use)]).amax(0)
    acc = torch.zeros_like(hms_ts[0])
    for h, u in zip(hms_ts, use):
        acc = acc + torch.where(u[:, None, None, None], h, torch.zeros_like(h))
    count = torch.stack(use).sum(dim=0).to(acc.dtype)
    return acc / count[:, None, None, None]


class Augmentation:
    """``im_detect_all`` with TEST.*_AUG for a ``Detector`` (its model, device and parameters; the
    ``TEST.*_AUG`` nodes are read here, once): the stage (``rcnn.inference.stages``) of any family
    with test-time augmentation, one image at a time."""

    one_image_at_a_time = True

    def __init__(self, detector) -> None:
        cfg = detector.cfg
        check_cfg(cfg)
        self.det = detector
        self.blob_stride = cfg.FPN.COARSEST_STRIDE
        self.bbox_aug, self.mask_aug, self.kps_aug = cfg.TEST.BBOX_AUG, cfg.TEST.MASK_AUG, cfg.TEST.KPS_AUG
        self.kp_perm = torch.from_numpy(keypoint_flip_permutation(COCO_KEYPOINT_NAMES))

    def _prepare(self, im: np.ndarray, view: View) -> PreparedImage:
        return prepare(view.image(im), view.scale, view.max_size, self.det.pixel_means)

    def _features(self, p: PreparedImage) -> tuple[list[Tensor], ImInfo]:
        dev = self.det.device
        blob = torch.from_numpy(images_to_blob([p.data], self.blob_stride)).to(dev)
        scale32 = torch.tensor([p.scale], dtype=torch.float32, device=dev)
        return self.det.model.features(blob), ImInfo.of_blob(blob, scale32)

    def _boxes(self, p: PreparedImage) -> tuple[Tensor, Tensor, list[Tensor]]:
        """``im_detect_bbox``: per-RoI class scores and clipped class boxes of one prepared image."""
        model = self.det.model
        feats, im_info = self._features(p)
        rois, _ = model.proposals(feats, im_info, self.det.params.proposals)
        cls_logits, deltas = model.box_outputs(feats, rois)
        scores = torch.softmax(cls_logits, dim=1)
        boxes = rois[:, 1:5] / im_info.scale[0]
        pred = class_boxes(self.det.params.box_decode, boxes, deltas, scores.shape[1], float(p.orig_height),
                           float(p.orig_width))
        return scores, pred, feats

    def __call__(self, batch: Sequence[PreparedImage]) -> DeviceOutputs:
        """Detections of the one image of ``batch``, prepared by ``Detector.prepare`` (which keeps its
        source image)."""
        (p,) = batch
        prm, model, dev = self.det.params, self.det.model, self.det.device
        im, width = p.source, p.orig_width
        if im is None:
            raise AugmentationError("test-time augmentation needs the source image: prepare with Detector.prepare")
        scale, max_size = prm.scale, prm.max_size
        with torch.no_grad():
            scores, pred, feats = self._boxes(p)          # identity: Detectron runs it last, same result
            if self.bbox_aug.ENABLED:
                scores_ts, boxes_ts = [], []
                for view in box_views(self.bbox_aug, scale, max_size)[:-1]:
                    s, b, _ = self._boxes(self._prepare(im, view))
                    scores_ts.append(s)
                    boxes_ts.append(view.from_view(b, width))
                scores, pred = combine_boxes(scores_ts + [scores], boxes_ts + [pred],
                                             self.bbox_aug.SCORE_HEUR, self.bbox_aug.COORD_HEUR)
            image_index = torch.zeros(len(scores), dtype=torch.long, device=dev)
            r = prm.box_results
            dets = box_results_with_nms_and_limit(scores, pred, image_index, 1, r.score_thresh, r.nms,
                                                  r.detections_per_im, r.variants)
            out = DeviceOutputs([p], dets.boxes.cpu().numpy(), dets.scores.cpu().numpy(),
                                dets.classes.cpu().numpy(), dets.offsets)
            if len(dets.scores) == 0:
                return out
            identity = (p, feats)
            if prm.mask is not None:
                channel = dets.classes if prm.mask.cls_specific else torch.zeros_like(dets.classes)
                rows = torch.arange(len(channel), device=dev)

                def masks(feats, rois):
                    return torch.sigmoid(model.mask_logits(feats, rois)[rows, channel])
                aug = self.mask_aug
                probs = self._head(im, dets.boxes, aug, identity, masks, lambda x: x.flip(-1))
                merged = combine_masks([x for x, _ in probs], aug.HEUR) if aug.ENABLED else probs[0][0]
                out.mask_probs = merged.cpu().numpy()
            if prm.keypoints is not None:
                aug = self.kps_aug
                perm = self.kp_perm.to(dev)
                hms = self._head(im, dets.boxes, aug, identity, model.keypoint_logits,
                                 lambda x: x[:, perm].flip(-1))
                merged = (combine_heatmaps([h for h, _ in hms], [v.scale < scale for _, v in hms],
                                           [v.scale > scale for _, v in hms], dets.boxes, aug.HEUR,
                                           aug.SCALE_SIZE_DEP, aug.AREA_TH) if aug.ENABLED else hms[0][0])
                out.heatmaps = merged.cpu().numpy()
        return out

    def _head(self, im, boxes: Tensor, aug, identity, head, unflip) -> list[tuple[Tensor, View]]:
        """One head's outputs for the final boxes in every view of ``aug`` (the identity only when off)."""
        views = head_views(aug, self.det.params.scale, self.det.params.max_size)
        zeros = torch.zeros(len(boxes), dtype=torch.long, device=boxes.device)
        out = []
        for view in views if aug.ENABLED else views[:1]:
            if view == views[0]:
                p, feats = identity
            else:
                p = self._prepare(im, view)
                feats = self._features(p)[0]
            y = head(feats, rois_for_heads(view.to_view(boxes, im.shape[1]), zeros, [p.scale]))
            out.append((unflip(y) if view.hflip else y, view))
        return out
