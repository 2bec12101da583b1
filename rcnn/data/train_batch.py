"""What the training data loader hands to the model: one minibatch of one process.

Ground truth stays in *original-image* coordinates, as in Detectron's roidb: the RPN
targets scale it by ``im_scale`` themselves, while RoI sampling, mask and keypoint
targets work in original coordinates and scale the sampled RoIs (docs/detectron.md §5.2-5.5).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from rcnn.data.im_info import ImInfo


@dataclass
class ImageTargets:
    """Ground truth of one (possibly flipped) image, like a Detectron roidb entry."""

    height: int                      # original image size
    width: int
    boxes: Tensor                    # (G, 4) float32 [x1, y1, x2, y2], +1 convention, original pixels
    classes: Tensor                  # (G,) int64 contiguous class index (1..K-1)
    is_crowd: Tensor                 # (G,) bool
    segms: list = field(default_factory=list)   # G entries: list of polygons [x0, y0, x1, ...] or an RLE dict
    keypoints: Tensor | None = None  # (G, 3, J) float32 rows (x, y, visibility), or None
    flipped: bool = False
    image_id: int = -1

    def to(self, device: torch.device | str) -> ImageTargets:
        kp = self.keypoints.to(device) if self.keypoints is not None else None
        return replace(self, boxes=self.boxes.to(device), classes=self.classes.to(device),
                       is_crowd=self.is_crowd.to(device), keypoints=kp)


@dataclass
class TrainBatch:
    """Images of one process's minibatch (``TRAIN.IMS_PER_BATCH``) and their ground truth."""

    blob: Tensor                     # (B, 3, H, W) float32, mean-subtracted, zero-padded to /32
    im_info: Tensor                  # (B, 3) float32 [scaled height, scaled width (unpadded), im_scale]
    targets: list[ImageTargets]

    @property
    def image_info(self) -> ImInfo:
        """``im_info`` as the unpadded scaled images' sizes (what training clips and labels with)."""
        return ImInfo.of_images(self.im_info)

    def to(self, device: torch.device | str) -> TrainBatch:
        return TrainBatch(self.blob.to(device, non_blocking=True), self.im_info.to(device),
                          [t.to(device) for t in self.targets])
