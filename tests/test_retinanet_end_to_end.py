"""RetinaNet end to end: a calibrated synthetic Detectron-format retinanet_R-50-FPN_1x .pkl
(real names and shapes, momentum and preserved ImageNet blobs, Python-2 pickle), loaded
strictly and run on real COCO images (shipped in tests/data) on CPU."""
import numpy as np
import pytest

from convert.errors import WeightsMismatchError
from rcnn.config import load_cfg
from rcnn.data.preprocess import read_image
from rcnn.engine.weights import load_model
from rcnn.inference.coco_results import coco_records
from rcnn.inference.detector import Detector
from rcnn.synthetic import write_synthetic_detectron_pkl
from tests.conftest import REPO_ROOT
from tests.models import CALIBRATION_IMAGE, CONFIGS

CONFIG = REPO_ROOT / "configs/12_2017_baselines/retinanet_R-50-FPN_1x.yaml"
SMALL = ["TEST.SCALE", "256", "TEST.MAX_SIZE", "427"]
IMAGES = ["000000397133.jpg", "000000553664.jpg"]   # shipped, CC BY (tests/data)


@pytest.fixture(scope="module")
def retinanet_pkl(test_data, tmp_path_factory):
    path = tmp_path_factory.mktemp("retinanet") / "retinanet.pkl"
    write_synthetic_detectron_pkl(load_cfg(CONFIG, SMALL), read_image(test_data / CALIBRATION_IMAGE), str(path))
    return path


def _images(test_data):
    return [read_image(test_data / "coco-cc-by" / "val2017" / f) for f in IMAGES]


def test_retinanet_runs_end_to_end(test_data, retinanet_pkl):
    cfg = load_cfg(CONFIG, SMALL)
    model, info = load_model(cfg, load_detectron=str(retinanet_pkl))
    assert info.format == "detectron-pkl"
    images = _images(test_data)
    results = Detector(model, cfg)(images)
    for im, d in zip(images, results):
        assert (d.height, d.width) == im.shape[:2] and d.masks is None and d.keypoints is None
        assert 60 <= len(d) <= 100                     # the cap is a hard cut for RetinaNet
        assert d.scores.dtype == np.float32 and d.scores.min() > 0.05 and d.scores.max() < 1
        assert len(np.unique(d.scores)) == len(d)      # calibrated: no tied scores
        assert len(np.unique(d.classes)) >= 5
        assert np.all(d.boxes[:, 0] >= 0) and np.all(d.boxes[:, 2] <= d.width - 1)
        assert np.all(d.boxes[:, 1] >= 0) and np.all(d.boxes[:, 3] <= d.height - 1)
        # Detectron's cls_boxes order: by class, then by descending score.
        assert np.all(np.diff(d.classes) >= 0)
        for c in np.unique(d.classes):
            assert np.all(np.diff(d.scores[d.classes == c]) < 0)
    records = coco_records([(397133, results[0])], list(range(81)))
    assert set(records) == {"bbox"} and len(records["bbox"]) == len(results[0])


def test_retinanet_pkl_with_an_rcnn_config_names_the_config_it_needs(retinanet_pkl):
    cfg = load_cfg(CONFIGS["mask"])
    with pytest.raises(WeightsMismatchError, match=r"the file is a RetinaNet, R-50-FPN, 81 classes .*use the config "
                                                   r"12_2017_baselines/retinanet_R-50-FPN_1x.yaml") as info:
        load_model(cfg, load_detectron=str(retinanet_pkl))
    msg = str(info.value)
    assert "missing from the file: " in msg and "fpn_inner_res2_2_sum_lateral_w" in msg
    assert "unexpected: " in msg and "retnet_cls_conv_n0_fpn3_w" in msg and "\n" not in msg


def test_retinanet_full_scale_800_1333(test_data, retinanet_pkl):
    """Detectron's real test scale once: 427x640 -> 800x1199 resized, padded to 800x1216
    (COARSEST_STRIDE 128), P3..P7 of 100x152 .. 7x10."""
    cfg = load_cfg(CONFIG)
    assert (cfg.TEST.SCALE, cfg.TEST.MAX_SIZE, cfg.FPN.COARSEST_STRIDE) == (800, 1333, 128)
    model, _ = load_model(cfg, load_detectron=str(retinanet_pkl))
    det = Detector(model, cfg)
    im = _images(test_data)[0]
    assert det.prepare(im).blob_shape == (800, 1216)
    d = det([im])[0]
    assert 60 <= len(d) <= 100 and len(np.unique(d.scores)) == len(d) and len(np.unique(d.classes)) >= 5
