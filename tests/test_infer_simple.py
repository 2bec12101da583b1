"""tools/infer_simple.py: drawings and JSON detections for a few real images."""
import json
import subprocess
import sys

import cv2
import numpy as np
import pycocotools.mask as mask_util

from tests.conftest import REPO_ROOT
from tests.models import CONFIGS, SMALL

INFER = str(REPO_ROOT / "tools" / "infer_simple.py")


def _run(args):
    return subprocess.run([sys.executable, INFER, *args], capture_output=True, text=True, cwd=REPO_ROOT)


def test_draws_and_writes_detections(test_data, synthetic_pkls, tmp_path):
    images = [test_data / "coco-cc-by" / "val2017" / f for f in ("000000397133.jpg", "000000183709.jpg")]
    proc = _run(["--cfg", str(CONFIGS["mask"]), "--load_detectron", str(synthetic_pkls["mask"]),
                 "--images", *map(str, images), "--output_dir", str(tmp_path), "--thresh", "0.1", "--set", *SMALL])
    assert proc.returncode == 0, proc.stderr[-2000:]
    for path in images:
        original = cv2.imread(str(path))
        drawn = cv2.imread(str(tmp_path / f"{path.stem}.png"))
        assert drawn.shape == original.shape
        assert (drawn != original).any(axis=2).mean() > 0.01      # something was drawn
        data = json.loads((tmp_path / f"{path.stem}.json").read_text())
        dets = data["detections"]
        assert 60 <= len(dets) <= 110 and (data["height"], data["width"]) == original.shape[:2]
        d = dets[0]
        assert set(d) == {"bbox", "score", "class", "category_id", "segmentation"}
        assert d["class"] != "__background__" and 1 <= d["category_id"] <= 90
        assert mask_util.decode(d["segmentation"]).shape == original.shape[:2]


def test_keypoints_in_json(test_data, synthetic_pkls, tmp_path):
    image = test_data / "coco-cc-by" / "val2017" / "000000397133.jpg"
    proc = _run(["--cfg", str(CONFIGS["keypoint"]), "--load_detectron", str(synthetic_pkls["keypoint"]),
                 "--images", str(image), "--output_dir", str(tmp_path), "--dataset", "keypoints_coco",
                 "--set", *SMALL])
    assert proc.returncode == 0, proc.stderr[-2000:]
    dets = json.loads((tmp_path / "000000397133.json").read_text())["detections"]
    kps = np.array([d["keypoints"] for d in dets])
    assert kps.shape == (len(dets), 17, 3) and all(d["class"] == "person" for d in dets)


def test_bad_inputs_exit_2(synthetic_pkls, tmp_path):
    base = ["--cfg", str(CONFIGS["keypoint"]), "--load_detectron", str(synthetic_pkls["keypoint"]),
            "--output_dir", str(tmp_path), "--set", *SMALL]
    cases = [
        (["--images", str(tmp_path / "missing.jpg"), "--dataset", "keypoints_coco"], "missing.jpg"),
        (["--image_dir", str(tmp_path / "nowhere"), "--dataset", "keypoints_coco"], "nowhere"),
        (["--images", str(tmp_path / "x.jpg")], "NUM_CLASSES 2"),     # 81 COCO names for a 2-class model
    ]
    for args, message in cases:
        proc = _run(base + args)
        assert proc.returncode == 2
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and message in last, last


def test_precomputed_proposal_config_is_a_one_line_error(tmp_path):
    cfg = REPO_ROOT / "configs" / "12_2017_baselines" / "fast_rcnn_R-50-FPN_1x.yaml"
    proc = _run(["--cfg", str(cfg), "--load_detectron", str(tmp_path / "none.pkl"), "--images", "x.jpg",
                 "--output_dir", str(tmp_path)])
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "precomputed proposals" in last and "--proposals" in last, last
