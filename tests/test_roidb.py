"""rcnn.data.roidb against Detectron's own get_roidb / extend_with_flipped_entries /
filter_for_training / combined_roidb_for_training (fixtures/golden/roidb_*, PROVENANCE.md).

Two datasets per config: the 79 coco-mini images (instances for the mask config, person
keypoints for the keypoint config) and ``roidb_edge_input.json``, whose annotations hit every
rule (clipping, 1-px boxes, area 0, ignore, short polygons, crowd and non-crowd RLE, keypoints)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util

from rcnn.config import load_cfg
from rcnn.data.datasets import COCODataset, DatasetError
from rcnn.data.roidb import (
    combined_roidb_for_training,
    extend_with_flipped_entries,
    filter_for_training,
    flip_entry,
    gt_roidb,
    keypoint_flip_permutation,
    open_datasets,
    roidb_from_cfg,
)
from tests import golden
from tests.coco_mini import annotations_only_coco_mini

REPO = Path(__file__).resolve().parents[1]
EDGE_JSON = golden.GOLDEN / "roidb_edge_input.json"
MINI_JSON = {"mask": "instances_val2017.json", "keypoint": "person_keypoints_val2017.json"}
CONFIGS = ("mask", "keypoint")


@pytest.fixture(scope="module")
def mini(test_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """coco-mini's shipped annotations; its images are stand-ins (tests/coco_mini.py)."""
    return annotations_only_coco_mini(test_data, tmp_path_factory.mktemp("coco_mini"))


def mini_dataset(mini: Path, which: str) -> COCODataset:
    return COCODataset(mini / MINI_JSON[which], mini / "val2017")


def edge_dataset(mini: Path) -> COCODataset:
    return COCODataset(EDGE_JSON, mini / "val2017")


def segms_sha256(segms: list) -> str:
    """The fixture's hash: sha256 of the compact, key-sorted JSON text of one entry's segms."""
    return hashlib.sha256(json.dumps(segms, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def assert_bitwise(ours: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert ours.dtype == ref.dtype, f"{what}: dtype {ours.dtype} vs Detectron's {ref.dtype}"
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs {ref.shape}"
    assert ours.tobytes() == ref.tobytes(), f"{what}: values differ at {np.argwhere(ours != ref)[:5].tolist()}"


@pytest.mark.parametrize("which", CONFIGS)
@pytest.mark.parametrize("name", ["mini", "edge"])
def test_roidb_and_flipped_entries_match_detectron(mini: Path, which: str, name: str) -> None:
    ds = mini_dataset(mini, which) if name == "mini" else edge_dataset(mini)
    roidb = extend_with_flipped_entries(gt_roidb(ds), ds)
    g = golden.npz(f"roidb_{which}")
    p = f"{name}_"
    assert [e.image_id for e in roidb] == g[p + "image_id"].tolist()
    assert [e.image.name for e in roidb] == g[p + "image_file"].tolist()
    assert [e.flipped for e in roidb] == g[p + "flipped"].tolist()
    assert [(e.height, e.width) for e in roidb] == list(zip(g[p + "height"].tolist(), g[p + "width"].tolist()))
    assert [len(e.boxes) for e in roidb] == g[p + "num_gt"].tolist()
    assert [e.has_visible_keypoints for e in roidb] == g[p + "has_visible_keypoints"].tolist()
    for field in ("boxes", "gt_classes", "is_crowd", "seg_areas", "max_overlaps"):
        assert_bitwise(np.concatenate([getattr(e, field) for e in roidb]), g[p + field], f"{name} {field}")
    if p + "gt_keypoints" in g:
        assert_bitwise(np.concatenate([e.gt_keypoints for e in roidb]), g[p + "gt_keypoints"], "gt_keypoints")
    else:
        assert all(e.gt_keypoints is None for e in roidb)
    segms = golden.js(f"roidb_{which}_segms")
    assert [segms_sha256(e.segms) for e in roidb] == segms[p + "sha256"]
    if name == "edge":  # values too, with int/float kept apart (JSON keeps 10 and 10.0 apart)
        for entry, ref in zip(roidb, segms["edge_segms"]):
            assert json.loads(json.dumps(entry.segms)) == ref, entry.image_id


@pytest.mark.parametrize("which", CONFIGS)
@pytest.mark.parametrize("name", ["mini", "edge"])
def test_filter_for_training_matches_detectron(mini: Path, which: str, name: str) -> None:
    ds = mini_dataset(mini, which) if name == "mini" else edge_dataset(mini)
    roidb = extend_with_flipped_entries(gt_roidb(ds), ds)
    kept = {id(e) for e in filter_for_training(roidb, keypoints_on=(which == "keypoint"))}
    assert [id(e) in kept for e in roidb] == golden.npz(f"roidb_{which}")[f"{name}_filter_keep"].tolist()


@pytest.mark.parametrize("which", CONFIGS)
def test_two_datasets_concatenate_then_filter_like_detectron(mini: Path, which: str) -> None:
    """TRAIN.DATASETS = (mini, edge): [mini, mini flipped, edge, edge flipped], then filtered."""
    datasets = [mini_dataset(mini, which), edge_dataset(mini)]
    roidb = combined_roidb_for_training(datasets, keypoints_on=(which == "keypoint"))
    g = golden.npz(f"roidb_{which}")
    assert [e.image_id for e in roidb] == g["train_image_id"].tolist()
    assert [e.flipped for e in roidb] == g["train_flipped"].tolist()
    parts = [filter_for_training(extend_with_flipped_entries(gt_roidb(d), d), keypoints_on=(which == "keypoint"))
             for d in datasets]
    assert g["train_dataset"].tolist() == [0] * len(parts[0]) + [1] * len(parts[1])
    assert all(np.array_equal(e.boxes, ref.boxes) for e, ref in zip(roidb, parts[0] + parts[1]))


def test_edge_rules(mini: Path) -> None:
    """The edge file's outcome, spelled out (the goldens above hold the same values)."""
    ds = edge_dataset(mini)
    by_id = {e.image_id: e for e in gt_roidb(ds)}
    e = by_id[397133]  # 12 annotations: 1-px box, area 0, ignore, outside, negative area dropped
    assert len(e.boxes) == 7
    assert e.boxes[0].tolist() == [0.0, 10.25, np.float32(-5.3 + 99.7), np.float32(10.25 + 49.1)]  # x1 clipped
    assert e.boxes[1, 2:].tolist() == [639.0, 426.0]                                  # clipped to W-1, H-1
    assert e.segms[1] == [[600.123456789, 401.5, 639.0, 401.5, 639.0, 426.0]]         # short part dropped
    assert e.segms[5] == []                                                            # all parts short: kept
    assert e.is_crowd.tolist() == [False, False, False, False, True, False, False]
    assert e.gt_classes.tolist() == [1, 2, 1, 1, 2, 1, 1]                              # dog (json first) = 1
    assert e.gt_keypoints.dtype == np.int32 and e.gt_keypoints[1, :, 0].tolist() == [610, 410, 2]  # truncated
    assert by_id[135561].has_visible_keypoints        # v = 1 counts
    assert not by_id[217285].has_visible_keypoints
    flipped = flip_entry(e, keypoint_flip_permutation(ds.keypoint_names))
    assert e.gt_keypoints[1, :, 1].tolist() == [5, 5, 0]           # left_eye, v = 0 but x, y given
    assert flipped.gt_keypoints[1, :, 1].tolist() == [19, 415, 1]  # left_eye <- right_eye (620, 415, 1)
    assert flipped.gt_keypoints[1, :, 2].tolist() == [0, 5, 0]     # right_eye <- left_eye: v = 0, x zeroed
    assert flipped.segms[3] == [[629, 10, 619, 10, 619, 20, 624, 25]]  # integer polygon stays integer


def test_compressed_rle_flips_to_the_mirrored_mask(mini: Path) -> None:
    """Detectron's flip_segms fails on compressed RLE; here it mirrors the mask like the rest."""
    ds = edge_dataset(mini)
    e = next(x for x in gt_roidb(ds) if x.image_id == 397133)
    crowd = flip_entry(e, keypoint_flip_permutation(ds.keypoint_names)).segms[4]
    twice = flip_entry(flip_entry(e, keypoint_flip_permutation(ds.keypoint_names)),
                       keypoint_flip_permutation(ds.keypoint_names)).segms[4]
    assert isinstance(crowd["counts"], str) and isinstance(twice["counts"], str)
    mask = mask_util.decode(mask_util.frPyObjects(e.segms[4], e.height, e.width))
    np.testing.assert_array_equal(mask_util.decode(crowd), mask[:, ::-1])
    np.testing.assert_array_equal(mask_util.decode(twice), mask)


def test_to_targets(mini: Path) -> None:
    ds = edge_dataset(mini)
    e = next(x for x in gt_roidb(ds) if x.image_id == 397133)
    t = e.to_targets()
    assert (t.height, t.width, t.image_id, t.flipped) == (427, 640, 397133, False)
    assert t.boxes.dtype == torch.float32 and t.boxes.numpy().tobytes() == e.boxes.tobytes()
    assert t.classes.dtype == torch.int64 and t.classes.tolist() == e.gt_classes.tolist()
    assert t.is_crowd.dtype == torch.bool and t.is_crowd.tolist() == e.is_crowd.tolist()
    assert t.keypoints.dtype == torch.float32 and t.keypoints.shape == (7, 3, 17)
    assert torch.equal(t.keypoints, torch.from_numpy(e.gt_keypoints).float())
    assert t.segms == e.segms and t.segms is not e.segms
    moved = t.to("meta")
    assert moved.keypoints.device.type == "meta" and moved.keypoints.shape == t.keypoints.shape
    assert (moved.height, moved.width, moved.image_id, moved.segms) == (427, 640, 397133, t.segms)
    t.boxes += 1  # the entry is not written through
    assert e.boxes[0, 0] == 0.0
    assert gt_roidb(mini_dataset(mini, "mask"))[0].to_targets().keypoints is None


def test_roidb_from_cfg_resolves_detectron_names(mini: Path, tmp_path: Path) -> None:
    """TRAIN.DATASETS with Detectron's names, under a data root laid out like Detectron's."""
    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    (tmp_path / "coco" / "annotations" / "person_keypoints_val2017.json").symlink_to(mini / MINI_JSON["keypoint"])
    (tmp_path / "coco" / "val2017").symlink_to(mini / "val2017")
    cfg = load_cfg(REPO / "configs/12_2017_baselines/e2e_keypoint_rcnn_R-50-FPN_1x.yaml",
                   ["TRAIN.DATASETS", "('keypoints_coco_2014_minival',)"])
    roidb = roidb_from_cfg(cfg, root=tmp_path)
    g = golden.npz("roidb_keypoint")
    assert [(e.image_id, e.flipped) for e in roidb] == list(zip(g["trainmini_image_id"].tolist(),
                                                                 g["trainmini_flipped"].tolist()))
    pair = roidb_from_cfg(cfg, datasets=[(mini / MINI_JSON["keypoint"], mini / "val2017")])
    assert [(e.image_id, e.flipped) for e in pair] == [(e.image_id, e.flipped) for e in roidb]
    no_flip = roidb_from_cfg(load_cfg(None, ["TRAIN.USE_FLIPPED", "False"]), datasets=[(mini / MINI_JSON["mask"],
                                                                                          mini / "val2017")])
    assert len(no_flip) == 79 and not any(e.flipped for e in no_flip)


def test_open_datasets_keeps_order_and_merges_2014_halves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(COCODataset, "__init__", lambda self, a, b: calls.append((str(a), str(b))))
    monkeypatch.setattr(COCODataset, "from_catalog", classmethod(lambda cls, n, root=None: n))
    out = open_datasets([("a.json", "a"), "coco_2014_train", "keypoints_coco_2014_minival",
                         "coco_2014_valminusminival"])
    assert out[1:] == ["coco_2017_train", "keypoints_coco_2017_val"]
    assert calls == [("a.json", "a")]


def test_errors(mini: Path, tmp_path: Path) -> None:
    data = json.loads(EDGE_JSON.read_text())
    del data["annotations"][0]["keypoints"]
    bad = tmp_path / "no_kps.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="needs 'keypoints'"):
        gt_roidb(COCODataset(bad, mini / "val2017"))
    with pytest.raises(DatasetError, match="5 image"):
        gt_roidb(COCODataset(EDGE_JSON, tmp_path))
    with pytest.raises(DatasetError, match="lack the pair"):
        keypoint_flip_permutation(["nose", "left_eye"])
    empty = COCODataset(EDGE_JSON, mini / "val2017")
    with pytest.raises(DatasetError, match="no image left"):
        combined_roidb_for_training([empty], keypoints_on=True, fg_thresh=2.0, bg_thresh_hi=-2.0)
    with pytest.raises(DatasetError, match="PROPOSAL_FILES"):
        roidb_from_cfg(load_cfg(None, ["TRAIN.PROPOSAL_FILES", "('p.pkl',)"]))
