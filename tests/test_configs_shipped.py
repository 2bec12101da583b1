"""Every Detectron config ships unchanged, loads, and builds (or is a family not built yet)."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from rcnn.config import load_cfg
from rcnn.modeling import build_model
from rcnn.naming import key_to_blob
from tests.conftest import REPO_ROOT

SHIPPED = sorted(p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "configs").rglob("*.yaml"))

@pytest.fixture(scope="module")
def sha_fixture(fixtures_dir) -> dict:
    return json.loads((fixtures_dir / "detectron_configs_sha256.json").read_text())


def test_all_87_configs_are_detectrons_bytes(sha_fixture):
    files, commit = sha_fixture["files"], sha_fixture["_provenance"]["detectron_commit"]
    assert len(files) == 87 and SHIPPED == sorted(files)
    assert {f.split("/")[1] for f in files} == {"12_2017_baselines", "04_2018_gn_baselines", "test_time_aug",
                                                 "getting_started"}
    for path, sha in files.items():
        header, body = (REPO_ROOT / path).read_bytes().split(b"\n", 1)
        assert header == f"# Unchanged copy of facebookresearch/Detectron {path} @ {commit}".encode(), path
        assert hashlib.sha256(body).hexdigest() == sha, path


def _blobs(cfg) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):   # shapes only: the X-152 body costs nothing
        model = build_model(cfg)
    return {key_to_blob(k): tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("path", SHIPPED)
def test_every_config_builds_its_family(path):
    cfg = load_cfg(REPO_ROOT / path)
    blobs = _blobs(cfg)
    if cfg.RETINANET.RETINANET_ON:   # sigmoid classes: no background row
        anchors = len(cfg.RETINANET.ASPECT_RATIOS) * cfg.RETINANET.SCALES_PER_OCTAVE
        assert blobs["retnet_cls_pred_fpn3_w"][0] == anchors * (cfg.MODEL.NUM_CLASSES - 1)
        assert "fpn_7_w" in blobs and "cls_score_w" not in blobs
        return
    rpn = {"conv_rpn_fpn2_w", "conv_rpn_w"} & set(blobs)
    assert len(rpn) == (1 if cfg.MODEL.FASTER_RCNN or cfg.MODEL.RPN_ONLY else 0)   # no RPN on precomputed proposals
    if cfg.MODEL.RPN_ONLY:
        assert "cls_score_w" not in blobs
        assert ("res5_0_branch2a_w" in blobs) == cfg.FPN.FPN_ON   # the C4 body stops at res4
        return
    assert len(blobs) >= 163 and "conv1_w" in blobs and "cls_score_w" in blobs
    head_dim = cfg.FAST_RCNN.MLP_HEAD_DIM if cfg.FPN.FPN_ON else 2048   # C4: the res5 head's width
    assert blobs["cls_score_w"] == (cfg.MODEL.NUM_CLASSES, head_dim)
    assert ("mask_fcn_logits_w" in blobs) == cfg.MODEL.MASK_ON
    assert ("kps_score_w" in blobs) == cfg.MODEL.KEYPOINTS_ON


def test_every_family_is_shipped():
    """The 87 configs span every family built here: e2e/Fast R-CNN/Mask/Keypoint on FPN (R, X, GN) and
    C4 bodies, RPN-only FPN/C4, RetinaNet, the tutorials and the test-time-augmentation configs."""
    cfgs = [load_cfg(REPO_ROOT / p) for p in SHIPPED]
    assert sum(c.RETINANET.RETINANET_ON for c in cfgs) == 8
    assert sum(bool(c.MODEL.RPN_ONLY) for c in cfgs) == 9
    assert sum(not c.MODEL.FASTER_RCNN and not c.MODEL.RPN_ONLY and not c.RETINANET.RETINANET_ON for c in cfgs) == 30
    assert sum(not c.FPN.FPN_ON for c in cfgs) == 9                        # C4
    assert sum(c.RESNETS.STEM_FUNC == "basic_gn_stem" or bool(c.FPN.USE_GN) for c in cfgs) == 7   # GN
    assert sum(c.RESNETS.NUM_GROUPS > 1 for c in cfgs) == 33               # ResNeXt
