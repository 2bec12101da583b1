#!/usr/bin/env python
"""Test a Detectron model on a COCO-format dataset (Detectron.pytorch's tools/test_net.py).

    python tools/test_net.py --cfg configs/12_2017_baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml \\
        --load_detectron model_final.pkl --dataset coco2017 --output_dir out/mask

Writes Detectron's result files (bbox_/segmentations_/keypoints_<dataset>_results.json)
and metrics.json (all COCO stats plus provenance). ``--resume`` continues an
interrupted run; ``--eval_only`` re-scores existing result files (Detectron's reval.py). Several GPUs or nodes: ``torchrun --nproc_per_node N tools/test_net.py ...``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


from detectron_parity.errors import UserError
from parity.evaluate import summary_lines
from rcnn.config import load_cfg
from rcnn.data.datasets import COCODataset, DatasetError, canonical_dataset_names
from rcnn.engine.test_engine import TestSettings, reevaluate, run_test
from rcnn.engine.devices import init_processes, shutdown_processes
from rcnn.engine.proposal_runs import proposal_file_of
from rcnn.engine.weights import load_model
from rcnn.inference.detector import Detector

# Detectron.pytorch's --dataset names, and Detectron's own catalog names.
DATASET_ALIASES = {"coco2017": "coco_2017_val", "keypoints_coco2017": "keypoints_coco_2017_val"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cfg", required=True, help="Detectron YAML config")
    w = p.add_mutually_exclusive_group()
    w.add_argument("--load_detectron", help="Detectron .pkl weights")
    w.add_argument("--load_ckpt", help="checkpoint written by this project")
    d = p.add_argument_group("dataset: --dataset, or --json with --images")
    d.add_argument("--dataset", help="coco2017 | keypoints_coco2017 | a catalog name such as coco_2017_val")
    d.add_argument("--data_root", help="data root laid out like Detectron's (default: $DETECTRON_DATA_ROOT)")
    d.add_argument("--json", help="COCO-format annotation file")
    d.add_argument("--images", help="image folder of --json")
    p.add_argument("--proposals", help="proposal file for models on precomputed proposals (default: TEST.PROPOSAL_FILES)")
    p.add_argument("--output_dir", help="default: outputs/test/<config name>")
    p.add_argument("--set", dest="opts", nargs="+", default=[], metavar="KEY VALUE", help="config overrides")
    p.add_argument("--limit", type=int, help="only the first N images by id")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --output_dir")
    p.add_argument("--batch_size", type=int, default=1, help="images per forward pass (same-size images)")
    p.add_argument("--device", help="cpu | cuda | cuda:N (default: cuda if available)")
    p.add_argument("--backend", default="pycocotools", choices=["pycocotools", "faster-coco-eval"])
    p.add_argument("--fast", action="store_true",
                   help="paste masks / decode keypoints on the device (not bit-exact; see BENCHMARK.md)")
    p.add_argument("--eval_only", action="store_true",
                   help="only evaluate the result files already in --output_dir (no weights needed)")
    args = p.parse_args(argv)
    if not args.eval_only and not (args.load_detectron or args.load_ckpt):
        p.error("one of --load_detectron or --load_ckpt is required (or --eval_only)")
    if bool(args.json) != bool(args.images) or bool(args.dataset) == bool(args.json):
        p.error("give --dataset, or both --json and --images")
    if args.limit is not None and args.limit <= 0:
        p.error("--limit must be positive")
    if args.batch_size <= 0:
        p.error("--batch_size must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_cfg(args.cfg, args.opts)
        if args.dataset:
            name = canonical_dataset_names([DATASET_ALIASES.get(args.dataset, args.dataset)])[0]
            dataset = COCODataset.from_catalog(name, args.data_root)
        else:
            name = Path(args.json).stem
            dataset = COCODataset(args.json, args.images)
        if dataset.num_classes != cfg.MODEL.NUM_CLASSES:
            raise DatasetError(f"dataset {name} has {dataset.num_classes} classes (with background) but the "
                               f"config says MODEL.NUM_CLASSES {cfg.MODEL.NUM_CLASSES}")
        model_name = Path(args.cfg).stem
        out_dir = Path(args.output_dir or Path("outputs") / "test" / model_name)
        settings = TestSettings(name, out_dir, args.batch_size, args.limit, args.resume, args.backend)
        if cfg.TEST.PRECOMPUTED_PROPOSALS and not args.eval_only:
            settings.proposal_file = proposal_file_of(cfg, args.proposals)
        if args.eval_only:
            metrics = reevaluate(cfg, dataset, settings, model_name)
        else:
            device = init_processes(args.device)
            model, weights = load_model(cfg, args.load_detectron, args.load_ckpt)
            detector = Detector(model, cfg, device, args.batch_size, fast=args.fast)
            metrics = run_test(cfg, detector, dataset, weights, settings, model_name)
    except (UserError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_status", 2)
    except KeyboardInterrupt:
        print("interrupted: rerun with --resume to continue", file=sys.stderr)
        return 130
    finally:
        shutdown_processes()
    if metrics is not None:
        for iou_type, stats in metrics.by_type().items():
            print(f"{iou_type}:")
            print("\n".join(summary_lines(stats)))
        if metrics.box_proposal is not None:
            print("box_proposal:\n" + "\n".join(metrics.box_proposal.lines()))
        print(f"results and metrics.json in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
