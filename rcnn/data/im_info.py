"""Detectron's ``im_info`` blob with named fields and the one distinction it hides.

Detectron's ``im_info`` rows are ``[height, width, im_scale]`` (float32), but the
height and width mean two different things:

* at test time (``core/test.py::_get_blobs``) they are the *padded* blob's size, so
  the RPN clips proposals to the padded blob;
* in training (``roi_data/minibatch.py::get_minibatch``) they are the *unpadded*
  scaled image's size, so RPN anchor targets ignore anchors that leave the image.

``ImInfo`` keeps the (B, 3) rows exactly as Detectron builds them (goldens compare
them bit for bit) and says which of the two they are.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ImInfo:
    """``rows``: (B, 3) float32 ``[height, width, im_scale]``; ``padded``: whether height and
    width are the padded blob's (test time) or the unpadded scaled image's (training)."""

    rows: Tensor
    padded: bool

    @classmethod
    def of_blob(cls, blob: Tensor, scales: Tensor) -> ImInfo:
        """Test time: the (B, 3, H, W) padded blob's size and the (B,) float32 image scales."""
        return cls(torch.stack((torch.full_like(scales, blob.shape[2]), torch.full_like(scales, blob.shape[3]),
                                scales), dim=1), padded=True)

    @classmethod
    def of_images(cls, rows: Tensor) -> ImInfo:
        """Training: rows ``[round(h * s), round(w * s), s]`` of the unpadded scaled images."""
        return cls(rows, padded=False)

    @property
    def height(self) -> Tensor:
        """(B,) clip height: padded blob (test) or scaled image (training)."""
        return self.rows[:, 0]

    @property
    def width(self) -> Tensor:
        """(B,) clip width: padded blob (test) or scaled image (training)."""
        return self.rows[:, 1]

    @property
    def scale(self) -> Tensor:
        """(B,) float32 ``im_scale``."""
        return self.rows[:, 2]

    @property
    def device(self) -> torch.device:
        return self.rows.device

    def __len__(self) -> int:
        return self.rows.shape[0]

    def to(self, device: torch.device | str) -> ImInfo:
        return ImInfo(self.rows.to(device), self.padded)
