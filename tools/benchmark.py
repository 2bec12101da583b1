#!/usr/bin/env python
"""Inference speed side by side: this project's pipeline vs torchvision's, same images, one run.

Both start from the same decoded uint8 images and end with per-image detections (pasted
masks, decoded keypoints); both keep 100 detections per image (ours: calibrated weights,
torchvision: random weights with ``box_score_thresh=0``, as ../shared/bench does), at
Detectron's 800/1333 scale. Prints s/img and the ratio; ``--json`` writes the numbers.
Speed is only comparable within one run on one machine.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision
from torchvision.models.detection import fasterrcnn_resnet50_fpn, keypointrcnn_resnet50_fpn, maskrcnn_resnet50_fpn

from rcnn.config import load_cfg
from rcnn.inference.detector import Detector
from rcnn.modeling import build_model
from rcnn.synthetic import calibrate

REPO = Path(__file__).resolve().parents[1]
TORCHVISION = {"faster": fasterrcnn_resnet50_fpn, "mask": maskrcnn_resnet50_fpn, "keypoint": keypointrcnn_resnet50_fpn}


def synthetic_images(n: int, h: int, w: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth random BGR images (the same ones in every run)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
    return [cv2.resize(np.roll(base, i, axis=1), (w, h), interpolation=cv2.INTER_LINEAR) for i in range(n)]


def _time(fn, warmup: int, iters: int, sync) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="faster,mask,keypoint")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=1, help="images per forward pass")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--size", default="800x1216", help="HxW of the input images")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmul/conv on GPU (both sides)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    h, w = (int(v) for v in args.size.split("x"))
    dev = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    ims = synthetic_images(args.batch, h, w)
    rows = []
    for kind in args.models.split(","):
        cfg = load_cfg(REPO / f"configs/12_2017_baselines/e2e_{kind}_rcnn_R-50-FPN_1x.yaml")
        model = build_model(cfg)
        calibrate(model, cfg, ims[0])
        ours = Detector(model, cfg, dev, batch_size=args.batch)
        kw = dict(weights=None, weights_backbone=None, box_score_thresh=0.0)
        if kind != "keypoint":
            kw["num_classes"] = 81
        tv = TORCHVISION[kind](**kw).to(dev).eval()

        def run_tv():
            with torch.no_grad():
                batch = [torch.from_numpy(im[:, :, ::-1].copy()).to(dev).permute(2, 0, 1).float() / 255 for im in ims]
                out = tv(batch)
                return [{k: v.cpu() for k, v in o.items()} for o in out]

        n_ours = sum(len(d) for d in ours(ims)) / len(ims)
        n_tv = sum(len(o["scores"]) for o in run_tv()) / len(ims)
        t_ours = _time(lambda: ours(ims), args.warmup, args.iters, sync) / len(ims)
        t_tv = _time(run_tv, args.warmup, args.iters, sync) / len(ims)
        rows.append({"model": kind, "ours_s_per_img": t_ours, "torchvision_s_per_img": t_tv,
                     "speedup": t_tv / t_ours, "dets_per_img": [n_ours, n_tv]})
        print(f"{kind:9s} ours {t_ours:.4f} s/img  torchvision {t_tv:.4f} s/img  "
              f"ratio {t_tv / t_ours:.2f}x  (dets/img {n_ours:.0f} vs {n_tv:.0f})", flush=True)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    info = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
            "threads": torch.get_num_threads(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "batch": args.batch, "size": [h, w], "tf32": args.tf32, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
