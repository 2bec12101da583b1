"""A toy training set that a detector learns in minutes on a CPU, and the short recipe for it.

Why: without an ImageNet body (the demo and the tests have no network access) the ResNet body
is random, so the data must be learnable from random features: flat backgrounds with a few
large, high-contrast shapes whose class is decided by shape *and* colour (ellipses are
``person``, rectangles ``car``), with person keypoints at fixed positions on the ellipse.
The recipe is Detectron's (same graph, losses, solver, roidb with flipped copies) with small
sizes set through the config only: a short side of :data:`SCALE` pixels, fewer RoIs and
proposals, a 256-d box head and a short schedule with a linear warm-up.

The body is :func:`rcnn.synthetic.calibrate`'s calibrated random ResNet-50, scaled down so that
its C2..C5 features have the magnitude of an ImageNet-trained body's (root mean square
:data:`BODY_RMS`); with the raw calibrated body (unit-variance AffineChannel outputs whose
residual sums grow block after block) the class logits move too far per SGD step and the
loss diverges (``docs/training.md``).
"""
from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from rcnn.data.datasets import COCO_CATEGORY_IDS, COCO_CLASSES, COCO_KEYPOINT_NAMES
from rcnn.modeling.generalized_rcnn import GeneralizedRCNN

logger = logging.getLogger(__name__)

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "12_2017_baselines"
SCALE = 192                 # training and test short side (images are generated at this size)
KINDS = ("faster", "mask", "keypoint")
PERSON, CAR = 1, 3          # COCO category ids of the two toy classes
_COLOURS = {PERSON: (40, 40, 230), CAR: (230, 120, 30)}   # BGR: red ellipses, blue rectangles
BODY_RMS = 0.5
BASE_LR = 0.0015            # 1 image per iteration: 1.2x the linear scaling of Detectron's 0.02 for 16
FREEZE_AT = 5               # the random body stays fixed: FPN and heads learn on its features (fast)


def _shape(rng: np.random.Generator, w: int, h: int, cat: int) -> tuple[np.ndarray, np.ndarray]:
    """Polygon (N, 2) of one object and its 17 keypoints (17, 2), inside a w x h image."""
    rx, ry = rng.uniform(0.12 * w, 0.22 * w), rng.uniform(0.12 * h, 0.22 * h)
    cx, cy = rng.uniform(rx + 2, w - rx - 2), rng.uniform(ry + 2, h - ry - 2)
    if cat == PERSON:
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        poly = np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)
    else:
        poly = np.array([[cx - rx, cy - ry], [cx + rx, cy - ry], [cx + rx, cy + ry], [cx - rx, cy + ry]])
    return poly, _keypoints(cx, cy, rx, ry)


def _keypoints(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """The 17 COCO keypoints (17, 2) on a ring at 0.7 of the radii: the nose on top, then the
    eight left/right pairs (eyes ... ankles) from top to bottom, each pair mirrored about the
    vertical axis, the person's left on the image's right (facing the viewer).

    Why mirrored pairs: training flips every image and swaps left and right keypoints
    (``keypoint_flip_permutation``), so a keypoint must land where its partner was for the
    flipped copy to teach the same layout; with keypoints spaced round the ring instead, every
    keypoint had two targets (one per flip) and the head did not learn them.
    """
    theta = -np.pi / 2 + np.pi * np.arange(1, 9) / 9           # right half, top to bottom
    dx, dy = 0.7 * rx * np.cos(theta), 0.7 * ry * np.sin(theta)
    pairs = np.stack([np.stack([cx + dx, cy + dy], 1), np.stack([cx - dx, cy + dy], 1)], 1).reshape(16, 2)
    return np.concatenate([[[cx, cy - 0.7 * ry]], pairs])


def make_shapes_dataset(out: Path, num_images: int = 4, seed: int = 0,
                        size: tuple[int, int] = (SCALE, SCALE * 4 // 3)) -> tuple[Path, Path, Path]:
    """Images, an instances json (all 80 COCO categories, two used) and a person-keypoints json.

    Returns ``(image folder, instances json, keypoints json)``. Objects of one image do not
    overlap much (they are placed in a row of cells), so every box is a clean target.
    """
    rng = np.random.default_rng(seed)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    categories = [{"id": c, "name": n, "supercategory": "thing"} for c, n in zip(COCO_CATEGORY_IDS, COCO_CLASSES[1:])]
    person = {"id": PERSON, "name": "person", "supercategory": "person", "keypoints": list(COCO_KEYPOINT_NAMES),
              "skeleton": []}
    images, anns, kp_anns = [], [], []
    for i in range(num_images):
        h, w = size if i % 2 == 0 else size[::-1]
        im = np.empty((h, w, 3), np.uint8)
        im[:] = rng.integers(90, 170, 3, dtype=np.uint8)
        image_id = 1000 + i
        n = 2 if i % 2 == 0 else 3
        cells = [(int(k * w / n), int((k + 1) * w / n)) if w >= h else (int(k * h / n), int((k + 1) * h / n))
                 for k in range(n)]
        for k, (a, b) in enumerate(cells):
            cat = PERSON if (i + k) % 2 == 0 else CAR
            cw, ch = (b - a, h) if w >= h else (w, b - a)
            poly, kps = _shape(rng, cw, ch, cat)
            shift = np.array([a, 0] if w >= h else [0, a], np.float64)
            poly, kps = poly + shift, kps + shift
            cv2.fillPoly(im, [poly.round().astype(np.int32)], _COLOURS[cat])
            x0, y0 = poly.min(0)
            x1, y1 = poly.max(0)
            ann = {"id": len(anns) + 1, "image_id": image_id, "iscrowd": 0, "category_id": cat,
                   "segmentation": [poly.reshape(-1).round(2).tolist()],
                   "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                   "area": float(cv2.contourArea(poly.astype(np.float32)))}
            anns.append(ann)
            if cat == PERSON:
                flat = np.concatenate([kps, np.full((17, 1), 2.0)], 1).reshape(-1).round(2).tolist()
                kp_anns.append({**ann, "keypoints": flat, "num_keypoints": 17})
        name = f"{image_id:012d}.png"
        cv2.imwrite(str(img_dir / name), im)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
    instances = out / "instances_shapes.json"
    instances.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    keypoints = out / "person_keypoints_shapes.json"
    keypoints.write_text(json.dumps({"images": images, "annotations": kp_anns, "categories": [person]}))
    return img_dir, instances, keypoints


def recipe_opts(kind: str, max_iter: int, base_lr: float = BASE_LR) -> list[str]:
    """Config overrides of the toy recipe: 1 image per iteration, small sizes, a frozen body, a
    short schedule (warm-up over the first fifth, x0.1 at 80 %), snapshots only at the end."""
    size = [str(SCALE), str(SCALE * 4 // 3)]
    opts = ["NUM_GPUS", "1", "TRAIN.IMS_PER_BATCH", "1", "TRAIN.SCALES", f"({size[0]},)", "TRAIN.MAX_SIZE", size[1],
            "TEST.SCALE", size[0], "TEST.MAX_SIZE", size[1], "SOLVER.BASE_LR", repr(base_lr),
            "SOLVER.WARM_UP_ITERS", str(max(1, max_iter // 5)), "SOLVER.MAX_ITER", str(max_iter),
            "SOLVER.STEPS", f"(0, {int(max_iter * 0.8)})", "TRAIN.SNAPSHOT_ITERS", str(10 * max_iter),
            "TRAIN.BATCH_SIZE_PER_IM", "64", "TRAIN.RPN_BATCH_SIZE_PER_IM", "64",
            "TRAIN.RPN_PRE_NMS_TOP_N", "300", "TRAIN.RPN_POST_NMS_TOP_N", "100",
            "TEST.RPN_PRE_NMS_TOP_N", "300", "TEST.RPN_POST_NMS_TOP_N", "50", "FAST_RCNN.MLP_HEAD_DIM", "256",
            "TRAIN.FREEZE_AT", str(FREEZE_AT), "FPN.DIM", "64"]
    if kind == "mask":
        opts += ["MRCNN.DIM_REDUCED", "64"]
    if kind == "keypoint":
        opts += ["KRCNN.CONV_HEAD_DIM", "128"]
    return opts


@torch.no_grad()
def toy_body(model: GeneralizedRCNN, cfg, image: np.ndarray, seed: int = 0) -> list[float]:
    """A random ResNet body with ImageNet-like feature magnitudes: ``calibrate`` on ``image``,
    then every stage output scaled to root mean square :data:`BODY_RMS`, exactly (ReLU is
    positively homogeneous): per block the last AffineChannel and the projection shortcut's
    are multiplied by the stage's gain, and the first AffineChannel's scale is divided by the
    gain of the block's input. Returns the stage outputs' rms before rescaling. Heads are
    left to ``init_heads``."""
    from rcnn.synthetic import calibrate

    calibrate(model, cfg, image, seed)
    body = model.backbone
    rms = [float(x.pow(2).mean().sqrt()) for x in body(torch.from_numpy(_blob(image, cfg)))]
    f_in = 1.0
    for name, r in zip(body.stage_names, rms):
        gain = BODY_RMS / r
        for block in getattr(body, name):
            block.branch2a_bn.scale.div_(f_in)
            for aff in [block.branch2c_bn] + ([block.branch1_bn] if hasattr(block, "branch1") else []):
                aff.scale.mul_(gain / (f_in if aff is not block.branch2c_bn else 1.0))
                aff.bias.mul_(gain)
            f_in = gain
    logger.info("toy body: stage outputs' rms %s rescaled to %.2f", ", ".join(f"{r:.2f}" for r in rms), BODY_RMS)
    return rms


def _blob(image: np.ndarray, cfg) -> np.ndarray:
    from rcnn.data.preprocess import images_to_blob, prepare_image

    im, _ = prepare_image(image, cfg.TEST.SCALE, cfg.TEST.MAX_SIZE)
    return images_to_blob([im])


def config_path(kind: str) -> Path:
    """The 12_2017 baseline config of a model kind."""
    return CONFIGS / f"e2e_{kind}_rcnn_R-50-FPN_1x.yaml"


def train_toy(kind: str, dataset, image: np.ndarray, output_dir: Path, max_iter: int,
              progress: Callable[[int], None] | None = None, base_lr: float = BASE_LR):
    """Train one toy model from scratch in ``output_dir`` (removed first: ``train`` would resume).

    Returns ``(cfg, final checkpoint)``; ``model_final.pkl`` (Detectron) sits beside it.
    """
    from rcnn.config import load_cfg
    from rcnn.data.loader import build_train_loader
    from rcnn.data.roidb import roidb_from_cfg
    from rcnn.engine.train_engine import TrainSettings, train
    from rcnn.modeling import build_model
    from rcnn.modeling.init import init_heads

    cfg = load_cfg(config_path(kind), recipe_opts(kind, max_iter, base_lr))
    model = build_model(cfg)
    toy_body(model, cfg, image)
    init_heads(model, cfg, cfg.RNG_SEED)
    roidb = roidb_from_cfg(cfg, None, [dataset])
    shutil.rmtree(output_dir, ignore_errors=True)
    settings = TrainSettings(Path(output_dir), fresh_heads=True, progress=progress)
    final = train(cfg, model, lambda n: iter(build_train_loader(roidb, cfg, num_workers=0, start_iter=n)),
                  torch.device("cpu"), settings)
    return cfg, final


def ap50(metrics, iou_type: str) -> float:
    """AP at IoU 0.5 (the second COCO stat) of one type of a ``Metrics``."""
    return float(metrics.by_type()[iou_type].stats[1])
