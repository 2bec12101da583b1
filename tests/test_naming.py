"""The key <-> blob rule covers exactly Detectron's parameter blobs (docs/detectron.md §2)."""
import pytest

from rcnn.config import load_cfg
from rcnn.modeling import build_model
from rcnn.naming import blob_to_key, key_to_blob

CONFIGS = "configs/12_2017_baselines/e2e_{}_rcnn_R-50-FPN_1x.yaml"


def _reference_blobs(kind: str) -> dict[str, tuple]:
    """Detectron's parameter blobs and shapes, written out from docs/detectron.md §2.1-2.6."""
    b = {"conv1_w": (64, 3, 7, 7), "res_conv1_bn_s": (64,), "res_conv1_bn_b": (64,)}
    dim_in = 64
    for stage, blocks, inner in ((2, 3, 64), (3, 4, 128), (4, 6, 256), (5, 3, 512)):
        out = inner * 4
        for i in range(blocks):
            p = f"res{stage}_{i}_"
            convs = {"branch2a": (inner, dim_in if i == 0 else out, 1, 1), "branch2b": (inner, inner, 3, 3),
                     "branch2c": (out, inner, 1, 1)}
            if i == 0:
                convs["branch1"] = (out, dim_in, 1, 1)
            for name, shape in convs.items():
                b[p + name + "_w"] = shape
                b[p + name + "_bn_s"] = b[p + name + "_bn_b"] = (shape[0],)
        dim_in = out
    for c, sum_name in zip((2048, 1024, 512, 256), ("res5_2_sum", "res4_5_sum", "res3_3_sum", "res2_2_sum")):
        inner_name = f"fpn_inner_{sum_name}" + ("" if c == 2048 else "_lateral")
        b[inner_name + "_w"], b[inner_name + "_b"] = (256, c, 1, 1), (256,)
        b[f"fpn_{sum_name}_w"], b[f"fpn_{sum_name}_b"] = (256, 256, 3, 3), (256,)
    b.update({"conv_rpn_fpn2_w": (256, 256, 3, 3), "conv_rpn_fpn2_b": (256,),
              "rpn_cls_logits_fpn2_w": (3, 256, 1, 1), "rpn_cls_logits_fpn2_b": (3,),
              "rpn_bbox_pred_fpn2_w": (12, 256, 1, 1), "rpn_bbox_pred_fpn2_b": (12,)})
    k = 2 if kind == "keypoint" else 81
    b.update({"fc6_w": (1024, 12544), "fc6_b": (1024,), "fc7_w": (1024, 1024), "fc7_b": (1024,),
              "cls_score_w": (k, 1024), "cls_score_b": (k,), "bbox_pred_w": (4 * k, 1024), "bbox_pred_b": (4 * k,)})
    if kind == "mask":
        for i in range(1, 5):
            b[f"_[mask]_fcn{i}_w"], b[f"_[mask]_fcn{i}_b"] = (256, 256, 3, 3), (256,)
        b.update({"conv5_mask_w": (256, 256, 2, 2), "conv5_mask_b": (256,),
                  "mask_fcn_logits_w": (81, 256, 1, 1), "mask_fcn_logits_b": (81,)})
    if kind == "keypoint":
        for i in range(1, 9):
            b[f"conv_fcn{i}_w"], b[f"conv_fcn{i}_b"] = (512, 256 if i == 1 else 512, 3, 3), (512,)
        b.update({"kps_score_lowres_w": (512, 17, 4, 4), "kps_score_lowres_b": (17,),
                  "kps_score_w": (17, 17, 4, 4), "kps_score_b": (17,)})
    return b


@pytest.mark.parametrize("kind,count,values", [("faster", 189, 41_757_156), ("mask", 201, 44_400_693),
                                                ("keypoint", 209, 59_195_019)])
def test_rule_covers_exactly_the_reference_blobs(kind, count, values):
    sd = build_model(load_cfg(CONFIGS.format(kind))).state_dict()
    blobs = {key_to_blob(k): tuple(v.shape) for k, v in sd.items()}
    assert blobs == _reference_blobs(kind)
    assert len(blobs) == count and sum(v.numel() for v in sd.values()) == values
    # The inverse is the same rule: one key per blob, and back.
    inverse = blob_to_key(sd)
    assert len(inverse) == len(sd) and all(key_to_blob(key) == blob for blob, key in inverse.items())


def test_examples_and_malformed_keys():
    assert key_to_blob("backbone.res4.3.branch2b_bn.scale") == "res4_3_branch2b_bn_s"
    assert key_to_blob("mask_head._[mask]_fcn1.weight") == "_[mask]_fcn1_w"
    assert key_to_blob("rpn.conv_rpn_fpn2.bias") == "conv_rpn_fpn2_b"
    for bad in ("conv1.weight", "backbone.conv1.running_mean", "heads.fc6.weight"):
        with pytest.raises(ValueError, match="does not follow"):
            key_to_blob(bad)
    with pytest.raises(ValueError, match="both map to blob"):
        blob_to_key(["backbone.res2.0.branch2a.weight", "backbone.res2_0.branch2a.weight"])


def test_backbone_names_agree_with_a_real_detectron_graph(test_data):
    """The C4 model's Caffe2 graph names the same R-50 conv blobs up to res4 (its res5 is in the head)."""
    import re
    text = (test_data / "detectron-c2-e2e_faster_rcnn_R-50-C4_1x" / "predict_net.pbtxt").read_text()
    graph = {n for n in re.findall(r'input: "([^"]+)"', text) if re.match(r"(conv1|res[234]_\d+_branch\w+)_w$", n)}
    ours = {n for n in _reference_blobs("faster") if re.match(r"(conv1|res[234]_\d+_branch\w+)_w$", n)}
    assert graph == ours and len(ours) == 1 + (3 * 3 + 1) + (4 * 3 + 1) + (6 * 3 + 1)
