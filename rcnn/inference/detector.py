"""Batched inference with Detectron's test-time arithmetic (``core/test.py::im_detect_all``).

Images are prepared with OpenCV, grouped by padded blob size and run in
batches: a batch only holds images of the same blob size, because padding an
image further than Detectron does changes the features near its border and
the RPN's clipping window. Everything up to the final detections runs on the
model's device; only mask pasting and keypoint decoding run on the host with
OpenCV, because their exact arithmetic is OpenCV's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from rcnn.data.preprocess import PreparedImage, images_to_blob, prepare
from rcnn.inference.keypoints import heatmaps_to_keypoints
from rcnn.inference.masks import paste_and_encode
from rcnn.inference.postprocess import box_results_with_nms_and_limit
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


def rois_for_heads(boxes: Tensor, image_index: Tensor, scales: Sequence[float]) -> Tensor:
    """Mask/keypoint RoIs ``[image, float32(float64(box) * im_scale)]`` (``_get_rois_blob``).

    They are made from the final original-image boxes, like Detectron's, not
    from the scaled RoIs (reference §4.14).
    """
    scale64 = torch.tensor(scales, dtype=torch.float64, device=boxes.device)[image_index, None]
    scaled = (boxes.to(torch.float64) * scale64).to(torch.float32)
    return torch.cat((image_index[:, None].to(torch.float32), scaled), dim=1)


def _batches(prepared: Sequence[PreparedImage], batch_size: int) -> Iterable[list[int]]:
    """Indices of images grouped by blob size, in input order within a group."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, p in enumerate(prepared):
        groups.setdefault(p.blob_shape, []).append(i)
    for idx in groups.values():
        for s in range(0, len(idx), batch_size):
            yield idx[s:s + batch_size]


class Detector:
    """Runs a ``GeneralizedRCNN`` on BGR uint8 images and post-processes like Detectron."""

    def __init__(self, model: GeneralizedRCNN, cfg, device: str | torch.device = "cpu",
                 batch_size: int = 1) -> None:
        self.model = model.eval().to(device)
        self.cfg = cfg
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.proposal_params = ProposalParams.from_cfg(cfg, train=False)
        self.pixel_means = np.array(cfg.PIXEL_MEANS, dtype=np.float64).reshape(1, 1, 3)

    def prepare(self, im: np.ndarray) -> PreparedImage:
        return prepare(im, self.cfg.TEST.SCALE, self.cfg.TEST.MAX_SIZE, self.pixel_means)

    def __call__(self, images: Sequence[np.ndarray]) -> list[ImageDetections]:
        return self.run_prepared([self.prepare(im) for im in images])

    @torch.no_grad()
    def run_prepared(self, prepared: Sequence[PreparedImage]) -> list[ImageDetections]:
        """Detections of prepared images, in their order (batched by blob size)."""
        results: list[ImageDetections | None] = [None] * len(prepared)
        for idx in _batches(prepared, self.batch_size):
            for i, det in zip(idx, self.detect_prepared([prepared[i] for i in idx])):
                results[i] = det
        return results  # type: ignore[return-value]

    @torch.no_grad()
    def detect_prepared(self, batch: Sequence[PreparedImage]) -> list[ImageDetections]:
        """One forward pass over images that share a blob size."""
        cfg, dev = self.cfg, self.device
        blob = torch.from_numpy(images_to_blob([p.data for p in batch], cfg.FPN.COARSEST_STRIDE)).to(dev)
        scales32 = torch.tensor([p.scale for p in batch], dtype=torch.float32, device=dev)
        im_info = torch.stack((torch.full_like(scales32, blob.shape[2]), torch.full_like(scales32, blob.shape[3]),
                               scales32), dim=1)
        feats = self.model.features(blob)
        rois, _ = self.model.proposals(feats, im_info, self.proposal_params)
        cls_logits, deltas = self.model.box_outputs(feats, rois)
        scores = torch.softmax(cls_logits, dim=1)

        image_index = rois[:, 0].to(torch.int64)
        boxes = rois[:, 1:5] / scales32[image_index, None]   # original-image coordinates
        num_classes = scores.shape[1]
        if cfg.TEST.BBOX_REG:
            if cfg.MODEL.CLS_AGNOSTIC_BBOX_REG:
                deltas = deltas[:, -4:]
            pred = box_ops.decode(boxes, deltas, cfg.MODEL.BBOX_REG_WEIGHTS, cfg.BBOX_XFORM_CLIP)
            heights = torch.tensor([p.orig_height for p in batch], dtype=torch.float32, device=dev)
            widths = torch.tensor([p.orig_width for p in batch], dtype=torch.float32, device=dev)
            pred = box_ops.clip_tiled(pred, heights[image_index, None], widths[image_index, None])
            if cfg.MODEL.CLS_AGNOSTIC_BBOX_REG:
                pred = pred.repeat(1, num_classes)
        else:
            pred = boxes.repeat(1, num_classes)

        dets = box_results_with_nms_and_limit(scores, pred, image_index, len(batch), cfg.TEST.SCORE_THRESH,
                                              cfg.TEST.NMS, cfg.TEST.DETECTIONS_PER_IM)
        det_image = torch.repeat_interleave(torch.arange(len(batch), device=dev),
                                            torch.tensor(np.diff(dets.offsets), device=dev))
        masks = keypoints = None
        if len(dets.scores) and (cfg.MODEL.MASK_ON or cfg.MODEL.KEYPOINTS_ON):
            head_rois = rois_for_heads(dets.boxes, det_image, [p.scale for p in batch])
            if cfg.MODEL.MASK_ON:
                logits = self.model.mask_logits(feats, head_rois)
                channel = dets.classes if cfg.MRCNN.CLS_SPECIFIC_MASK else torch.zeros_like(dets.classes)
                masks = torch.sigmoid(logits[torch.arange(len(channel), device=dev), channel]).cpu().numpy()
            if cfg.MODEL.KEYPOINTS_ON:
                keypoints = self.model.keypoint_logits(feats, head_rois).cpu().numpy()

        boxes_np = dets.boxes.cpu().numpy()
        scores_np = dets.scores.cpu().numpy()
        classes_np = dets.classes.cpu().numpy()
        out = []
        for i, p in enumerate(batch):
            s = slice(dets.offsets[i], dets.offsets[i + 1])
            det = ImageDetections(p.orig_height, p.orig_width, boxes_np[s], scores_np[s], classes_np[s])
            if cfg.MODEL.MASK_ON:
                det.masks = (paste_and_encode(masks[s], boxes_np[s], p.orig_height, p.orig_width,
                                              cfg.MRCNN.THRESH_BINARIZE) if masks is not None else [])
            if cfg.MODEL.KEYPOINTS_ON:
                det.keypoints = (heatmaps_to_keypoints(keypoints[s], boxes_np[s], cfg.KRCNN.INFERENCE_MIN_SIZE)
                                 if keypoints is not None
                                 else np.zeros((0, 4, cfg.KRCNN.NUM_KEYPOINTS), np.float32))
            out.append(det)
        return out

