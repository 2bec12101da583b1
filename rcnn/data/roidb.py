"""Training ground truth ("roidb") built exactly as Detectron builds it.

Why: which boxes, polygons and keypoints a model is trained on, in which float32 values, and
which images take part at all decide what Detectron's 1x recipe learns; they follow
``datasets/json_dataset.py::JsonDataset.get_roidb(gt=True)`` and ``datasets/roidb.py``
(``extend_with_flipped_entries``, ``filter_for_training``) rule for rule (docs/detectron.md §5.2, §4.11):

* an annotation is dropped when ``area < TRAIN.GT_MIN_AREA``, when ``ignore == 1``, or when its
  box ``[x, y, x + max(0, w-1), y + max(0, h-1)]`` clipped to ``[0, W-1] x [0, H-1]`` (float64,
  then stored as float32) fails ``area > 0 and x2 > x1 and y2 > y1`` -- so boxes of width or
  height <= 1 px go too; polygons with fewer than 3 points are removed from an annotation's
  segmentation but the annotation stays, even with no polygon left;
* keypoints are Detectron's int32 ``(G, 3, J)`` rows (x, y, v), truncated like its
  ``gt_kps[0, i] = x[i]``; an image "has visible keypoints" when one kept object has
  ``sum(v) > 0`` (v = 1, labelled but hidden, counts);
* flipping appends a mirrored copy of every entry: ``x1' = W - x2 - 1`` in float32, polygon
  ``x' = W - x - 1`` through a NumPy array (integer polygons stay integers, mixed ones all
  become floats), RLEs decoded, mirrored and re-encoded (Detectron wraps the result in a
  one-element list; here it is the dict itself, ``counts`` as str), keypoints swapped
  left/right with ``x' = W - x - 1`` and ``x = 0`` wherever ``v == 0``;
* an entry takes part in training if its gt-only ``max_overlaps`` (1 for a non-crowd box, -1
  for a crowd box) has one value ``>= FG_THRESH`` or in ``[BG_THRESH_LO, BG_THRESH_HI)``, i.e.
  it has a non-crowd box; keypoint models also need ``has_visible_keypoints``.

Nothing is cached on disk.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_util

from rcnn.config import CfgNode
from rcnn.data.datasets import COCO_KEYPOINT_FLIP_MAP, COCODataset, DatasetError, canonical_dataset_names
from rcnn.data.train_batch import ImageTargets
from rcnn.ops import boxes as box_ops

__all__ = [
    "DatasetSpec",
    "RoidbEntry",
    "combined_roidb_for_training",
    "extend_with_flipped_entries",
    "filter_for_training",
    "flip_entry",
    "gt_entry",
    "gt_roidb",
    "keypoint_flip_permutation",
    "open_datasets",
    "roidb_from_cfg",
]

logger = logging.getLogger(__name__)

# A catalog name, an (annotation json, image folder) pair, or an opened dataset.
DatasetSpec = str | tuple[str | os.PathLike, str | os.PathLike] | COCODataset


@dataclass
class RoidbEntry:
    """One (possibly flipped) training image with its ground truth, like Detectron's roidb dict.

    Arrays are shared between an entry and its flipped copy where Detectron shares them; treat
    them as read-only.
    """

    image: Path                     # image file
    image_id: int
    height: int                     # from the json, as Detectron (not from the decoded image)
    width: int
    boxes: np.ndarray               # (G, 4) float32 [x1, y1, x2, y2], +1 convention
    gt_classes: np.ndarray          # (G,) int32 contiguous class (1..K-1)
    is_crowd: np.ndarray            # (G,) bool
    seg_areas: np.ndarray           # (G,) float32, the json's 'area'
    segms: list                     # G polygon lists (each [x0, y0, x1, ...]) or RLE dicts
    gt_keypoints: np.ndarray | None = None   # (G, 3, J) int32 (x, y, v); None without keypoints
    has_visible_keypoints: bool = False
    flipped: bool = False

    @property
    def max_overlaps(self) -> np.ndarray:
        """Detectron's gt-only ``max_overlaps`` (float32): 1 for a box, -1 for a crowd region."""
        return np.where(self.is_crowd, np.float32(-1), np.float32(1))

    def to_targets(self) -> ImageTargets:
        """The entry as the model's ``ImageTargets`` (keypoints as exact float32 integers)."""
        kps = None if self.gt_keypoints is None else torch.from_numpy(self.gt_keypoints.astype(np.float32))
        return ImageTargets(
            height=self.height, width=self.width,
            boxes=torch.from_numpy(self.boxes.copy()),
            classes=torch.from_numpy(self.gt_classes.astype(np.int64)),
            is_crowd=torch.from_numpy(self.is_crowd.copy()),
            segms=list(self.segms), keypoints=kps, flipped=self.flipped, image_id=self.image_id,
        )


def gt_roidb(dataset: COCODataset, gt_min_area: float = -1.0) -> list[RoidbEntry]:
    """``JsonDataset.get_roidb(gt=True)``: one entry per image, sorted by image id."""
    entries = [_gt_entry(dataset, image_id, gt_min_area) for image_id in dataset.image_ids]
    dropped = len(dataset.coco.getAnnIds(imgIds=dataset.image_ids)) - sum(len(e.boxes) for e in entries)
    if dropped:
        logger.info("%s: %d annotation(s) dropped (area < GT_MIN_AREA, ignore, or a box of no area inside the "
                    "image), as Detectron drops them", dataset.annotation_file.name, dropped)
    unreadable = [e.image for e in entries if not _readable(e.image)]
    if len(unreadable) == len(entries) and entries:
        raise DatasetError(f"{dataset.annotation_file}: none of its {len(entries)} images can be read, "
                           f"e.g. {unreadable[0]}")
    if unreadable:
        # Detectron would stop mid-run at the first of them (cv2.imread returns None).
        logger.warning("%s: skipping %d image(s) that are missing or not images, e.g. %s",
                       dataset.annotation_file.name, len(unreadable), unreadable[0])
        bad = set(unreadable)
        entries = [e for e in entries if e.image not in bad]
    return entries


def gt_entry(dataset: COCODataset, image_id: int, gt_min_area: float = -1.0) -> RoidbEntry:
    """One image's ``gt_roidb`` entry, without checking that the image file exists
    (proposal evaluation needs only the annotations)."""
    return _gt_entry(dataset, image_id, gt_min_area)


def _readable(path: Path) -> bool:
    """The file exists and OpenCV recognises its signature (a cheap check: no decoding)."""
    return path.is_file() and cv2.haveImageReader(str(path))


def _gt_entry(dataset: COCODataset, image_id: int, gt_min_area: float) -> RoidbEntry:
    """``_prep_roidb_entry`` + ``_add_gt_annotations`` for one image."""
    coco = dataset.coco
    info = coco.imgs[image_id]
    height, width = int(info["height"]), int(info["width"])
    objs = coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=None))
    objs = [o for o in objs if not o["area"] < gt_min_area and o.get("ignore", 0) != 1]
    num_kps = 0 if dataset.keypoint_names is None else len(dataset.keypoint_names)
    if objs:
        # xywh_to_xyxy + clip_xyxy_to_image in float64, as Detectron's Python floats
        xywh = torch.tensor([o["bbox"] for o in objs], dtype=torch.float64).reshape(-1, 4)
        xyxy = box_ops.clip_tiled(box_ops.xywh_to_xyxy(xywh), height, width).numpy()
        area = np.array([o["area"] for o in objs], dtype=np.float64)
        keep = np.flatnonzero((area > 0) & (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1]))
    else:
        xyxy, area, keep = np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)
    valid = [objs[i] for i in keep]
    kps = _gt_keypoints(valid, num_kps) if dataset.keypoint_names is not None else None
    return RoidbEntry(
        image=dataset.image_path(image_id), image_id=int(image_id), height=height, width=width,
        boxes=xyxy[keep].astype(np.float32).reshape(-1, 4),
        gt_classes=np.array([dataset.category_id_to_contiguous_id[o["category_id"]] for o in valid], np.int32),
        is_crowd=np.array([bool(o["iscrowd"]) for o in valid], dtype=bool),
        seg_areas=area[keep].astype(np.float32),
        segms=[_drop_short_polygons(o["segmentation"], o["id"]) for o in valid],
        gt_keypoints=kps,
        has_visible_keypoints=bool(kps is not None and (kps[:, 2, :].sum(axis=1) > 0).any()),
    )


def _drop_short_polygons(segm: Any, ann_id: int) -> Any:
    """Polygons keep only parts with >= 3 points; an RLE dict is returned as given."""
    if isinstance(segm, list):
        return [p for p in segm if len(p) >= 6]
    if isinstance(segm, dict):
        return segm
    raise DatasetError(f"annotation {ann_id}: segmentation is neither polygons nor RLE ({type(segm).__name__})")


def _gt_keypoints(objs: Sequence[dict], num_kps: int) -> np.ndarray:
    """``_get_gt_keypoints`` for every object: (G, 3, J) int32 (x, y, v), values truncated."""
    rows = []
    for o in objs:
        kp = o.get("keypoints")
        if kp is None or len(kp) != 3 * num_kps:
            raise DatasetError(f"annotation {o['id']}: needs 'keypoints' with {num_kps} (x, y, v) triples "
                               f"(its category file names {num_kps} keypoints)")
        rows.append(np.asarray(kp).reshape(num_kps, 3).T)
    if not rows:
        return np.zeros((0, 3, num_kps), np.int32)
    return np.stack(rows).astype(np.int32)


def keypoint_flip_permutation(keypoint_names: Sequence[str]) -> np.ndarray:
    """Index array mapping each keypoint to its mirror partner (Detectron's COCO flip map)."""
    names = list(keypoint_names)
    perm = np.arange(len(names))
    for left, right in COCO_KEYPOINT_FLIP_MAP.items():
        if left not in names or right not in names:
            raise DatasetError(f"keypoint names {names} lack the pair {left}/{right} that flipping swaps")
        li, ri = names.index(left), names.index(right)
        perm[li], perm[ri] = ri, li
    return perm


def flip_entry(entry: RoidbEntry, keypoint_perm: np.ndarray | None = None) -> RoidbEntry:
    """The horizontally mirrored copy of an entry (``extend_with_flipped_entries``)."""
    width = entry.width
    boxes = entry.boxes.copy()
    boxes[:, 0] = width - entry.boxes[:, 2] - 1  # float32 arithmetic, as Detectron
    boxes[:, 2] = width - entry.boxes[:, 0] - 1
    if not (boxes[:, 2] >= boxes[:, 0]).all():
        raise DatasetError(f"image {entry.image_id}: a box has x2 < x1 after flipping")
    kps = None
    if entry.gt_keypoints is not None:
        if keypoint_perm is None:
            raise ValueError("flipping keypoints needs keypoint_perm (keypoint_flip_permutation)")
        kps = entry.gt_keypoints[:, :, keypoint_perm].copy()
        kps[:, 0, :] = width - kps[:, 0, :] - 1
        kps[:, 0, :][kps[:, 2, :] == 0] = 0  # COCO: x = y = 0 where v = 0 (y is already 0 there)
    segms = [_flip_segm(s, entry.height, width) for s in entry.segms]
    return replace(entry, boxes=boxes, segms=segms, gt_keypoints=kps, flipped=True)


def _flip_segm(segm: Any, height: int, width: int) -> Any:
    """``segms.flip_segms`` for one object (a compressed RLE, which Detectron cannot flip, too)."""
    if isinstance(segm, list):
        flipped = []
        for poly in segm:
            p = np.array(poly)
            p[0::2] = width - np.array(poly[0::2]) - 1
            flipped.append(p.tolist())
        return flipped
    if isinstance(segm["counts"], list):  # uncompressed (crowd) RLE
        rle = mask_util.frPyObjects([segm], height, width)
        mask = mask_util.decode(rle)[:, ::-1, :]
    else:
        mask = mask_util.decode(segm)[:, ::-1, None]
    (out,) = mask_util.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(v) for v in out["size"]], "counts": out["counts"].decode("ascii")}


def extend_with_flipped_entries(roidb: list[RoidbEntry], dataset: COCODataset) -> list[RoidbEntry]:
    """``roidb`` followed by the flipped copy of every entry (a new list)."""
    perm = None if dataset.keypoint_names is None else keypoint_flip_permutation(dataset.keypoint_names)
    return roidb + [flip_entry(e, perm) for e in roidb]


def filter_for_training(roidb: Sequence[RoidbEntry], fg_thresh: float = 0.5, bg_thresh_hi: float = 0.5,
                        bg_thresh_lo: float = 0.0, keypoints_on: bool = False) -> list[RoidbEntry]:
    """Entries with at least one fg or bg RoI (and visible keypoints for keypoint models)."""
    def is_valid(entry: RoidbEntry) -> bool:
        overlaps = entry.max_overlaps
        fg = overlaps >= fg_thresh
        bg = (overlaps < bg_thresh_hi) & (overlaps >= bg_thresh_lo)
        return bool(fg.any() or bg.any()) and (entry.has_visible_keypoints or not keypoints_on)

    kept = [e for e in roidb if is_valid(e)]
    logger.info("Filtered %d roidb entries: %d -> %d", len(roidb) - len(kept), len(roidb), len(kept))
    return kept


def open_datasets(specs: Sequence[DatasetSpec], root: str | os.PathLike[str] | None = None) -> list[COCODataset]:
    """Datasets for ``TRAIN.DATASETS``-style specs: catalog names (Detectron's 2014 names are
    rewritten by ``canonical_dataset_names``; a 2014 train pair becomes train2017, placed where
    the first name of the group was), ``(json, image_dir)`` pairs, or opened datasets."""
    names = [s for s in specs if isinstance(s, str)]
    first_name = next((i for i, s in enumerate(specs) if isinstance(s, str)), -1)
    out: list[COCODataset] = []
    for i, spec in enumerate(specs):
        if isinstance(spec, COCODataset):
            out.append(spec)
        elif not isinstance(spec, str):
            out.append(COCODataset(*spec))
        elif i == first_name:
            out.extend(COCODataset.from_catalog(n, root) for n in canonical_dataset_names(names))
    return out


def combined_roidb_for_training(datasets: Sequence[COCODataset], *, use_flipped: bool = True,
                                keypoints_on: bool = False, fg_thresh: float = 0.5,
                                bg_thresh_hi: float = 0.5, bg_thresh_lo: float = 0.0,
                                gt_min_area: float = -1.0) -> list[RoidbEntry]:
    """``roidb.combined_roidb_for_training`` without proposal files: per dataset its gt roidb and
    (with ``use_flipped``) the flipped copies, concatenated in order, then filtered."""
    roidb: list[RoidbEntry] = []
    for dataset in datasets:
        part = gt_roidb(dataset, gt_min_area)
        if use_flipped:
            part = extend_with_flipped_entries(part, dataset)
        logger.info("Loaded %s: %d entries", dataset.annotation_file.name, len(part))
        roidb.extend(part)
    roidb = filter_for_training(roidb, fg_thresh, bg_thresh_hi, bg_thresh_lo, keypoints_on)
    if not roidb:
        raise DatasetError("no image left for training (none has a non-crowd box"
                           + (" and visible keypoints)" if keypoints_on else ")"))
    num_boxes = sum(int((~e.is_crowd).sum()) for e in roidb)
    logger.info("Training roidb: %d entries, %d non-crowd boxes", len(roidb), num_boxes)
    return roidb


def roidb_from_cfg(cfg: CfgNode, root: str | os.PathLike[str] | None = None,
                   datasets: Sequence[DatasetSpec] | None = None) -> list[RoidbEntry]:
    """The training roidb for a config: ``TRAIN.DATASETS`` (or ``datasets``), ``USE_FLIPPED``,
    ``GT_MIN_AREA``, the fg/bg thresholds and ``MODEL.KEYPOINTS_ON``."""
    if cfg.TRAIN.PROPOSAL_FILES:
        raise DatasetError("TRAIN.PROPOSAL_FILES (precomputed proposals) is not supported")
    specs = list(datasets if datasets is not None else cfg.TRAIN.DATASETS)
    if not specs:
        raise DatasetError("no training dataset: set TRAIN.DATASETS")
    return combined_roidb_for_training(
        open_datasets(specs, root), use_flipped=cfg.TRAIN.USE_FLIPPED, keypoints_on=cfg.MODEL.KEYPOINTS_ON,
        fg_thresh=cfg.TRAIN.FG_THRESH, bg_thresh_hi=cfg.TRAIN.BG_THRESH_HI,
        bg_thresh_lo=cfg.TRAIN.BG_THRESH_LO, gt_min_area=cfg.TRAIN.GT_MIN_AREA,
    )
