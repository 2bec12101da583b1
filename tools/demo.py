#!/usr/bin/env python
"""The embedded default (``make demo``): every stage of the project on data it makes itself.

1. generates a small COCO-format dataset (images of coloured shapes, boxes, polygons,
   person keypoints) under ``--output_dir``;
2. for Faster, Mask and Keypoint R-CNN R-50-FPN, writes a Detectron-format ``.pkl``
   (Python-2 pickle, Detectron's blob names and cfg) with *calibrated random* weights;
3. converts each ``.pkl`` to a PyTorch checkpoint (``convert``);
4. runs Detectron-exact inference on the dataset from the checkpoint, writes Detectron's
   result files and ``metrics.json``, and evaluates with pycocotools;
5. prints the COCO metrics table.

No network, no ../shared data. The weights are not trained, so the AP is ~0: this shows
that the pipeline runs end to end, not accuracy. For real numbers, run
``tools/test_net.py --load_detectron model_final.pkl`` on COCO (see README).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from convert.checkpoint import pkl_to_pt
from rcnn.config import load_cfg
from rcnn.data.datasets import COCO_CATEGORY_IDS, COCO_CLASSES, COCO_KEYPOINT_NAMES, COCODataset
from rcnn.engine.test_engine import TestSettings, run_test
from rcnn.engine.weights import load_model
from rcnn.inference.detector import Detector
from rcnn.synthetic import write_synthetic_detectron_pkl

REPO = Path(__file__).resolve().parents[1]
KINDS = ("faster", "mask", "keypoint")
SCALE = ["TEST.SCALE", "320", "TEST.MAX_SIZE", "533"]


def _shape_polygon(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A random convex polygon (ellipse or rotated rectangle) inside a w x h image."""
    cx, cy = rng.uniform(0.2 * w, 0.8 * w), rng.uniform(0.2 * h, 0.8 * h)
    rx, ry = rng.uniform(0.05 * w, 0.2 * w), rng.uniform(0.05 * h, 0.25 * h)
    n = 20 if rng.random() < 0.5 else 4
    t = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, np.pi)
    pts = np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)
    return np.clip(pts, 0, [w - 1, h - 1])


def make_dataset(out: Path, num_images: int = 4, seed: int = 0) -> tuple[Path, Path, Path]:
    """Images plus an instances json (all 80 COCO categories) and a person-keypoints json."""
    rng = np.random.default_rng(seed)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    categories = [{"id": c, "name": n, "supercategory": "thing"} for c, n in zip(COCO_CATEGORY_IDS, COCO_CLASSES[1:])]
    person = {"id": 1, "name": "person", "supercategory": "person", "keypoints": list(COCO_KEYPOINT_NAMES),
              "skeleton": []}
    images, anns, kp_anns = [], [], []
    for i in range(num_images):
        h, w = (480, 640) if i % 2 == 0 else (640, 480)
        noise = rng.integers(0, 60, (h // 8, w // 8, 3), dtype=np.uint8)
        im = cv2.resize(noise, (w, h), interpolation=cv2.INTER_LINEAR) + 80
        image_id = 1000 + i
        for _ in range(rng.integers(3, 7)):
            poly = _shape_polygon(rng, w, h)
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            cv2.fillPoly(im, [poly.round().astype(np.int32)], colour)
            x0, y0 = poly.min(0)
            x1, y1 = poly.max(0)
            ann = {"id": len(anns) + 1, "image_id": image_id, "iscrowd": 0,
                   "category_id": int(rng.choice([1, 3, 18, 62])),
                   "segmentation": [poly.reshape(-1).round(2).tolist()],
                   "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                   "area": float(cv2.contourArea(poly.astype(np.float32)))}
            anns.append(ann)
            if ann["category_id"] == 1:
                kx = rng.uniform(x0, x1, 17)
                ky = np.sort(rng.uniform(y0, y1, 17))
                kps = np.stack([kx, ky, np.full(17, 2.0)], 1).reshape(-1).round(2).tolist()
                kp_anns.append({**ann, "keypoints": kps, "num_keypoints": 17})
        name = f"{image_id:012d}.jpg"
        cv2.imwrite(str(img_dir / name), im)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
    instances = out / "instances_demo.json"
    instances.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    keypoints = out / "person_keypoints_demo.json"
    keypoints.write_text(json.dumps({"images": images, "annotations": kp_anns, "categories": [person]}))
    return img_dir, instances, keypoints


def table(rows: list[tuple[str, str, tuple, tuple]]) -> str:
    """Plain-text COCO table; -1 (no ground truth in that area range) shows as n/a."""
    width = max(len("model"), *(len(r[0]) for r in rows)) + 2
    lines, header = [], None
    for model, iou_type, names, stats in rows:
        if names != header:
            header = names
            lines.append(f"{'model':<{width}}{'type':<11}" + "".join(f"{n:>7}" for n in names))
        lines.append(f"{model:<{width}}{iou_type:<11}"
                     + "".join(f"{100 * v:7.1f}" if v >= 0 else f"{'n/a':>7}" for v in stats))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", default="demo_output")
    p.add_argument("--images", type=int, default=4, help="generated images")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(Path(args.output_dir), args.images)
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(out: Path, num_images: int) -> int:
    start = time.perf_counter()

    print(f"[1/4] generating a {num_images}-image COCO-format dataset in {out / 'data'}", flush=True)
    img_dir, instances, keypoints = make_dataset(out / "data", num_images)
    calibration_image = cv2.imread(str(sorted(img_dir.iterdir())[0]))
    rows = []
    for kind in KINDS:
        cfg_path = REPO / f"configs/12_2017_baselines/e2e_{kind}_rcnn_R-50-FPN_1x.yaml"
        cfg = load_cfg(cfg_path, SCALE)
        pkl = out / "weights" / f"{kind}.pkl"
        pt = out / "weights" / f"{kind}.pt"
        pkl.parent.mkdir(parents=True, exist_ok=True)
        print(f"[2/4] {kind}: writing a Detectron-format .pkl with calibrated random weights", flush=True)
        write_synthetic_detectron_pkl(cfg, calibration_image, str(pkl), with_extras=False)
        print(f"[3/4] {kind}: converting {pkl.name} -> {pt.name}", flush=True)
        report = pkl_to_pt(pkl, pt, cfg)
        print(f"      {report.summary()}", flush=True)
        print(f"[4/4] {kind}: Detectron-exact inference + COCO evaluation", flush=True)
        model, weights = load_model(cfg, load_ckpt=str(pt))
        ann = keypoints if kind == "keypoint" else instances
        settings = TestSettings(ann.stem, out / "test" / kind)
        metrics = run_test(cfg, Detector(model, cfg), COCODataset(ann, img_dir), weights, settings, cfg_path.stem)
        for iou_type, stats in metrics.by_type().items():
            rows.append((cfg_path.stem, iou_type, stats.names, stats.stats))

    print("\nCOCO metrics (%) of the calibrated *random* weights on the generated images:")
    print(table(rows))
    print(f"\nResult files and metrics.json: {out / 'test'}/<model>/   ({time.perf_counter() - start:.0f} s)")
    print("These weights are untrained, so ~0 AP is the expected result; the run shows the whole "
          "pipeline (pkl -> convert -> inference -> evaluation) working.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
