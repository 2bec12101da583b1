"""Test a Detectron model on a COCO-format dataset (Detectron.pytorch's tools/test_net.py).

    detectron-test-net --cfg configs/12_2017_baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml \\
        --load_detectron model_final.pkl --dataset coco2017 --output_dir out/mask

Writes Detectron's result files (bbox_/segmentations_/keypoints_<dataset>_results.json)
and metrics.json (all COCO stats plus provenance). ``--resume`` continues an
interrupted run; ``--eval_only`` re-scores existing result files (Detectron's reval.py).
Several GPUs or nodes: ``torchrun --nproc_per_node N tools/test_net.py ...``.
``python tools/test_net.py`` runs this module too.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from detectron_parity import cli
from parity.evaluate import summary_lines
from parity.metrics import Metrics
from rcnn.commands import catalog_name, check_num_classes
from rcnn.config import load_cfg
from rcnn.data.datasets import COCODataset, canonical_dataset_names
from rcnn.engine.devices import init_processes, shutdown_processes
from rcnn.engine.proposal_runs import proposal_file_of
from rcnn.engine.test_engine import TestSettings, reevaluate, run_test
from rcnn.engine.weights import load_model
from rcnn.inference.detector import Detector


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_cfg_args(p)
    cli.add_weights_args(p)
    cli.add_coco_args(p, "coco2017 | keypoints_coco2017 | a catalog name such as coco_2017_val")
    p.add_argument("--proposals", help="proposal file for models on precomputed proposals (default: TEST.PROPOSAL_FILES)")
    cli.add_output_dir_arg(p, help="default: outputs/test/<config name>")
    p.add_argument("--limit", type=int, help="only the first N images by id")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --output_dir")
    p.add_argument("--batch_size", type=int, default=1, help="images per forward pass (same-size images)")
    cli.add_device_arg(p)
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
    """The command (``detectron-test-net``); returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return cli.run(lambda: _test(args), interrupted="interrupted: rerun with --resume to continue")


def _test(args: argparse.Namespace) -> int:
    try:
        cfg = load_cfg(args.cfg, args.opts)
        if args.dataset:
            name = canonical_dataset_names([catalog_name(args.dataset, "val")])[0]
            dataset = COCODataset.from_catalog(name, args.data_root)
        else:
            name = Path(args.json).stem
            dataset = COCODataset(args.json, args.images)
        check_num_classes(name, dataset.num_classes, cfg.MODEL.NUM_CLASSES)
        model_name = Path(args.cfg).stem
        out_dir = Path(args.output_dir or Path("outputs") / "test" / model_name)
        settings = TestSettings(name, out_dir, args.batch_size, args.limit, args.resume, args.backend)
        if cfg.TEST.PRECOMPUTED_PROPOSALS and not args.eval_only:
            settings.proposal_file = proposal_file_of(cfg, args.proposals)
        metrics: Metrics | None
        if args.eval_only:
            metrics = reevaluate(cfg, dataset, settings, model_name)
        else:
            device = init_processes(args.device)
            model, weights = load_model(cfg, args.load_detectron, args.load_ckpt)
            detector = Detector(model, cfg, device, args.batch_size, fast=args.fast)
            metrics = run_test(cfg, detector, dataset, weights, settings, model_name)
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

