"""Detection on a COCO-format dataset, Detectron's result files, and COCO evaluation.

``tools/test_net.py`` is a thin CLI over ``run_test``. Images are processed in
ascending id order (Detectron's), in batches of images that share a blob size.

Resumable: each process appends one JSON line per finished image to
``partial/detections.rank<r>.jsonl`` (flushed per batch); ``resume=True`` reads
every such file, skips the images already done and finishes the rest. A line cut
short by a kill is discarded. Floats are written with full float32 precision, so
a resumed run produces the same files as an uninterrupted one.

Distributed (``torchrun``): the images still to do are split round-robin over
ranks; rank 0 waits for all, merges every rank's lines and writes the same files a
single process would.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from detectron_parity.fileio import InputError, atomic_write_json
from parity.evaluate import evaluate
from parity.metrics import Metrics, save_metrics
from rcnn.config import cfg_to_yaml
from rcnn.data.datasets import COCODataset
from rcnn.data.preprocess import read_image
from rcnn.engine.devices import barrier, rank_and_world
from rcnn.engine.proposal_runs import PROPOSALS_FILE, load_test_proposals, save_and_evaluate_proposals
from rcnn.engine.weights import WeightsInfo
from rcnn.inference.coco_results import coco_records
from rcnn.inference.detections import ImageDetections, detections_from_record, detections_to_line
from rcnn.inference.detector import Detector

logger = logging.getLogger(__name__)

RESULT_FILES = {"bbox": "bbox_{}_results.json", "segm": "segmentations_{}_results.json",
                "keypoints": "keypoints_{}_results.json"}


@dataclass
class TestSettings:
    dataset_name: str
    output_dir: Path
    batch_size: int = 1
    limit: int | None = None
    resume: bool = False
    backend: str = "pycocotools"
    progress: bool = True
    proposal_file: Path | None = None   # precomputed-proposal models (rcnn.engine.proposal_runs)


# -- per-image result lines (rcnn.inference.detections) ---------------------------------------
def _read_lines(path: Path) -> Iterator[dict]:
    """Complete lines of a partial-results file (a last line cut by a kill is dropped)."""
    with open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                logger.warning("%s: dropping an incomplete last line (interrupted run)", path)
                break
            yield json.loads(line)


def _open_for_append(path: Path):
    """Append after the last complete line, cutting off a partial one."""
    if path.exists():
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            with open(path, "r+b") as f:
                f.truncate(end)
    return open(path, "a")


# -- the run ---------------------------------------------------------------------------------
def detect_dataset(detector: Detector, dataset: COCODataset, image_ids: Sequence[int], partial_dir: Path,
                   settings: TestSettings) -> int:
    """Detect this rank's share of the images not yet in any partial file.

    Returns how many images all ranks together had to do."""
    rank, world = rank_and_world()
    done = set()
    for path in sorted(partial_dir.glob("detections.rank*.jsonl")):
        done.update(rec["image_id"] for rec in _read_lines(path))
    remaining = [i for i in image_ids if i not in done]
    todo = remaining[rank::world]
    if done and rank == 0:
        logger.info("resuming: %d images already done, %d to go", len(done), len(image_ids) - len(done))
    proposals = (load_test_proposals(settings.proposal_file, todo) if detector.cfg.TEST.PRECOMPUTED_PROPOSALS
                 else {})
    bar = tqdm(total=len(todo), desc=f"detect (rank {rank})" if world > 1 else "detect", unit="img",
               disable=not settings.progress or rank != 0, dynamic_ncols=True)

    def load(image_id: int):
        return detector.prepare(read_image(dataset.image_path(image_id)), proposals.get(image_id))

    batches = [todo[s:s + settings.batch_size] for s in range(0, len(todo), settings.batch_size)]
    # Decoding and resizing the next batch, and pasting / decoding the previous one (OpenCV
    # releases the GIL), overlap the current forward pass.
    with bar, ThreadPoolExecutor(max_workers=2) as loader, ThreadPoolExecutor(max_workers=1) as host, \
            _open_for_append(partial_dir / f"detections.rank{rank}.jsonl") as out:

        def write(ids: list[int], finished) -> None:
            out.write("".join(detections_to_line(i, d) for i, d in zip(ids, finished.result())))
            out.flush()
            os.fsync(out.fileno())
            bar.update(len(ids))

        pending = [loader.submit(load, i) for i in batches[0]] if batches else []
        previous = None
        for k, ids in enumerate(batches):
            prepared = [f.result() for f in pending]
            pending = [loader.submit(load, i) for i in batches[k + 1]] if k + 1 < len(batches) else []
            raw = detector.forward(prepared)
            if previous is not None:
                write(*previous)
            previous = (ids, host.submit(detector.finish, len(prepared), raw))
        if previous is not None:
            write(*previous)
    return len(remaining)


def _gt_subset(dataset: COCODataset, image_ids: Sequence[int]) -> dict:
    """The ground truth restricted to the evaluated images (``--limit``)."""
    full = dataset.coco.dataset
    keep = set(image_ids)
    sub = {k: v for k, v in full.items() if k not in ("images", "annotations")}
    sub["images"] = [im for im in full["images"] if im["id"] in keep]
    sub["annotations"] = [a for a in full.get("annotations", []) if a["image_id"] in keep]
    return sub


def run_test(cfg, detector: Detector, dataset: COCODataset, weights: WeightsInfo,
             settings: TestSettings, model_name: str) -> Metrics | None:
    """Detect, write Detectron's result files and ``metrics.json``; rank 0 returns the metrics."""
    rank, world = rank_and_world()
    out_dir = Path(settings.output_dir)
    partial_dir = out_dir / "partial"
    image_ids = list(dataset.image_ids)
    if settings.limit is not None:
        image_ids = image_ids[: settings.limit]
    if rank == 0:
        partial_dir.mkdir(parents=True, exist_ok=True)
        if not settings.resume:
            for stale in partial_dir.glob("detections.rank*.jsonl"):
                stale.unlink()
    barrier()
    start = time.perf_counter()
    processed = detect_dataset(detector, dataset, image_ids, partial_dir, settings)
    seconds = time.perf_counter() - start
    barrier()
    if rank != 0:
        return None

    results: dict[int, ImageDetections] = {}
    for path in sorted(partial_dir.glob("detections.rank*.jsonl")):
        for rec in _read_lines(path):
            image_id, d = detections_from_record(rec)
            results[image_id] = d
    missing = [i for i in image_ids if i not in results]
    if missing:
        raise RuntimeError(f"{len(missing)} images have no results (first: {missing[:5]})")
    records = {} if cfg.MODEL.RPN_ONLY else coco_records([(i, results[i]) for i in image_ids],
                                                         dataset.contiguous_id_to_category_id,
                                                         cfg.KRCNN.KEYPOINT_CONFIDENCE)
    gt = dataset.coco if settings.limit is None else _gt_subset(dataset, image_ids)
    stats = {}
    for iou_type, recs in records.items():
        atomic_write_json(out_dir / RESULT_FILES[iou_type].format(settings.dataset_name), recs)
        stats[iou_type] = evaluate(gt, recs, iou_type, settings.backend, source=RESULT_FILES[iou_type])
    if cfg.MODEL.RPN_ONLY:   # rpn_proposals.pkl and Detectron's proposal recall
        stats["box_proposal"] = save_and_evaluate_proposals(cfg, dataset, [(i, results[i]) for i in image_ids], out_dir)
    metrics = Metrics(**stats, provenance=_provenance(cfg, weights, settings, model_name, len(image_ids),
                                                      processed, seconds, detector.device, world))
    save_metrics(metrics, out_dir / "metrics.json")
    return metrics


def reevaluate(cfg, dataset: COCODataset, settings: TestSettings, model_name: str) -> Metrics:
    """Evaluate the result files already in the output folder (Detectron's ``tools/reval.py``)."""
    out_dir = Path(settings.output_dir)
    image_ids = list(dataset.image_ids)
    if settings.limit is not None:
        image_ids = image_ids[: settings.limit]
    if cfg.MODEL.RPN_ONLY:
        return _reevaluate_proposals(cfg, dataset, settings, model_name, image_ids)
    gt = dataset.coco if settings.limit is None else _gt_subset(dataset, image_ids)
    types = ["bbox"] + ["segm"] * cfg.MODEL.MASK_ON + ["keypoints"] * cfg.MODEL.KEYPOINTS_ON
    paths = {t: out_dir / RESULT_FILES[t].format(settings.dataset_name) for t in types}
    if not any(p.is_file() for p in paths.values()):
        raise InputError(f"no result file to evaluate in {out_dir} (looked for {', '.join(p.name for p in paths.values())})")
    stats = {t: evaluate(gt, p, t, settings.backend) for t, p in paths.items() if p.is_file()}
    provenance = {"label": out_dir.name, "model": model_name, "dataset": settings.dataset_name,
                  "backend": settings.backend, "images": len(image_ids), "evaluated": "existing result files",
                  "versions": _versions(), "config": cfg_to_yaml(cfg)}
    metrics = Metrics(**stats, provenance=provenance)
    save_metrics(metrics, out_dir / "metrics.json")
    return metrics


def _reevaluate_proposals(cfg, dataset: COCODataset, settings: TestSettings, model_name: str,
                          image_ids: list[int]) -> Metrics:
    """``--eval_only`` of an RPN-only run: score the ``rpn_proposals.pkl`` already written."""
    from parity.proposals import evaluate_proposal_file

    path = Path(settings.output_dir) / PROPOSALS_FILE
    if not path.is_file():
        raise InputError(f"no {PROPOSALS_FILE} to evaluate in {settings.output_dir}")
    provenance = {"label": Path(settings.output_dir).name, "model": model_name, "dataset": settings.dataset_name,
                  "images": len(image_ids), "evaluated": "existing proposal file", "versions": _versions(),
                  "config": cfg_to_yaml(cfg)}
    metrics = Metrics(box_proposal=evaluate_proposal_file(dataset, path, image_ids, cfg.TEST.CLASS_SPECIFIC_AR),
                      provenance=provenance)
    save_metrics(metrics, Path(settings.output_dir) / "metrics.json")
    return metrics


def _versions() -> dict:
    import cv2
    import pycocotools
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": np.__version__,
            "opencv": cv2.__version__, "pycocotools": getattr(pycocotools, "__version__", "unknown"),
            "python": platform.python_version()}


def _provenance(cfg, weights: WeightsInfo, settings: TestSettings, model_name: str, num_images: int,
                processed: int, seconds: float, device: torch.device, world: int) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "label": settings.output_dir.name,
        "model": model_name,
        "weights_source": weights.source,
        "weights": weights.path,
        "weights_sha256": weights.sha256,
        "weights_format": weights.format,
        "dataset": settings.dataset_name,
        "backend": settings.backend,
        "images": num_images,
        "images_this_invocation": processed,
        "seconds": round(seconds, 3),
        "images_per_second": round(processed / seconds, 4) if seconds > 0 and processed else None,
        "device": f"{device.type}: {name}",
        "processes": world,
        "threads_per_process": torch.get_num_threads(),
        "batch_size": settings.batch_size,
        "versions": _versions(),
        "config": cfg_to_yaml(cfg),
    }
