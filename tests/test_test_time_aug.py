"""Test-time augmentation (TEST.BBOX_AUG / MASK_AUG / KPS_AUG) against Detectron's ``core/test.py``.

``aug_{mask,keypoint}.npz`` hold, for every augmented view of a coco-mini image, what a calibrated
synthetic network gave (proposals, box-head logits and deltas, mask logits of the detected classes,
keypoint heatmaps; logits rounded to float16), and what Detectron's own ``im_detect_all`` with the
``configs/test_time_aug`` options made of them, with only Caffe2's ``RunNet`` replaced by a lookup of
those outputs by the exact bytes of Detectron's input blob (see fixtures/golden/PROVENANCE.md).
``AugReplay`` stands in for the network here and checks that each blob and RoI set it is given is
bit-identical to the one Detectron made, so the flips, scales, aspect ratios and box mappings agree.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from rcnn.config import load_cfg
from rcnn.data.datasets import COCO_KEYPOINT_NAMES
from rcnn.data.preprocess import read_image
from rcnn.data.roidb import keypoint_flip_permutation
from rcnn.inference.detector import Detector
from rcnn.inference.test_time_aug import (
    Augmentation,
    AugmentationError,
    View,
    box_views,
    combine_boxes,
    combine_heatmaps,
    combine_masks,
    head_views,
)
from tests.conftest import REPO_ROOT
from tests.golden import npz

CONFIGS = {"mask": REPO_ROOT / "configs/test_time_aug/e2e_mask_rcnn_R-50-FPN_2x.yaml",
           "keypoint": REPO_ROOT / "configs/test_time_aug/keypoint_rcnn_R-50-FPN_1x.yaml"}


def _sha(a) -> str:
    a = a.numpy() if isinstance(a, torch.Tensor) else a
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


class AugReplay:
    """Stands in for ``GeneralizedRCNN``: each view's recorded outputs, found by its input blob."""

    def __init__(self, g: dict, cfg) -> None:
        self.g, self.cfg = g, cfg
        self.views = {str(g[f"v{i}_blob_sha256"]): i for i in range(int(g["num_views"]))}
        self.seen: list[str] = []

    def eval(self):
        return self

    def to(self, device):
        return self

    def _v(self, feats, key):
        return self.g[f"v{feats[0]}_{key}"]

    def _check(self, name, got, ref):
        if _sha(got) != str(ref):
            pytest.skip(f"torch's CPU {name} rounds differently here than where the fixture was recorded")

    def features(self, blob):
        key = _sha(blob)
        assert key in self.views, "an augmented image blob differs from every one Detectron made"
        self.seen.append(key)
        return [self.views[key]]

    def proposals(self, feats, im_info, params):
        assert im_info.padded
        np.testing.assert_array_equal(im_info.rows.numpy(), self._v(feats, "im_info"))
        return torch.from_numpy(self._v(feats, "rois")), None

    def box_outputs(self, feats, rois):
        assert rois.numpy().tobytes() == self._v(feats, "rois").tobytes()
        logits = torch.from_numpy(self._v(feats, "cls_logits").astype(np.float32))
        self._check("softmax", torch.softmax(logits, dim=1), self._v(feats, "cls_prob_sha256"))
        return logits, torch.from_numpy(self._v(feats, "bbox_deltas").astype(np.float32))

    def mask_logits(self, feats, rois):
        assert rois.numpy().tobytes() == self._v(feats, "mask_rois").tobytes(), "mask RoIs differ from Detectron's"
        sel = torch.from_numpy(self._v(feats, "mask_logits_sel").astype(np.float32))
        self._check("sigmoid", torch.sigmoid(sel), self._v(feats, "mask_probs_sel_sha256"))
        out = torch.zeros(len(sel), self.cfg.MODEL.NUM_CLASSES, *sel.shape[1:])
        out[torch.arange(len(sel)), torch.from_numpy(self.g["det_classes"])] = sel
        return out

    def keypoint_logits(self, feats, rois):
        assert rois.numpy().tobytes() == self._v(feats, "keypoint_rois").tobytes(), "keypoint RoIs differ"
        return torch.from_numpy(self._v(feats, "kps_score").astype(np.float32))


def test_augmented_pipeline_matches_detectron(shared_data):
    """Recorded on coco-mini's 139 (not shipped): one test for both models, as it needs ../shared."""
    for kind in ("mask", "keypoint"):
        augmented_pipeline_matches_detectron(kind, shared_data)


def augmented_pipeline_matches_detectron(kind, shared_data):
    g = npz(f"aug_{kind}")
    cfg = load_cfg(CONFIGS[kind], [str(x) for x in g["cfg_opts"]])
    im = read_image(shared_data / "coco-mini-val2017" / "val2017" / str(g["image_file"]))
    replay = AugReplay(g, cfg)
    (det,) = Detector(replay, cfg)([im])
    assert set(replay.seen) == set(replay.views)              # every view Detectron ran, no other
    assert det.boxes.tobytes() == g["ref_det_boxes"].tobytes(), \
        f"{(det.boxes != g['ref_det_boxes']).sum()} box coordinates differ"
    assert det.scores.tobytes() == g["ref_det_scores"].tobytes()
    np.testing.assert_array_equal(det.classes, g["ref_det_classes"])
    if kind == "mask":
        assert [m["counts"] for m in det.masks] == list(g["ref_rle_counts"])
    else:
        ref = g["ref_keypoints"]
        np.testing.assert_array_equal(det.keypoints[:, :3], ref[:, :3])
        np.testing.assert_allclose(det.keypoints[:, 3], ref[:, 3], rtol=4e-7, atol=0)  # NumPy 2 exp-sum


def test_view_order_is_detectrons():
    cfg = load_cfg(CONFIGS["mask"], ["TEST.BBOX_AUG.ASPECT_RATIOS", "(0.5, 2.0)", "TEST.BBOX_AUG.ASPECT_RATIO_H_FLIP",
                                     "True"])
    b = cfg.TEST.BBOX_AUG
    views = box_views(b, 800, 1333)
    assert views[0] == View(800, 1333, hflip=True) and views[-1] == View(800, 1333)
    assert views[1:5] == [View(400, 2000), View(400, 2000, hflip=True), View(500, 2000), View(500, 2000, hflip=True)]
    assert views[-5:-1] == [View(800, 1333, 0.5), View(800, 1333, 0.5, True), View(800, 1333, 2.0),
                            View(800, 1333, 2.0, True)]
    assert len(views) == 2 + 2 * 8 + 4
    assert head_views(b, 800, 1333)[:2] == [View(800, 1333), View(800, 1333, hflip=True)]


def test_box_mapping_round_trip():
    boxes = torch.tensor([[0.0, 1.5, 10.25, 20.0, 3.0, 4.0, 5.0, 6.0]], dtype=torch.float32)
    v = View(200, 333, 0.75, hflip=True)
    inside = v.to_view(boxes, 640)                               # width 480 after the stretch
    x2 = np.float32(0.75) * np.array([10.25, 0.0], np.float32)             # ar * x (float32), then flipped
    np.testing.assert_array_equal(inside[0, [0, 2]].numpy(), np.float32(480) - x2 - np.float32(1))
    np.testing.assert_allclose(v.from_view(inside, 640).numpy(), boxes.numpy(), rtol=1e-6)


def test_average_and_identity_heuristics():
    """AVG is NumPy's mean of float32 arrays (sequential sum / n); ID keeps the identity's (last)."""
    rng = np.random.default_rng(3)
    xs = [rng.random((6, 8), dtype=np.float32) * 100 for _ in range(5)]
    s, b = combine_boxes([torch.from_numpy(x) for x in xs], [torch.from_numpy(x) for x in xs], "AVG", "ID")
    acc = np.zeros_like(xs[0])
    for x in xs:
        acc = acc + x
    assert s.numpy().tobytes() == (acc / np.float32(5)).tobytes()
    assert b.numpy().tobytes() == xs[-1].tobytes()


@pytest.mark.parametrize("opts,msg", [
    (["TEST.BBOX_AUG.SCORE_HEUR", "AVG", "TEST.BBOX_AUG.COORD_HEUR", "AVG"], "UNION heuristic"),
    (["TEST.BBOX_AUG.SCORE_HEUR", "AVG"], "both be UNION"),
    (["TEST.BBOX_AUG.SCALE_SIZE_DEP", "True"], "not implemented"),
    (["TEST.MASK_AUG.SCALE_SIZE_DEP", "True"], "not implemented"),
    (["TEST.MASK_AUG.HEUR", "HARD"], "not supported")])
def test_refused_like_detectron(opts, msg):
    cfg = load_cfg(CONFIGS["mask"], ["MODEL.TYPE", "generalized_rcnn"] + opts)
    with pytest.raises(AugmentationError, match=msg):
        Augmentation(type("D", (), {"cfg": cfg})())


def _aug_node(**kw):
    node = {"ENABLED": True, "H_FLIP": True, "SCALES": (160, 256), "MAX_SIZE": 400, "SCALE_H_FLIP": True,
            "ASPECT_RATIOS": (0.75, 1.5), "ASPECT_RATIO_H_FLIP": True}
    node.update(kw)
    return type("Aug", (), node)


@pytest.mark.parametrize("score_heur,coord_heur", [("AVG", "AVG"), ("ID", "ID"), ("UNION", "UNION"), ("AVG", "ID"),
                                                   ("ID", "AVG")])
def test_box_merge_matches_im_detect_bbox_aug(score_heur, coord_heur):
    """Detectron's im_detect_bbox_aug with im_detect_bbox returning recorded random outputs per view."""
    g = npz("aug_merge")
    key, width = f"bbox_{score_heur}_{coord_heur}", int(g["im_hw"][1])
    views = box_views(_aug_node(), 200, 333)
    assert [v.image(np.zeros((2, width, 3), np.uint8)).shape[1] for v in views] == list(g[f"{key}_call_widths"])
    scores = [torch.from_numpy(g[f"{key}_call{i}_scores"]) for i in range(len(views))]
    boxes = [v.from_view(torch.from_numpy(g[f"{key}_call{i}_boxes"]), width) for i, v in enumerate(views)]
    s, b = combine_boxes(scores, boxes, score_heur, coord_heur)
    assert s.numpy().tobytes() == g[f"{key}_scores"].tobytes()
    assert b.numpy().tobytes() == g[f"{key}_boxes"].astype(np.float32).tobytes()


def _head_inputs(g, key, width, name):
    views = head_views(_aug_node(), 200, 333)
    boxes = torch.from_numpy(g["head_boxes"])
    outs = []
    for i, v in enumerate(views):
        # the boxes Detectron gave the head in this view are ours, bit for bit
        assert v.to_view(boxes, width).numpy().tobytes() == g[f"{key}_call{i}_boxes"].tobytes(), (key, i)
        outs.append(torch.from_numpy(g[f"{key}_call{i}_{name}"]))
    return views, boxes, outs


@pytest.mark.parametrize("heur", ["SOFT_AVG", "SOFT_MAX", "LOGIT_AVG"])
def test_mask_merge_matches_im_detect_mask_aug(heur):
    g = npz("aug_merge")
    views, _, masks = _head_inputs(g, f"mask_{heur}", int(g["im_hw"][1]), "masks")
    merged = combine_masks([m.flip(-1) if v.hflip else m for v, m in zip(views, masks)], heur)
    assert merged.numpy().tobytes() == g[f"mask_{heur}_out"].tobytes()


@pytest.mark.parametrize("heur,size_dep", [("HM_AVG", False), ("HM_AVG", True), ("HM_MAX", False), ("HM_MAX", True)])
def test_heatmap_merge_matches_im_detect_keypoints_aug(heur, size_dep):
    g = npz("aug_merge")
    key = f"kps_{heur}_{size_dep}"
    views, boxes, hms = _head_inputs(g, key, int(g["im_hw"][1]), "heatmaps")
    perm = torch.from_numpy(keypoint_flip_permutation(COCO_KEYPOINT_NAMES))
    hms = [h[:, perm].flip(-1) if v.hflip else h for v, h in zip(views, hms)]
    merged = combine_heatmaps(hms, [v.scale < 200 for v in views], [v.scale > 200 for v in views], boxes, heur,
                              size_dep, 20000)
    assert merged.numpy().tobytes() == g[f"{key}_out"].tobytes()


SMALL_AUG = {
    "mask": ["MODEL.TYPE", "generalized_rcnn", "TEST.SCALE", "128", "TEST.MAX_SIZE", "213", "TEST.DETECTIONS_PER_IM", "20",
             "TEST.BBOX_AUG.SCALES", "(96,)", "TEST.BBOX_AUG.MAX_SIZE", "200",
             "TEST.MASK_AUG.SCALES", "(96,)", "TEST.MASK_AUG.MAX_SIZE", "200"],
    # The config's AVG heuristics need precomputed proposals (MODEL.FASTER_RCNN False), which
    # this project's Detector does not read: run its RPN model with UNION instead.
    "keypoint": ["MODEL.TYPE", "generalized_rcnn", "MODEL.FASTER_RCNN", "True", "TEST.SCALE", "128",
                 "TEST.DETECTIONS_PER_IM", "10",
                 "TEST.MAX_SIZE", "213", "TEST.BBOX_AUG.SCORE_HEUR", "UNION", "TEST.BBOX_AUG.COORD_HEUR", "UNION",
                 "TEST.BBOX_AUG.SCALES", "(96,)", "TEST.BBOX_AUG.MAX_SIZE", "200",
                 "TEST.KPS_AUG.SCALES", "(96, 160)", "TEST.KPS_AUG.MAX_SIZE", "300"],
}
NO_VIEWS = [f"TEST.{a}.{k}" for a in ("BBOX_AUG", "MASK_AUG", "KPS_AUG") for k in ("H_FLIP", "SCALE_H_FLIP")]


@pytest.mark.parametrize("kind", ["mask", "keypoint"])
def test_configs_run_with_synthetic_weights(kind, test_data, synthetic_pkls):
    from rcnn.engine.weights import load_model

    cfg = load_cfg(CONFIGS[kind], SMALL_AUG[kind])
    assert cfg.TEST.BBOX_AUG.ENABLED and (cfg.TEST.MASK_AUG.ENABLED or cfg.TEST.KPS_AUG.ENABLED)
    model, _ = load_model(cfg, load_detectron=str(synthetic_pkls[kind]))
    im = read_image(test_data / "coco-cc-by" / "val2017" / "000000397133.jpg")
    det = Detector(model, cfg)([im])[0]
    assert len(det) > 0
    assert len(det.masks if kind == "mask" else det.keypoints) == len(det)
    # With every extra view switched off the augmented path is the plain one, bit for bit.
    only_identity = SMALL_AUG[kind] + [x for k in NO_VIEWS for x in (k, "False")] + [
        x for a in ("BBOX_AUG", "MASK_AUG", "KPS_AUG") for x in (f"TEST.{a}.SCALES", "()")]
    off = SMALL_AUG[kind] + [x for a in ("BBOX_AUG", "MASK_AUG", "KPS_AUG") for x in (f"TEST.{a}.ENABLED", "False")]
    a = Detector(model, load_cfg(CONFIGS[kind], only_identity))([im])[0]
    b = Detector(model, load_cfg(CONFIGS[kind], off))([im])[0]
    assert a.boxes.tobytes() == b.boxes.tobytes() and a.scores.tobytes() == b.scores.tobytes()
    np.testing.assert_array_equal(a.classes, b.classes)
    if kind == "mask":
        assert a.masks == b.masks
    else:
        assert a.keypoints.tobytes() == b.keypoints.tobytes()
