"""Ours vs torchvision's matching R-50-FPN model, inference or one training step, same inputs.

Both sides get the same decoded uint8 images at the same size (torchvision's transform
is told ``min_size``/``max_size`` so it does not resize differently) and end where a user
would: per-image detections with pasted masks / decoded keypoints (inference), or an
optimizer step (training, 3 ground-truth boxes per image as ../shared/bench does).
Ours has calibrated weights (``rcnn.synthetic.calibrate``) so that 100 detections per
image survive; torchvision has random weights with ``box_score_thresh=0`` for the same
worst case. The timing is :func:`detectron_parity.timing.ab_pairs` (alternating pairs).
"""
from __future__ import annotations

import contextlib
import logging
import platform
import resource
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torchvision

from detectron_parity.timing import ab_pairs
from rcnn.config import load_cfg
from rcnn.data.preprocess import images_to_blob
from rcnn.data.train_batch import ImageTargets, TrainBatch
from rcnn.inference.detector import Detector
from rcnn.modeling import build_model
from rcnn.modeling.generalized_rcnn import GeneralizedRCNN
from rcnn.modeling.sampler import RandomSampler
from rcnn.modeling.training import METRICS
from rcnn.synthetic import calibrate

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
MODELS = ("faster", "mask", "keypoint")
PRECISIONS = ("fp32", "tf32", "bf16")
# Ground truth of the training step, in an 800x1216 frame (../shared/bench/torchvision_anchor.py).
_GT_BOXES = np.array([[100., 120., 400., 500.], [600., 200., 900., 700.], [50., 50., 300., 250.]], np.float32)


def config(kind: str, height: int, width: int):
    """The model's Detectron config at a test/train scale that keeps ``height x width`` images as they are."""
    size = ["TEST.SCALE", str(min(height, width)), "TEST.MAX_SIZE", str(max(height, width)),
            "TRAIN.SCALES", f"({min(height, width)},)", "TRAIN.MAX_SIZE", str(max(height, width))]
    return load_cfg(REPO / f"configs/12_2017_baselines/e2e_{kind}_rcnn_R-50-FPN_1x.yaml", size)


def synthetic_images(n: int, h: int, w: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth random BGR images (the same ones in every run)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (max(h // 16, 2), max(w // 16, 2), 3), dtype=np.uint8)
    return [cv2.resize(np.roll(base, i, axis=1), (w, h), interpolation=cv2.INTER_LINEAR) for i in range(n)]


def torchvision_model(kind: str, height: int, width: int) -> torch.nn.Module:
    from torchvision.models.detection import (
        fasterrcnn_resnet50_fpn,
        keypointrcnn_resnet50_fpn,
        maskrcnn_resnet50_fpn,
    )
    build = {"faster": fasterrcnn_resnet50_fpn, "mask": maskrcnn_resnet50_fpn, "keypoint": keypointrcnn_resnet50_fpn}
    kw: dict[str, Any] = dict(weights=None, weights_backbone=None, box_score_thresh=0.0,
                              min_size=min(height, width), max_size=max(height, width))
    if kind != "keypoint":
        kw["num_classes"] = 81
    return build[kind](**kw)


def accelerate(model: GeneralizedRCNN, channels_last: bool = False, compile_body: bool = False) -> None:
    """Opt-in speed-ups of the backbone/FPN (not exact: other conv kernels, other rounding)."""
    if channels_last:
        model.backbone.to(memory_format=torch.channels_last)
        model.fpn.to(memory_format=torch.channels_last)
    if compile_body:
        model.backbone = torch.compile(model.backbone, dynamic=True)
        model.fpn = torch.compile(model.fpn, dynamic=True)


def bf16_features(model: GeneralizedRCNN, device: torch.device) -> None:
    """Ours in ``--precision bf16``: backbone and FPN under bf16 autocast, their outputs back
    to float32, so that the heads and Detectron's post-processing stay float32 (the
    box/NMS arithmetic is written for float32)."""
    features = model.features

    def run(blob: torch.Tensor) -> list[torch.Tensor]:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = features(blob)
        return [f.float() for f in out]

    model.features = run  # type: ignore[method-assign]


def precision_context(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """Set TF32 for ``precision`` and return a factory of the context each timed call runs in."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.benchmark = False   # dynamic-shape heads re-tune every iteration otherwise
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


class Memory:
    """Peak memory per side: CUDA's allocator peak around each timed call; on CPU none
    (``ru_maxrss`` only grows and tracemalloc does not see torch's allocations)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.peak: dict[str, int] = {"a": 0, "b": 0}

    def before(self, side: str) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def after(self, side: str) -> None:
        if self.cuda:
            self.peak[side] = max(self.peak[side], torch.cuda.max_memory_allocated())

    def result(self, side: str) -> int | None:
        return self.peak[side] if self.cuda else None


def _sync(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _tv_inputs(images: Sequence[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(im[:, :, ::-1])).to(device).permute(2, 0, 1).float() / 255
            for im in images]


def _row(kind: str, timing: dict, batch: int, memory: Memory, **extra: Any) -> dict[str, Any]:
    a, b = timing["a"]["median"], timing["b"]["median"]
    row = {"model": kind, "ours_s_per_img": a / batch, "torchvision_s_per_img": b / batch, "speedup": b / a,
           "ratio_spread": timing["ratio"], "ours_s_per_iter": timing["a"], "torchvision_s_per_iter": timing["b"],
           "ours_peak_bytes": memory.result("a"), "torchvision_peak_bytes": memory.result("b")}
    row.update(extra)
    return row


def bench_infer(kind: str, images: Sequence[np.ndarray], device: torch.device, precision: str, iters: int,
                warmup: int, fast: bool = False, channels_last: bool = False, compile_body: bool = False) -> dict:
    """One inference row: all of ``images`` as one batch on each side."""
    h, w = images[0].shape[:2]
    cfg = config(kind, h, w)
    model = build_model(cfg)
    calibrate(model, cfg, images[0])
    accelerate(model, channels_last, compile_body)
    if precision == "bf16":
        bf16_features(model, device)
    ours = Detector(model, cfg, device, batch_size=len(images), fast=fast)
    tv = torchvision_model(kind, h, w).to(device).eval()
    ctx = precision_context(precision, device)

    def run_ours():
        return ours(images)

    def run_tv():
        with torch.no_grad(), ctx():
            out = tv(_tv_inputs(images, device))
            return [{k: v.cpu() for k, v in o.items()} for o in out]

    dets = [sum(len(d) for d in run_ours()) / len(images), sum(len(o["scores"]) for o in run_tv()) / len(images)]
    memory = Memory(device)
    timing = ab_pairs(run_ours, run_tv, iters, warmup, _sync(device), memory.before, memory.after)
    return _row(kind, timing, len(images), memory, dets_per_img=dets)


def _our_batch(cfg, images: Sequence[np.ndarray], kind: str, device: torch.device) -> TrainBatch:
    """A training minibatch of ``images`` (not flipped, scale 1) with 3 boxes each."""
    h, w = images[0].shape[:2]
    means = np.array(cfg.PIXEL_MEANS, np.float32).reshape(1, 1, 3)
    blob = torch.from_numpy(images_to_blob([im.astype(np.float32) - means for im in images]))
    im_info = torch.tensor([[h, w, 1.0]] * len(images), dtype=torch.float32)
    boxes = torch.from_numpy(_GT_BOXES * np.array([w / 1216, h / 800] * 2, np.float32))
    segms = [[[x0, y0, x1, y0, x1, y1, x0, y1]] for x0, y0, x1, y1 in boxes.tolist()]
    kps = _keypoints(boxes, cfg.KRCNN.NUM_KEYPOINTS) if kind == "keypoint" else None
    targets = [ImageTargets(h, w, boxes.clone(), torch.ones(3, dtype=torch.int64), torch.zeros(3, dtype=torch.bool),
                            segms, None if kps is None else kps.permute(0, 2, 1).contiguous(), image_id=i)
               for i in range(len(images))]
    return TrainBatch(blob, im_info, targets).to(device)


def _keypoints(boxes: torch.Tensor, joints: int) -> torch.Tensor:
    """(G, J, 3) visible keypoints spread inside each box (fixed, seeded)."""
    g = torch.Generator().manual_seed(0)
    rel = torch.rand(len(boxes), joints, 2, generator=g)
    xy = boxes[:, None, :2] + rel * (boxes[:, None, 2:] - boxes[:, None, :2])
    return torch.cat((xy, torch.full((len(boxes), joints, 1), 2.0)), dim=2)


def _tv_targets(images: Sequence[np.ndarray], kind: str, device: torch.device) -> list[dict]:
    h, w = images[0].shape[:2]
    boxes = torch.from_numpy(_GT_BOXES * np.array([w / 1216, h / 800] * 2, np.float32))
    out = []
    for _ in images:
        t: dict[str, torch.Tensor] = {"boxes": boxes.to(device), "labels": torch.ones(3, dtype=torch.int64, device=device)}
        if kind == "mask":
            m = torch.zeros(3, h, w, dtype=torch.uint8)
            for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
                m[i, y0:y1, x0:x1] = 1
            t["masks"] = m.to(device)
        if kind == "keypoint":
            kp = _keypoints(boxes, 17)
            kp[..., 2] = 1
            t["keypoints"] = kp.to(device)
        out.append(t)
    return out


def bench_train(kind: str, images: Sequence[np.ndarray], device: torch.device, precision: str, iters: int,
                warmup: int, channels_last: bool = False, compile_body: bool = False) -> dict:
    """One training row: forward, backward and an SGD step on ``images`` as one minibatch."""
    from rcnn.engine.solver import build_optimizer

    h, w = images[0].shape[:2]
    cfg = config(kind, h, w)
    model = build_model(cfg).to(device).train()
    accelerate(model, channels_last, compile_body)
    if precision == "bf16":
        bf16_features(model, device)
    optimizer = build_optimizer(model, cfg)
    optimizer.set_lr(1e-3)
    generator = torch.Generator()
    sampler = RandomSampler(generator)
    batch = _our_batch(cfg, images, kind, device)
    tv = torchvision_model(kind, h, w).to(device).train()
    tv_opt = torch.optim.SGD(tv.parameters(), lr=1e-3, momentum=0.9)
    tv_images, tv_targets = _tv_inputs(images, device), _tv_targets(images, kind, device)
    ctx = precision_context(precision, device)

    def step_ours():
        generator.manual_seed(0)
        optimizer.zero_grad(set_to_none=True)
        out = model(batch, sampler)
        loss = sum(v for k, v in out.items() if k not in METRICS)
        loss.backward()
        optimizer.step()

    def step_tv():
        tv_opt.zero_grad(set_to_none=True)
        with ctx():
            loss = sum(tv(tv_images, tv_targets).values())
        loss.backward()
        tv_opt.step()

    memory = Memory(device)
    timing = ab_pairs(step_ours, step_tv, iters, warmup, _sync(device), memory.before, memory.after)
    return _row(kind, timing, len(images), memory)


def environment(device: torch.device) -> dict[str, Any]:
    """Device, versions and threads of this measurement."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    return {"device": device.type, "device_name": name, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": np.__version__,
            "python": platform.python_version(),
            "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def bench_fast_vs_exact(kind: str, data_dir: str | Path, scale: int, max_size: int, limit: int | None = None) -> dict:
    """The exact host paste/decode against ``fast_postprocess`` on the same forward outputs
    of a COCO-format folder (``instances_val2017.json`` / ``person_keypoints_val2017.json``
    and ``val2017/``): per-detection match, AP of both, seconds of both post-processings."""
    import time

    from parity.evaluate import evaluate
    from parity.match import match_records
    from rcnn.data.datasets import COCODataset
    from rcnn.data.preprocess import read_image
    from rcnn.inference.coco_results import coco_records
    from rcnn.inference.fast_postprocess import heatmaps_to_keypoints_fast, paste_and_encode_fast

    data_dir = Path(data_dir)
    ann = data_dir / ("person_keypoints_val2017.json" if kind == "keypoint" else "instances_val2017.json")
    dataset = COCODataset(ann, data_dir / "val2017")
    ids = list(dataset.image_ids)[:limit]
    cfg = load_cfg(REPO / f"configs/12_2017_baselines/e2e_{kind}_rcnn_R-50-FPN_1x.yaml",
                   ["TEST.SCALE", str(scale), "TEST.MAX_SIZE", str(max_size)])
    model = build_model(cfg)
    calibrate(model, cfg, read_image(dataset.image_path(ids[0])))
    detector = Detector(model, cfg)
    exact, fast, seconds = [], [], {"exact": 0.0, "fast": 0.0}
    for image_id in ids:
        raw = detector.forward([detector.prepare(read_image(dataset.image_path(image_id)))])
        start = time.perf_counter()
        det = detector.finish(1, raw)[0]
        seconds["exact"] += time.perf_counter() - start
        out = raw[0][1]
        start = time.perf_counter()
        other = type(det)(det.height, det.width, det.boxes, det.scores, det.classes)
        boxes = torch.from_numpy(out.boxes)
        if out.mask_probs is not None:
            other.masks = paste_and_encode_fast(torch.from_numpy(out.mask_probs), boxes, det.height, det.width,
                                                cfg.MRCNN.THRESH_BINARIZE)
        elif det.masks is not None:
            other.masks = []
        if out.heatmaps is not None:
            other.keypoints = heatmaps_to_keypoints_fast(torch.from_numpy(out.heatmaps), boxes,
                                                         cfg.KRCNN.INFERENCE_MIN_SIZE).numpy()
        elif det.keypoints is not None:
            other.keypoints = det.keypoints
        seconds["fast"] += time.perf_counter() - start
        exact.append((image_id, det))
        fast.append((image_id, other))
    cats = dataset.contiguous_id_to_category_id
    rec_exact, rec_fast = coco_records(exact, cats), coco_records(fast, cats)
    rows = []
    for iou_type in ("segm",) if kind == "mask" else ("keypoints",):
        report = match_records(rec_exact[iou_type], rec_fast[iou_type], iou_type).to_dict()
        gt = dataset.coco.dataset | {"images": [im for im in dataset.coco.dataset["images"] if im["id"] in set(ids)]}
        gt["annotations"] = [a for a in dataset.coco.dataset["annotations"] if a["image_id"] in set(ids)]
        ap = [evaluate(gt, r[iou_type], iou_type).stats[0] for r in (rec_exact, rec_fast)]
        rows.append({"model": kind, "type": iou_type, "ap_exact": ap[0], "ap_fast": ap[1], **report})
    return {"images": len(ids), "scale": [scale, max_size], "host_seconds": seconds, "rows": rows}
