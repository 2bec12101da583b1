"""The device part of ``core/test.py::im_detect_all`` for one batch, one stage per model family.

``Detector`` picks its stage once, at construction (``select_stage``: the only place that
branches on the family), then calls it on each batch of images of equal blob size:

* ``RetinaNetStage``: ``core/test_retinanet.py``, class and box heads on every anchor, no RoIs;
* ``ProposalStage``: ``MODEL.RPN_ONLY`` (``core/rpn_generator.py``), the proposals are the output;
* ``RCNNStage``: RoIs, box head, ``box_results_with_nms_and_limit``, then the mask and
  keypoint heads on the final boxes; the RoIs come from the RPN (``rpn_rois``) or, with
  ``TEST.PRECOMPUTED_PROPOSALS``, from a proposal file (``precomputed_rois``);
* ``rcnn.inference.test_time_aug.Augmentation``: ``TEST.*_AUG``, one image at a time.

Each reads only ``DetectorParams`` (``rcnn.inference.params``) and returns a
``DeviceOutputs``, which ``Detector`` finishes on the host.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import numpy as np
import torch
from torch import Tensor

from rcnn.data.im_info import ImInfo
from rcnn.data.preprocess import PreparedImage, images_to_blob
from rcnn.inference.fast_postprocess import heatmaps_to_keypoints_fast, paste_and_encode_fast
from rcnn.inference.params import BoxDecodeParams, DetectorParams
from rcnn.inference.postprocess import box_results_with_nms_and_limit
from rcnn.inference.precomputed import batch_proposals, dedup_rois
from rcnn.inference.retinanet import RetinaNetTestParams, retinanet_detections
from rcnn.modeling.proposals import ProposalParams
from rcnn.ops import boxes as box_ops


@dataclass
class DeviceOutputs:
    """What the device part of a batch leaves for the host part (all NumPy)."""

    batch: list[PreparedImage]
    boxes: np.ndarray                     # (N, 4) float32, rows of image i in offsets[i]:offsets[i+1]
    scores: np.ndarray
    classes: np.ndarray
    offsets: list[int]
    mask_probs: np.ndarray | None = None  # (N, M, M) probabilities of each detection's class
    heatmaps: np.ndarray | None = None    # (N, J, 56, 56) keypoint logits
    masks: list[list[dict]] | None = None  # fast mode: each image's RLEs, pasted on the device
    keypoints: np.ndarray | None = None   # fast mode: (N, 4, J) rows decoded on the device


class Stage(Protocol):
    """One family's device part: ``DeviceOutputs`` of a batch (of one image if ``one_image_at_a_time``)."""

    one_image_at_a_time: bool

    def __call__(self, batch: Sequence[PreparedImage]) -> DeviceOutputs: ...


def rois_for_heads(boxes: Tensor, image_index: Tensor, scales: Sequence[float]) -> Tensor:
    """Mask/keypoint RoIs ``[image, float32(float64(box) * im_scale)]`` (``_get_rois_blob``).

    They are made from the final original-image boxes, like Detectron's, not
    from the scaled RoIs (docs/detectron.md §4.14).
    """
    scale64 = torch.tensor(scales, dtype=torch.float64, device=boxes.device)[image_index, None]
    scaled = (boxes.to(torch.float64) * scale64).to(torch.float32)
    return torch.cat((image_index[:, None].to(torch.float32), scaled), dim=1)


def class_boxes(params: BoxDecodeParams, boxes: Tensor, deltas: Tensor, num_classes: int,
                heights: Tensor | float, widths: Tensor | float) -> Tensor:
    """``im_detect_bbox``: class-tiled (R, 4K) boxes of RoIs in original-image coordinates, decoded with
    ``bbox_pred`` (``TEST.BBOX_REG``) and clipped to the image (``heights``/``widths`` broadcast per RoI)."""
    if not params.bbox_reg:
        return boxes.repeat(1, num_classes)
    if params.cls_agnostic:
        deltas = deltas[:, -4:]
    pred = box_ops.decode(boxes, deltas, params.weights, params.xform_clip)
    pred = box_ops.clip_tiled(pred, heights, widths)
    return pred.repeat(1, num_classes) if params.cls_agnostic else pred


def _blob(batch: Sequence[PreparedImage], stride: int, device: torch.device) -> Tensor:
    return torch.from_numpy(images_to_blob([p.data for p in batch], stride)).to(device)


def _scales(batch: Sequence[PreparedImage], device: torch.device) -> Tensor:
    """(B,) float32 image scales (``im_info``'s third column)."""
    return torch.tensor([p.scale for p in batch], dtype=torch.float32, device=device)


def _box_outputs(dets, batch: Sequence[PreparedImage]) -> DeviceOutputs:
    return DeviceOutputs(list(batch), dets.boxes.cpu().numpy(), dets.scores.cpu().numpy(),
                         dets.classes.cpu().numpy(), dets.offsets)


class RetinaNetStage:
    """``core/test_retinanet.py``: no proposals, no RoI heads (``rcnn.inference.retinanet``)."""

    one_image_at_a_time = False

    def __init__(self, model, params: RetinaNetTestParams, blob_stride: int, device: torch.device) -> None:
        self.model, self.params, self.blob_stride, self.device = model, params, blob_stride, device

    def __call__(self, batch: Sequence[PreparedImage]) -> DeviceOutputs:
        blob = _blob(batch, self.blob_stride, self.device)
        return _box_outputs(retinanet_detections(self.model, blob, batch, self.params), batch)


class ProposalStage:
    """RPN-only models: the collected proposals in original-image coordinates (rois / im_scale,
    ``core/rpn_generator.py::im_proposals``), class 0, in descending probability per image."""

    one_image_at_a_time = False

    def __init__(self, model, params: ProposalParams, blob_stride: int, device: torch.device) -> None:
        self.model, self.params, self.blob_stride, self.device = model, params, blob_stride, device

    def __call__(self, batch: Sequence[PreparedImage]) -> DeviceOutputs:
        blob = _blob(batch, self.blob_stride, self.device)
        scales32 = _scales(batch, self.device)
        rois, probs = self.model.proposals(self.model.features(blob), ImInfo.of_blob(blob, scales32), self.params)
        image_index = rois[:, 0].to(torch.int64)
        boxes = rois[:, 1:5] / scales32[image_index, None]
        counts = torch.bincount(image_index, minlength=len(batch)).cpu().tolist()
        return DeviceOutputs(list(batch), boxes.cpu().numpy(), probs.cpu().numpy(),
                             np.zeros(len(probs), np.int64), np.concatenate(([0], np.cumsum(counts))).tolist())


RoISource = Callable[..., tuple[Tensor, Tensor, Tensor, Tensor]]
"""``rois(stage, feats, blob, batch, scales32)`` -> (rois (R, 5), original-image boxes (R, 4),
class logits (R, K), deltas (R, 4K)): where ``RCNNStage`` gets its RoIs and box-head outputs."""


def rpn_rois(stage: RCNNStage, feats: list[Tensor], blob: Tensor, batch: Sequence[PreparedImage],
             scales32: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """RoIs from the RPN (end-to-end models); boxes are ``rois / im_scale``."""
    rois, _ = stage.model.proposals(feats, ImInfo.of_blob(blob, scales32), stage.params.proposals)
    cls_logits, deltas = stage.model.box_outputs(feats, rois)
    boxes = rois[:, 1:5] / scales32[rois[:, 0].to(torch.int64), None]   # original-image coordinates
    return rois, boxes, cls_logits, deltas


def precomputed_rois(stage: RCNNStage, feats: list[Tensor], blob: Tensor, batch: Sequence[PreparedImage],
                     scales32: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """RoIs from each image's proposal-file boxes (``rcnn.inference.precomputed``), deduplicated
    by ``DEDUP_BOXES``; boxes are the proposals themselves."""
    proposals = [p.proposals for p in batch]
    if any(x is None for x in proposals):   # prepare() attaches them when the model reads a proposal file
        raise ValueError("a precomputed-proposal model was given an image without its proposals")
    boxes, image_index = batch_proposals(cast("list[np.ndarray]", proposals), stage.device)
    rois = rois_for_heads(boxes, image_index, [p.scale for p in batch])
    first, inverse = dedup_rois(rois, stage.params.dedup_boxes)
    cls_logits, deltas = (t[inverse] for t in stage.model.box_outputs(feats, rois[first]))
    return rois, boxes[first][inverse], cls_logits, deltas


class RCNNStage:
    """``im_detect_bbox`` + ``box_results_with_nms_and_limit`` + ``im_detect_mask`` / ``im_detect_keypoints``."""

    one_image_at_a_time = False

    def __init__(self, model, params: DetectorParams, device: torch.device, fast: bool, rois: RoISource) -> None:
        self.model, self.params, self.device, self.fast, self.rois = model, params, device, fast, rois

    def __call__(self, batch: Sequence[PreparedImage]) -> DeviceOutputs:
        prm, dev = self.params, self.device
        blob = _blob(batch, prm.blob_stride, dev)
        scales32 = _scales(batch, dev)
        feats = self.model.features(blob)
        rois, boxes, cls_logits, deltas = self.rois(self, feats, blob, batch, scales32)
        scores = torch.softmax(cls_logits, dim=1)

        image_index = rois[:, 0].to(torch.int64)
        heights = torch.tensor([p.orig_height for p in batch], dtype=torch.float32, device=dev)
        widths = torch.tensor([p.orig_width for p in batch], dtype=torch.float32, device=dev)
        pred = class_boxes(prm.box_decode, boxes, deltas, scores.shape[1], heights[image_index, None],
                           widths[image_index, None])

        r = prm.box_results
        dets = box_results_with_nms_and_limit(scores, pred, image_index, len(batch), r.score_thresh, r.nms,
                                              r.detections_per_im, r.variants)
        out = _box_outputs(dets, batch)
        if len(dets.scores) and (prm.mask is not None or prm.keypoints is not None):
            assert dets.image is not None   # box_results_with_nms_and_limit always sets it
            head_rois = rois_for_heads(dets.boxes, dets.image, [p.scale for p in batch])
            if prm.mask is not None:
                logits = self.model.mask_logits(feats, head_rois)
                channel = dets.classes if prm.mask.cls_specific else torch.zeros_like(dets.classes)
                probs = torch.sigmoid(logits[torch.arange(len(channel), device=dev), channel])
                if self.fast:
                    out.masks = [paste_and_encode_fast(probs[s:e], dets.boxes[s:e], p.orig_height, p.orig_width,
                                                       prm.mask.thresh_binarize)
                                 for p, s, e in zip(batch, dets.offsets, dets.offsets[1:])]
                else:
                    out.mask_probs = probs.cpu().numpy()
            if prm.keypoints is not None:
                heatmaps = self.model.keypoint_logits(feats, head_rois)
                if self.fast:
                    out.keypoints = heatmaps_to_keypoints_fast(heatmaps, dets.boxes,
                                                               prm.keypoints.inference_min_size).cpu().numpy()
                else:
                    out.heatmaps = heatmaps.cpu().numpy()
        return out


def select_stage(detector) -> Stage:
    """The stage of ``detector``'s model family (its ``model``, ``params``, ``device``, ``fast``)."""
    prm = detector.params
    if prm.augment:   # imported here: test_time_aug builds on this module
        from rcnn.inference.test_time_aug import Augmentation
        return Augmentation(detector)
    if prm.retinanet is not None:
        return RetinaNetStage(detector.model, prm.retinanet, prm.blob_stride, detector.device)
    if prm.rpn_only:
        return ProposalStage(detector.model, prm.proposals, prm.blob_stride, detector.device)
    return RCNNStage(detector.model, prm, detector.device, detector.fast,
                     precomputed_rois if prm.precomputed_proposals else rpn_rois)
