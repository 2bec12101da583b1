"""``ImageDetections``, one image's final detections, and its JSON record.

The record is what ``tools/test_net.py`` appends per image to its partial-results file
(``rcnn.engine.test_engine``) so an interrupted run resumes where it stopped; a record
read back gives the same float32 / int64 arrays (JSON keeps float32 values exactly).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np


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


def detections_to_line(image_id: int, d: ImageDetections) -> str:
    """One JSON line (newline-terminated) holding ``image_id`` and ``d``."""
    rec = {"image_id": image_id, "height": d.height, "width": d.width,
           "boxes": d.boxes.tolist(), "scores": d.scores.tolist(), "classes": d.classes.tolist()}
    if d.masks is not None:
        rec["masks"] = d.masks
    if d.keypoints is not None:
        rec["keypoints"] = d.keypoints.tolist()
    return json.dumps(rec) + "\n"


def detections_from_record(rec: dict) -> tuple[int, ImageDetections]:
    """``(image_id, detections)`` of a parsed ``detections_to_line`` record."""
    n = len(rec["scores"])
    d = ImageDetections(rec["height"], rec["width"], np.array(rec["boxes"], np.float32).reshape(n, 4),
                        np.array(rec["scores"], np.float32), np.array(rec["classes"], np.int64))
    if "masks" in rec:
        d.masks = rec["masks"]
    if "keypoints" in rec:
        d.keypoints = np.array(rec["keypoints"], np.float32).reshape(n, 4, -1)
    return rec["image_id"], d
