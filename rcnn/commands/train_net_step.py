"""Train a Detectron model from scratch with its recipe (Detectron.pytorch's train_net_step.py).

    detectron-train --cfg configs/12_2017_baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml \\
        --imagenet_weights R-50.pkl --output_dir outputs/train/mask
    torchrun --nproc_per_node 8 tools/train_net_step.py ...     # the 8-GPU recipe exactly

The recipe's batch is ``NUM_GPUS x TRAIN.IMS_PER_BATCH`` (16 for the 12_2017 configs). With
fewer processes, gradient accumulation (``--iter_size``, chosen automatically when it
divides) reproduces that batch exactly; ``--bs`` trains another total batch with the linear
scaling rule. Logs Detectron's ``json_stats`` lines (also to ``<output_dir>/train.log``),
snapshots ``ckpt/model_iter{N}.pt``, resumes from the newest one (``TRAIN.AUTO_RESUME``), and
writes ``ckpt/model_final.pt`` and ``ckpt/model_final.pkl`` (Detectron format).
``python tools/train_net_step.py`` runs this module too.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import cast

from convert.checkpoint import load_detectron_weights
from detectron_parity import cli
from rcnn.commands import catalog_name, check_num_classes
from rcnn.config import load_cfg
from rcnn.data.loader import build_train_loader
from rcnn.data.roidb import DatasetSpec, open_datasets, roidb_from_cfg
from rcnn.engine.devices import init_processes, rank_and_world, shutdown_processes
from rcnn.engine.torchvision_body import load_torchvision_backbone
from rcnn.engine.train_engine import TrainSettings, scaled_schedule, train
from rcnn.engine.weights import WeightsError, load_checkpoint_weights, load_imagenet_backbone
from rcnn.modeling import build_model
from rcnn.modeling.init import init_heads
from rcnn.modeling.retinanet import RetinaNet, init_retinanet

DETECTRON_URL = "https://dl.fbaipublicfiles.com/detectron"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_cfg_args(p)
    cli.add_coco_args(p, "coco2017 | keypoints_coco2017 | catalog names (default: TRAIN.DATASETS)")
    cli.add_output_dir_arg(p, help="default: outputs/train/<config name>")
    init = cli.add_weights_args(p)
    init.add_argument("--imagenet_weights", help="ImageNet R-50.pkl (default: TRAIN.WEIGHTS, or its copy in "
                                                 "DOWNLOAD_CACHE when it is a URL)")
    init.add_argument("--torchvision_weights", help="ResNet body from a torchvision state dict (BN folded; "
                                                    "needs --set RESNETS.STRIDE_1X1 False)")
    p.add_argument("--bs", type=int, help="total batch per iteration (default: the recipe's; linear scaling)")
    p.add_argument("--iter_size", type=int, help="minibatches accumulated per iteration (default: automatic)")
    p.add_argument("--nw", type=int, help="data loader workers per process (default: DATA_LOADER.NUM_THREADS)")
    cli.add_device_arg(p)
    p.add_argument("--use_tfboard", action="store_true", help="also write TensorBoard scalars")
    p.add_argument("--no_pkl", action="store_true", help="do not export model_final.pkl")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: backbone and FPN under bf16 autocast (opt-in, not Detectron's arithmetic; docs/speed.md)")
    args = p.parse_args(argv)
    if bool(args.json) != bool(args.images) or (args.json and args.dataset):
        p.error("give --dataset, or both --json and --images, or neither (TRAIN.DATASETS)")
    for flag in ("bs", "iter_size", "nw"):
        if getattr(args, flag) is not None and getattr(args, flag) < (0 if flag == "nw" else 1):
            p.error(f"--{flag} is out of range")
    return args


def imagenet_weights_path(cfg, override: str | None) -> Path:
    """The local ImageNet file: ``--imagenet_weights``, else ``TRAIN.WEIGHTS`` (a URL is looked
    up where Detectron's ``cache_url`` would have put it, under ``DOWNLOAD_CACHE``)."""
    spec = override or cfg.TRAIN.WEIGHTS
    if not spec:
        raise WeightsError("no ImageNet weights: pass --imagenet_weights R-50.pkl or set TRAIN.WEIGHTS")
    if spec.startswith(("http://", "https://")):
        cached = Path(cfg.DOWNLOAD_CACHE) / spec[len(DETECTRON_URL):].lstrip("/") \
            if spec.startswith(DETECTRON_URL) else None
        if cached is None or not cached.is_file():
            raise WeightsError(f"TRAIN.WEIGHTS is the URL {spec}: download it and pass --imagenet_weights PATH"
                               + (f" (or put it at {cached})" if cached else ""))
        return cached
    if not Path(spec).is_file():
        raise WeightsError(f"ImageNet weights file {spec} does not exist")
    return Path(spec)


def main(argv=None) -> int:
    """The command (``detectron-train``); returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return cli.run(lambda: _train(args))


def _train(args: argparse.Namespace) -> int:
    try:
        device = init_processes(args.device)
        rank, world = rank_and_world()
        cfg = load_cfg(args.cfg, args.opts)
        per_step = world * cfg.TRAIN.IMS_PER_BATCH
        recipe = cfg.NUM_GPUS * cfg.TRAIN.IMS_PER_BATCH
        iter_size = args.iter_size or (recipe // per_step if args.bs is None and recipe % per_step == 0 else 1)
        cfg = load_cfg(args.cfg, args.opts + scaled_schedule(cfg, per_step * iter_size))
        specs: list[DatasetSpec]
        if args.dataset:
            specs = [catalog_name(n, "train") for n in args.dataset.split(",")]
        elif args.json:
            specs = [(args.json, args.images)]
        else:
            specs = list(cfg.TRAIN.DATASETS)
        datasets = open_datasets(specs, args.data_root)
        for ds in datasets:
            check_num_classes(ds.annotation_file, ds.num_classes, cfg.MODEL.NUM_CLASSES)
        roidb = roidb_from_cfg(cfg, args.data_root, datasets)

        model = build_model(cfg)
        if cfg.RETINANET.RETINANET_ON:   # build_model is annotated GeneralizedRCNN; it built a RetinaNet
            init_retinanet(cast(RetinaNet, model), cfg, cfg.RNG_SEED)
        else:
            init_heads(model, cfg, cfg.RNG_SEED)
        if args.load_detectron:
            load_detectron_weights(model, args.load_detectron, cfg)
        elif args.load_ckpt:
            load_checkpoint_weights(model, cfg, args.load_ckpt)
        elif args.torchvision_weights:
            load_torchvision_backbone(model, cfg, args.torchvision_weights)
        else:
            load_imagenet_backbone(model, imagenet_weights_path(cfg, args.imagenet_weights))

        output_dir = Path(args.output_dir or Path("outputs") / "train" / Path(args.cfg).stem)
        output_dir.mkdir(parents=True, exist_ok=True)
        if rank == 0:
            log = logging.FileHandler(output_dir / "train.log")
            log.setFormatter(logging.Formatter("%(message)s"))
            logging.getLogger().addHandler(log)
        logging.getLogger(__name__).info(
            "training %s: %d images (with flips), %d process(es) x %d images x iter_size %d = %d images/iter, "
            "lr %g, %d iterations", Path(args.cfg).stem, len(roidb), world, cfg.TRAIN.IMS_PER_BATCH, iter_size,
            per_step * iter_size, cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER)

        def make_batches(consumed: int):
            return iter(build_train_loader(roidb, cfg, rank=rank, world_size=world, num_workers=args.nw,
                                           start_iter=consumed))

        settings = TrainSettings(output_dir, iter_size, cfg.RNG_SEED, args.use_tfboard, not args.no_pkl,
                                 fresh_heads=not (args.load_detectron or args.load_ckpt), precision=args.precision)
        final = train(cfg, model, make_batches, device, settings)
    finally:
        shutdown_processes()
    if rank == 0:
        print(f"final model: {final}")
    return 0

