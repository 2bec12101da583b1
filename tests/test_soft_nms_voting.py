"""Soft-NMS, box voting and their use in box post-processing against Detectron's own
``utils/cython_nms.pyx::soft_nms``, ``utils/boxes.py::box_voting`` and
``core/test.py::box_results_with_nms_and_limit`` (fixtures: soft_nms_voting.npz,
box_results_variants.npz; see fixtures/golden/PROVENANCE.md)."""
import numpy as np
import pytest
import torch

from rcnn.inference.postprocess import NmsVariants, box_results_with_nms_and_limit
from rcnn.ops.box_voting import box_voting
from rcnn.ops.soft_nms import soft_nms
from tests.golden import npz

SOFT_CASES = [(m, s, nt, t) for m, s, nt, t in [
    ("linear", 0.5, 0.3, 0.001), ("linear", 0.5, 0.5, 0.0001), ("gaussian", 0.5, 0.3, 0.001),
    ("gaussian", 0.1, 0.3, 0.05), ("gaussian", 2.0, 0.3, 0.0001), ("hard", 0.5, 0.5, 0.001),
    ("linear", 0.5, 0.1, 0.2)]]


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


@pytest.mark.parametrize("name", ["rand300", "ties200", "dense400", "dups", "exact"])
def test_soft_nms_bit_exact(name):
    g = npz("soft_nms_voting")
    dets = _t(g[f"sn_{name}_dets"])
    for method, sigma, nt, thr in SOFT_CASES:
        ref = f"sn_{name}_{method}_s{sigma}_nt{nt}_t{thr}"
        keep, scores = soft_nms(dets[:, :4], dets[:, 4], None, sigma, nt, thr, method)
        # Detectron's returned order (picks), including among equal scores and duplicate boxes
        np.testing.assert_array_equal(keep.numpy(), g[ref + "_keep"], err_msg=ref)
        assert scores.numpy().tobytes() == g[ref + "_dets"][:, 4].tobytes(), ref
        assert dets[keep, :4].numpy().tobytes() == g[ref + "_dets"][:, :4].tobytes(), ref


def test_soft_nms_groups_are_independent():
    g = npz("soft_nms_voting")
    parts = [g["sn_ties200_dets"], g["sn_dups_dets"], g["sn_exact_dets"]]
    dets = _t(np.concatenate(parts))
    groups = torch.cat([torch.full((len(p),), k) for k, p in zip([7, 2, 5], parts)])
    keep, scores = soft_nms(dets[:, :4], dets[:, 4], groups, 0.5, 0.3, 0.001, "linear")
    offsets = np.cumsum([0] + [len(p) for p in parts])
    expect = [g[f"sn_{n}_linear_s0.5_nt0.3_t0.001_keep"] + offsets[i]
              for i, n in [(1, "dups"), (2, "exact"), (0, "ties200")]]      # ascending group id
    np.testing.assert_array_equal(keep.numpy(), np.concatenate(expect))
    expect_scores = [g[f"sn_{n}_linear_s0.5_nt0.3_t0.001_dets"][:, 4] for n in ("dups", "exact", "ties200")]
    assert scores.numpy().tobytes() == np.concatenate(expect_scores).tobytes()
    assert len(soft_nms(dets[:0, :4], dets[:0, 4], None)[0]) == 0
    with pytest.raises(ValueError):
        soft_nms(dets[:, :4], dets[:, 4], None, method="cosine")


METHODS = [("ID", 1.0), ("TEMP_AVG", 1.0), ("TEMP_AVG", 0.5), ("AVG", 1.0), ("IOU_AVG", 1.0),
           ("GENERALIZED_AVG", 1.0), ("GENERALIZED_AVG", 2.0), ("GENERALIZED_AVG", 0.5),
           ("QUASI_SUM", 1.0), ("QUASI_SUM", 0.5)]
# (case, top dets from, IoU threshold, scoring methods): "big" has > 128 voters per box
# (NumPy's blocked pairwise sum), "exact" IoUs exactly at the threshold, "ties" equal scores.
VOTE = [("big", "nms", 0.5, METHODS), ("big", "soft", 0.8, METHODS[:2]), ("rand", "soft", 0.9, METHODS[3:5]),
        ("ties", "nms", 0.8, METHODS), ("exact", "nms", 0.5, METHODS), ("exact", "soft", 0.9, METHODS)]


@pytest.mark.parametrize("name,src,th,methods", VOTE)
def test_box_voting_bit_exact(name, src, th, methods):
    g = npz("soft_nms_voting")
    top, all_ = _t(g[f"bv_{name}_{src}_top"]), _t(g[f"bv_{name}_all"])
    zeros = torch.zeros(len(top), dtype=torch.long), torch.zeros(len(all_), dtype=torch.long)
    for method, beta in methods:
        ref = g[f"bv_{name}_{src}_th{th}_{method}_b{beta}"]
        boxes, scores = box_voting(top[:, :4], top[:, 4], zeros[0], all_[:, :4], all_[:, 4], zeros[1],
                                   th, method, beta)
        assert boxes.numpy().tobytes() == ref[:, :4].tobytes(), (method, beta)
        assert scores.numpy().tobytes() == ref[:, 4].tobytes(), (method, beta)


@pytest.mark.parametrize("variant,soft,vote", [
    ("soft_linear", ("linear", 0.5), None), ("soft_gauss", ("gaussian", 0.5), None),
    ("vote_id", None, (0.8, "ID")), ("vote_avg", None, (0.9, "AVG")),
    ("soft_linear_vote_temp", ("linear", 0.5), (0.9, "TEMP_AVG")),
    ("soft_gauss_vote_iou", ("gaussian", 0.3), (0.7, "IOU_AVG"))])
def test_box_results_with_soft_nms_and_voting(variant, soft, vote):
    g, ref = npz("box_results"), npz("box_results_variants")
    v = NmsVariants(soft[0] if soft else None, soft[1] if soft else 0.5,
                    vote[0] if vote else None, vote[1] if vote else "ID")
    scores = np.concatenate([g["c1_scores"], g["c2_scores"]])
    boxes = np.concatenate([g["c1_boxes"], g["c2_boxes"]])
    image = torch.tensor([0] * 1000 + [1] * 1000)
    d = box_results_with_nms_and_limit(_t(scores), _t(boxes), image, 2, 0.05, 0.5, 100, v)
    for i, case in enumerate(("c1", "c2")):
        s = slice(d.offsets[i], d.offsets[i + 1])
        assert d.scores[s].numpy().tobytes() == ref[f"{case}_{variant}_scores"].tobytes()
        assert d.boxes[s].numpy().tobytes() == ref[f"{case}_{variant}_boxes"].tobytes()
        np.testing.assert_array_equal(d.classes[s].numpy(), ref[f"{case}_{variant}_classes"])


def test_variants_from_cfg():
    from rcnn.config import load_cfg
    assert NmsVariants.from_cfg(load_cfg(None)) is None
    cfg = load_cfg(None, ["TEST.SOFT_NMS.ENABLED", "True", "TEST.SOFT_NMS.METHOD", "gaussian",
                          "TEST.BBOX_VOTE.ENABLED", "True", "TEST.BBOX_VOTE.VOTE_TH", "0.9",
                          "TEST.BBOX_VOTE.SCORING_METHOD", "AVG"])
    assert NmsVariants.from_cfg(cfg) == NmsVariants("gaussian", 0.5, 0.9, "AVG")
