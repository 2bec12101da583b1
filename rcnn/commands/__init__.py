"""The command-line programs: ``python tools/<name>.py`` (thin shims) and the console commands
``detectron-test-net``, ``detectron-train``, ``detectron-infer`` (setup.cfg) run the same
``main``. What they share beyond the flags of ``detectron_parity.cli``: Detectron.pytorch's
dataset names and the class-count check.
"""
from __future__ import annotations

import os

from rcnn.data.datasets import DatasetError

# Detectron.pytorch's --dataset names -> Detectron's catalog names, per split.
DATASET_ALIASES = {
    "val": {"coco2017": "coco_2017_val", "keypoints_coco2017": "keypoints_coco_2017_val"},
    "train": {"coco2017": "coco_2017_train", "keypoints_coco2017": "keypoints_coco_2017_train"},
}


def catalog_name(name: str, split: str) -> str:
    """Detectron's catalog name of a ``--dataset`` name (Detectron.pytorch's or Detectron's own)."""
    return DATASET_ALIASES[split].get(name, name)


def check_num_classes(name: str | os.PathLike[str], num_classes: int, cfg_num_classes: int) -> None:
    """A dataset whose class count (background included) is not the config's is a user error."""
    if num_classes != cfg_num_classes:
        raise DatasetError(f"dataset {name} has {num_classes} classes (with background) but the "
                           f"config says MODEL.NUM_CLASSES {cfg_num_classes}")
