"""The opt-in device mask paste / keypoint decode against the exact OpenCV host path.

Tolerance: the fast path reproduces OpenCV's coefficients but not its float summation
order, so a pixel whose probability is within rounding of the 0.5 threshold may flip:
at most 1 pixel in 10^5 may differ and 98% of the RLEs must be identical; keypoint
positions are equal, the logit within 1e-5, the probability within 1e-6.
"""
from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from rcnn.inference.fast_postprocess import encode_masks, heatmaps_to_keypoints_fast, paste_and_encode_fast
from rcnn.inference.keypoints import heatmaps_to_keypoints
from rcnn.inference.masks import paste_and_encode
from tests.golden import npz


def _random_boxes(rng, n, h, w):
    x1, y1 = rng.uniform(-20, w, n), rng.uniform(-20, h, n)
    boxes = np.stack([x1, y1, x1 + rng.uniform(0, 2 * w, n), y1 + rng.uniform(0, 2 * h, n)], 1)
    boxes[::5, 1], boxes[::5, 3] = -10, h + 10      # full height
    boxes[::11, 0], boxes[::11, 2] = -10, w + 10    # to the last pixel
    return boxes.astype(np.float32)


def test_fast_paste_equals_detectron_golden_masks():
    g = npz("segm_results")
    probs = g["masks"][np.arange(len(g["cls_idx"])), g["cls_idx"]]
    fast = paste_and_encode_fast(torch.from_numpy(probs), torch.from_numpy(g["ref_boxes"]), 427, 640)
    assert [r["counts"] for r in fast] == list(g["rle_counts"])


@pytest.mark.parametrize("h,w", [(48, 64), (37, 23), (5, 3), (240, 320)])
def test_fast_paste_within_tolerance_of_exact(h, w):
    rng = np.random.default_rng(h)
    probs = rng.random((60, 28, 28), dtype=np.float32)
    probs[::7] = 0.9
    boxes = _random_boxes(rng, 60, h, w)
    exact = paste_and_encode(probs, boxes, h, w)
    fast = paste_and_encode_fast(torch.from_numpy(probs), torch.from_numpy(boxes), h, w)
    assert all(r["size"] == [h, w] for r in fast)
    assert sum(a == b for a, b in zip(exact, fast)) >= 0.98 * len(exact)
    differ = (mask_util.decode(exact) != mask_util.decode(fast)).sum()
    assert differ <= 1e-5 * h * w * len(exact)
    assert paste_and_encode_fast(torch.zeros(0, 28, 28), torch.zeros(0, 4), 5, 5) == []


def test_encode_masks_matches_pycocotools():
    rng = np.random.default_rng(1)
    masks = rng.random((6, 7, 5)) > 0.5
    masks[0], masks[1] = True, False
    ref = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    assert [r["counts"] for r in encode_masks(torch.from_numpy(masks))] == [r["counts"].decode() for r in ref]


def test_fast_keypoints_match_exact_decode():
    g = npz("keypoints")
    exact = heatmaps_to_keypoints(g["heatmaps"], g["rois"])
    fast = heatmaps_to_keypoints_fast(torch.from_numpy(g["heatmaps"]), torch.from_numpy(g["rois"])).numpy()
    np.testing.assert_array_equal(fast[:, :2], exact[:, :2])
    np.testing.assert_allclose(fast[:, 2], exact[:, 2], rtol=0, atol=1e-5)
    np.testing.assert_allclose(fast[:, 3], exact[:, 3], rtol=0, atol=1e-6)
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((12, 17, 56, 56)).astype(np.float32)
    rois = _random_boxes(rng, 12, 90, 120).clip(0)
    for min_size in (0, 64):
        exact = heatmaps_to_keypoints(maps, rois, min_size)
        fast = heatmaps_to_keypoints_fast(torch.from_numpy(maps), torch.from_numpy(rois), min_size).numpy()
        np.testing.assert_array_equal(fast[:, :2], exact[:, :2])
        np.testing.assert_allclose(fast[:, 2:], exact[:, 2:], rtol=0, atol=1e-5)
    assert heatmaps_to_keypoints_fast(torch.zeros(0, 17, 56, 56), torch.zeros(0, 4)).shape == (0, 4, 17)


@pytest.mark.parametrize("kind", ["mask", "keypoint"])
def test_detector_fast_mode_agrees_with_exact(kind):
    from rcnn.engine.benchmark import config, synthetic_images
    from rcnn.inference.detector import Detector
    from rcnn.modeling import build_model
    from rcnn.synthetic import calibrate

    images = synthetic_images(1, 64, 96)
    cfg = config(kind, 64, 96)
    model = build_model(cfg)
    calibrate(model, cfg, images[0])
    exact = Detector(model, cfg)(images)[0]
    fast = Detector(model, cfg, fast=True)(images)[0]
    assert len(exact) == len(fast) > 0
    np.testing.assert_array_equal(exact.boxes, fast.boxes)
    if kind == "mask":
        assert sum(a == b for a, b in zip(exact.masks, fast.masks)) >= 0.98 * len(exact)
    else:
        np.testing.assert_array_equal(exact.keypoints[:, :2], fast.keypoints[:, :2])
