"""Batched inference with Detectron's test-time arithmetic (``core/test.py::im_detect_all``).

Images are prepared with OpenCV, grouped by padded blob size and run in
batches: a batch only holds images of the same blob size, because padding an
image further than Detectron does changes the features near its border and
the RPN's clipping window. Everything up to the final detections runs on the
model's device; only mask pasting and keypoint decoding run on the host with
OpenCV, because their exact arithmetic is OpenCV's (``fast=True`` does them on the
device instead, within float rounding of OpenCV: ``fast_postprocess``). The config is
read once, into ``DetectorParams`` (``rcnn.inference.params``); batches read only those.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from rcnn.data.im_info import ImInfo
from rcnn.data.preprocess import PreparedImage, images_to_blob, padded_shape, prepare
from rcnn.inference.fast_postprocess import heatmaps_to_keypoints_fast, paste_and_encode_fast
from rcnn.inference.keypoints import heatmaps_to_keypoints
from rcnn.inference.masks import paste_and_encode
from rcnn.inference.params import BoxDecodeParams, DetectorParams
from rcnn.inference.postprocess import box_results_with_nms_and_limit
from rcnn.inference.precomputed import batch_proposals, dedup_rois
from rcnn.inference.retinanet import retinanet_detections
from rcnn.data.proposal_file import image_proposals
from rcnn.modeling.generalized_rcnn import GeneralizedRCNN
from rcnn.modeling.proposals import ProposalParams
from rcnn.ops import boxes as box_ops



@dataclass
class ImageDetections:
    """Detections of one image, in Detectron's order (by class, then RoI order)."""

    height: int
    width: int
    boxes: np.ndarray                      # (N, 4) float32 [x1, y1, x2, y2], original pixels
    scores: np.ndarray                     # (N,) float32
    classes: np.ndarray                    # (N,) int64 contiguous class index (1..K-1)
    masks: list[dict] | None = None        # N COCO RLEs (counts as str)
    keypoints: np.ndarray | None = None    # (N, 4, J) float32 rows (x, y, logit, prob)

    def __len__(self) -> int:
        return len(self.scores)


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


def _batches(prepared: Sequence[PreparedImage], batch_size: int, stride: int = 32) -> Iterable[list[int]]:
    """Indices of images grouped by blob size, in input order within a group."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, p in enumerate(prepared):
        groups.setdefault(padded_shape(p.data.shape[0], p.data.shape[1], stride), []).append(i)
    for idx in groups.values():
        for s in range(0, len(idx), batch_size):
            yield idx[s:s + batch_size]


class Detector:
    """Runs a ``GeneralizedRCNN`` on BGR uint8 images and post-processes like Detectron."""

    def __init__(self, model: GeneralizedRCNN, cfg, device: str | torch.device = "cpu",
                 batch_size: int = 1, fast: bool = False) -> None:
        self.model = model.eval().to(device)
        self.fast = fast   # mask paste / keypoint decode on the device (rcnn.inference.fast_postprocess)
        self.cfg = cfg     # kept for test-time augmentation's own nodes and for callers; batches read params
        self.params = DetectorParams.from_cfg(cfg)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.pixel_means = np.array(self.params.pixel_means, dtype=np.float64).reshape(1, 1, 3)
        self.augmented = None
        if self.params.augment:
            # TEST.*_AUG (imported here: that module builds on this one)
            from rcnn.inference.test_time_aug import Augmentation
            self.augmented = Augmentation(self)

    @property
    def proposal_params(self) -> ProposalParams:
        return self.params.proposals

    @property
    def blob_stride(self) -> int:
        return self.params.blob_stride

    def prepare(self, im: np.ndarray, proposals: np.ndarray | None = None) -> PreparedImage:
        """``proposals``: the image's (N, 4) boxes from a proposal file, for models that need
        them (``TEST.PRECOMPUTED_PROPOSALS``); kept as Detectron's roidb keeps them."""
        p = prepare(im, self.params.scale, self.params.max_size, self.pixel_means)
        if self.params.precomputed_proposals:
            if proposals is None:
                raise ValueError("this model runs on precomputed proposals (MODEL.FASTER_RCNN False): pass them")
            p.proposals = image_proposals(proposals, im.shape[0], im.shape[1], limit=self.params.proposal_limit)
        if self.augmented is not None:
            p.source = im
        return p

    def __call__(self, images: Sequence[np.ndarray],
                 proposals: Sequence[np.ndarray] | None = None) -> list[ImageDetections]:
        """Detections (RPN-only models: proposals, class 0) of BGR images."""
        props = proposals if proposals is not None else [None] * len(images)
        return self.run_prepared([self.prepare(im, p) for im, p in zip(images, props)])

    def run_prepared(self, prepared: Sequence[PreparedImage]) -> list[ImageDetections]:
        """Detections of prepared images, in their order (batched by blob size)."""
        return self.finish(len(prepared), self.forward(prepared))

    @torch.no_grad()
    def forward(self, prepared: Sequence[PreparedImage]) -> list[tuple[list[int], "DeviceOutputs"]]:
        """The device part for prepared images: one forward pass per batch of equal blob size.

        ``finish`` does the host part; keeping them apart lets a caller overlap the host
        work of one batch with the next batch's forward pass (``rcnn.engine.test_engine``).
        """
        if self.augmented is not None:  # TEST.*_AUG: one image at a time (rcnn.inference.test_time_aug)
            return [([i], self.augmented(p)) for i, p in enumerate(prepared)]
        return [(idx, self._forward_batch([prepared[i] for i in idx]))
                for idx in _batches(prepared, self.batch_size, self.blob_stride)]

    def finish(self, count: int, outputs: list[tuple[list[int], "DeviceOutputs"]]) -> list[ImageDetections]:
        """The host part (mask paste, keypoint decode with OpenCV), in input order; thread-safe."""
        results: list[ImageDetections | None] = [None] * count
        for idx, out in outputs:
            for i, det in zip(idx, self._finish_batch(out)):
                results[i] = det
        return results  # type: ignore[return-value]

    def _forward_batch(self, batch: Sequence[PreparedImage]) -> "DeviceOutputs":
        prm, dev = self.params, self.device
        blob = torch.from_numpy(images_to_blob([p.data for p in batch], prm.blob_stride)).to(dev)
        if prm.retinanet is not None:   # core/test_retinanet.py: no proposals, no RoI heads
            dets = retinanet_detections(self.model, blob, batch, prm.retinanet)
            return DeviceOutputs(list(batch), dets.boxes.cpu().numpy(), dets.scores.cpu().numpy(),
                                 dets.classes.cpu().numpy(), dets.offsets)
        scales32 = torch.tensor([p.scale for p in batch], dtype=torch.float32, device=dev)
        im_info = ImInfo.of_blob(blob, scales32)
        feats = self.model.features(blob)
        if prm.rpn_only:
            return self._proposal_outputs(batch, *self.model.proposals(feats, im_info, prm.proposals), scales32)
        if prm.precomputed_proposals:   # rcnn.inference.precomputed
            boxes, image_index = batch_proposals([p.proposals for p in batch], dev)
            rois = rois_for_heads(boxes, image_index, [p.scale for p in batch])
            first, inverse = dedup_rois(rois, prm.dedup_boxes)
            cls_logits, deltas = (t[inverse] for t in self.model.box_outputs(feats, rois[first]))
            boxes = boxes[first][inverse]
        else:
            rois, _ = self.model.proposals(feats, im_info, prm.proposals)
            cls_logits, deltas = self.model.box_outputs(feats, rois)
        scores = torch.softmax(cls_logits, dim=1)

        image_index = rois[:, 0].to(torch.int64)
        if not prm.precomputed_proposals:
            boxes = rois[:, 1:5] / scales32[image_index, None]   # original-image coordinates
        heights = torch.tensor([p.orig_height for p in batch], dtype=torch.float32, device=dev)
        widths = torch.tensor([p.orig_width for p in batch], dtype=torch.float32, device=dev)
        pred = class_boxes(prm.box_decode, boxes, deltas, scores.shape[1], heights[image_index, None],
                           widths[image_index, None])

        r = prm.box_results
        dets = box_results_with_nms_and_limit(scores, pred, image_index, len(batch), r.score_thresh, r.nms,
                                              r.detections_per_im, r.variants)
        out = DeviceOutputs(list(batch), dets.boxes.cpu().numpy(), dets.scores.cpu().numpy(),
                            dets.classes.cpu().numpy(), dets.offsets)
        if len(dets.scores) and (prm.mask is not None or prm.keypoints is not None):
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

    @staticmethod
    def _proposal_outputs(batch: Sequence[PreparedImage], rois: Tensor, probs: Tensor,
                          scales32: Tensor) -> "DeviceOutputs":
        """RPN-only models: the collected proposals in original-image coordinates (rois / im_scale,
        ``core/rpn_generator.py::im_proposals``), class 0, in descending probability per image."""
        image_index = rois[:, 0].to(torch.int64)
        boxes = rois[:, 1:5] / scales32[image_index, None]
        counts = torch.bincount(image_index, minlength=len(batch)).cpu().tolist()
        return DeviceOutputs(list(batch), boxes.cpu().numpy(), probs.cpu().numpy(),
                             np.zeros(len(probs), np.int64), np.concatenate(([0], np.cumsum(counts))).tolist())

    def _finish_batch(self, out: "DeviceOutputs") -> list[ImageDetections]:
        mask, kps = self.params.mask, self.params.keypoints
        results = []
        for i, p in enumerate(out.batch):
            s = slice(out.offsets[i], out.offsets[i + 1])
            det = ImageDetections(p.orig_height, p.orig_width, out.boxes[s], out.scores[s], out.classes[s])
            if mask is not None and out.masks is not None:
                det.masks = out.masks[i]
            elif mask is not None:
                m = mask.resolution
                probs = out.mask_probs[s] if out.mask_probs is not None else np.zeros((0, m, m), np.float32)
                det.masks = paste_and_encode(probs, out.boxes[s], p.orig_height, p.orig_width, mask.thresh_binarize)
            if kps is not None and out.keypoints is not None:
                det.keypoints = out.keypoints[s]
            elif kps is not None:
                det.keypoints = (heatmaps_to_keypoints(out.heatmaps[s], out.boxes[s], kps.inference_min_size)
                                 if out.heatmaps is not None
                                 else np.zeros((0, 4, kps.num_keypoints), np.float32))
            results.append(det)
        return results

