"""COCO result records against the exact text of Detectron's json writers."""
import json

import numpy as np

from rcnn.inference.coco_results import coco_records
from rcnn.inference.detector import ImageDetections
from tests.golden import js, npz

IMAGE_IDS = [139, 785]


def _per_image(all_boxes):
    """Detectron's all_boxes[class][image] -> our per-image detections in class order."""
    dets = []
    for i in range(len(IMAGE_IDS)):
        rows, classes = [], []
        for cls in range(1, len(all_boxes)):
            for row in all_boxes[cls][i]:
                rows.append(row)
                classes.append(cls)
        a = np.array(rows, np.float32).reshape(-1, 5)
        dets.append(ImageDetections(427, 640, a[:, :4], a[:, 4], np.array(classes, np.int64)))
    return dets


def test_bbox_and_segm_records_are_byte_identical():
    g = js("json_records")
    dets = _per_image(g["bbox"]["all_boxes"])
    rles = npz("segm_results")["rle_counts"]
    # Which segm_results RLE belongs to which detection (from the fixture's provenance note).
    sources = {(139, 1): [0, 1], (785, 1): [2], (785, 2): [5], (139, 3): [9]}
    for image_id, d in zip(IMAGE_IDS, dets):
        d.masks = []
        for cls in d.classes:
            k = sources[(image_id, int(cls))].pop(0)
            d.masks.append({"size": [427, 640], "counts": str(rles[k])})
    out = coco_records(list(zip(IMAGE_IDS[::-1], dets[::-1])), [0] + g["bbox"]["cat_ids"])
    assert json.dumps(out["bbox"]) == g["bbox"]["json_text"]
    assert json.dumps(out["segm"]) == g["segm"]["json_text"]


def test_keypoint_records_are_byte_identical():
    g = js("json_records")["keypoints"]
    dets = _per_image(g["all_boxes"])
    kps = npz("keypoints")["keypoints_out"]
    dets[0].keypoints, dets[1].keypoints = kps[[0, 1]], kps[[2]]
    out = coco_records(list(zip(IMAGE_IDS, dets)), [0] + g["cat_ids"], g["keypoint_confidence"])
    assert json.dumps(out["keypoints"]) == g["json_text"]


def test_keypoint_score_from_logits_is_the_float32_mean():
    kps = np.zeros((1, 4, 17), np.float32)
    kps[0, 2] = np.linspace(0.1, 3.3, 17, dtype=np.float32)
    d = ImageDetections(10, 10, np.zeros((1, 4), np.float32), np.array([0.5], np.float32), np.array([1]), keypoints=kps)
    total = np.float32(0)
    for v in kps[0, 2]:
        total += v
    assert coco_records([(1, d)], [0, 1], "logit")["keypoints"][0]["score"] == float(total / np.float32(17))
