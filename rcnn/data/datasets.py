"""COCO datasets under Detectron's names, and the class/keypoint conventions of its models.

Why: Detectron's configs name datasets (``TEST.DATASETS: ('coco_2014_minival',)``) and its
models number classes in a fixed way (0 = background, then the JSON's categories in the order
``COCO.getCatIds()`` returns them); both must match for the model-zoo weights to mean anything.

Data root: the ``root`` argument, else the environment variable ``DETECTRON_DATA_ROOT``. Under
it the official COCO 2017 release, laid out like Detectron's ``detectron/datasets/data``::

    <root>/coco/annotations/instances_{train,val}2017.json
    <root>/coco/annotations/person_keypoints_{train,val}2017.json
    <root>/coco/annotations/image_info_test{,-dev}2017.json
    <root>/coco/{train,val,test}2017/<file_name>

Detectron's 2014 names are served from these files: ``coco_2014_minival`` *is* ``val2017``
(same 5000 images and ids), and ``coco_2014_train`` + ``coco_2014_valminusminival`` together
*are* ``train2017``; ``canonical_dataset_names`` rewrites a config's tuple accordingly.
Any other COCO-format pair is read with ``COCODataset(json_file, image_dir)``.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from pycocotools.coco import COCO

from detectron_parity.errors import UserError

__all__ = [
    "COCO_CATEGORY_IDS",
    "COCO_CLASSES",
    "COCO_KEYPOINT_FLIP_MAP",
    "COCO_KEYPOINT_NAMES",
    "DATA_ROOT_ENV",
    "COCODataset",
    "DatasetError",
    "canonical_dataset_names",
    "dataset_names",
    "get_data_root",
    "get_dataset_paths",
]

DATA_ROOT_ENV = "DETECTRON_DATA_ROOT"


class DatasetError(UserError, ValueError):
    """An unknown dataset name, or a data root, annotation file or image folder that is not there."""


# name -> (image folder, annotation file), both relative to the data root.
_CATALOG: Mapping[str, tuple[str, str]] = {
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
    "coco_2017_test": ("coco/test2017", "coco/annotations/image_info_test2017.json"),
    "coco_2017_test-dev": ("coco/test2017", "coco/annotations/image_info_test-dev2017.json"),
    "keypoints_coco_2017_train": ("coco/train2017", "coco/annotations/person_keypoints_train2017.json"),
    "keypoints_coco_2017_val": ("coco/val2017", "coco/annotations/person_keypoints_val2017.json"),
}
# Detectron's 2014 names that denote exactly one 2017 split.
_ALIASES: Mapping[str, str] = {
    "coco_2014_minival": "coco_2017_val",
    "keypoints_coco_2014_minival": "keypoints_coco_2017_val",
}
# Detectron's 2014 training pairs: only their union exists as files (train2017).
_UNIONS: Mapping[tuple[str, str], str] = {
    ("coco_2014_train", "coco_2014_valminusminival"): "coco_2017_train",
    ("keypoints_coco_2014_train", "keypoints_coco_2014_valminusminival"): "keypoints_coco_2017_train",
}

# Detectron's datasets/dummy_datasets.py get_coco_dataset(): contiguous id -> class name.
COCO_CLASSES: tuple[str, ...] = (
    "__background__", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train",
    "truck", "boat", "traffic light", "fire hydrant", "stop sign", "parking meter", "bench",
    "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe",
    "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana",
    "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake",
    "chair", "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
# The COCO category id of each class in COCO_CLASSES[1:] (the official ids skip 12, 26, ...).
COCO_CATEGORY_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27,
    28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53,
    54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80,
    81, 82, 84, 85, 86, 87, 88, 89, 90,
)
# Detectron's utils/keypoints.py get_keypoints(): heatmap channel order and left/right pairs.
COCO_KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
COCO_KEYPOINT_FLIP_MAP: Mapping[str, str] = {
    "left_eye": "right_eye",
    "left_ear": "right_ear",
    "left_shoulder": "right_shoulder",
    "left_elbow": "right_elbow",
    "left_wrist": "right_wrist",
    "left_hip": "right_hip",
    "left_knee": "right_knee",
    "left_ankle": "right_ankle",
}


def dataset_names() -> list[str]:
    """Every name ``get_dataset_paths`` accepts."""
    return sorted([*_CATALOG, *_ALIASES])


def canonical_dataset_names(names: Sequence[str]) -> tuple[str, ...]:
    """Rewrite Detectron's 2014 names in a ``TRAIN/TEST.DATASETS`` tuple to the 2017 splits
    holding the same images; a 2014 training half without its other half is an error, since
    no 2017 file holds it alone."""
    names = list(names)
    for pair, union in _UNIONS.items():
        if all(n in names for n in pair):  # the union takes the place of the first half listed
            first = min(names.index(n) for n in pair)
            names = [union if i == first else n for i, n in enumerate(names) if i == first or n not in pair]
        for n in pair:
            if n in names:
                raise DatasetError(
                    f"dataset {n} exists only as part of {union} (= {' + '.join(pair)}) in the "
                    f"COCO 2017 layout; list both halves or use {union}"
                )
    for n in names:
        if n not in _CATALOG and n not in _ALIASES:
            raise DatasetError(f"unknown dataset {n!r}; known: {', '.join(dataset_names())}")
    return tuple(_ALIASES.get(n, n) for n in names)


def get_data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """``root`` if given, else ``$DETECTRON_DATA_ROOT``; it must be an existing folder."""
    if root is None:
        root = os.environ.get(DATA_ROOT_ENV)
        if not root:
            raise DatasetError(f"no data root: pass one or set the environment variable {DATA_ROOT_ENV}")
    path = Path(root)
    if not path.is_dir():
        raise DatasetError(f"data root {path} is not a folder (given directly or by {DATA_ROOT_ENV})")
    return path


def get_dataset_paths(name: str, root: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
    """``(annotation_file, image_dir)`` of a catalog dataset, both checked to exist."""
    (canonical,) = canonical_dataset_names([name])
    image_dir, annotation_file = _CATALOG[canonical]
    base = get_data_root(root)
    paths = (base / annotation_file, base / image_dir)
    for path in paths:
        if not path.exists():
            raise DatasetError(f"{name}: {path} not found (data root from the argument or {DATA_ROOT_ENV})")
    return paths


class COCODataset:
    """A COCO-format JSON and its image folder, with Detectron's id conventions.

    ``classes[j]`` is the name of contiguous class ``j`` (0 = ``'__background__'``); class
    ``j >= 1`` is the j-th id of ``COCO.getCatIds()`` (JSON order, ascending in every official
    file), exactly as Detectron's ``JsonDataset``. Image ids are sorted as in its ``get_roidb``.
    """

    def __init__(self, annotation_file: str | os.PathLike[str], image_dir: str | os.PathLike[str]) -> None:
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        self.coco = _load_coco(self.annotation_file)
        category_ids = self.coco.getCatIds()
        categories = self.coco.loadCats(category_ids)
        self.classes: list[str] = ["__background__"] + [c["name"] for c in categories]
        self.contiguous_id_to_category_id: dict[int, int] = {j: c for j, c in enumerate(category_ids, 1)}
        self.category_id_to_contiguous_id: dict[int, int] = {c: j for j, c in enumerate(category_ids, 1)}
        self.image_ids: list[int] = sorted(self.coco.getImgIds())
        # As Detectron: keypoint names come from the 'person' category when the file has them.
        person = [c for c in categories if c["name"] == "person" and "keypoints" in c]
        self.keypoint_names: list[str] | None = list(person[0]["keypoints"]) if person else None

    @classmethod
    def from_catalog(cls, name: str, root: str | os.PathLike[str] | None = None) -> COCODataset:
        """The dataset Detectron calls ``name`` (see ``dataset_names()``)."""
        return cls(*get_dataset_paths(name, root))

    @property
    def num_classes(self) -> int:
        """Background included, as ``MODEL.NUM_CLASSES``."""
        return len(self.classes)

    def image_path(self, image_id: int) -> Path:
        """Where the image's ``file_name`` lives."""
        return self.image_dir / self.coco.imgs[image_id]["file_name"]


def _load_coco(annotation_file: Path) -> COCO:
    """pycocotools' COCO index, quietly, with one-line errors naming the file."""
    try:
        with open(annotation_file, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise DatasetError(f"cannot read annotation file {annotation_file}: {e.strerror or e}") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise DatasetError(f"annotation file {annotation_file} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not {"images", "categories"} <= data.keys():
        raise DatasetError(f"annotation file {annotation_file} is not COCO format (needs 'images' and 'categories')")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex() prints progress
        coco.createIndex()
    return coco
