#!/usr/bin/env python
"""One-shot accelerator check: correctness of the CUDA path against the CPU path, then speed.

For each model, calibrated weights are built once (on CPU) and the same images run through
``Detector`` on CPU and on ``--device``: detections must agree up to conv/GEMM rounding
(matched one to one per class, box IoU ~1, same masks/keypoints within a pixel). Then
``tools/benchmark.py`` measures ours vs torchvision on the device, fp32 and TF32, batch 1
and 8. Everything is printed and written to ``$OUT`` (or ``--out``) as JSON.

    python tools/device_check.py --device cuda --out "$OUT"

Needs pycocotools on the device machine (carry it as a wheel; see the device notes).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark  # noqa: E402  (tools/benchmark.py)
from parity.match import match_records  # noqa: E402
from rcnn.config import load_cfg  # noqa: E402
from rcnn.inference.coco_results import coco_records  # noqa: E402
from rcnn.inference.detector import Detector  # noqa: E402
from rcnn.modeling import build_model  # noqa: E402
from rcnn.synthetic import calibrate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def compare_devices(kind: str, device: str, images: list[np.ndarray]) -> dict:
    cfg = load_cfg(REPO / f"configs/12_2017_baselines/e2e_{kind}_rcnn_R-50-FPN_1x.yaml")
    model = build_model(cfg)
    calibrate(model, cfg, images[0])
    cpu = Detector(model, cfg, "cpu")(images)
    start = time.perf_counter()
    dev = Detector(model, cfg, device)(images)
    seconds = time.perf_counter() - start
    cats = list(range(cfg.MODEL.NUM_CLASSES))
    out = {"model": kind, "images": len(images), "device_seconds_first_pass": round(seconds, 3),
           "dets_cpu": [len(d) for d in cpu], "dets_device": [len(d) for d in dev]}
    for iou_type in ("bbox", "segm", "keypoints"):
        a = coco_records(list(enumerate(cpu)), cats).get(iou_type)
        b = coco_records(list(enumerate(dev)), cats).get(iou_type)
        if a is None:
            continue
        report = match_records(a, b, iou_type)
        out[iou_type] = report.to_dict()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--out", default=os.environ.get("OUT", "device_check_out"))
    p.add_argument("--skip-benchmark", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = {"device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
            "torch": torch.__version__}
    images = benchmark.synthetic_images(args.images, 800, 1216)
    results = []
    for kind in ("faster", "mask", "keypoint"):
        r = compare_devices(kind, args.device, images)
        print(json.dumps(r), flush=True)
        results.append(r)
    (out / "device_check.json").write_text(json.dumps({**info, "results": results}, indent=1))
    if not args.skip_benchmark:
        for tf32 in (False, True):
            for batch in (1, 8):
                name = f"bench_{'tf32' if tf32 else 'fp32'}_b{batch}.json"
                benchmark.main(["--device", args.device, "--batch", str(batch), "--iters", "10", "--warmup", "3",
                                "--json", str(out / name)] + (["--tf32"] if tf32 else []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
