"""Fake detection results over shipped annotations (``tests/data/coco-mini-fake-results``).

The evaluation tests need result sets with every kind of error an evaluator must score: boxes and
masks of varied overlap, missed objects, duplicates, wrong classes, false positives, keypoints with
noise of varied size. cocoapi's own fake results cover that but sit on val2014 annotations that are
not shipped, so this module makes a set of the same kind on the 79 coco-mini images, whose annotations
(CC BY 4.0) are in the repository. Seeded, rounded to 2 decimals (scores 3), written once:

    python -m tests.fake_results           # rewrites the results files and the two-image set

``expected_stats.json`` beside them holds pycocotools' numbers for them. ``two_image_set`` is a much
smaller pair for the tests that edit records one by one: two images of ``../coco-cc-by`` (one without
objects), two persons and three detections that carry a box and a mask, as detectron2's records do.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent / "data"
ANNOTATIONS = HERE / "coco-mini-annotations"
FOLDER = HERE / "coco-mini-fake-results"
FILES = {"bbox": "bbox_results.json", "segm": "segm_results.json", "keypoints": "keypoints_results.json"}
SEEDS = {"bbox": 2017, "segm": 2018, "keypoints": 2019}
TWO_IMAGE = {"gt": "two_image_gt.json", "dt": "two_image_dt.json"}
# Image 183709 with a small (743 px) and a medium (6198 px) person, and 553664 (no person): the
# "large" area range is empty, so it scores -1.
_TWO_IMAGES, _TWO_PERSONS = (183709, 553664), (568264, 1724562)


def _coco(dataset: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = copy.deepcopy(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _jitter_box(rng: np.random.Generator, box: list[float], level: float, w: int, h: int) -> list[float]:
    """``box`` (x, y, w, h) with each side moved by up to ``level`` of the box size, clipped to the image."""
    x0, y0, bw, bh = box
    x1, y1 = x0 + bw, y0 + bh
    dx0, dy0, dx1, dy1 = rng.uniform(-level, level, 4) * [bw, bh, bw, bh]
    x0, x1 = np.clip([x0 + dx0, x1 + dx1], 0, w)
    y0, y1 = np.clip([y0 + dy0, y1 + dy1], 0, h)
    return [round(float(v), 2) for v in (x0, y0, max(x1 - x0, 1.0), max(y1 - y0, 1.0))]


def _random_box(rng: np.random.Generator, w: int, h: int) -> list[float]:
    bw, bh = rng.uniform(0.05, 0.6) * w, rng.uniform(0.05, 0.6) * h
    return [round(float(v), 2) for v in (rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh)]


def _score(rng: np.random.Generator, high: bool) -> float:
    return round(float(rng.uniform(0.4, 1.0) if high else rng.uniform(0.01, 0.6)), 3)


def _plan(rng: np.random.Generator, gt: dict, iou_type: str):
    """Yield ``(image, annotation or None, category, score, level)``: one per fake detection."""
    images = {im["id"]: im for im in gt["images"]}
    cats = [c["id"] for c in gt["categories"]]
    by_image: dict[int, list[dict]] = {i: [] for i in images}
    for ann in gt["annotations"]:
        if not ann["iscrowd"] and (iou_type != "keypoints" or ann["num_keypoints"] > 0):
            by_image[ann["image_id"]].append(ann)
    for image_id in sorted(by_image):
        im = images[image_id]
        for ann in by_image[image_id]:
            draw = rng.random()
            if draw < 0.12:
                continue                                      # missed
            cat = ann["category_id"]
            if iou_type != "keypoints" and draw > 0.95:
                cat = int(rng.choice(cats))                   # wrong class
            level = float(rng.choice([0.02, 0.08, 0.2, 0.45]))
            yield im, ann, cat, _score(rng, draw < 0.8), level
            if rng.random() < 0.1:                            # duplicate, lower score
                yield im, ann, cat, _score(rng, False), float(rng.choice([0.08, 0.2]))
        for _ in range(int(rng.integers(0, 4))):              # false positives
            cat = 1 if iou_type == "keypoints" else int(rng.choice(cats))
            yield im, None, cat, _score(rng, False), 0.0


def _box_mask(box: list[float], h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    x0, y0, bw, bh = (int(round(v)) for v in box)
    m[y0:y0 + max(bh, 1), x0:x0 + max(bw, 1)] = 1
    return m


def _shifted(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(mask)
    h, w = mask.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = mask[ys, xs]
    return out


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()}


def fake_results(iou_type: str) -> list[dict]:
    """The fake detections of ``iou_type`` (bbox, segm, keypoints) over coco-mini's annotations."""
    gt_file = "person_keypoints_val2017.json" if iou_type == "keypoints" else "instances_val2017.json"
    gt = json.loads((ANNOTATIONS / gt_file).read_text())
    coco = _coco(gt) if iou_type == "segm" else None
    rng = np.random.default_rng(SEEDS[iou_type])
    records = []
    for im, ann, cat, score, level in _plan(rng, gt, iou_type):
        h, w = im["height"], im["width"]
        rec: dict = {"image_id": im["id"], "category_id": cat}
        if iou_type == "bbox":
            rec["bbox"] = _random_box(rng, w, h) if ann is None else _jitter_box(rng, ann["bbox"], level, w, h)
        elif iou_type == "segm":
            if ann is None:
                mask = _box_mask(_random_box(rng, w, h), h, w)
            elif rng.random() < 0.2:                          # the box as a mask: a coarse segmentation
                mask = _box_mask(ann["bbox"], h, w)
            else:
                bw, bh = ann["bbox"][2:]
                dy, dx = (int(round(v)) for v in rng.uniform(-level, level, 2) * [bh, bw])
                mask = _shifted(coco.annToMask(ann), dy, dx)
            rec["segmentation"] = _rle(mask)
        else:
            if ann is None:
                x0, y0, bw, bh = _random_box(rng, w, h)
                kps = np.stack([rng.uniform(x0, x0 + bw, 17), rng.uniform(y0, y0 + bh, 17)], 1)
            else:
                x0, y0, bw, bh = ann["bbox"]
                given = np.asarray(ann["keypoints"], np.float64).reshape(17, 3)
                kps = given[:, :2] + rng.normal(0, level * 0.25 * np.sqrt(ann["area"]), (17, 2))
                hidden = given[:, 2] == 0
                kps[hidden] = np.stack([rng.uniform(x0, x0 + bw, 17), rng.uniform(y0, y0 + bh, 17)], 1)[hidden]
            rec["keypoints"] = [round(float(v), 2) for xy in kps for v in (*xy, 1.0)]
        rec["score"] = score
        records.append(rec)
    return records


def two_image_set() -> tuple[dict, list[dict]]:
    """Ground truth (categories person and bicycle) and 3 person detections with ``bbox`` and
    ``segmentation``: each person's mask moved by (1, 2) px, and a false positive."""
    from pycocotools import mask as mask_util

    full = json.loads((HERE / "coco-cc-by" / "instances_val2017.json").read_text())
    gt = {"info": full["info"], "licenses": full["licenses"], "categories": full["categories"][:2],
          "images": [im for im in full["images"] if im["id"] in _TWO_IMAGES],
          "annotations": [a for a in full["annotations"] if a["id"] in _TWO_PERSONS]}
    coco = _coco(gt)
    h, w = coco.imgs[_TWO_IMAGES[0]]["height"], coco.imgs[_TWO_IMAGES[0]]["width"]
    masks = [_shifted(coco.annToMask(a), 2, 1) for a in gt["annotations"]]
    masks.append(_box_mask([20.0, 400.0, 60.0, 120.0], h, w))
    dets = []
    for mask, score in zip(masks, (0.9, 0.7, 0.3)):
        rle = _rle(mask)
        box = mask_util.toBbox({"size": rle["size"], "counts": rle["counts"].encode()})
        dets.append({"image_id": _TWO_IMAGES[0], "category_id": 1, "bbox": [round(float(v), 2) for v in box],
                     "score": score, "segmentation": rle})
    return gt, dets


def main() -> None:
    FOLDER.mkdir(exist_ok=True)
    for iou_type, name in FILES.items():
        (FOLDER / name).write_text(json.dumps(fake_results(iou_type), separators=(",", ":")) + "\n")
    for name, content in zip(TWO_IMAGE.values(), two_image_set()):
        (FOLDER / name).write_text(json.dumps(content, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
