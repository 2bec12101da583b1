#!/usr/bin/env python
"""Speed side by side, in one process on the same inputs: ours vs torchvision, convert vs
pickle.load, faster-coco-eval vs pycocotools.

    python tools/benchmark.py --mode infer --models faster,mask,keypoint --precision tf32 --batch 8 --json b.json
    python tools/benchmark.py --mode train --batch 2 --json t.json
    python tools/benchmark.py --mode convert --json c.json
    python tools/benchmark.py --mode eval --eval-images 2000 --json e.json
    python tools/benchmark.py --mode fast-vs-exact --models mask,keypoint --json f.json   # --fast's AP cost
    python -m parity benchmark-md --add-speed LABEL=b.json     # into BENCHMARK.md

infer/train: ``rcnn.engine.benchmark`` (calibrated weights for ours, random weights and
``box_score_thresh=0`` for torchvision: 100 detections per image on both sides); every
mode times the two sides in alternating pairs and reports medians and the spread of the
per-pair ratio (``detectron_parity.timing``). Only ratios within one run are comparable.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from detectron_parity import cli
from detectron_parity.fileio import atomic_write_json


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=["infer", "train", "convert", "eval", "fast-vs-exact"], default="infer")
    p.add_argument("--models", default="faster,mask,keypoint", help="comma-separated: faster, mask, keypoint")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="fp32",
                   help="tf32: TF32 matmul/conv on GPU; bf16: autocast (both sides)")
    p.add_argument("--batch", type=int, help="images per forward pass / training step (default: 1 infer, 2 train)")
    p.add_argument("--iters", type=int, help="timed pairs (default: 10 on GPU, 3 on CPU)")
    p.add_argument("--warmup", type=int, default=1, help="untimed pairs first")
    p.add_argument("--size", default="800x1216", help="HxW of the generated input images")
    p.add_argument("--images", help="folder of real images (.jpg) instead of generated ones (resized to --size)")
    p.add_argument("--fast", action="store_true", help="ours with mask paste / keypoint decode on the device")
    p.add_argument("--channels-last", action="store_true", help="ours: channels-last backbone/FPN (opt-in, not exact)")
    p.add_argument("--compile", action="store_true", help="ours: torch.compile the backbone/FPN (opt-in, not exact)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--pkl", help="convert: this .pkl instead of a generated full-size Mask R-CNN one")
    p.add_argument("--eval-images", type=int, default=300, help="eval: generated images (about 18 results each)")
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/coco-mini-val2017"),
                   help="fast-vs-exact: COCO-format folder (instances/person_keypoints_val2017.json, val2017/)")
    p.add_argument("--test-scale", default="400x667", help="fast-vs-exact: TEST.SCALE x TEST.MAX_SIZE")
    p.add_argument("--limit", type=int, help="fast-vs-exact: only the first N images")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        p.error(f"--size {args.size!r}: expected HxW, e.g. 800x1216")
    args.hw = (h, w)
    args.model_list = args.models.split(",")
    if bad := [m for m in args.model_list if m not in ("faster", "mask", "keypoint")]:
        p.error(f"--models: unknown model {bad[0]!r} (faster, mask, keypoint)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available")
    if args.batch is None:
        args.batch = 2 if args.mode == "train" else 1
    if args.iters is None:
        args.iters = 10 if args.device.startswith("cuda") else 3
    if min(args.batch, args.iters, h, w, args.eval_images) <= 0 or args.warmup < 0:
        p.error("--batch, --iters, --size and --eval-images must be positive, --warmup >= 0")
    try:
        args.scale_max = tuple(int(v) for v in args.test_scale.lower().split("x"))
        assert len(args.scale_max) == 2
    except (ValueError, AssertionError):
        p.error(f"--test-scale {args.test_scale!r}: expected SCALExMAX, e.g. 400x667")
    if args.mode == "fast-vs-exact" and not (Path(args.data) / "val2017").is_dir():
        p.error(f"--data {args.data}: no val2017/ folder")
    if args.images and not sorted(Path(args.images).glob("*.jpg")):
        p.error(f"--images {args.images}: no .jpg files")
    return args


def _inputs(args) -> list:
    from rcnn.engine.benchmark import synthetic_images

    h, w = args.hw
    if not args.images:
        return synthetic_images(args.batch, h, w)
    import cv2

    paths = sorted(Path(args.images).glob("*.jpg"))
    return [cv2.resize(cv2.imread(str(paths[i % len(paths)])), (w, h), interpolation=cv2.INTER_LINEAR)
            for i in range(args.batch)]


def run(args, partial=lambda result: None) -> dict:
    """The measurement of ``args.mode`` as a JSON-ready dict (rows + environment);
    ``partial`` gets the result so far after every model (a long run cut short keeps it)."""
    from rcnn.engine import benchmark as bench

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    settings = {"mode": args.mode, "iters": args.iters, "warmup": args.warmup}
    if args.mode == "convert":
        from convert.benchmark import bench_convert

        result = {**settings, "convert": bench_convert(args.iters, args.pkl)}
    elif args.mode == "eval":
        from parity.eval_benchmark import bench_eval

        result = {**settings, "eval": bench_eval(args.eval_images, args.iters, args.warmup)}
    elif args.mode == "fast-vs-exact":
        parts = [bench.bench_fast_vs_exact(kind, args.data, *args.scale_max, args.limit)
                 for kind in args.model_list if kind != "faster"]
        result = {**settings, "fast": {"data": Path(args.data).name, "rows": [r for p in parts for r in p["rows"]],
                                       "parts": [{k: v for k, v in p.items() if k != "rows"} for p in parts]}}
    else:
        images = _inputs(args)
        rows: list[dict] = []
        result = {**settings, "precision": args.precision, "batch": args.batch, "size": list(args.hw),
                  "tf32": args.precision == "tf32", "fast": args.fast, "channels_last": args.channels_last,
                  "compile": args.compile, "inputs": "real: " + args.images if args.images else "generated",
                  "rows": rows, **bench.environment(device), "command": _command()}
        for kind in args.model_list:
            if args.mode == "infer":
                row = bench.bench_infer(kind, images, device, args.precision, args.iters, args.warmup, args.fast,
                                        args.channels_last, args.compile)
            else:
                row = bench.bench_train(kind, images, device, args.precision, args.iters, args.warmup,
                                        args.channels_last, args.compile)
            r = row["ratio_spread"]
            print(f"{args.mode} {kind:9s} ours {row['ours_s_per_img']:.4f} s/img  torchvision "
                  f"{row['torchvision_s_per_img']:.4f} s/img  ours faster by {r['median']:.2f}x "
                  f"(median of per-pair ratios; min-max {r['min']:.2f}-{r['max']:.2f}, n={r['n']})", flush=True)
            rows.append(row)
            partial(result)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    result.update(bench.environment(device))
    result["command"] = _command()
    return result


def _portable(arg: str) -> str:
    """A path argument as BENCHMARK.md may show it: relative to the repository when it lies in the
    repository or beside it (``../shared``), else its file name (no machine's folders in the file)."""
    path = Path(arg)
    if not path.is_absolute():
        return arg
    repo = Path(__file__).resolve().parents[1]
    for root, prefix in ((repo, ""), (repo.parent / "shared", "../shared/")):
        if path.is_relative_to(root):
            return prefix + path.relative_to(root).as_posix()
    return path.name


def _command() -> str | None:
    if not sys.argv[0].endswith("benchmark.py"):
        return None
    return "python tools/benchmark.py " + " ".join(_portable(a) for a in sys.argv[1:])


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return cli.run(lambda: _report(args))


def _report(args: argparse.Namespace) -> int:
    result = run(args, (lambda r: atomic_write_json(args.json, r)) if args.json else (lambda r: None))
    if args.mode == "convert":
        c = result["convert"]
        print(f"convert {c['convert']['seconds']['median']:.2f} s, pickle.load {c['pickle']['seconds']['median']:.2f} s: "
              f"{c['time_ratio']['median']:.2f}x (per pair {c['time_ratio']['min']:.2f}-{c['time_ratio']['max']:.2f}); "
              f"peak {c['convert']['peak_over_file']:.2f}x / {c['pickle']['peak_over_file']:.2f}x the file")
    if args.mode == "eval":
        for r in result["eval"]["rows"]:
            print(f"eval {r['type']}: faster-coco-eval {r['fast_seconds']['median']:.2f} s, pycocotools "
                  f"{r['pycocotools_seconds']['median']:.2f} s: {r['speedup']['median']:.2f}x "
                  f"(per pair {r['speedup']['min']:.2f}-{r['speedup']['max']:.2f}), max stat diff {r['max_stat_diff']:.2g}")
    if args.mode == "fast-vs-exact":
        for r in result["fast"]["rows"]:
            print(f"fast-vs-exact {r['model']} {r['type']}: matched {r['matched']}/{r['n_a']}, identical "
                  f"{r['identical']}, AP exact {r['ap_exact']:.4f} fast {r['ap_fast']:.4f}")
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
