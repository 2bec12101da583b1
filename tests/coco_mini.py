"""coco-mini for tests that read only its annotations: the shipped JSONs (tests/data/coco-mini-annotations)
beside a ``val2017`` holding the 4 shipped CC BY images and, for the other 75, gray JPEGs of their annotated
size. The roidb and the sampling order use only the JSON's sizes, as Detectron's do."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np

JSONS = ("instances_val2017.json", "person_keypoints_val2017.json")


def annotations_only_coco_mini(test_data: Path, out: Path) -> Path:
    """Build the folder under ``out`` (laid out like ../shared/data/coco-mini-val2017) and return it."""
    (out / "val2017").mkdir(parents=True)
    for name in JSONS:
        shutil.copy(test_data / "coco-mini-annotations" / name, out)
    for im in json.loads((out / JSONS[0]).read_text())["images"]:
        shipped = test_data / "coco-cc-by" / "val2017" / im["file_name"]
        if shipped.is_file():
            shutil.copy(shipped, out / "val2017")
        else:
            cv2.imwrite(str(out / "val2017" / im["file_name"]), np.full((im["height"], im["width"], 3), 128, np.uint8))
    return out
