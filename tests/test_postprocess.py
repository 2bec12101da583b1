"""Detection post-processing against ``core/test.py`` (box results, mask paste, keypoint decode)."""
import json

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from rcnn.inference.keypoints import heatmaps_to_keypoints
from rcnn.inference.masks import expand_boxes, paste_and_encode
from rcnn.inference.postprocess import box_results_with_nms_and_limit
from tests.golden import GOLDEN, npz


def _run(scores, boxes, image=None, num_images=1):
    if image is None:
        image = torch.zeros(len(scores), dtype=torch.long)
    return box_results_with_nms_and_limit(torch.from_numpy(scores), torch.from_numpy(boxes), image,
                                          num_images, 0.05, 0.5, 100)


@pytest.mark.parametrize("case,count", [("c1", 47), ("c2", 100)])
def test_box_results_bit_exact(case, count):
    g = npz("box_results")
    d = _run(g[f"{case}_scores"], g[f"{case}_boxes"])
    assert len(d.scores) == count
    np.testing.assert_array_equal(d.scores.numpy(), g[f"{case}_out_scores"])
    np.testing.assert_array_equal(d.boxes.numpy(), g[f"{case}_out_boxes"])
    np.testing.assert_array_equal(d.classes.numpy(), g[f"{case}_cls_idx"])


def test_cap_keeps_ties_like_detectron():
    g = npz("box_results")
    scores = g["c2_scores"].copy()
    row, col = g["c3_modified_row_col"]
    scores[row, col] = g["c3_modified_value"]
    assert len(_run(scores, g["c2_boxes"]).scores) == 101


def test_batched_images_equal_single():
    g = npz("box_results")
    scores = np.concatenate([g["c1_scores"], g["c2_scores"]])
    boxes = np.concatenate([g["c1_boxes"], g["c2_boxes"]])
    image = torch.tensor([0] * 1000 + [1] * 1000)
    d = _run(scores, boxes, image, 2)
    assert d.offsets == [0, 47, 147]
    np.testing.assert_array_equal(d.scores.numpy(), np.concatenate([g["c1_out_scores"], g["c2_out_scores"]]))
    np.testing.assert_array_equal(d.boxes.numpy(), np.concatenate([g["c1_out_boxes"], g["c2_out_boxes"]]))


def test_no_detection():
    d = _run(np.full((5, 81), 1 / 81, np.float32), np.zeros((5, 324), np.float32))
    assert len(d.scores) == 0 and d.offsets == [0, 0]


def _full_image_masks(probs, boxes, im_h, im_w):
    """Oracle: Detectron's segm_results paste, written out plainly on full-image masks."""
    ref_boxes = expand_boxes(boxes, 30.0 / 28).astype(np.int32)
    padded = np.zeros((30, 30), np.float32)
    out = np.zeros((len(probs), im_h, im_w), np.uint8)
    for i, (x0, y0, x1, y1) in enumerate(ref_boxes):
        padded[1:-1, 1:-1] = probs[i]
        m = (cv2.resize(padded, (max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1))) > 0.5).astype(np.uint8)
        xa, xb, ya, yb = max(x0, 0), min(x1 + 1, im_w), max(y0, 0), min(y1 + 1, im_h)
        if xa < xb and ya < yb:
            out[i, ya:yb, xa:xb] = m[ya - y0:yb - y0, xa - x0:xb - x0]
    return out


def _encode(masks):
    rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0))) if len(masks) else []
    return [{"size": r["size"], "counts": r["counts"].decode("ascii")} for r in rles]


def test_mask_paste_and_rle_bit_exact():
    g = npz("segm_results")
    n = len(g["cls_idx"])
    probs = g["masks"][np.arange(n), g["cls_idx"]]
    rles = paste_and_encode(probs, g["ref_boxes"], 427, 640)
    masks = mask_util.decode(rles).transpose(2, 0, 1)
    np.testing.assert_array_equal(masks, np.unpackbits(g["im_masks_packed"], axis=-1, count=640))
    np.testing.assert_array_equal(_full_image_masks(probs, g["ref_boxes"], 427, 640), masks)
    assert [r["counts"] for r in rles] == list(g["rle_counts"])
    assert all(list(r["size"]) == [427, 640] for r in rles)
    ref = json.loads((GOLDEN / "segm_results_rle.json").read_text())
    assert [r["counts"] for r in rles] == [r["counts"] for r in ref]


def test_paste_and_encode_equals_encoding_full_masks():
    """Run lengths read off each pasted crop give the strings of encoding full-image masks."""
    rng = np.random.default_rng(0)
    for h, w in [(48, 64), (37, 23), (5, 3)]:
        probs = rng.random((200, 28, 28), dtype=np.float32)
        probs[::7] = 0.9                                  # solid masks
        x1, y1 = rng.uniform(-20, w, 200), rng.uniform(-20, h, 200)
        boxes = np.stack([x1, y1, x1 + rng.uniform(0, 2 * w, 200), y1 + rng.uniform(0, 2 * h, 200)], 1)
        boxes[::5, 1], boxes[::5, 3] = -10, h + 10        # full height: runs cross columns
        boxes[::11, 0], boxes[::11, 2] = -10, w + 10      # to the last pixel
        boxes = boxes.astype(np.float32)
        assert paste_and_encode(probs, boxes, h, w) == _encode(_full_image_masks(probs, boxes, h, w))
    assert paste_and_encode(np.zeros((0, 28, 28), np.float32), np.zeros((0, 4), np.float32), 5, 5) == []


def test_keypoint_decode():
    g = npz("keypoints")
    out = heatmaps_to_keypoints(g["heatmaps"], g["rois"])
    ref = g["keypoints_out"]
    # x, y and the logit are bit-exact; the spatial-softmax probability is NumPy's
    # float32 exp-and-sum, whose last bits changed between NumPy 1.26 (fixture) and 2.x.
    np.testing.assert_array_equal(out[:, :3], ref[:, :3])
    np.testing.assert_allclose(out[:, 3], ref[:, 3], rtol=4e-7, atol=0)  # a few ulps
