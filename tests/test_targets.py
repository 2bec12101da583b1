"""Training targets against Detectron's own code (fixtures ``targets_*.npz``, see PROVENANCE.md).

The fixtures hold real coco-mini ground truth (crowd included, one image flipped) at
Detectron's training scales, the RPN blobs of ``add_rpn_blobs`` and the outputs of
``CollectAndDistributeFpnRpnProposalsOp(train=True)`` on random but realistic
proposals, both with a seeded ``numpy.random``. :class:`Replay` makes the same draws
here, so every array must match to the bit.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from rcnn.data.im_info import ImInfo
from rcnn.data.train_batch import ImageTargets
from rcnn.modeling.keypoint_targets import keypoints_to_heatmap_labels
from rcnn.modeling.mask_targets import polys_to_boxes, polys_to_mask_wrt_box
from rcnn.modeling.proposals import collect
from rcnn.modeling.roi_targets import RoITargetParams, sample_rois
from rcnn.modeling.rpn_targets import RPNTargetParams, rpn_targets
from rcnn.modeling.sampler import RandomSampler
from tests.golden import npz

# pycocotools' mask.decode under NumPy 2, once per rasterised RoI
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

LEVELS = [2, 3, 4, 5, 6]
SIZES = [32, 64, 128, 256, 512]
RATIOS = (0.5, 1, 2)


class Replay:
    """A sampler making Detectron's ``numpy.random`` calls on a seeded RandomState:
    ``choice(c, k, replace=False)`` and ``c[randint(len(c), size=k)]``; records the calls."""

    def __init__(self, seed: int) -> None:
        self.rs = np.random.RandomState(seed)
        self.calls: list[tuple[int, int, bool]] = []

    def __call__(self, candidates: torch.Tensor, k: int, replace: bool) -> torch.Tensor:
        c = candidates.cpu().numpy()
        self.calls.append((len(c), k, replace))
        picked = c[self.rs.randint(len(c), size=k)] if replace else self.rs.choice(c, size=k, replace=False)
        return torch.from_numpy(np.asarray(picked, dtype=np.int64)).to(candidates.device)


def image_targets(g: dict, i: int) -> ImageTargets:
    kps = g.get(f"gt_keypoints_{i}")
    return ImageTargets(
        int(g[f"height_{i}"]), int(g[f"width_{i}"]), torch.from_numpy(g[f"gt_boxes_{i}"]),
        torch.from_numpy(g[f"gt_classes_{i}"].astype(np.int64)), torch.from_numpy(g[f"is_crowd_{i}"]),
        json.loads(str(g[f"segms_json_{i}"])), None if kps is None else torch.from_numpy(kps.astype(np.float32)),
        bool(g[f"flipped_{i}"]), int(g[f"image_id_{i}"]))


def assert_bits(ours: torch.Tensor, ref: np.ndarray) -> None:
    """Same shape and the same bits (float32 compared as int32, so -0.0 != 0.0)."""
    a = ours.cpu().numpy()
    assert a.shape == ref.shape
    if ref.dtype == np.float32:
        np.testing.assert_array_equal(a.astype(np.float32).view(np.int32), ref.view(np.int32))
    else:
        np.testing.assert_array_equal(a, ref)


@pytest.mark.parametrize("case", ["mask", "keypoint"])
def test_rpn_targets_match_detectron(case):
    g = npz(f"targets_{case}")
    sampler = Replay(int(g["rpn_seed"]))
    out = rpn_targets([tuple(hw) for hw in g["feature_hw"].tolist()], ImInfo.of_images(torch.from_numpy(g["im_info"])),
                      [image_targets(g, i) for i in range(2)], LEVELS, SIZES, RATIOS, RPNTargetParams(), sampler)
    for k, lvl in enumerate(LEVELS):
        assert_bits(out.labels[k].to(torch.int32), g[f"rpn_labels_int32_fpn{lvl}"])
        assert_bits(out.bbox_targets[k], g[f"rpn_bbox_targets_fpn{lvl}"])
        assert_bits(out.bbox_inside_weights[k], g[f"rpn_bbox_inside_weights_fpn{lvl}"])
        assert_bits(out.bbox_outside_weights[k], g[f"rpn_bbox_outside_weights_fpn{lvl}"])
    # Both sampling branches appear: the mask case disables 202 of 330 positives in image 0.
    if case == "mask":
        assert sampler.calls[0] == (330, 202, False)
    assert all(replace for _, _, replace in sampler.calls[-2:])


def test_rpn_targets_on_detectron_field_cropped_equal_feature_size():
    # Enumerating on Detectron's ceil(1344 / stride) square and cropping the top-left
    # feature-sized corner (SpatialNarrowAs) gives the same blobs, same draws included.
    g = npz("targets_mask")
    targets = [image_targets(g, i) for i in range(2)]
    im_info = ImInfo.of_images(torch.from_numpy(g["im_info"]))
    sizes = [tuple(hw) for hw in g["feature_hw"].tolist()]
    field = [(math.ceil(1344 / 2**lvl),) * 2 for lvl in LEVELS]
    small = rpn_targets(sizes, im_info, targets, LEVELS, SIZES, RATIOS, RPNTargetParams(), Replay(7))
    big = rpn_targets(field, im_info, targets, LEVELS, SIZES, RATIOS, RPNTargetParams(), Replay(7))
    for k, (h, w) in enumerate(sizes):
        for a, b in zip((small.labels, small.bbox_targets, small.bbox_inside_weights, small.bbox_outside_weights),
                        (big.labels, big.bbox_targets, big.bbox_inside_weights, big.bbox_outside_weights)):
            assert torch.equal(a[k], b[k][:, :, :h, :w])
        assert (big.labels[k][:, :, h:, :] == -1).all() and (big.labels[k][:, :, :, w:] == -1).all()


def test_rpn_targets_image_without_gt_has_negatives_only():
    g = npz("targets_mask")
    t = image_targets(g, 0)
    crowd_only = ImageTargets(t.height, t.width, t.boxes[t.is_crowd], t.classes[t.is_crowd], t.is_crowd[t.is_crowd])
    out = rpn_targets([tuple(hw) for hw in g["feature_hw"].tolist()], ImInfo.of_images(torch.from_numpy(g["im_info"][:1])),
                      [crowd_only], LEVELS, SIZES, RATIOS, RPNTargetParams(),
                      RandomSampler(torch.Generator().manual_seed(0)))
    labels = torch.cat([x.flatten() for x in out.labels])
    num_neg = int((labels == 0).sum())
    assert (labels != 1).all() and 240 < num_neg <= 256   # 256 draws with replacement, few repeats
    assert all(float(w.sum()) == 0 for w in out.bbox_inside_weights)
    assert all(float(t.abs().sum()) == 0 for t in out.bbox_targets)
    # outside weights: float32(1 / #labelled) on each coordinate of the negatives, 0 elsewhere
    outside = torch.cat([w.permute(0, 2, 3, 1).reshape(-1, 4) for w in out.bbox_outside_weights])
    labels = torch.cat([x.permute(0, 2, 3, 1).flatten() for x in out.labels])   # (y, x, a) like the rows
    expected = torch.where(labels == 0, torch.tensor(np.float32(1.0 / num_neg)), torch.tensor(0.0))
    assert torch.equal(outside, expected[:, None].expand(-1, 4))


def test_collect_matches_detectron_training_collect():
    for case in ("mask", "keypoint", "nofg"):
        g = npz(f"targets_{case}")
        rois, _ = _collected(g)
        assert_bits(rois, g["collected_rois"])


def _collected(g: dict) -> tuple[torch.Tensor, torch.Tensor]:
    rois = torch.from_numpy(np.concatenate([g[f"rpn_rois_fpn{lvl}"] for lvl in LEVELS]))
    probs = torch.from_numpy(np.concatenate([g[f"rpn_roi_probs_fpn{lvl}"] for lvl in LEVELS])[:, 0])
    return collect(rois[:, 1:], probs, rois[:, 0].long(), 2000, per_image=False)


@pytest.mark.parametrize("case", ["mask", "keypoint", "nofg"])
def test_sample_rois_match_detectron(case):
    g = npz(f"targets_{case}")
    keypoints = case == "keypoint"
    params = RoITargetParams(num_classes=2 if keypoints else 81, mask_resolution=None if keypoints else 28,
                             keypoint_heatmap_size=56 if keypoints else None)
    sampler = Replay(int(g["roi_seed"]))
    out = sample_rois(torch.from_numpy(g["collected_rois"]), ImInfo.of_images(torch.from_numpy(g["im_info"])),
                      [image_targets(g, i) for i in range(2)], params, sampler)
    assert_bits(out.rois, g["rois"])
    assert_bits(out.labels.to(torch.int32), g["labels_int32"])
    assert_bits(out.bbox_targets, g["bbox_targets"])
    assert_bits(out.bbox_inside_weights, g["bbox_inside_weights"])
    assert_bits(out.bbox_outside_weights, g["bbox_outside_weights"])
    if keypoints:
        assert out.masks is None
        n = out.keypoints.rois.shape[0]
        assert_bits(out.keypoints.rois, g["keypoint_rois"])
        assert_bits(out.keypoints.locations.reshape(-1, 1).to(torch.int32), g["keypoint_locations_int32"])
        assert_bits(out.keypoints.weights.reshape(-1, 1), g["keypoint_weights"])
        # keypoint RoIs are drawn after each image's fg/bg draws, only when there are > 128 candidates
        assert [c[1] for c in sampler.calls] == [128, 310, 128, 128, 300, 128] and n == 256
    else:
        assert out.keypoints is None
        m = out.masks
        assert_bits(m.rois, g["mask_rois"])
        assert_bits(m.classes.to(torch.int32), g["masks_class"])
        assert_bits(m.targets.reshape(m.targets.shape[0], -1), g["masks_int32_class_channel"])
    if case == "nofg":
        # image 1 has only a crowd box and no proposal near it: one bg RoI with an ignored mask
        assert int(((out.rois[:, 0] == 1) & (out.labels > 0)).sum()) == 0
        assert out.masks.classes[-1] == 0 and (out.masks.targets[-1] == -1).all()


def test_crowd_matched_rois_take_the_crowd_class_and_regress_to_non_crowd_gt():
    g = npz("targets_mask")
    params = RoITargetParams(mask_resolution=28)
    out = sample_rois(torch.from_numpy(g["collected_rois"]), ImInfo.of_images(torch.from_numpy(g["im_info"])),
                      [image_targets(g, i) for i in range(2)], params, Replay(int(g["roi_seed"])))
    t = image_targets(g, 0)
    first = out.rois[:, 0] == 0
    gi = out.gt_index[first]
    on_crowd = (out.labels[first] > 0) & (gi >= 0) & t.is_crowd[gi.clamp(min=0)]
    assert int(on_crowd.sum()) > 0
    assert (out.labels[first][on_crowd] == t.classes[gi[on_crowd]]).all()


def test_keypoints_to_heatmap_labels_match_detectron():
    g = npz("keypoints")
    loc, w = keypoints_to_heatmap_labels(torch.from_numpy(g["label_keypoints"].astype(np.float32)),
                                         torch.from_numpy(g["label_rois"]), 56)
    np.testing.assert_array_equal(loc.numpy(), g["label_heatmaps"])   # == : the fixture holds -0.0
    assert_bits(w, g["label_weights"])


def test_polygon_masks_match_detectron():
    g = npz("segms")
    polys, start = [], 0
    for n, case in zip(g["poly_lengths"], g["poly_case"]):
        while len(polys) <= case:
            polys.append([])
        polys[case].append(g["polys_flat"][start:start + n].tolist())
        start += n
    np.testing.assert_array_equal(polys_to_boxes(polys), g["polys_to_boxes_out"])
    for case, box in enumerate(g["boxes"]):
        np.testing.assert_array_equal(polys_to_mask_wrt_box(polys[case], box, int(g["M"])), g["masks"][case])


def test_random_sampler_draws_distinct_without_replacement_and_is_seeded():
    cand = torch.arange(100, 200)
    a = RandomSampler(torch.Generator().manual_seed(5))(cand, 40, False)
    b = RandomSampler(torch.Generator().manual_seed(5))(cand, 40, False)
    assert torch.equal(a, b) and a.unique().numel() == 40 and ((a >= 100) & (a < 200)).all()
    c = RandomSampler(torch.Generator().manual_seed(5))(cand[:3], 50, True)
    assert c.numel() == 50 and set(c.tolist()) <= {100, 101, 102}
    with pytest.raises(ValueError):
        RandomSampler()(cand[:3], 4, False)


def test_crowd_only_image_gets_ignored_masks_for_crowd_matched_fg():
    # Detectron cannot handle it (argmax over no polygon); here such RoIs train nothing.
    crowd_box = torch.tensor([[10.0, 10.0, 200.0, 150.0]])
    t = ImageTargets(300, 400, crowd_box, torch.tensor([1]), torch.tensor([True]),
                     [{"size": [300, 400], "counts": "abc"}])
    props = torch.tensor([[0.0, 12.0, 11.0, 198.0, 151.0], [0.0, 300.0, 200.0, 390.0, 290.0]])
    im_info = ImInfo.of_images(torch.tensor([[300.0, 400.0, 1.0]]))
    out = sample_rois(props, im_info, [t], RoITargetParams(mask_resolution=28),
                      RandomSampler(torch.Generator().manual_seed(0)))
    assert out.labels.tolist() == [1, 0]
    assert float(out.bbox_inside_weights.sum()) == 0
    assert out.masks.classes.tolist() == [1] and (out.masks.targets == -1).all()


def test_non_crowd_rle_ground_truth_is_refused():
    t = ImageTargets(300, 400, torch.tensor([[10.0, 10.0, 200.0, 150.0]]), torch.tensor([3]), torch.tensor([False]),
                     [{"size": [300, 400], "counts": "abc"}])
    with pytest.raises(ValueError, match="RLE"):
        sample_rois(torch.zeros((0, 5)), ImInfo.of_images(torch.tensor([[300.0, 400.0, 1.0]])), [t],
                    RoITargetParams(mask_resolution=28), RandomSampler())
