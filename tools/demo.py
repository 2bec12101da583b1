#!/usr/bin/env python
"""The embedded default (``make demo``): train detectors here, export them to Detectron, test both.

1. generates a small COCO-format dataset of shapes (``rcnn.toy``) under ``--output_dir``;
2. for Faster and Mask R-CNN R-50-FPN (``--kinds``; Keypoint R-CNN too with
   ``--kinds faster mask keypoint``) trains a model with Detectron's recipe at toy sizes from a
   random ResNet-50 body (no ImageNet weights are needed), writing ``model_final.pt`` and the
   Detectron ``model_final.pkl``;
3. converts the ``.pkl`` back to a PyTorch checkpoint (``convert``);
4. runs Detectron-exact inference + COCO evaluation (test_net's ``run_test``) with the ``.pkl``
   and with the converted checkpoint, and compares the two (``parity compare``, tolerance 0);
5. prints the metrics side by side and draws one image's detections to a PNG.

No network, no ../shared data. The model is evaluated on its own training images: the run
shows that training, export and conversion work end to end, not generalisation.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import cv2
from tqdm import tqdm

from convert.checkpoint import pkl_to_pt
from detectron_parity import cli
from parity import compare
from rcnn.data.datasets import COCODataset
from rcnn.engine.test_engine import TestSettings, run_test
from rcnn.engine.weights import load_model
from rcnn.inference.detector import Detector
from rcnn.toy import KINDS, ap50, config_path, make_shapes_dataset, train_toy
from rcnn.vis import draw_detections

ITERS = {"faster": 150, "mask": 150, "keypoint": 200}


def table(rows: list[tuple[str, str, tuple, tuple]]) -> str:
    """Plain-text COCO table; -1 (no ground truth in that area range) shows as n/a."""
    width = max(len("model"), *(len(r[0]) for r in rows)) + 2
    lines, header = [], None
    for model, iou_type, names, stats in rows:
        if names != header:
            header = names
            lines.append(f"{'model':<{width}}{'type':<11}" + "".join(f"{n:>7}" for n in names))
        lines.append(f"{model:<{width}}{iou_type:<11}"
                     + "".join(f"{100 * v:7.1f}" if v >= 0 else f"{'n/a':>7}" for v in stats))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", default="demo_output")
    p.add_argument("--images", type=int, default=4, help="generated images (default %(default)s)")
    p.add_argument("--kinds", nargs="+", default=["faster", "mask"], choices=KINDS, help="models to train")
    p.add_argument("--iters", type=int, help="training iterations per model (default: 150, keypoint 200)")
    args = p.parse_args(argv)
    if args.images < 2 or (args.iters is not None and args.iters < 5):
        p.error("--images must be >= 2 and --iters >= 5")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return cli.run(lambda: run(Path(args.output_dir), args.images, args.kinds, args.iters))


def run(out: Path, num_images: int, kinds: list[str], iters: int | None) -> int:
    start = time.perf_counter()
    print(f"[1/5] generating a {num_images}-image COCO-format dataset of shapes in {out / 'data'}", flush=True)
    img_dir, instances, keypoints = make_shapes_dataset(out / "data", num_images)
    first = min(img_dir.iterdir())
    image = cv2.imread(str(first))
    rows, verdicts, drawn = [], [], None
    for kind in kinds:
        ann = keypoints if kind == "keypoint" else instances
        dataset = COCODataset(ann, img_dir)
        n = iters or ITERS[kind]
        print(f"[2/5] {kind}: training {n} iterations (Detectron's recipe at toy sizes, random ResNet-50 body)",
              flush=True)
        with tqdm(total=n, desc=f"      train {kind}", unit="it", dynamic_ncols=True) as bar:
            cfg, final = train_toy(kind, dataset, image, out / "train" / kind, n, lambda _: bar.update())
        cfg_path = config_path(kind)
        pkl = final.with_suffix(".pkl")
        back = out / "weights" / f"{kind}_from_pkl.pt"
        back.parent.mkdir(parents=True, exist_ok=True)
        print(f"[3/5] {kind}: {pkl} -> {back}", flush=True)
        print(f"      {pkl_to_pt(pkl, back, cfg).summary()}", flush=True)
        print(f"[4/5] {kind}: inference + COCO evaluation with the .pkl and with the converted .pt", flush=True)
        runs = {}
        for label, source in (("pkl", {"load_detectron": str(pkl)}), ("pt", {"load_ckpt": str(back)})):
            model, weights = load_model(cfg, **source)
            detector = Detector(model, cfg)
            settings = TestSettings(ann.stem, out / "test" / kind / label, progress=False)
            metrics = run_test(cfg, detector, dataset, weights, settings, cfg_path.stem)
            runs[label] = metrics
            for iou_type, stats in metrics.by_type().items():
                rows.append((f"{kind} ({label})", iou_type, stats.names, stats.stats))
            if drawn is None and label == "pt":
                drawn = out / "detections.png"
                dets = detector([image])[0]
                cv2.imwrite(str(drawn), draw_detections(image, dets, dataset.classes, thresh=0.5))
        print(f"[5/5] {kind}: parity compare pt vs pkl (tolerance 0)", flush=True)
        result = compare.compare([compare.Row.from_metrics("pt", runs["pt"])],
                                 compare.Row.from_metrics("pkl", runs["pkl"]), tolerance=0.0)
        main_type = "keypoints" if kind == "keypoint" else "bbox"
        verdicts.append((kind, result.passed, {t: ap50(runs["pt"], t) for t in runs["pt"].by_type()}, main_type))

    print("\nCOCO metrics (%) of the models trained here, on their own training images:")
    print(table(rows))
    ok = True
    for kind, same, ap, main_type in verdicts:
        learned = ap[main_type] >= (0.3 if kind == "keypoint" else 0.5)
        ok &= same and learned
        print(f"{kind}: pkl and pt metrics {'identical' if same else 'DIFFER'}; "
              + ", ".join(f"{t} AP50 {100 * v:.1f}" for t, v in ap.items())
              + ("" if learned else "  (below the expected AP50: the model did not learn)"))
    print(f"\nTrained models: {out / 'train'}/<model>/ckpt/model_final.{{pt,pkl}}; results and metrics.json: "
          f"{out / 'test'}/<model>/<pkl|pt>/")
    if drawn is not None:
        print(f"Detections drawn on {first.name}: {drawn}")
    print(f"Total time {time.perf_counter() - start:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
