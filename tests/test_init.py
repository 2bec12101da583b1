"""Training initialisation: Caffe2 fills (docs/detectron.md §5.6) and the ImageNet body."""
import math

import numpy as np
import pytest
import torch

from convert.pickle_io import write_detectron_pkl
from rcnn.config import load_cfg
from rcnn.engine.weights import WeightsError, load_imagenet_backbone
from rcnn.modeling import build_model
from rcnn.modeling.init import init_heads
from rcnn.naming import key_to_blob
from tests.models import CONFIGS


@pytest.fixture(scope="module")
def models():
    out = {}
    for kind in ("mask", "keypoint"):
        cfg = load_cfg(CONFIGS[kind])
        model = build_model(cfg)
        init_heads(model, cfg)
        out[kind] = model
    return out


def test_fills(models):
    m = models["mask"]
    w = m.fpn.fpn_res2_2_sum.weight                          # Xavier: U(+-sqrt(3 / fan_in))
    bound = math.sqrt(3 / (256 * 9))
    assert w.abs().max() <= bound and abs(w.std().item() - bound / math.sqrt(3)) < 0.01 * bound
    assert abs(m.rpn.conv_rpn_fpn2.weight.std().item() - 0.01) < 2e-4
    assert abs(m.box_head.cls_score.weight.std().item() - 0.01) < 3e-4
    assert abs(m.box_head.bbox_pred.weight.std().item() - 0.001) < 3e-5
    bound = math.sqrt(3 / 12544)
    assert m.box_head.fc6.weight.abs().max() <= bound
    # MSRA: N(0, sqrt(2 / fan_out)), fan_out = numel / dim1 (ConvTranspose (in, out, kh, kw): in * kh * kw).
    assert abs(m.mask_head.conv5_mask.weight.std().item() - math.sqrt(2 / (256 * 4))) < 1e-3
    assert abs(getattr(m.mask_head, "_[mask]_fcn1").weight.std().item() - math.sqrt(2 / (256 * 9))) < 1e-3
    k = models["keypoint"].keypoint_head
    assert abs(k.kps_score_lowres.weight.std().item() - math.sqrt(2 / (512 * 16))) < 1e-3
    for model in models.values():
        for name, p in model.named_parameters():
            if not name.startswith("backbone") and name.endswith("bias"):
                assert torch.count_nonzero(p) == 0, name


def test_imagenet_body(tmp_path):
    cfg = load_cfg(CONFIGS["faster"])
    model = build_model(cfg)
    rng = np.random.default_rng(0)
    blobs = {key_to_blob("backbone." + k): rng.random(v.shape, dtype=np.float32)
             for k, v in model.backbone.state_dict().items()}
    extra = {"fc1000_w": np.zeros((1000, 2048), np.float32), "res2_0_branch2a_b": np.zeros(64, np.float32)}
    write_detectron_pkl(tmp_path / "R-50.pkl", {**blobs, **extra}, None)
    assert load_imagenet_backbone(model, tmp_path / "R-50.pkl") == sorted(extra)
    np.testing.assert_array_equal(model.backbone.res4[3].branch2b_bn.scale.numpy(), blobs["res4_3_branch2b_bn_s"])
    np.testing.assert_array_equal(model.backbone.conv1.weight.numpy(), blobs["conv1_w"])
    del blobs["res5_2_branch2c_w"]
    blobs["res3_0_branch1_w"] = np.zeros((1, 1, 1, 1), np.float32)
    write_detectron_pkl(tmp_path / "bad.pkl", blobs, None)
    with pytest.raises(WeightsError, match="1 missing .*res5_2_branch2c_w.*1 of another shape .*res3_0_branch1_w"):
        load_imagenet_backbone(model, tmp_path / "bad.pkl")
