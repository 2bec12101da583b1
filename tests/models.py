"""Synthetic Detectron-format weights for the end-to-end tests (built once per session)."""
from __future__ import annotations

from pathlib import Path

from rcnn.config import load_cfg
from rcnn.data.preprocess import read_image
from rcnn.synthetic import write_synthetic_detectron_pkl
from tests.conftest import REPO_ROOT

CONFIGS = {kind: REPO_ROOT / f"configs/12_2017_baselines/e2e_{kind}_rcnn_R-50-FPN_1x.yaml"
           for kind in ("faster", "mask", "keypoint")}
# Small test scale: the real 800/1333 path is exercised once, in test_end_to_end.
SMALL = ["TEST.SCALE", "320", "TEST.MAX_SIZE", "533"]
# Relative to tests/data (shipped, CC BY): the same weights on every checkout.
CALIBRATION_IMAGE = "coco-cc-by/val2017/000000397133.jpg"


def make_pkl(kind: str, test_data: Path, out_dir: Path, with_extras: bool) -> Path:
    cfg = load_cfg(CONFIGS[kind], SMALL)
    path = out_dir / f"{kind}.pkl"
    write_synthetic_detectron_pkl(cfg, read_image(test_data / CALIBRATION_IMAGE), str(path),
                                  with_extras=with_extras)
    return path
