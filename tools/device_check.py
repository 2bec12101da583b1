#!/usr/bin/env python
"""The one prepared GPU check: CUDA against CPU, then the speed table, in one call.

1. Agreement: for each model, calibrated weights are built once (on CPU) and the same real
   images run through ``Detector`` on CPU and on ``--device`` in fp32 (TF32 off); detections
   are matched one to one per image and class (``parity.match``) and at least 99% of each
   side must pair with IoU >= 0.99 (box, mask; keypoint similarity >= 0.99). The fast
   device paste/decode (``--fast``) is matched against the CPU exact path too (reported).
2. Speed (``rcnn.engine.benchmark``, alternating pairs with torchvision): inference at batch
   1 and 8 in TF32, a training step at 2 images in TF32, the three models; then, if time
   is left, batch 8 with ``--fast`` and bf16.

Everything goes to ``$OUT/device_check.json`` (rewritten after every step, so a run cut
short keeps what it measured), a table is printed last. Without CUDA it says so and
exits 0. The device command (wheels, images) is in docs/gpu_check.md:

    PYTHONPATH=. python tools/device_check.py --images .devdata --out "$OUT"
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

from detectron_parity import cli
from detectron_parity.fileio import atomic_write_json
from parity.match import match_records
from rcnn.data.preprocess import read_image
from rcnn.engine import benchmark as bench
from rcnn.inference.coco_results import coco_records
from rcnn.inference.detector import Detector
from rcnn.modeling import build_model
from rcnn.synthetic import calibrate

MIN_IOU, MIN_MATCHED = 0.99, 0.99


def compare_devices(kind: str, device: str, images: list, fast: bool) -> dict:
    """CPU exact vs ``device`` (exact, and fast if asked) on ``images``, unresized."""
    cfg = bench.config(kind, *images[0].shape[:2])   # the images' own size: Detectron's scale 1 at 800x1216
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    model = build_model(cfg)
    calibrate(model, cfg, images[0])
    start = time.perf_counter()
    cpu = Detector(model, cfg, "cpu")(images)
    out = {"model": kind, "images": len(images), "cpu_seconds": round(time.perf_counter() - start, 3),
           "dets_cpu": [len(d) for d in cpu]}
    cats = list(range(cfg.MODEL.NUM_CLASSES))
    ref = coco_records(list(enumerate(cpu)), cats)
    for name, use_fast in (("exact", False), ("fast", True))[: 2 if fast else 1]:
        dev_dets = Detector(model, cfg, device, fast=use_fast)(images)
        recs = coco_records(list(enumerate(dev_dets)), cats)
        side = {"dets": [len(d) for d in dev_dets]}
        for iou_type in ("bbox", "segm", "keypoints"):
            if iou_type not in ref:
                continue
            report = match_records(ref[iou_type], recs[iou_type], iou_type, min_iou=MIN_IOU)
            side[iou_type] = report.to_dict()
            side[iou_type]["passed"] = min(report.frac_matched_a, report.frac_matched_b) >= MIN_MATCHED
        out[name] = side
        model.to("cpu")
    out["passed"] = all(v["passed"] for k, v in out["exact"].items() if isinstance(v, dict))
    return out


def _speed_steps(models: list[str], images: list, extra: bool) -> list[tuple[str, dict]]:
    steps = []
    for kind in models:
        steps += [(f"infer tf32 b1 {kind}", {"mode": "infer", "kind": kind, "batch": 1, "precision": "tf32"}),
                  (f"infer tf32 b8 {kind}", {"mode": "infer", "kind": kind, "batch": 8, "precision": "tf32"}),
                  (f"train tf32 b2 {kind}", {"mode": "train", "kind": kind, "batch": 2, "precision": "tf32"})]
    if extra:
        for kind in models:
            steps += [(f"infer tf32 b8 fast {kind}", {"mode": "infer", "kind": kind, "batch": 8, "precision": "tf32",
                                                      "fast": True}),
                      (f"infer bf16 b8 {kind}", {"mode": "infer", "kind": kind, "batch": 8, "precision": "bf16"})]
    return steps


def run_speed(step: dict, images: list, device: torch.device, iters: int, warmup: int) -> dict:
    ims = [images[i % len(images)] for i in range(step["batch"])]
    if step["mode"] == "infer":
        return bench.bench_infer(step["kind"], ims, device, step["precision"], iters, warmup, step.get("fast", False))
    return bench.bench_train(step["kind"], ims, device, step["precision"], iters, warmup)


def load_images(folder: str | None, count: int, size: tuple[int, int]) -> tuple[list, str]:
    """Real images from ``folder`` resized to ``size`` (same blob size for batching), else generated ones."""
    import cv2

    paths = sorted(Path(folder).glob("*.jpg"))[:count] if folder else []
    if not paths:
        return bench.synthetic_images(count, *size), "generated"
    h, w = size
    return [cv2.resize(read_image(p), (w, h), interpolation=cv2.INTER_LINEAR) for p in paths], f"{len(paths)} from {folder}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--images", help="folder of .jpg images (default: generated images)")
    p.add_argument("--count", type=int, default=4, help="images for the agreement check")
    p.add_argument("--size", default="800x1216", help="HxW the images are resized to")
    p.add_argument("--models", default="faster,mask,keypoint")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--budget-s", type=float, default=540, help="start no new step after this many seconds")
    p.add_argument("--skip-benchmark", action="store_true")
    p.add_argument("--out", default=os.environ.get("OUT", "device_check_out"))
    args = p.parse_args(argv)
    return cli.run(lambda: _check(args))


def _check(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("device_check: skipped, CUDA is not available here")
        atomic_write_json(out / "device_check.json", {"skipped": "CUDA is not available"})
        return 0
    t0 = time.perf_counter()
    h, w = (int(v) for v in args.size.split("x"))
    models = args.models.split(",")
    images, source = load_images(args.images, args.count, (h, w))
    device = torch.device(args.device)
    result = {**bench.environment(device), "images": source, "size": [h, w], "agreement": [], "speed": [],
              "errors": [], "command": " ".join(sys.argv)}

    def save() -> None:
        result["elapsed_s"] = round(time.perf_counter() - t0, 1)
        atomic_write_json(out / "device_check.json", result)

    for kind in models:
        try:
            r = compare_devices(kind, args.device, images, fast=kind != "faster")
            print(json.dumps({k: r[k] for k in ("model", "passed", "cpu_seconds")}), flush=True)
            result["agreement"].append(r)
        except Exception:   # keep going: the other checks still tell something
            result["errors"].append(f"agreement {kind}: {traceback.format_exc(limit=3)}")
        save()
    steps = [] if args.skip_benchmark else _speed_steps(models, images, extra=True)
    for name, step in steps:
        if time.perf_counter() - t0 > args.budget_s:
            result["errors"].append(f"not run (budget): {name}")
            continue
        try:
            row = run_speed(step, images, device, args.iters, args.warmup)
            result["speed"].append({"step": name, **step, **row})
            print(f"{name}: ours {row['ours_s_per_img']:.4f} s/img, torchvision {row['torchvision_s_per_img']:.4f}"
                  f" s/img, ours faster by {row['ratio_spread']['median']:.2f}x (median of per-pair ratios)", flush=True)
        except Exception:
            result["errors"].append(f"{name}: {traceback.format_exc(limit=3)}")
        torch.cuda.empty_cache() if device.type == "cuda" else None
        save()
    print(f"\n{'check':34s} {'result':>40s}")
    for r in result["agreement"]:
        cells = [f"{t} {100 * min(r['exact'][t]['frac_matched_a'], r['exact'][t]['frac_matched_b']):.1f}%"
                 for t in ("bbox", "segm", "keypoints") if t in r["exact"]]
        print(f"{'agree ' + r['model']:34s} {'PASS' if r['passed'] else 'FAIL':>6s} {' '.join(cells):>33s}")
    for s in result["speed"]:
        r = s["ratio_spread"]
        print(f"{s['step']:34s} {r['median']:6.2f}x ({r['min']:.2f}-{r['max']:.2f}) "
              f"{s['ours_s_per_img']:.4f}/{s['torchvision_s_per_img']:.4f} s/img")
    for e in result["errors"]:
        print("error:", e.splitlines()[0] if e else e)
    return 0 if all(r["passed"] for r in result["agreement"]) and len(result["agreement"]) == len(models) else 1


if __name__ == "__main__":
    sys.exit(main())
