"""Proposal generation, collection and RoI level mapping against Detectron's ops."""
import numpy as np
import pytest
import torch

from rcnn.data.im_info import ImInfo
from rcnn.inference.detector import rois_for_heads
from rcnn.modeling.proposals import ProposalParams, collect, generate_proposals
from rcnn.ops.anchors import cell_anchors
from rcnn.ops.pooler import map_rois_to_levels
from tests.golden import npz


def _inputs(g, case):
    src = "p4_test" if case == "p4_train" else case
    return g[f"{src}_scores"], g[f"{src}_deltas"]


@pytest.mark.parametrize("case,level", [("p4_test", 4), ("p6_test", 6), ("p4_train", 4)])
def test_one_level_bit_exact(case, level):
    g = npz("proposals_one_level")
    np.testing.assert_array_equal(cell_anchors(2**level, (32 * 2 ** (level - 2),), (0.5, 1, 2)),
                                  g[f"{case}_cell_anchors"])
    scores, deltas = _inputs(g, case)
    params = ProposalParams(int(g[f"{case}_pre_nms_top_n"]), int(g[f"{case}_post_nms_top_n"]), 0.7, 0)
    rois, probs = generate_proposals([torch.from_numpy(scores)], [torch.from_numpy(deltas)],
                                     ImInfo(torch.from_numpy(g[f"{case}_im_info"]), padded=case.endswith("test")),
                                     [level],
                                     [32 * 2 ** (level - 2)], (0.5, 1, 2), params)
    np.testing.assert_array_equal(rois.numpy(), g[f"{case}_rois"])
    np.testing.assert_array_equal(probs.numpy(), g[f"{case}_probs"][:, 0])


def test_batch_of_two_images_equals_each_alone():
    g = npz("proposals_one_level")
    s, d = _inputs(g, "p4_test")
    s2 = np.ascontiguousarray(s[:, :, ::-1, :])   # a different second image
    d2 = np.ascontiguousarray(d[:, :, ::-1, :])
    info = g["p4_test_im_info"]
    params = ProposalParams(1000, 1000, 0.7, 0)
    def run(sc, de, ii):
        return generate_proposals([torch.from_numpy(sc)], [torch.from_numpy(de)],
                                  ImInfo(torch.from_numpy(ii), padded=True), [4], [128], (0.5, 1, 2), params)

    both, _ = run(np.concatenate([s, s2]), np.concatenate([d, d2]), np.concatenate([info, info]))
    first, _ = run(s, d, info)
    second, _ = run(s2, d2, info)
    second[:, 0] = 1
    np.testing.assert_array_equal(both.numpy(), torch.cat([first, second]).numpy())


def test_collect_over_levels():
    g = npz("collect_distribute")
    rois = np.concatenate([g[f"rpn_rois_fpn{lvl}"] for lvl in range(2, 7)])
    probs = np.concatenate([g[f"rpn_roi_probs_fpn{lvl}"] for lvl in range(2, 7)])[:, 0]
    out, out_probs = collect(torch.from_numpy(rois[:, 1:]), torch.from_numpy(probs),
                             torch.zeros(len(probs), dtype=torch.long), 1000)
    np.testing.assert_array_equal(out.numpy(), g["collect_rois"])
    assert torch.all(out_probs[:-1] >= out_probs[1:])


def test_level_mapping_incl_boundaries():
    g = npz("collect_distribute")
    lv = map_rois_to_levels(torch.from_numpy(g["collect_rois"][:, 1:]), 2, 5)
    np.testing.assert_array_equal(lv.numpy(), g["target_lvls"])
    boundary = torch.from_numpy(g["boundary_boxes"])
    np.testing.assert_array_equal(map_rois_to_levels(boundary, 2, 5).numpy(), g["boundary_lvls"])
    np.testing.assert_array_equal(map_rois_to_levels(boundary, 2, 6).numpy(), g["boundary_lvls_rpn_2_6"])


def test_mask_and_keypoint_rois_from_original_boxes():
    g = npz("collect_distribute")
    rois = rois_for_heads(torch.from_numpy(g["orig_boxes"]), torch.zeros(40, dtype=torch.long),
                          [float(g["orig_im_scale"])])
    np.testing.assert_array_equal(rois.numpy(), g["mask_rois"])
    lv = map_rois_to_levels(rois[:, 1:], 2, 5).numpy()
    for lvl in range(2, 6):
        np.testing.assert_array_equal(g["mask_rois"][lv == lvl], g[f"mask_rois_fpn{lvl}"])
