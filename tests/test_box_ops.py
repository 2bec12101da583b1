"""Box arithmetic against Detectron's ``utils/boxes.py`` and ``generate_anchors`` (bit-exact)."""
import numpy as np
import pytest
import torch

from rcnn.inference.masks import expand_boxes
from rcnn.ops import boxes as B
from rcnn.ops.anchors import cell_anchors, grid_anchors
from tests.golden import npz

T = torch.from_numpy


@pytest.mark.parametrize("level", [2, 3, 4, 5, 6])
def test_anchors_match_generate_anchors(level):
    g = npz("anchors")
    stride, size = 2**level, 32 * 2 ** (level - 2)
    np.testing.assert_array_equal(cell_anchors(stride, (size,), (0.5, 1, 2)), g[f"cell_anchors_p{level}"])
    h, w = g["grid_hw"]
    grid = grid_anchors(stride, (size,), (0.5, 1, 2), int(h), int(w))
    assert grid.dtype == torch.float32
    np.testing.assert_array_equal(grid.numpy(), g[f"shifted_anchors_p{level}"].astype(np.float32))


def test_reference_anchor_table():
    # docs/detectron.md §4.3: P2 ratio 0.5 -> [-22, -10, 25, 13]; P6 ratio 2 -> [-148, -328, 211, 391].
    np.testing.assert_array_equal(cell_anchors(4, (32,), (0.5, 1, 2))[0], [-22, -10, 25, 13])
    np.testing.assert_array_equal(cell_anchors(64, (512,), (0.5, 1, 2))[2], [-148, -328, 211, 391])


@pytest.mark.parametrize("weights,key", [((1.0, 1.0, 1.0, 1.0), "w1111"), ((10.0, 10.0, 5.0, 5.0), "w10_10_5_5")])
def test_decode_bit_exact(weights, key):
    g = npz("box_transform")
    out = B.decode(T(g["boxes"]), T(g["deltas"]), weights)
    np.testing.assert_array_equal(out.numpy(), g[f"decode_{key}"])
    tiled = B.decode(T(g["tiled_boxes"]), T(g["tiled_deltas"]), weights)
    np.testing.assert_array_equal(tiled.numpy(), g[f"tiled_decode_{key}"])


def test_decode_with_torch_exp_is_within_an_ulp():
    """On GPU torch's exp is used: the only difference from NumPy is exp's last bit."""
    g = npz("box_transform")
    orig = B.exp
    try:
        B.exp = torch.exp
        out = B.decode(T(g["boxes"]), T(g["deltas"]), (10.0, 10.0, 5.0, 5.0)).numpy()
    finally:
        B.exp = orig
    ref = g["decode_w10_10_5_5"]
    assert not np.array_equal(out, ref)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-3)


def test_decode_empty():
    assert B.decode(torch.zeros(0, 4), torch.zeros(0, 8)).shape == (0, 8)


@pytest.mark.parametrize("weights,key", [((1.0, 1.0, 1.0, 1.0), "w1111"), ((10.0, 10.0, 5.0, 5.0), "w10_10_5_5")])
def test_encode_bit_exact(weights, key):
    g = npz("box_transform")
    out = B.encode(T(g["encode_ex_boxes"]), T(g["encode_gt_boxes"]), weights)
    np.testing.assert_array_equal(out.numpy(), g[f"encode_{key}"])


def test_clip_to_image_and_to_im_info():
    g = npz("box_transform")
    h, w = (int(v) for v in g["clip_im_hw"])
    np.testing.assert_array_equal(B.clip_tiled(T(g["clip_in"]), h, w).numpy(), g["clip_out"])
    info = T(g["clip_im_info_f32"])
    np.testing.assert_array_equal(B.clip_tiled(T(g["clip_in_im_info"]), info[0], info[1]).numpy(),
                                  g["clip_out_im_info"])


def test_area_and_format_conversions():
    g = npz("box_transform")
    np.testing.assert_array_equal(B.boxes_area(T(g["area_boxes"])).numpy(), g["area_out"])
    np.testing.assert_array_equal(B.xyxy_to_xywh(T(g["xyxy_in"])).numpy(), g["xyxy_to_xywh_out"])
    np.testing.assert_array_equal(B.xywh_to_xyxy(T(g["xywh_in"])).numpy(), g["xywh_to_xyxy_out"])


def test_pairwise_iou_matches_cython_bbox_overlaps():
    g = npz("nms")
    out = B.pairwise_iou(T(g["overlaps_boxes"]), T(g["overlaps_query_boxes"]))
    np.testing.assert_array_equal(out.numpy(), g["overlaps_out"])
    assert out[0, 0] == 1.0 and out[1, 1] == 0.0


def test_expand_boxes_for_mask_paste():
    g = npz("box_transform")
    out = expand_boxes(g["expand_in"], float(g["expand_scale"]))
    np.testing.assert_array_equal(out, g["expand_out"])
    np.testing.assert_array_equal(out.astype(np.int32), g["expand_out_int32"])
