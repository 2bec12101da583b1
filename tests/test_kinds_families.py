"""``convert.kinds`` tells every Detectron family from blob names alone and names its shipped config."""
from __future__ import annotations

import functools
import re

import numpy as np
import pytest
import torch

from convert.__main__ import inspect_file, main
from convert.checkpoint import pkl_to_pt
from convert.errors import WeightsMismatchError
from convert.kinds import cfg_kind, detect_kind
from convert.pickle_io import write_detectron_pkl
from rcnn.config import load_cfg
from rcnn.modeling import build_model
from rcnn.naming import key_to_blob
from tests.conftest import REPO_ROOT
from tests.test_configs_shipped import SHIPPED
from tests.test_families import _detectron_body


@functools.cache
def _meta_blobs(path: str) -> dict[str, tuple]:
    with torch.device("meta"):
        model = build_model(load_cfg(REPO_ROOT / path))
    return {key_to_blob(k): tuple(v.shape) for k, v in model.state_dict().items()}


def _blobs(path) -> dict[str, tuple]:
    return dict(_meta_blobs(str(path)))


@pytest.mark.parametrize("path", SHIPPED)
def test_every_built_model_is_recognised_and_its_config_rebuilds_it(path):
    blobs = _blobs(path)
    kind = detect_kind(blobs)
    assert kind.family == cfg_kind(load_cfg(REPO_ROOT / path)).family
    config = kind.baseline_config
    assert config is not None and _blobs(config.relative_to(REPO_ROOT)) == blobs


@pytest.mark.parametrize("path,family,config,describe", [
    ("configs/12_2017_baselines/e2e_mask_rcnn_X-101-64x4d-FPN_2x.yaml", "e2e_mask_rcnn_X-101-64x4d-FPN",
     "12_2017_baselines/e2e_mask_rcnn_X-101-64x4d-FPN_1x.yaml", "Mask R-CNN detector, X-101-64x4d-FPN, 81 classes"),
    ("configs/12_2017_baselines/e2e_keypoint_rcnn_X-101-32x8d-FPN_s1x.yaml", "e2e_keypoint_rcnn_X-101-32x8d-FPN",
     "12_2017_baselines/e2e_keypoint_rcnn_X-101-32x8d-FPN_1x.yaml",
     "Keypoint R-CNN detector, X-101-32x8d-FPN, 2 classes, 17 keypoints"),
    ("configs/12_2017_baselines/e2e_mask_rcnn_X-152-32x8d-FPN-IN5k_1.44x.yaml", "e2e_mask_rcnn_X-152-32x8d-FPN",
     "12_2017_baselines/e2e_mask_rcnn_X-152-32x8d-FPN-IN5k_1.44x.yaml",
     "Mask R-CNN detector, X-152-32x8d-FPN, 81 classes"),
    ("configs/04_2018_gn_baselines/scratch_e2e_mask_rcnn_R-101-FPN_3x_gn.yaml", "e2e_mask_rcnn_R-101-FPN_gn",
     "04_2018_gn_baselines/e2e_mask_rcnn_R-101-FPN_2x_gn.yaml",
     "Mask R-CNN detector, R-101-FPN with GroupNorm, 81 classes"),
])
def test_resnext_and_gn_families(path, family, config, describe):
    kind = detect_kind(_blobs(path))
    assert (kind.family, kind.baseline_config_name, kind.describe()) == (family, config, describe)


def _fpn(body_sums: tuple[str, ...], retinanet: bool = False) -> dict[str, tuple]:
    """FPN.py::add_fpn convs for the stage sums res5..res2 (RetinaNet: res5..res3 + fpn_6, fpn_7)."""
    b: dict[str, tuple] = {}
    for i, (s, c) in enumerate(zip(body_sums, (2048, 1024, 512, 256))):
        inner = f"fpn_inner_{s}" + ("_lateral" if i else "")
        b[inner + "_w"], b[inner + "_b"] = (256, c, 1, 1), (256,)
        b[f"fpn_{s}_w"], b[f"fpn_{s}_b"] = (256, 256, 3, 3), (256,)
    if retinanet:
        b.update(fpn_6_w=(256, 2048, 3, 3), fpn_6_b=(256,), fpn_7_w=(256, 256, 3, 3), fpn_7_b=(256,))
    return b


def _retinanet(groups: int = 1, width: int = 64, classes: int = 81) -> dict[str, tuple]:
    """retinanet_heads.py: towers of 4 convs on P3 (shared by P4-P7), 9 anchors, sigmoid logits."""
    b = {**_detectron_body((3, 4, 23, 3) if groups > 1 else (3, 4, 6, 3), groups, width),
         **_fpn(("res5_2_sum", "res4_22_sum" if groups > 1 else "res4_5_sum", "res3_3_sum"), retinanet=True)}
    for tower in ("cls", "bbox"):
        for n in range(4):
            b[f"retnet_{tower}_conv_n{n}_fpn3_w"], b[f"retnet_{tower}_conv_n{n}_fpn3_b"] = (256, 256, 3, 3), (256,)
    out = {"cls": 9 * (classes - 1), "bbox": 9 * 4}
    for tower, c in out.items():
        b[f"retnet_{tower}_pred_fpn3_w"], b[f"retnet_{tower}_pred_fpn3_b"] = (c, 256, 3, 3), (c,)
    return b


def _c4(mask: bool = False, rpn: bool = True, res5: bool = True) -> dict[str, tuple]:
    """ResNet.py C4: conv4 body, res5 as the box head (add_ResNet_roi_conv5_head), single-level
    rpn_heads.py RPN (15 anchors); mask_rcnn_fcn_head_v0upshare adds conv5_mask (2048 -> 256)."""
    b = _detectron_body((3, 4, 6, 3) if res5 else (3, 4, 6), 1, 64)
    if rpn:
        for name, out in (("conv_rpn", 1024), ("rpn_cls_logits", 15), ("rpn_bbox_pred", 60)):
            k = 3 if name == "conv_rpn" else 1
            b[f"{name}_w"], b[f"{name}_b"] = (out, 1024, k, k), (out,)
    if res5:
        b.update(cls_score_w=(81, 2048), cls_score_b=(81,), bbox_pred_w=(324, 2048), bbox_pred_b=(324,))
    if mask:
        b.update(conv5_mask_w=(2048, 256, 2, 2), conv5_mask_b=(256,), mask_fcn_logits_w=(81, 256, 1, 1),
                 mask_fcn_logits_b=(81,))
    return b


def _no_rpn(blobs: dict) -> dict:
    return {k: v for k, v in blobs.items() if not k.startswith(("conv_rpn", "rpn_"))}


@pytest.mark.parametrize("make,family,config,describe", [
    (lambda: _retinanet(), "retinanet_R-50-FPN", "12_2017_baselines/retinanet_R-50-FPN_1x.yaml",
     "RetinaNet, R-50-FPN, 81 classes"),
    (lambda: _retinanet(64, 4), "retinanet_X-101-64x4d-FPN", "12_2017_baselines/retinanet_X-101-64x4d-FPN_1x.yaml",
     "RetinaNet, X-101-64x4d-FPN, 81 classes"),
    (lambda: _c4(), "e2e_faster_rcnn_R-50-C4", "12_2017_baselines/e2e_faster_rcnn_R-50-C4_1x.yaml",
     "Faster R-CNN detector, R-50-C4, 81 classes"),
    (lambda: _c4(mask=True), "e2e_mask_rcnn_R-50-C4", "12_2017_baselines/e2e_mask_rcnn_R-50-C4_1x.yaml",
     "Mask R-CNN detector, R-50-C4, 81 classes"),
    (lambda: _c4(res5=False), "rpn_R-50-C4", "12_2017_baselines/rpn_R-50-C4_1x.yaml", "RPN-only model, R-50-C4"),
    (lambda: _c4(rpn=False), "fast_rcnn_R-50-C4", "12_2017_baselines/fast_rcnn_R-50-C4_1x.yaml",
     "Fast R-CNN detector on precomputed proposals, R-50-C4, 81 classes"),
    (lambda: _c4(mask=True, rpn=False), "mask_rcnn_R-50-C4", "12_2017_baselines/mask_rcnn_R-50-C4_1x.yaml",
     "Mask R-CNN detector on precomputed proposals, R-50-C4, 81 classes"),
    (lambda: {k: v for k, v in _blobs("configs/12_2017_baselines/e2e_faster_rcnn_X-101-32x8d-FPN_1x.yaml").items()
              if not k.startswith(("fc", "cls_", "bbox_"))},
     "rpn_X-101-32x8d-FPN", "12_2017_baselines/rpn_X-101-32x8d-FPN_1x.yaml", "RPN-only model, X-101-32x8d-FPN"),
    (lambda: _no_rpn(_blobs("configs/12_2017_baselines/e2e_keypoint_rcnn_R-101-FPN_1x.yaml")),
     "keypoint_rcnn_R-101-FPN", "12_2017_baselines/keypoint_rcnn_R-101-FPN_1x.yaml",
     "Keypoint R-CNN detector on precomputed proposals, R-101-FPN, 2 classes, 17 keypoints"),
    (lambda: _no_rpn(_blobs("configs/04_2018_gn_baselines/e2e_mask_rcnn_R-50-FPN_2x_gn.yaml")),
     "mask_rcnn_R-50-FPN_gn", "04_2018_gn_baselines/mask_rcnn_R-50-FPN_1x_gn.yaml",
     "Mask R-CNN detector on precomputed proposals, R-50-FPN with GroupNorm, 81 classes"),
])
def test_other_families_from_detectron_blob_names(make, family, config, describe):
    kind = detect_kind(make())
    assert (kind.family, kind.baseline_config_name, kind.describe()) == (family, config, describe)
    cfg = load_cfg(kind.baseline_config)
    assert cfg_kind(cfg).family == family and cfg.MODEL.NUM_CLASSES == (kind.num_classes or 81)


def test_real_c4_graph_names_its_config(test_data):
    """The parameter blobs of Detectron's own e2e_faster_rcnn_R-50-C4_1x graph (BN scales folded there)."""
    text = (test_data / "detectron-c2-e2e_faster_rcnn_R-50-C4_1x" / "predict_net.pbtxt").read_text()
    names = set(re.findall(r'input: "([^"]+_[wbs])"', text))
    graph = {n: (1,) for n in names} | {"cls_score_w": (81, 2048), "res2_0_branch2b_w": (64, 64, 3, 3)}
    ours = {n for n in _c4() if not n.endswith("_bn_s")}
    assert names == ours
    kind = detect_kind(graph)
    assert kind.baseline_config_name == "12_2017_baselines/e2e_faster_rcnn_R-50-C4_1x.yaml"


def _tiny_pkl(path, blobs: dict[str, tuple]) -> None:
    """A file with the family's real names; shapes kept only where kinds reads them (size stays small)."""
    keep = ("cls_score_w", "res2_0_branch2b_w", "kps_score_lowres_w", "retnet_cls_pred_fpn3_w", "retnet_bbox_pred_fpn3_w")
    write_detectron_pkl(path, {b: np.zeros(s if b in keep else (1,), np.float32) for b, s in blobs.items()}, None)


@pytest.mark.parametrize("make,need", [
    (lambda: _blobs("configs/04_2018_gn_baselines/e2e_mask_rcnn_R-50-FPN_2x_gn.yaml"),
     "04_2018_gn_baselines/e2e_mask_rcnn_R-50-FPN_2x_gn.yaml"),
    (lambda: _blobs("configs/12_2017_baselines/e2e_mask_rcnn_X-101-64x4d-FPN_1x.yaml"),
     "12_2017_baselines/e2e_mask_rcnn_X-101-64x4d-FPN_1x.yaml"),
    (lambda: _retinanet(), "12_2017_baselines/retinanet_R-50-FPN_1x.yaml"),
    (lambda: _c4(mask=True), "12_2017_baselines/e2e_mask_rcnn_R-50-C4_1x.yaml"),
])
def test_wrong_family_config_is_one_line_naming_the_config_needed(make, need, tmp_path, capsys):
    path = tmp_path / "model_final.pkl"
    _tiny_pkl(path, make())
    wrong = REPO_ROOT / "configs/12_2017_baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml"
    with pytest.raises(WeightsMismatchError, match=f"; use the config {re.escape(need)}\\. ") as info:
        pkl_to_pt(path, tmp_path / "x.pt", cfg=wrong)
    assert "\n" not in str(info.value)
    assert f"({need})" in "\n".join(inspect_file(str(path)))
    if "gn" in need:   # the command line: one line, exit 2
        assert main([str(path), str(tmp_path / "x.pt"), "--cfg", str(wrong)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"use the config {need}." in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_final.pkl"]
