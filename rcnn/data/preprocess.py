"""Test-time image preprocessing exactly as Detectron (``utils/blob.py``).

``cv2.imread`` (BGR, EXIF-rotated like OpenCV >= 3.2), mean subtraction in
float64 stored as float32, ``cv2.resize(fx=fy=scale, INTER_LINEAR)`` of the
*mean-subtracted float* image, then zero padding to a multiple of 32. PyTorch's
``interpolate`` maps pixels differently, hence OpenCV (docs/detectron.md §4.1).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from detectron_parity.errors import UserError
from rcnn.config import get_default_cfg

_DEFAULTS = get_default_cfg()
# Detectron's cfg.PIXEL_MEANS (BGR, shape (1, 1, 3)), float64 on purpose: see prepare_image.
PIXEL_MEANS = np.array(_DEFAULTS.PIXEL_MEANS, dtype=np.float64)
COARSEST_STRIDE = _DEFAULTS.FPN.COARSEST_STRIDE   # the blob padding of FPN models


class ImageReadError(UserError, OSError):
    """An image file is missing or cannot be decoded."""


def read_image(path: str | Path) -> np.ndarray:
    """BGR uint8 (H, W, 3), decoded by OpenCV like Detectron's ``cv2.imread``."""
    im = cv2.imread(str(path))
    if im is None:
        reason = "no such file" if not Path(path).exists() else "not a readable image"
        raise ImageReadError(f"cannot read image {path}: {reason}")
    return im


def compute_scale(height: int, width: int, target_size: int, max_size: int) -> float:
    """``target/short side``, unless the rounded long side would pass ``max_size``."""
    im_size_min = min(height, width)
    im_size_max = max(height, width)
    scale = float(target_size) / float(im_size_min)
    if np.round(scale * im_size_max) > max_size:
        scale = float(max_size) / float(im_size_max)
    return scale


def prepare_image(im: np.ndarray, target_size: int, max_size: int,
                  pixel_means: np.ndarray = PIXEL_MEANS) -> tuple[np.ndarray, float]:
    """Mean-subtracted, resized float32 (h, w, 3) image and its scale (``prep_im_for_blob``).

    ``float32 -= float64 array`` computes in float64 and rounds once to float32,
    which is what Detectron's in-place subtraction did.
    """
    out = im.astype(np.float32)
    np.subtract(out, pixel_means, out=out, casting="unsafe")
    scale = compute_scale(im.shape[0], im.shape[1], target_size, max_size)
    out = cv2.resize(out, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    return out, scale


def padded_shape(height: int, width: int, stride: int = COARSEST_STRIDE) -> tuple[int, int]:
    """Blob size after padding bottom/right to a multiple of ``stride``."""
    return int(np.ceil(height / float(stride)) * stride), int(np.ceil(width / float(stride)) * stride)


def images_to_blob(ims: Sequence[np.ndarray], stride: int = COARSEST_STRIDE) -> np.ndarray:
    """Stack prepared images into a zero-padded NCHW float32 blob (``im_list_to_blob``).

    The result is C-contiguous NCHW: a channels-last layout makes PyTorch pick
    other conv kernels and moves features in the last bits (docs/detectron.md §4.14).
    """
    max_h = max(im.shape[0] for im in ims)
    max_w = max(im.shape[1] for im in ims)
    h, w = padded_shape(max_h, max_w, stride)
    blob = np.zeros((len(ims), 3, h, w), dtype=np.float32)
    for i, im in enumerate(ims):
        blob[i, :, : im.shape[0], : im.shape[1]] = im.transpose(2, 0, 1)
    return blob


@dataclass
class PreparedImage:
    """One image ready for the network, with what post-processing needs."""

    data: np.ndarray          # (h, w, 3) float32, mean-subtracted and resized
    scale: float              # im_scale (Python float, as Detectron keeps it)
    orig_height: int
    orig_width: int
    proposals: np.ndarray | None = None   # (R, 4) float32 precomputed proposals, original pixels
    source: np.ndarray | None = None   # the BGR image itself, kept for test-time augmentation

    @property
    def blob_shape(self) -> tuple[int, int]:
        return padded_shape(self.data.shape[0], self.data.shape[1])


def prepare(im: np.ndarray, target_size: int, max_size: int,
            pixel_means: np.ndarray = PIXEL_MEANS) -> PreparedImage:
    data, scale = prepare_image(im, target_size, max_size, pixel_means)
    return PreparedImage(data, scale, im.shape[0], im.shape[1])
