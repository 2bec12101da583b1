"""Drawing detections onto images (boxes, class names and scores, masks, keypoints).

Like Detectron's ``utils/vis.py``, detections under a score threshold are not
drawn and keypoints are drawn when their heatmap logit passes ``kp_thresh``.
Drawn with OpenCV so that no display or GUI backend is needed.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import pycocotools.mask as mask_util

from rcnn.data.datasets import COCO_KEYPOINT_NAMES
from rcnn.inference.detections import ImageDetections

# Limb pairs of the COCO person skeleton, by keypoint name.
_SKELETON_NAMES = (
    ("left_eye", "right_eye"), ("left_eye", "nose"), ("right_eye", "nose"), ("right_eye", "right_ear"),
    ("left_eye", "left_ear"), ("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"),
    ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"), ("right_hip", "right_knee"),
    ("right_knee", "right_ankle"), ("left_hip", "left_knee"), ("left_knee", "left_ankle"),
    ("right_shoulder", "left_shoulder"), ("right_hip", "left_hip"),
)


def _colour(i: int) -> tuple[int, int, int]:
    """A distinct, deterministic BGR colour per index."""
    hue = (i * 47) % 180
    bgr = cv2.cvtColor(np.uint8([[[hue, 200, 255]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])


def draw_detections(
    im: np.ndarray,
    dets: ImageDetections,
    class_names: Sequence[str],
    thresh: float = 0.7,
    kp_thresh: float = 2.0,
    keypoint_names: Sequence[str] = COCO_KEYPOINT_NAMES,
) -> np.ndarray:
    """A copy of BGR ``im`` with the detections scoring ``>= thresh`` drawn on it."""
    out = im.copy()
    keep = np.nonzero(dets.scores >= thresh)[0]
    # Largest first, so that small objects stay visible on top.
    areas = (dets.boxes[keep, 2] - dets.boxes[keep, 0]) * (dets.boxes[keep, 3] - dets.boxes[keep, 1])
    keep = keep[np.argsort(-areas, kind="stable")]
    index = {n: i for i, n in enumerate(keypoint_names)}
    skeleton = [(index[a], index[b]) for a, b in _SKELETON_NAMES if a in index and b in index]
    for n, i in enumerate(keep):
        colour = _colour(n)
        if dets.masks is not None:
            m = mask_util.decode(dets.masks[i]).astype(bool)
            out[m] = (0.6 * out[m] + 0.4 * np.array(colour)).astype(np.uint8)
        x1, y1, x2, y2 = (int(round(float(v))) for v in dets.boxes[i])
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, 2)
        cls = int(dets.classes[i])
        name = class_names[cls] if cls < len(class_names) else f"class {cls}"
        label = f"{name} {dets.scores[i]:.2f}"
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        y_text = max(y1, th + 4)
        cv2.rectangle(out, (x1, y_text - th - 4), (x1 + tw + 2, y_text), colour, -1)
        cv2.putText(out, label, (x1 + 1, y_text - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        if dets.keypoints is not None and i < len(dets.keypoints):
            kps = dets.keypoints[i]
            visible = kps[2] > kp_thresh
            pts = [(int(round(float(x))), int(round(float(y)))) for x, y in zip(kps[0], kps[1])]
            for a, b in skeleton:
                if visible[a] and visible[b]:
                    cv2.line(out, pts[a], pts[b], colour, 2, cv2.LINE_AA)
            for j, p in enumerate(pts):
                if visible[j]:
                    cv2.circle(out, p, 3, (255, 255, 255), -1, cv2.LINE_AA)
    return out
