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
CALIBRATION_IMAGE = "coco-mini-val2017/val2017/000000000139.jpg"


def make_pkl(kind: str, shared_data: Path, out_dir: Path, with_extras: bool) -> Path:
    cfg = load_cfg(CONFIGS[kind], SMALL)
    path = out_dir / f"{kind}.pkl"
    write_synthetic_detectron_pkl(cfg, read_image(shared_data / CALIBRATION_IMAGE), str(path),
                                  with_extras=with_extras)
    return path
