"""Detectron NMS (``cython_nms.nms``) against its own outputs, and the grouped variant."""
import numpy as np
import pytest
import torch

from rcnn.ops.nms import batched_nms, sort_desc
from tests.golden import npz


@pytest.mark.parametrize("n", [300, 2000])
@pytest.mark.parametrize("thresh,key", [(0.5, "t05"), (0.7, "t07")])
def test_matches_cython_nms(n, thresh, key):
    g = npz("nms")
    dets = torch.from_numpy(g[f"dets_n{n}"])
    keep = batched_nms(dets[:, :4], dets[:, 4], None, thresh)
    np.testing.assert_array_equal(keep.numpy(), g[f"keep_n{n}_{key}"])


def test_sorted_input_and_exact_threshold():
    g = npz("nms")
    d = torch.from_numpy(g["dets_sorted_n1000"])
    np.testing.assert_array_equal(batched_nms(d[:, :4], d[:, 4], None, 0.7).numpy(), g["keep_sorted_n1000_t07"])
    # IoU exactly 0.5 suppresses (>=), zero-area and 1x1 boxes survive.
    d = torch.from_numpy(g["dets_exact"])
    np.testing.assert_array_equal(batched_nms(d[:, :4], d[:, 4], None, 0.5).numpy(), g["keep_exact_t05"])


def test_groups_are_independent():
    g = npz("nms")
    a = torch.from_numpy(g["dets_n300"])
    b = torch.from_numpy(g["dets_n2000"][:500])
    dets = torch.cat([b, a])
    groups = torch.cat([torch.ones(500, dtype=torch.long), torch.zeros(300, dtype=torch.long)])
    keep = batched_nms(dets[:, :4], dets[:, 4], groups, 0.5)
    keep_b = batched_nms(b[:, :4], b[:, 4], None, 0.5)
    keep_a = batched_nms(a[:, :4], a[:, 4], None, 0.5) + 500
    np.testing.assert_array_equal(keep.numpy(), torch.cat([keep_b, keep_a]).sort().values.numpy())


def test_tie_rule_lower_index_first():
    # Two identical boxes with equal scores: the lower index is visited first and kept.
    boxes = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 10]])
    scores = torch.tensor([0.5, 0.9, 0.5])
    assert batched_nms(boxes, scores, None, 0.5).tolist() == [0, 1]
    assert sort_desc(torch.tensor([0.1, 0.5, 0.5, 0.2])).tolist() == [1, 2, 3, 0]


def test_empty():
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), None, 0.5).numel() == 0
