"""Run a Detectron model on images: draw the detections and write them as JSON.

    detectron-infer --cfg configs/12_2017_baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml \\
        --load_detectron model_final.pkl --images a.jpg b.jpg --output_dir infer_outputs

For each image ``<name>.png`` (boxes, class names and scores, masks, keypoints) and
``<name>.json`` (every detection: box [x1, y1, x2, y2], score, class, COCO category
id, mask RLE, keypoints) are written to ``--output_dir``. ``python tools/infer_simple.py`` runs
this module too.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import cv2
from tqdm import tqdm

from detectron_parity import cli
from detectron_parity.fileio import atomic_write_bytes, atomic_write_json
from rcnn.config import load_cfg
from rcnn.data.datasets import COCO_CATEGORY_IDS, COCO_CLASSES, COCODataset, DatasetError
from rcnn.data.preprocess import read_image
from rcnn.engine.devices import resolve_device
from rcnn.engine.weights import load_model
from rcnn.inference.detector import Detector, ImageDetections
from rcnn.modeling import UnsupportedModelError
from rcnn.vis import draw_detections

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_cfg_args(p)
    cli.add_weights_args(p, required=True)
    i = p.add_mutually_exclusive_group(required=True)
    i.add_argument("--images", nargs="+", help="image files")
    i.add_argument("--image_dir", help="every image in this folder")
    cli.add_output_dir_arg(p, default="infer_outputs")
    p.add_argument("--dataset", default="coco", choices=["coco", "keypoints_coco"],
                   help="class names of the model (Detectron.pytorch's flag)")
    p.add_argument("--classes_json", help="COCO-format annotation file whose categories name the classes")
    p.add_argument("--thresh", type=float, default=0.7, help="draw detections scoring at least this")
    p.add_argument("--kp_thresh", type=float, default=2.0, help="draw keypoints whose logit passes this")
    cli.add_device_arg(p)
    return p.parse_args(argv)


def class_names(args, num_classes: int) -> tuple[list[str], list[int]]:
    """Names and COCO category ids of the model's contiguous classes."""
    if args.classes_json:
        ds = COCODataset(args.classes_json, ".")
        names, cats = list(ds.classes), [0] + [ds.contiguous_id_to_category_id[j] for j in range(1, ds.num_classes)]
    elif args.dataset == "keypoints_coco":
        names, cats = ["__background__", "person"], [0, 1]
    else:
        names, cats = list(COCO_CLASSES), [0] + list(COCO_CATEGORY_IDS)
    if len(names) != num_classes:
        raise DatasetError(f"{len(names)} class names for a model with MODEL.NUM_CLASSES {num_classes}: "
                           "pass --dataset or --classes_json matching the model")
    return names, cats


def detections_json(d: ImageDetections, names: list[str], cats: list[int]) -> list[dict]:
    out = []
    for k in range(len(d)):
        c = int(d.classes[k])
        rec = {"bbox": [float(v) for v in d.boxes[k]], "score": float(d.scores[k]), "class": names[c],
               "category_id": cats[c]}
        if d.masks is not None:
            rec["segmentation"] = d.masks[k]
        if d.keypoints is not None:
            rec["keypoints"] = [[float(x), float(y), float(logit)] for x, y, logit in d.keypoints[k][:3].T]
        out.append(rec)
    return out


def main(argv=None) -> int:
    """The command (``detectron-infer``); returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return cli.run(lambda: _infer(args))


def _infer(args: argparse.Namespace) -> int:
    cfg = load_cfg(args.cfg, args.opts)
    if cfg.TEST.PRECOMPUTED_PROPOSALS:
        raise UnsupportedModelError(f"{args.cfg} runs on precomputed proposals (MODEL.FASTER_RCNN False): "
                                    "use tools/test_net.py --proposals FILE")
    names, cats = class_names(args, cfg.MODEL.NUM_CLASSES)
    if args.image_dir:
        folder = Path(args.image_dir)
        if not folder.is_dir():
            raise DatasetError(f"image folder {folder} does not exist")
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise DatasetError(f"no images in {folder}")
    else:
        paths = [Path(p) for p in args.images]
    model, _ = load_model(cfg, args.load_detectron, args.load_ckpt)
    detector = Detector(model, cfg, resolve_device(args.device))
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in tqdm(paths, desc="infer", unit="img"):
        im = read_image(path)
        dets = detector([im])[0]
        drawn = draw_detections(im, dets, names, args.thresh, args.kp_thresh)
        ok, png = cv2.imencode(".png", drawn)
        if not ok:
            raise OSError(f"cannot encode the drawing of {path}")
        atomic_write_bytes(out_dir / f"{path.stem}.png", png.tobytes())
        atomic_write_json(out_dir / f"{path.stem}.json",
                          {"image": str(path), "height": dets.height, "width": dets.width,
                           "detections": detections_json(dets, names, cats)})
    print(f"wrote {len(paths)} images and their detections to {out_dir}")
    return 0

