"""A ResNeXt and a GroupNorm Mask R-CNN: calibrated synthetic Detectron-format .pkl files with the
real names and shapes, loaded strictly and run on real COCO images (shipped in tests/data) on CPU."""
from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_util
import pytest

from convert.errors import WeightsMismatchError
from convert.pickle_io import read_detectron_pkl, write_detectron_pkl
from rcnn.config import load_cfg
from rcnn.data.preprocess import read_image
from rcnn.engine.weights import load_model
from rcnn.inference.detector import Detector
from rcnn.synthetic import write_synthetic_detectron_pkl
from tests.conftest import REPO_ROOT
from tests.models import CALIBRATION_IMAGE

# Small scale and few proposals; the X body is the X-101-64x4d zoo config at depth 50 with 32
# groups (X-50-32x4d: grouped branch2b, STRIDE_1X1 False, R-50-sized), GN is the zoo config itself.
SMALL = ["TEST.SCALE", "224", "TEST.MAX_SIZE", "373", "TEST.RPN_PRE_NMS_TOP_N", "1000", "TEST.RPN_POST_NMS_TOP_N", "600"]
MODELS = {
    "resnext": ("12_2017_baselines/e2e_mask_rcnn_X-101-64x4d-FPN_1x.yaml",
                ["MODEL.CONV_BODY", "FPN.add_fpn_ResNet50_conv5_body", "RESNETS.NUM_GROUPS", "32"]),
    "gn": ("04_2018_gn_baselines/e2e_mask_rcnn_R-50-FPN_2x_gn.yaml", []),
}
IMAGES = ["000000553664.jpg", "000000183709.jpg"]   # shipped, CC BY (tests/data)


def _cfg(name: str):
    path, opts = MODELS[name]
    return load_cfg(REPO_ROOT / "configs" / path, opts + SMALL)


@pytest.fixture(scope="module")
def family_pkls(test_data, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("family_pkls")
    image = read_image(test_data / CALIBRATION_IMAGE)
    for name in MODELS:
        write_synthetic_detectron_pkl(_cfg(name), image, str(out / f"{name}.pkl"), with_extras=False)
    return {name: out / f"{name}.pkl" for name in MODELS}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_family_runs_end_to_end(name, family_pkls, test_data):
    cfg = _cfg(name)
    model, info = load_model(cfg, load_detectron=str(family_pkls[name]))
    assert info.format == "detectron-pkl"
    if name == "resnext":
        assert model.backbone.res2[0].branch2b.groups == 32 and model.backbone.res3[0].branch2b.stride == (2, 2)
    else:
        assert model.mask_head.conv_names == [f"_mask_fcn{i}" for i in range(1, 5)]
    ims = [read_image(test_data / "coco-cc-by" / "val2017" / f) for f in IMAGES]
    for im, d in zip(ims, Detector(model, cfg)(ims)):
        assert 60 <= len(d) <= 110 and len(np.unique(d.classes)) >= 5
        assert len(np.unique(d.scores)) == len(d) and d.scores.min() > 0.05 and d.scores.max() < 1
        assert np.all(d.boxes[:, 2] <= d.width - 1) and np.all(d.boxes[:, 3] <= d.height - 1)
        assert len(d.masks) == len(d) and (mask_util.area(d.masks) > 0).mean() > 0.9
        assert all(m["size"] == list(im.shape[:2]) for m in d.masks)


def test_strict_loading_names_every_offending_blob(family_pkls, tmp_path):
    pkl = read_detectron_pkl(family_pkls["gn"])
    blobs = dict(pkl.blobs)
    del blobs["head_conv2_gn_s"]
    blobs["res2_0_branch2a_bn_s"] = blobs.pop("res2_0_branch2a_gn_s")   # an AffineChannel name in a GN body
    blobs["_mask_fcn1_w"] = blobs["_mask_fcn1_w"][:128]
    broken = tmp_path / "broken.pkl"
    write_detectron_pkl(broken, blobs, pkl.cfg_yaml)
    with pytest.raises(WeightsMismatchError) as info:
        load_model(_cfg("gn"), load_detectron=str(broken))
    report = info.value.report
    assert sorted(report.missing) == ["head_conv2_gn_s", "res2_0_branch2a_gn_s"]
    assert report.unexpected == ["res2_0_branch2a_bn_s"]
    assert report.shape_mismatch == [("_mask_fcn1_w", (128, 256, 3, 3), (256, 256, 3, 3))]
    message = str(info.value)
    assert "\n" not in message and "head_conv2_gn_s" in message and "_mask_fcn1_w file (128, 256, 3, 3)" in message
