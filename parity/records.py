"""Loading and validating COCO ground truth and result records.

pycocotools fails on bad input with bare ``AssertionError``/``KeyError``/``IndexError``
deep inside ``loadRes`` or ``COCOeval`` (or, worse, silently scores a malformed record).
Everything here checks the input first and raises :class:`~detectron_parity.fileio.InputError` with
a one-line message naming the file and the offending record, and otherwise leaves the
records exactly as pycocotools will see them.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from detectron_parity.fileio import InputError, PathLike, load_json

IOU_TYPES = ("bbox", "segm", "keypoints")
NUM_KEYPOINTS = 17  # COCOeval's default OKS sigmas cover the 17 COCO person keypoints
_RESULT_FIELD = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}


def check_iou_type(iou_type: str) -> str:
    """Return ``iou_type`` if it is one of bbox/segm/keypoints, else raise."""
    if iou_type not in IOU_TYPES:
        raise InputError(f"unknown evaluation type {iou_type!r} (expected one of {', '.join(IOU_TYPES)})")
    return iou_type


# JSON gives plain int and float: test those exactly first, since the ABC checks that also
# admit NumPy numbers cost ~1 us each and run several times per record (100k+ records).
def _is_int(x: Any) -> bool:
    return type(x) is int or (isinstance(x, numbers.Integral) and not isinstance(x, bool))


def _is_num(x: Any) -> bool:
    if type(x) is float:
        return math.isfinite(x)
    return type(x) is int or (isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x))


def load_gt(path: PathLike, iou_type: str | None = None) -> dict:
    """Load a COCO ground-truth JSON file and check it (see :func:`check_gt`)."""
    dataset = load_json(path, "ground truth")
    check_gt(dataset, str(path), iou_type)
    return dataset


def check_gt(dataset: Any, source: str, iou_type: str | None = None) -> None:
    """Check the parts of a COCO dataset dict that ``COCOeval`` relies on.

    With ``iou_type='keypoints'`` every annotation must carry ``keypoints`` and
    ``num_keypoints``, which catches an instances file passed where a person-keypoints
    file was meant.
    """
    if not isinstance(dataset, Mapping):
        raise InputError(f"{source}: ground truth must be a JSON object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise InputError(f"{source}: ground truth has no {key!r} list (is this a COCO annotation file?)")
    for i, img in enumerate(dataset["images"]):
        if not isinstance(img, Mapping) or not _is_int(img.get("id")):
            raise InputError(f"{source}: images[{i}] has no integer 'id'")
    for i, cat in enumerate(dataset["categories"]):
        if not isinstance(cat, Mapping) or not _is_int(cat.get("id")):
            raise InputError(f"{source}: categories[{i}] has no integer 'id'")
    required = ["image_id", "category_id", "area", "iscrowd"]
    if iou_type is not None:
        required.append(_RESULT_FIELD[check_iou_type(iou_type)])
        if iou_type == "keypoints":
            required.append("num_keypoints")
    for i, ann in enumerate(dataset["annotations"]):
        if not isinstance(ann, Mapping):
            raise InputError(f"{source}: annotations[{i}] is not a JSON object")
        for key in required:
            if key not in ann:
                hint = " (not a person-keypoints file?)" if key in ("keypoints", "num_keypoints") else ""
                raise InputError(f"{source}: annotations[{i}] (id={ann.get('id')}) has no {key!r}{hint}")


def load_results(path: PathLike) -> list[dict]:
    """Load a COCO result file: a JSON list of detection records."""
    records = load_json(path, "result file")
    if not isinstance(records, list):
        kind = "object" if isinstance(records, dict) else type(records).__name__
        raise InputError(f"{path}: a result file must be a JSON list of records, got a JSON {kind}")
    return records


def infer_iou_types(records: Sequence[Mapping], source: str = "results") -> list[str]:
    """The evaluation types a result list supports, from its first record's fields.

    Detectron writes one file per type (bbox records, segmentation-only records,
    keypoint-only records); detectron2 adds a bbox to every record, so such a file is
    both a bbox and a segm (or keypoints) result.
    """
    if not records:
        raise InputError(f"{source}: no records, cannot tell the result type")
    first = records[0]
    if not isinstance(first, Mapping):
        raise InputError(f"{source}: record 0 is not a JSON object")
    types = [t for t in IOU_TYPES if _RESULT_FIELD[t] in first]
    if not types:
        raise InputError(f"{source}: record 0 has none of bbox/segmentation/keypoints")
    return types


class _GtIndex:
    """What record validation needs from the ground truth: ids and image sizes."""

    def __init__(self, dataset: Mapping):
        self.image_sizes = {img["id"]: (img.get("height"), img.get("width")) for img in dataset["images"]}
        self.category_ids = {cat["id"] for cat in dataset["categories"]}


def _describe(source: str, i: int, rec: Any) -> str:
    if isinstance(rec, Mapping):
        return f"{source}: record {i} (image_id={rec.get('image_id')!r}, category_id={rec.get('category_id')!r})"
    return f"{source}: record {i}"


def _check_bbox(bbox: Any) -> str | None:
    if isinstance(bbox, np.ndarray):
        bbox = bbox.tolist()
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(map(_is_num, bbox)):
        return "'bbox' must be 4 finite numbers [x, y, w, h]"
    if bbox[2] < 0 or bbox[3] < 0:
        return f"'bbox' has a negative width or height: {list(bbox)}"
    return None


def _check_rle(segm: Any, size: tuple) -> str | None:
    if not isinstance(segm, Mapping) or "counts" not in segm or "size" not in segm:
        return "'segmentation' must be a compressed RLE {'size': [h, w], 'counts': str} (polygons are not results)"
    if not isinstance(segm["counts"], (str, bytes)):
        return "'segmentation' counts must be a compressed RLE string"
    h, w = size
    if h is not None and w is not None and list(segm["size"]) != [h, w]:
        return f"'segmentation' size {list(segm['size'])} differs from the image size [{h}, {w}]"
    return None


def _check_keypoints(kps: Any) -> str | None:
    if isinstance(kps, np.ndarray):
        kps = kps.ravel().tolist()
    n = 3 * NUM_KEYPOINTS
    if not isinstance(kps, (list, tuple)) or len(kps) != n or not all(map(_is_num, kps)):
        return f"'keypoints' must be {n} finite numbers ({NUM_KEYPOINTS} x [x, y, v])"
    return None


def validate_results(records: Any, gt: Mapping | None, iou_type: str, source: str = "results") -> None:
    """Check result records (against the ground truth when ``gt`` is given).

    Each record must be an object with an integer ``image_id`` (present in the ground
    truth), an integer ``category_id`` (present in the ground truth), a finite ``score``
    and a valid field for ``iou_type``. ``COCO.loadRes`` chooses how to read *all*
    records from the fields of the first one, so every record must also have the field
    that record 0 makes it use (e.g. a ``bbox`` on every record when the first has one).
    """
    check_iou_type(iou_type)
    if not isinstance(records, (list, tuple)):
        raise InputError(f"{source}: results must be a list of records, got {type(records).__name__}")
    if not records:
        return
    index = _GtIndex(gt) if gt is not None else None
    fields = {_RESULT_FIELD[iou_type]}
    first = records[0]
    if isinstance(first, Mapping):
        if "bbox" in first and not (isinstance(first["bbox"], list) and not first["bbox"]):
            fields.add("bbox")  # loadRes' bbox branch reads every record's box
        elif "segmentation" in first:
            fields.add("segmentation")
        elif "keypoints" in first:
            fields.add("keypoints")
    for i, rec in enumerate(records):
        problem = _check_record(rec, fields, index)
        if problem is not None:
            raise InputError(f"{_describe(source, i, rec)}: {problem}")


def _check_record(rec: Any, fields: set[str], index: _GtIndex | None) -> str | None:
    if not isinstance(rec, Mapping):
        return "not a JSON object"
    image_id = rec.get("image_id")
    if not _is_int(image_id):
        return "missing or non-integer 'image_id'"
    if index is not None and image_id not in index.image_sizes:
        return f"image_id {image_id} is not in the ground truth"
    category_id = rec.get("category_id")
    if not _is_int(category_id):
        return "missing or non-integer 'category_id'"
    if index is not None and category_id not in index.category_ids:
        return f"unknown category_id {category_id} (not in the ground truth categories)"
    if not _is_num(rec.get("score")):
        return "missing or non-finite 'score'"
    for field in fields:
        if field not in rec:
            return f"missing {field!r}"
    if "bbox" in fields:
        problem = _check_bbox(rec["bbox"])
        if problem:
            return problem
    if "segmentation" in fields:
        size = index.image_sizes[image_id] if index is not None else (None, None)
        problem = _check_rle(rec["segmentation"], size)
        if problem:
            return problem
    if "keypoints" in fields:
        return _check_keypoints(rec["keypoints"])
    return None
