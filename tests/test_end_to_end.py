"""All three models: a synthetic Detectron-format .pkl (real names and shapes, Python-2
pickle, calibrated weights) loaded strictly and run on real COCO images (shipped in tests/data) on CPU."""
import numpy as np
import pycocotools.mask as mask_util
import pytest

from rcnn.config import load_cfg
from rcnn.data.preprocess import read_image
from rcnn.engine.weights import load_model
from rcnn.inference.detector import Detector
from tests.models import CONFIGS, SMALL

IMAGES = ["000000397133.jpg", "000000553664.jpg", "000000255165.jpg"]   # shipped, CC BY (tests/data)


def _images(test_data):
    return [read_image(test_data / "coco-cc-by" / "val2017" / f) for f in IMAGES]


@pytest.mark.parametrize("kind", ["faster", "mask", "keypoint"])
def test_model_runs_end_to_end(kind, test_data, synthetic_pkls):
    cfg = load_cfg(CONFIGS[kind], SMALL)
    model, info = load_model(cfg, load_detectron=str(synthetic_pkls[kind]))
    assert info.format == "detectron-pkl" and info.source == "zoo"
    results = Detector(model, cfg)(_images(test_data))
    for im, d in zip(_images(test_data), results):
        assert (d.height, d.width) == im.shape[:2]
        assert 60 <= len(d) <= 110                     # ~100 detections, the cap can keep ties
        assert d.scores.dtype == np.float32 and d.scores.min() > 0.05 and d.scores.max() < 1
        assert len(np.unique(d.scores)) == len(d)      # calibrated: no tied scores
        assert np.all(d.boxes[:, 0] >= 0) and np.all(d.boxes[:, 2] <= d.width - 1)
        assert np.all(d.boxes[:, 1] >= 0) and np.all(d.boxes[:, 3] <= d.height - 1)
        assert np.all(np.diff(d.classes) >= 0)         # Detectron's order: by class
        if kind == "keypoint":
            assert set(d.classes) == {1}
            kps = d.keypoints
            assert kps.shape == (len(d), 4, 17)
            # Keypoints lie in their box (x1 + (i + 0.5) * w / ceil(w) <= x2 + 0.5).
            assert np.all(kps[:, 0] >= d.boxes[:, :1]) and np.all(kps[:, 0] <= d.boxes[:, 2:3] + 0.5)
            assert np.all(kps[:, 1] >= d.boxes[:, 1:2]) and np.all(kps[:, 1] <= d.boxes[:, 3:4] + 0.5)
        else:
            assert len(np.unique(d.classes)) >= 5     # several classes
        if kind == "mask":
            assert len(d.masks) == len(d)
            areas = mask_util.area(d.masks)
            assert np.all([m["size"] == [d.height, d.width] for m in d.masks])
            assert (areas > 0).mean() > 0.9
            # A pasted mask stays inside its box expanded by 30/28 (+1 px of rounding).
            x, y, w, h = mask_util.toBbox(d.masks).T
            bw, bh = d.boxes[:, 2] - d.boxes[:, 0], d.boxes[:, 3] - d.boxes[:, 1]
            nz = areas > 0
            assert np.all(x[nz] >= d.boxes[nz, 0] - bw[nz] / 28 - 2)
            assert np.all(y[nz] + h[nz] <= d.boxes[nz, 3] + bh[nz] / 28 + 2)
        else:
            assert d.masks is None


def test_full_scale_800_1333_path(test_data, synthetic_pkls):
    """Detectron's real test scale once: 427x640 -> scale 800/427, 800x1199 resized, 800x1216 blob."""
    cfg = load_cfg(CONFIGS["mask"])
    assert (cfg.TEST.SCALE, cfg.TEST.MAX_SIZE) == (800, 1333)
    model, _ = load_model(cfg, load_detectron=str(synthetic_pkls["mask"]))
    det = Detector(model, cfg)
    im = _images(test_data)[0]
    prepared = det.prepare(im)
    assert prepared.data.shape[:2] == (800, 1199) and prepared.blob_shape == (800, 1216)
    d = det([im])[0]
    assert 60 <= len(d) <= 110 and len(d.masks) == len(d)


def test_batched_forward_equals_one_image_at_a_time(test_data, synthetic_pkls):
    """Same-size images batched together give bit-identical detections."""
    cfg = load_cfg(CONFIGS["mask"], SMALL)
    model, _ = load_model(cfg, load_detectron=str(synthetic_pkls["mask"]))
    im = _images(test_data)[0]
    ims = [im, np.ascontiguousarray(im[:, ::-1]), _images(test_data)[1]]
    single = [Detector(model, cfg)([x])[0] for x in ims]
    batched = Detector(model, cfg, batch_size=3)(ims)
    for a, b in zip(single, batched):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)
        assert a.masks == b.masks


def test_custom_num_classes(test_data):
    """Models trained on other datasets: any MODEL.NUM_CLASSES builds and runs."""
    from rcnn.modeling import build_model
    from rcnn.synthetic import calibrate

    cfg = load_cfg(CONFIGS["mask"], SMALL + ["MODEL.NUM_CLASSES", "5"])
    model = build_model(cfg)
    assert model.box_head.bbox_pred.out_features == 20 and model.mask_head.mask_fcn_logits.out_channels == 5
    im = _images(test_data)[0]
    calibrate(model, cfg, im)
    d = Detector(model, cfg)([im])[0]
    assert len(d) > 0 and set(d.classes) <= {1, 2, 3, 4}
