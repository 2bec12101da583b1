"""Pipeline-level golden test: ``Detector``'s glue on real images against Detectron's ``im_detect_all``.

The fixtures ``pipeline_{mask,keypoint}.npz`` hold the raw network outputs of a calibrated
synthetic model (RPN logits and deltas per level, box-head logits and deltas, mask logits of the
detected classes, keypoint heatmaps) and what Detectron's own ``core/test.py::im_detect_all``
(GenerateProposalsOp per level, collect_and_distribute, bbox_transform, clip_tiled_boxes,
box_results_with_nms_and_limit, _get_rois_blob, segm_results, keypoint_results) made of them; see
fixtures/golden/PROVENANCE.md. ``ReplayModel`` stands in for ``GeneralizedRCNN``: it returns the
recorded outputs, and checks that every RoI blob it is given is bit-identical to Detectron's, so the
recorded head outputs are exactly what Detectron's network would have received.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from rcnn.config import load_cfg
from rcnn.data.preprocess import read_image
from rcnn.inference.detector import Detector
from rcnn.modeling.generalized_rcnn import GeneralizedRCNN
from tests.golden import GOLDEN, npz
from tests.models import CONFIGS


def _sha(t: torch.Tensor | np.ndarray) -> str:
    a = t.numpy() if isinstance(t, torch.Tensor) else t
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _platform_check(name: str, t: torch.Tensor, expected: np.ndarray) -> None:
    """Detectron was fed torch's float32 sigmoid/softmax of the recorded logits (as Caffe2's
    Sigmoid/Softmax would have produced them); a different CPU kernel here would change its input."""
    if _sha(t) != str(expected):
        pytest.skip(f"torch's CPU {name} rounds differently on this processor than where the fixture was "
                    "recorded, so Detectron's recorded inputs do not apply here")


class ReplayModel:
    """Stands in for ``GeneralizedRCNN`` in ``Detector``: replays recorded network outputs."""

    def __init__(self, g: dict, cfg) -> None:
        self.g = g
        self.cfg = cfg
        with torch.device("meta"):                      # the real model's levels and anchor sizes
            net = GeneralizedRCNN(cfg)
        self.rpn_levels, self.anchor_sizes, self.aspect_ratios = net.rpn_levels, net.anchor_sizes, net.aspect_ratios
        self.captured: dict = {}

    def eval(self):
        return self

    def to(self, device):
        return self

    def features(self, blob: torch.Tensor) -> list[torch.Tensor]:
        # Detectron's get_image_blob gave this very blob (checked when the fixture was made).
        assert tuple(blob.shape) == tuple(self.g["blob_shape"])
        assert _sha(blob) == str(self.g["blob_sha256"]), "image blob differs from Detectron's"
        return [blob]

    def rpn_outputs(self, feats):
        logits = [torch.from_numpy(self.g[f"rpn_logits_fpn{lvl}"]) for lvl in self.rpn_levels]
        deltas = [torch.from_numpy(self.g[f"rpn_deltas_fpn{lvl}"]) for lvl in self.rpn_levels]
        for lvl, x in zip(self.rpn_levels, logits):
            _platform_check("sigmoid", torch.sigmoid(x), self.g[f"rpn_probs_fpn{lvl}_sha256"])
        return logits, deltas

    def proposals(self, feats, im_info, params):
        # GeneralizedRCNN's own code: sigmoid, then rcnn.modeling.proposals.generate_proposals.
        rois, probs = GeneralizedRCNN.proposals_from_outputs(self, *self.rpn_outputs(feats), im_info, params)
        assert im_info.padded
        self.captured.update(im_info=im_info.rows.clone(), rois=rois.clone(), probs=probs.clone())
        return rois, probs

    def _check_rois(self, name: str, rois: torch.Tensor) -> None:
        ref = self.g[name]
        assert rois.dtype == torch.float32 and tuple(rois.shape) == ref.shape, name
        bad = (rois.numpy() != ref).sum()
        assert bad == 0, f"{name}: {bad} of {ref.size} coordinates differ from Detectron's"

    def box_outputs(self, feats, rois):
        self._check_rois("proposal_rois", rois)
        cls_logits = torch.from_numpy(self.g["cls_logits"])
        _platform_check("softmax", torch.softmax(cls_logits, dim=1), self.g["cls_prob_sha256"])
        return cls_logits, torch.from_numpy(self.g["bbox_deltas"])

    def mask_logits(self, feats, rois):
        self._check_rois("mask_rois", rois)
        sel = torch.from_numpy(self.g["mask_logits_sel"])
        _platform_check("sigmoid", torch.sigmoid(sel), self.g["mask_probs_sel_sha256"])
        out = torch.zeros(len(sel), self.cfg.MODEL.NUM_CLASSES, *sel.shape[1:])
        out[torch.arange(len(sel)), torch.from_numpy(self.g["det_classes"]).long()] = sel
        return out

    def keypoint_logits(self, feats, rois):
        self._check_rois("keypoint_rois", rois)
        return torch.from_numpy(self.g["kps_score"])


def _run(kind: str, shared_data):
    g = npz(f"pipeline_{kind}")
    cfg = load_cfg(CONFIGS[kind], [str(x) for x in g["cfg_opts"]])
    replay = ReplayModel(g, cfg)
    im = read_image(shared_data / "coco-mini-val2017" / "val2017" / str(g["image_file"]))
    assert im.shape[:2] == tuple(g["image_hw"])
    (det,) = Detector(replay, cfg)([im])
    return g, replay.captured, det


def _check_boxes(g, cap, det):
    # im_info: padded blob size and the float32 scale
    np.testing.assert_array_equal(cap["im_info"].numpy(), g["im_info"])
    assert cap["im_info"].dtype == torch.float32
    # proposals: 5 levels + collect, bit-exact and in Detectron's order
    assert cap["rois"].numpy().tobytes() == g["proposal_rois"].tobytes()
    assert cap["probs"].numpy().tobytes() == g["proposal_probs"].tobytes()
    # detections in Detectron's order (vstack(cls_boxes[1:]))
    assert det.boxes.dtype == np.float32 and det.scores.dtype == np.float32
    assert det.boxes.tobytes() == g["det_boxes"].tobytes(), \
        f"{(det.boxes != g['det_boxes']).sum()} box coordinates differ"
    assert det.scores.tobytes() == g["det_scores"].tobytes()
    np.testing.assert_array_equal(det.classes, g["det_classes"])


def test_mask_pipeline_matches_detectron(shared_data):
    g, cap, det = _run("mask", shared_data)
    _check_boxes(g, cap, det)
    assert len(g["proposal_rois"]) == 1000 and len(det) == 100
    ref = json.loads((GOLDEN / "pipeline_mask_rle.json").read_text())
    assert len(det.masks) == len(ref) == len(det)
    assert [list(m["size"]) for m in det.masks] == [r["size"] for r in ref]
    bad = [i for i, (m, r) in enumerate(zip(det.masks, ref)) if m["counts"] != r["counts"]]
    assert not bad, f"{len(bad)} mask RLEs differ from Detectron's (rows {bad[:10]})"
    np.testing.assert_array_equal(g["rle_size"], [r["size"] for r in ref])


def test_keypoint_pipeline_matches_detectron(shared_data):
    g, cap, det = _run("keypoint", shared_data)
    _check_boxes(g, cap, det)
    assert len(det) == 10 and set(det.classes) == {1}
    ref = g["keypoints"]
    assert det.keypoints.dtype == np.float32 and det.keypoints.shape == ref.shape
    # x, y and the logit bit-exact; the spatial-softmax probability is NumPy's float32
    # exp-and-sum, whose last bits differ between NumPy 1.26 (fixture) and 2.x.
    np.testing.assert_array_equal(det.keypoints[:, :3], ref[:, :3])
    np.testing.assert_allclose(det.keypoints[:, 3], ref[:, 3], rtol=4e-7, atol=0)
