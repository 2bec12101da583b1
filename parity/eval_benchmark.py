"""``evaluate`` with the faster-coco-eval backend against pycocotools on a large generated set.

Ground truth: ``images`` images of 480x640 with a few boxes each (polygon masks); results:
each ground-truth object seen several times with jittered boxes and masks, plus false
positives, random scores (seeded). Both backends score the same records in the same
process, in alternating pairs (:func:`detectron_parity.timing.ab_pairs`), and their stats must be
the same: they may differ in the last bit (float summation order, ~1e-16), more than
``STATS_TOLERANCE`` raises; the largest difference and the bitwise verdict are reported.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pycocotools.mask as mask_util

from detectron_parity.timing import ab_pairs
from parity.evaluate import evaluate

_H, _W = 480, 640
STATS_TOLERANCE = 1e-12


def _polygon(box: np.ndarray) -> list[float]:
    """An octagon inscribed in ``[x, y, w, h]``: a mask that is not its box."""
    x, y, w, h = box
    t = np.arange(8) * np.pi / 4 + np.pi / 8
    px, py = x + w / 2 + w / 2 * np.cos(t), y + h / 2 + h / 2 * np.sin(t)
    return np.stack([px, py], 1).ravel().round(2).tolist()


def generated_set(images: int, per_image: int = 8, seed: int = 0) -> tuple[dict, list[dict]]:
    """(ground-truth dataset, result records with ``bbox`` and ``segmentation``)."""
    rng = np.random.default_rng(seed)
    cats = [{"id": c, "name": f"c{c}", "supercategory": "x"} for c in range(1, 11)]
    gt: dict[str, Any] = {"images": [], "annotations": [], "categories": cats}
    dets: list[dict] = []
    for i in range(1, images + 1):
        gt["images"].append({"id": i, "height": _H, "width": _W, "file_name": f"{i}.jpg"})
        n = int(rng.integers(1, per_image + 1))
        wh = rng.uniform(8, 300, (n, 2))
        xy = rng.uniform(0, 1, (n, 2)) * (np.array([_W, _H]) - wh)
        for box, cat in zip(np.concatenate([xy, wh], 1), rng.integers(1, 11, n)):
            poly = _polygon(box)
            area = float(mask_util.area(mask_util.frPyObjects([poly], _H, _W))[0])
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i, "category_id": int(cat),
                                      "bbox": box.round(2).tolist(), "area": area, "iscrowd": 0,
                                      "segmentation": [poly]})
            for _ in range(3):   # several jittered detections per object
                jit = box + rng.normal(0, 0.1, 4) * np.r_[box[2:], box[2:]]
                jit[2:] = np.maximum(jit[2:], 2)
                dets.append(_record(i, int(cat) if rng.random() < 0.9 else int(rng.integers(1, 11)), jit, rng))
        for _ in range(per_image):   # false positives
            wh = rng.uniform(8, 200, 2)
            dets.append(_record(i, int(rng.integers(1, 11)), np.r_[rng.uniform(0, 1, 2) * ([_W, _H] - wh), wh], rng))
    return gt, dets


def _record(image: int, cat: int, box: np.ndarray, rng: np.random.Generator) -> dict:
    rle = mask_util.merge(mask_util.frPyObjects([_polygon(box)], _H, _W))
    rle["counts"] = rle["counts"].decode("ascii")
    return {"image_id": image, "category_id": cat, "bbox": [float(v) for v in box.round(2)],
            "score": float(rng.random()), "segmentation": rle}


def bench_eval(images: int = 300, iters: int = 3, warmup: int = 0, iou_types: tuple[str, ...] = ("bbox", "segm"),
               seed: int = 0) -> dict[str, Any]:
    """Seconds of both backends per type; raises if their stats differ beyond ``STATS_TOLERANCE``."""
    gt, dets = generated_set(images, seed=seed)
    out: dict[str, Any] = {"images": images, "annotations": len(gt["annotations"]), "detections": len(dets), "rows": []}
    for iou_type in iou_types:
        stats: dict[str, tuple[float, ...]] = {}

        def run(backend: str, iou_type: str = iou_type, stats: dict = stats) -> None:
            stats[backend] = evaluate(gt, dets, iou_type, backend).stats

        timing = ab_pairs(lambda: run("faster-coco-eval"), lambda: run("pycocotools"), iters, warmup)
        a, b = np.array(stats["faster-coco-eval"]), np.array(stats["pycocotools"])
        if np.abs(a - b).max() > STATS_TOLERANCE:
            raise AssertionError(f"{iou_type}: faster-coco-eval stats differ from pycocotools' "
                                 f"(max |diff| {np.abs(a - b).max():.3g})")
        out["rows"].append({"type": iou_type, "fast_seconds": timing["a"], "pycocotools_seconds": timing["b"],
                            "speedup": timing["ratio"], "bitwise_identical": bool(np.array_equal(a, b)),
                            "max_stat_diff": float(np.abs(a - b).max()), "stats": b.tolist()})
    return out
