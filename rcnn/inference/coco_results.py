"""COCO result records exactly as Detectron writes them (``datasets/json_dataset_evaluator.py``).

Records are ordered by class, then by image id, then by detection order; boxes
are ``[x1, y1, x2 - x1 + 1, y2 - y1 + 1]`` computed in float64 from the float32
detections; scores are the float32 scores widened to float64; keypoints are
``[x, y, 1] * J`` and score with the box score (``KRCNN.KEYPOINT_CONFIDENCE: bbox``)
or the float32 mean of the logit/prob rows.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rcnn.inference.detections import ImageDetections

_KP_SCORE_ROW = {"logit": 2, "prob": 3}


def coco_records(
    results: Sequence[tuple[int, ImageDetections]],
    category_ids: Sequence[int],
    keypoint_confidence: str = "bbox",
    person_index: int = 1,
) -> dict[str, list[dict]]:
    """Result records by iou type (``bbox``, and ``segm``/``keypoints`` when present).

    Args:
        results: ``(image_id, detections)`` pairs, any order.
        category_ids: COCO category id of each contiguous class index (index 0 unused).
    """
    if keypoint_confidence not in ("bbox", *_KP_SCORE_ROW):
        raise ValueError('KRCNN.KEYPOINT_CONFIDENCE must be "logit", "prob", or "bbox"')
    results = sorted(results, key=lambda r: r[0])
    has_masks = any(d.masks is not None for _, d in results)
    has_kps = any(d.keypoints is not None for _, d in results)
    rows = [(int(c), rank, k) for rank, (_, d) in enumerate(results) for k, c in enumerate(d.classes)]
    rows.sort(key=lambda r: (r[0], r[1]))   # stable: detection order kept within (class, image)

    out: dict[str, list[dict]] = {"bbox": []}
    if has_masks:
        out["segm"] = []
    if has_kps:
        out["keypoints"] = []
    for cls, rank, k in rows:
        image_id, d = results[rank]
        cat = int(category_ids[cls])
        box = d.boxes[k].astype(np.float64)
        score = float(np.float64(d.scores[k]))
        out["bbox"].append({"image_id": image_id, "category_id": cat,
                            "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0] + 1),
                                     float(box[3] - box[1] + 1)],
                            "score": score})
        if has_masks:
            out["segm"].append({"image_id": image_id, "category_id": cat, "segmentation": d.masks[k],
                                "score": score})
        if has_kps and cls == person_index:
            kps = d.keypoints[k]
            xy = []
            for j in range(kps.shape[1]):
                xy += [float(kps[0, j]), float(kps[1, j]), 1]
            if keypoint_confidence == "bbox":
                kp_score = score
            else:
                total = np.float32(0)
                for v in kps[_KP_SCORE_ROW[keypoint_confidence]]:
                    total += v
                kp_score = float(total / np.float32(kps.shape[1]))
            out["keypoints"].append({"image_id": image_id, "category_id": cat, "keypoints": xy, "score": kp_score})
    return out
