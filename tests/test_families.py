"""ResNeXt and GroupNorm models: Detectron's blob names and shapes, written out from
``modeling/ResNet.py``, ``FPN.py``, ``fast_rcnn_heads.py`` and ``mask_rcnn_heads.py``."""
from __future__ import annotations

import pytest
import torch

from convert.__main__ import main
from rcnn.config import load_cfg
from rcnn.engine.solver import param_groups
from rcnn.modeling import build_model
from rcnn.modeling.group_norm import GroupNorm, GroupNormSpec
from rcnn.naming import key_to_blob
from tests.conftest import REPO_ROOT
from tests.test_naming import _reference_blobs

BASE = REPO_ROOT / "configs" / "12_2017_baselines"
GN = REPO_ROOT / "configs" / "04_2018_gn_baselines"


def _detectron_body(counts: tuple[int, ...], groups: int, width: int, gn: bool = False) -> dict[str, tuple]:
    """add_ResNet_convX_body: stage outputs 256..2048, bottleneck NUM_GROUPS * WIDTH_PER_GROUP x 1/2/4/8,
    branch2b grouped; ConvAffine (``_bn_s/_bn_b``) or ConvGN (``_gn_s/_gn_b``), no conv biases."""
    norm = "gn" if gn else "bn"
    stem = "conv1_gn" if gn else "res_conv1_bn"
    b = {"conv1_w": (64, 3, 7, 7), f"{stem}_s": (64,), f"{stem}_b": (64,)}
    dim_in = 64
    for k, n in enumerate(counts):
        dim_out, dim_inner = 256 * 2 ** k, groups * width * 2 ** k
        for i in range(n):
            convs = {"branch2a": (dim_inner, dim_in, 1, 1), "branch2b": (dim_inner, dim_inner // groups, 3, 3),
                     "branch2c": (dim_out, dim_inner, 1, 1)}
            if dim_in != dim_out:
                convs = {"branch1": (dim_out, dim_in, 1, 1), **convs}
            for name, shape in convs.items():
                p = f"res{k + 2}_{i}_{name}"
                b[p + "_w"], b[f"{p}_{norm}_s"], b[f"{p}_{norm}_b"] = shape, (shape[0],), (shape[0],)
            dim_in = dim_out
    return b


def _blobs(path, opts=()) -> dict[str, tuple]:
    with torch.device("meta"):
        model = build_model(load_cfg(path, list(opts)))
    return {key_to_blob(k): tuple(v.shape) for k, v in model.state_dict().items()}


def _heads(kind: str, res4_sum: str) -> dict[str, tuple]:
    """FPN, RPN and heads of the R-50 reference, with the body's res4 output name."""
    ref = _reference_blobs(kind)
    body = set(_detectron_body((3, 4, 6, 3), 1, 64))
    return {k.replace("res4_5_sum", res4_sum): v for k, v in ref.items() if k not in body}


@pytest.mark.parametrize("name,counts,groups,width,res4,total", [
    ("e2e_mask_rcnn_X-101-64x4d-FPN_1x", (3, 4, 23, 3), 64, 4, "res4_22_sum", 102_298_933),
    ("e2e_mask_rcnn_X-101-32x8d-FPN_1x", (3, 4, 23, 3), 32, 8, "res4_22_sum", 107_634_997),
])
def test_resnext_mask_models_have_detectrons_blobs(name, counts, groups, width, res4, total):
    blobs = _blobs(BASE / f"{name}.yaml")
    expected = {**_detectron_body(counts, groups, width), **_heads("mask", res4)}
    assert blobs == expected and len(blobs) == 354
    assert sum(torch.Size(s).numel() for s in blobs.values()) == total
    assert blobs["res2_0_branch2b_w"] == (256, width, 3, 3) and blobs["res5_2_branch2b_w"] == (2048, 8 * width, 3, 3)
    assert blobs["res3_0_branch2a_w"] == (2 * groups * width, 256, 1, 1)


def test_x152_in5k_body():
    """X-152-32x8d: blocks (3, 8, 36, 3); FPN on res3_7_sum and res4_35_sum."""
    blobs = _blobs(BASE / "e2e_mask_rcnn_X-152-32x8d-FPN-IN5k_1.44x.yaml")
    body = _detectron_body((3, 8, 36, 3), 32, 8)
    heads = {k.replace("res3_3_sum", "res3_7_sum"): v for k, v in _heads("mask", "res4_35_sum").items()}
    assert blobs == {**body, **heads} and len(blobs) == 507


def test_x101_keypoint_and_faster():
    body = _detectron_body((3, 4, 23, 3), 64, 4)
    assert _blobs(BASE / "e2e_faster_rcnn_X-101-64x4d-FPN_1x.yaml") == {**body, **_heads("faster", "res4_22_sum")}
    assert _blobs(BASE / "e2e_keypoint_rcnn_X-101-64x4d-FPN_1x.yaml") == {**body, **_heads("keypoint", "res4_22_sum")}


def _gn_heads() -> dict[str, tuple]:
    """FPN.USE_GN: every FPN conv a ConvGN (no conv bias); add_roi_Xconv1fc_gn_head (head_conv1..4 +
    fc6); mask_rcnn_fcn_head_v1up4convs_gn (``_mask_fcn1..4``, no brackets)."""
    b: dict[str, tuple] = {}
    for c, s in zip((2048, 1024, 512, 256), ("res5_2_sum", "res4_5_sum", "res3_3_sum", "res2_2_sum")):
        inner = f"fpn_inner_{s}" + ("" if c == 2048 else "_lateral")
        for conv, shape in ((inner, (256, c, 1, 1)), (f"fpn_{s}", (256, 256, 3, 3))):
            b[conv + "_w"], b[conv + "_gn_s"], b[conv + "_gn_b"] = shape, (256,), (256,)
    ref = _reference_blobs("mask")
    b.update({k: v for k, v in ref.items() if k.startswith(("conv_rpn", "rpn_"))})
    for i in range(1, 5):
        b[f"head_conv{i}_w"], b[f"head_conv{i}_gn_s"], b[f"head_conv{i}_gn_b"] = (256, 256, 3, 3), (256,), (256,)
    b.update({k: v for k, v in ref.items() if k.startswith(("fc6", "cls_score", "bbox_pred"))})
    for i in range(1, 5):
        b[f"_mask_fcn{i}_w"], b[f"_mask_fcn{i}_gn_s"], b[f"_mask_fcn{i}_gn_b"] = (256, 256, 3, 3), (256,), (256,)
    b.update({k: v for k, v in ref.items() if k.startswith(("conv5_mask", "mask_fcn_logits"))})
    return b


@pytest.mark.parametrize("name", ["e2e_mask_rcnn_R-50-FPN_2x_gn", "scratch_e2e_mask_rcnn_R-50-FPN_3x_gn"])
def test_gn_mask_model_has_detectrons_blobs(name):
    blobs = _blobs(GN / f"{name}.yaml")
    assert blobs == {**_detectron_body((3, 4, 6, 3), 1, 64, gn=True), **_gn_heads()}
    assert len(blobs) == 223 and not any("_bn_" in b for b in blobs)


def test_gn_groups_eps_and_freezing():
    cfg = load_cfg(GN / "e2e_mask_rcnn_R-50-FPN_2x_gn.yaml")
    model = build_model(cfg)
    norms = {n: m for n, m in model.named_modules() if isinstance(m, GroupNorm)}
    assert len(norms) == 53 + 8 + 4 + 4
    assert {(m.num_groups, m.eps) for m in norms.values()} == {(32, 1e-5)}
    # FREEZE_AT 2: stem and res2 get no gradient (GN included), res3 and the FPN GN do.
    assert not model.backbone.conv1_gn.scale.requires_grad and not model.backbone.res2[2].branch2c_gn.bias.requires_grad
    assert model.backbone.res3[0].branch2a_gn.scale.requires_grad and model.fpn.fpn_res2_2_sum_gn.scale.requires_grad
    scratch = build_model(load_cfg(GN / "scratch_e2e_mask_rcnn_R-50-FPN_3x_gn.yaml"))   # TRAIN.FREEZE_AT 0
    assert all(p.requires_grad for p in scratch.parameters())
    # optimizer.py: GN beta is a bias (2x gradient, no decay), GN gamma decays with SOLVER.WEIGHT_DECAY_GN.
    weights, biases, gn_scales = param_groups(model, load_cfg(GN / "e2e_mask_rcnn_R-50-FPN_2x_gn.yaml",
                                                              ["SOLVER.WEIGHT_DECAY_GN", "0.5"]))
    assert (gn_scales["weight_decay"], gn_scales["grad_scale"], weights["weight_decay"]) == (0.5, 1.0, 0.0001)
    assert gn_scales["params"][0] is model.backbone.res3[0].branch1_gn.scale
    assert len(gn_scales["params"]) == 69 - 1 - 10 and any(p is model.fpn.fpn_res2_2_sum_gn.bias for p in biases["params"])
    # get_group_gn: GROUP_NORM.DIM_PER_GP instead of NUM_GROUPS.
    spec = GroupNormSpec.from_cfg(load_cfg(GN / "e2e_mask_rcnn_R-50-FPN_2x_gn.yaml",
                                           ["GROUP_NORM.DIM_PER_GP", "16", "GROUP_NORM.NUM_GROUPS", "-1"]))
    assert (spec.groups(64), spec.groups(2048), spec(256).num_groups) == (4, 128, 16)
    with pytest.raises(ValueError, match="only one"):
        GroupNormSpec.from_cfg(load_cfg(GN / "e2e_mask_rcnn_R-50-FPN_2x_gn.yaml", ["GROUP_NORM.DIM_PER_GP", "16"]))


def test_gn_forward_matches_the_definition():
    """Caffe2 GroupNorm: per (image, group) mean and biased variance, (x - mu) / sqrt(var + eps)."""
    gn = GroupNorm(8, 2, 1e-5)
    with torch.no_grad():
        gn.scale.copy_(torch.arange(1.0, 9.0))
        gn.bias.copy_(torch.arange(8.0) / 10)
    x = torch.randn(2, 8, 3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64).float()
    g = x.double().view(2, 2, -1)
    ref = ((g - g.mean(-1, keepdim=True)) / (g.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()).view_as(x)
    ref = ref * gn.scale.double().view(1, -1, 1, 1) + gn.bias.double().view(1, -1, 1, 1)
    torch.testing.assert_close(gn(x).double(), ref, rtol=1e-5, atol=1e-5)


def test_names_cli_lists_the_reference_blobs_in_model_order(capsys):
    assert main(["--names", str(BASE / "e2e_mask_rcnn_R-50-FPN_1x.yaml")]) == 0
    lines = capsys.readouterr().out.splitlines()
    ref = _reference_blobs("mask")
    assert len(lines) == len(ref) == 201
    assert {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in lines} == {k: str(v) for k, v in ref.items()}
    assert lines[:3] == ["conv1_w (64, 3, 7, 7)", "res_conv1_bn_s (64,)", "res_conv1_bn_b (64,)"]
    assert lines[-1] == "mask_fcn_logits_b (81,)"
    assert main(["--names", str(BASE / "e2e_mask_rcnn_X-101-64x4d-FPN_1x.yaml")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 354 and "res2_0_branch2b_w (256, 4, 3, 3)" in lines


def test_names_cli_bad_configs(capsys, tmp_path):
    assert main(["--names", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr()
    assert err.out == "" and err.err.count("\n") == 1 and "missing.yaml" in err.err
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  NO_SUCH_KEY: 1\n")
    assert main(["--names", str(bad)]) == 2
    assert "NO_SUCH_KEY" in capsys.readouterr().err
    rfcn = tmp_path / "rfcn.yaml"   # a Detectron model type outside the model zoo
    rfcn.write_text("MODEL:\n  TYPE: rfcn\n  CONV_BODY: ResNet.add_ResNet50_conv5_body\n")
    assert main(["--names", str(rfcn)]) == 2
    err = capsys.readouterr()
    assert err.out == "" and err.err.startswith(f"error: {rfcn}: unsupported config") and err.err.count("\n") == 1
    assert main(["--names", str(BASE / "e2e_mask_rcnn_R-50-FPN_1x.yaml"), "--inspect", "x.pkl"]) == 2
