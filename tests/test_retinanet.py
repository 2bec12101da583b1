"""RetinaNet: Detectron's blob names, cell anchors and test-time box path (bit-exact)."""
import json

import numpy as np
import pytest
import torch

from rcnn.config import load_cfg
from rcnn.inference.retinanet import RetinaNetTestParams, retinanet_box_results
from rcnn.modeling import RetinaNet, UnsupportedModelError, build_model
from rcnn.naming import blob_to_key, key_to_blob
from rcnn.ops.anchors import retinanet_cell_anchors
from tests.golden import GOLDEN, npz

CONFIG = "configs/12_2017_baselines/retinanet_{}_1x.yaml"
GOLDEN_OPTS = ["MODEL.NUM_CLASSES", "9", "TEST.SCALE", "256"]


@pytest.mark.parametrize("body,count,values", [("R-50-FPN", 195, 37_968_692), ("R-101-FPN", 348, 56_960_820)])
def test_blobs_equal_detectrons_builders(body, count, values):
    """Names and shapes of the parameters Detectron's add_fpn + add_fpn_retinanet_outputs create."""
    ref = json.loads((GOLDEN / "retinanet_blobs.json").read_text())[f"retinanet_{body}_1x"]
    sd = build_model(load_cfg(CONFIG.format(body))).state_dict()
    ours = {key_to_blob(k): list(v.shape) for k, v in sd.items()}
    assert ours == {name: shape for name, shape in ref["params"]}
    assert len(ours) == count and sum(v.numel() for v in sd.values()) == values
    inverse = blob_to_key(sd)
    assert all(key_to_blob(key) == blob for blob, key in inverse.items())


def test_shared_tower_and_levels():
    cfg = load_cfg(CONFIG.format("R-50-FPN"), ["RETINANET.SHARE_CLS_BBOX_TOWER", "True", "RETINANET.NUM_CONVS", "2"])
    model = build_model(cfg)
    assert isinstance(model, RetinaNet) and not model.training
    blobs = {key_to_blob(k) for k in model.state_dict()}
    assert not any(b.startswith("retnet_bbox_conv") for b in blobs)
    assert {"retnet_cls_conv_n1_fpn3_w", "retnet_bbox_pred_fpn3_w"} <= blobs
    with torch.no_grad():
        feats = model.features(torch.zeros(1, 3, 128, 256))
    assert [tuple(f.shape[2:]) for f in feats] == [(16, 32), (8, 16), (4, 8), (2, 4), (1, 2)]


@pytest.mark.parametrize("opts,what", [(["RETINANET.SOFTMAX", "True"], "SOFTMAX"),
                                       (["FPN.EXTRA_CONV_LEVELS", "False"], "EXTRA_CONV_LEVELS"),
                                       (["FPN.MULTILEVEL_ROIS", "True"], "MULTILEVEL_RPN only")])
def test_unsupported_variants_are_refused(opts, what):
    with pytest.raises(UnsupportedModelError, match=what):
        build_model(load_cfg(CONFIG.format("R-50-FPN"), opts))


def test_cell_anchors_match_create_cell_anchors():
    g = npz("retinanet_test")
    params = RetinaNetTestParams.from_cfg(load_cfg(CONFIG.format("R-50-FPN"), GOLDEN_OPTS))
    for lvl, cell in zip(params.levels, params.cell_anchors):
        assert cell.dtype == np.float64
        np.testing.assert_array_equal(cell, g[f"cell_anchors_p{lvl}"])
    # Octave-major: the second octave's first anchor is 2^(1/3) times the first's (aspect 1.0 first).
    a = retinanet_cell_anchors(3, 3, (1.0, 2.0, 0.5), 4)
    assert a.shape == (9, 4) and a[0, 2] - a[0, 0] + 1 == 32
    assert np.isclose((a[3, 2] - a[3, 0] + 1) / 32, 2 ** (1 / 3))


def _golden_inputs(case: int, flip: bool = False):
    g = npz("retinanet_test")
    p = f"case{case}_"
    params = RetinaNetTestParams.from_cfg(load_cfg(CONFIG.format("R-50-FPN"), GOLDEN_OPTS))
    probs = [torch.from_numpy(g[f"{p}retnet_cls_prob_fpn{lvl}"]) for lvl in params.levels]
    deltas = [torch.from_numpy(g[f"{p}retnet_bbox_pred_fpn{lvl}"]) for lvl in params.levels]
    if flip:
        probs, deltas = [x.flip(3) for x in probs], [x.flip(3) for x in deltas]
    h, w = (float(v) for v in g[f"{p}im_shape"])
    return probs, deltas, float(g[f"{p}im_scale"]), h, w, params


def _run(probs, deltas, scales, heights, widths, params):
    f32 = torch.float32
    return retinanet_box_results(probs, deltas, torch.tensor(scales, dtype=f32), torch.tensor(heights, dtype=f32),
                                 torch.tensor(widths, dtype=f32), params)


@pytest.mark.parametrize("case", [0, 1])
def test_box_path_equals_im_detect_bbox(case):
    """Recorded network outputs through our batched path == Detectron's im_detect_bbox, to the bit.

    Case 0: 3000 candidates at P3 (the top-1000 cut), NMS, and the 100 cap; case 1: levels
    4-6 without candidates, P7 (threshold 0) mostly exact zeros, fewer than 100 detections."""
    g = npz("retinanet_test")
    probs, deltas, scale, h, w, params = _golden_inputs(case)
    dets = _run(probs, deltas, [scale], [h], [w], params)
    p = f"case{case}_"
    assert dets.offsets == [0, len(g[f"{p}scores"])]
    np.testing.assert_array_equal(dets.classes.numpy(), g[f"{p}classes"])
    np.testing.assert_array_equal(dets.scores.numpy(), g[f"{p}scores"])
    np.testing.assert_array_equal(dets.boxes.numpy(), g[f"{p}boxes"])
    assert dets.boxes.dtype == torch.float32 and dets.classes.dtype == torch.int64


def test_batch_equals_each_image_alone():
    probs, deltas, scale, h, w, params = _golden_inputs(0)
    fprobs, fdeltas, *_ = _golden_inputs(0, flip=True)
    alone = [_run(probs, deltas, [scale], [h], [w], params),
             _run(fprobs, fdeltas, [0.5], [300.0], [500.0], params)]
    both = _run([torch.cat(x) for x in zip(probs, fprobs)], [torch.cat(x) for x in zip(deltas, fdeltas)],
                [scale, 0.5], [h, 300.0], [w, 500.0], params)
    for i, a in enumerate(alone):
        s = slice(both.offsets[i], both.offsets[i + 1])
        for name in ("boxes", "scores", "classes"):
            torch.testing.assert_close(getattr(both, name)[s], getattr(a, name), rtol=0, atol=0)


def _sparse_inputs(cells):
    """Case 1's geometry with zero deltas and probability 0.75 at the given (a, c, y, x) of P3 only."""
    probs, deltas, scale, h, w, params = _golden_inputs(1)
    probs = [torch.zeros_like(p) for p in probs]
    deltas = [torch.zeros_like(d) for d in deltas]
    p3 = probs[0].view(1, 9, 8, *probs[0].shape[2:])
    for a, c, y, x in cells:
        p3[0, a, c, y, x] = 0.75
    return _run(probs, deltas, [scale], [h], [w], params)


def test_equal_scores_rank_lower_index_first():
    """Exact ties: NMS visits the lower raveled index first, and the 100 cap keeps the
    lower indices (Detectron's order among them is its quicksort's)."""
    both = _sparse_inputs([(4, 2, 5, 7), (4, 2, 5, 8)])      # same anchor, 8 px apart: IoU > 0.5
    first = _sparse_inputs([(4, 2, 5, 7)])
    assert both.scores.tolist() == [0.75] and both.classes.tolist() == [3]
    assert torch.equal(both.boxes, first.boxes)
    spread = [(0, 0, y, x) for y in range(0, 48, 3) for x in range(0, 32, 3)][:101]   # IoU 0.14 apart
    capped = _sparse_inputs(spread)
    assert len(capped.scores) == 100
    assert torch.equal(capped.boxes, _sparse_inputs(spread[:100]).boxes)


def test_file_kind_and_wrong_family_messages(tmp_path):
    """A RetinaNet blob set names its family, classes and baseline config; R-CNN weights given a
    RetinaNet config are refused in one line naming the config they need."""
    from convert.checkpoint import load_detectron_weights
    from convert.errors import WeightsMismatchError
    from convert.kinds import cfg_for_file, detect_kind
    from convert.pickle_io import write_detectron_pkl

    cfg = load_cfg(CONFIG.format("R-50-FPN"))
    model = build_model(cfg)
    kind = detect_kind({key_to_blob(k): tuple(v.shape) for k, v in model.state_dict().items()})
    assert (kind.kind, kind.family, kind.num_classes) == ("retinanet", "retinanet_R-50-FPN", 81)
    assert cfg_for_file(kind, "x.pkl").RETINANET.RETINANET_ON
    blobs = {"conv1_w": np.zeros((64, 3, 7, 7), np.float32), "res4_5_branch2a_w": np.zeros((256, 1024, 1, 1), np.float32),
             "fpn_inner_res2_2_sum_lateral_w": np.zeros((256, 256, 1, 1), np.float32),
             "conv_rpn_fpn2_w": np.zeros((256, 256, 3, 3), np.float32), "cls_score_w": np.zeros((81, 1024), np.float32)}
    path = tmp_path / "faster.pkl"
    write_detectron_pkl(str(path), blobs, None)
    with pytest.raises(WeightsMismatchError, match=r"the config builds a RetinaNet, R-50-FPN, 81 classes; use the config "
                                                   r"12_2017_baselines/e2e_faster_rcnn_R-50-FPN_1x.yaml\. "):
        load_detectron_weights(model, path, cfg)
