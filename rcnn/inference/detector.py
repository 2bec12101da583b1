"""Batched inference with Detectron's test-time arithmetic (``core/test.py::im_detect_all``).

Images are prepared with OpenCV, grouped by padded blob size and run in
batches: a batch only holds images of the same blob size, because padding an
image further than Detectron does changes the features near its border and
the RPN's clipping window. Everything up to the final detections runs on the
model's device, in the model family's stage (``rcnn.inference.stages``); only
mask pasting and keypoint decoding run on the host with OpenCV, because their
exact arithmetic is OpenCV's (``fast=True`` does them on the device instead,
within float rounding of OpenCV: ``fast_postprocess``). The config is read once,
into ``DetectorParams`` (``rcnn.inference.params``); batches read only those.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from rcnn.data.preprocess import COARSEST_STRIDE, PreparedImage, padded_shape, prepare
from rcnn.data.proposal_file import image_proposals
from rcnn.inference.detections import ImageDetections
from rcnn.inference.keypoints import heatmaps_to_keypoints
from rcnn.inference.masks import paste_and_encode
from rcnn.inference.params import DetectorParams
from rcnn.inference.stages import DeviceOutputs, class_boxes, rois_for_heads, select_stage
from rcnn.modeling.generalized_rcnn import GeneralizedRCNN
from rcnn.modeling.proposals import ProposalParams

__all__ = ["DeviceOutputs", "Detector", "ImageDetections", "class_boxes", "rois_for_heads"]


def _batches(prepared: Sequence[PreparedImage], batch_size: int, stride: int = COARSEST_STRIDE) -> Iterable[list[int]]:
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
        self.stage = select_stage(self)   # the model family's device part (rcnn.inference.stages)

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
        if self.params.augment:
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
    def forward(self, prepared: Sequence[PreparedImage]) -> list[tuple[list[int], DeviceOutputs]]:
        """The device part for prepared images: one forward pass per batch of equal blob size.

        ``finish`` does the host part; keeping them apart lets a caller overlap the host
        work of one batch with the next batch's forward pass (``rcnn.engine.test_engine``).
        """
        if self.stage.one_image_at_a_time:  # TEST.*_AUG (rcnn.inference.test_time_aug)
            return [([i], self.stage([p])) for i, p in enumerate(prepared)]
        return [(idx, self.stage([prepared[i] for i in idx]))
                for idx in _batches(prepared, self.batch_size, self.blob_stride)]

    def finish(self, count: int, outputs: list[tuple[list[int], DeviceOutputs]]) -> list[ImageDetections]:
        """The host part (mask paste, keypoint decode with OpenCV), in input order; thread-safe."""
        results: list[ImageDetections | None] = [None] * count
        for idx, out in outputs:
            for i, det in zip(idx, self._finish_batch(out)):
                results[i] = det
        return results  # type: ignore[return-value]

    def _finish_batch(self, out: DeviceOutputs) -> list[ImageDetections]:
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
