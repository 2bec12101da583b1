"""parity.match: one-to-one matching, its statistics, and speed on 5,000 images."""
from __future__ import annotations

import copy
import json
import time

import numpy as np
import pytest

from parity.match import greedy_match, match_files, match_records


def _sequential_greedy(pa, pb, sim):
    """Reference: take pairs one by one, most similar first (ties: lower a, then b)."""
    used_a, used_b, taken = set(), set(), []
    for k in sorted(range(len(pa)), key=lambda k: (-sim[k], pa[k], pb[k])):
        if pa[k] not in used_a and pb[k] not in used_b:
            used_a.add(pa[k])
            used_b.add(pb[k])
            taken.append(k)
    return sorted(taken)


@pytest.mark.parametrize("seed", range(20))
def test_greedy_match_equals_sequential_greedy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 200))
    pa = rng.integers(0, 15, n)
    pb = rng.integers(0, 15, n)
    keep = np.unique(pa * 100 + pb, return_index=True)[1]  # candidate pairs are distinct
    pa, pb = pa[keep], pb[keep]
    sim = rng.choice([0.5, 0.6, 0.75, 0.9, 1.0], len(pa)) if seed % 2 else rng.uniform(0.5, 1, len(pa))  # ties too
    assert sorted(greedy_match(pa, pb, sim).tolist()) == _sequential_greedy(pa.tolist(), pb.tolist(), sim.tolist())


def _synthetic(n_images: int, per_image: int, rng):
    """Detections on a grid (one cell each, so only true pairs overlap) and a perturbed
    copy: half moved by < 1 px and rescored by < 1e-3, 1% dropped, 0.5% moved far away,
    1% extra."""
    n = n_images * per_image
    image = np.repeat(np.arange(1, n_images + 1) * 7, per_image)
    cell = np.tile(np.arange(per_image), n_images)
    category = rng.integers(1, 11, n)
    wh = rng.uniform(10, 100, (n, 2))
    boxes = np.column_stack([(cell % 5) * 120 + 5.0, (cell // 5) * 120 + 5.0, wh])
    score = rng.uniform(0.05, 1.0, n)
    a = [{"image_id": int(i), "category_id": int(c), "bbox": b.tolist(), "score": float(s)}
         for i, c, b, s in zip(image, category, boxes, score)]
    perturbed = rng.random(n) < 0.5
    boxes_b = boxes + perturbed[:, None] * rng.uniform(-0.9, 0.9, (n, 4))
    score_b = score + perturbed * rng.uniform(-1e-3, 1e-3, n)
    fate = rng.random(n)
    dropped, moved = fate < 0.01, (fate >= 0.01) & (fate < 0.015)
    boxes_b[moved, 0] += 2000
    b = [{"image_id": int(i), "category_id": int(c), "bbox": bb.tolist(), "score": float(s)}
         for i, c, bb, s, d in zip(image, category, boxes_b, score_b, dropped) if not d]
    extra = rng.choice(n, n // 100, replace=False)
    b += [{"image_id": int(image[k]), "category_id": int(category[k]), "bbox": [3000.0, 3000.0, 50.0, 50.0],
           "score": 0.5} for k in extra]
    expected = {"matched": int(n - dropped.sum() - moved.sum()),
                "identical": int((~perturbed & ~dropped & ~moved).sum()), "n_b": len(b)}
    return a, b, expected


def test_synthetic_5000_images_fast_and_exact():
    rng = np.random.default_rng(0)
    a, b, expected = _synthetic(5000, 20, rng)
    start = time.perf_counter()
    report = match_records(a, b, "bbox", worst=5)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"match took {elapsed:.1f} s on 5000 images"
    assert (report.n_a, report.n_b) == (100_000, expected["n_b"])
    assert report.matched == expected["matched"]
    assert report.identical == expected["identical"]
    assert report.score_diff.max <= 1e-3 and report.score_diff.median == 0.0
    assert 0 < report.iou_deficit.max < 0.5 and report.iou_deficit.median == 0.0
    worst = report.worst_images
    assert len(worst) == 5 and worst[0].unmatched >= worst[-1].unmatched >= 2
    assert report.frac_matched_a == pytest.approx(expected["matched"] / 100_000)


def test_empty_and_one_sided():
    empty = match_records([], [], "segm")
    assert (empty.n_a, empty.matched, empty.frac_matched_a) == (0, 0, 1.0)
    assert np.isnan(empty.iou_deficit.median) and empty.to_dict()["iou_deficit"]["median"] is None
    one = match_records([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9}], [], "bbox")
    assert one.matched == 0 and one.frac_matched_a == 0.0 and one.worst_images[0].unmatched == 1


def test_class_and_image_must_agree():
    box = {"bbox": [10.0, 10.0, 50.0, 50.0], "score": 0.9}
    a = [{"image_id": 1, "category_id": 1, **box}, {"image_id": 2, "category_id": 1, **box}]
    b = [{"image_id": 1, "category_id": 2, **box}, {"image_id": 2, "category_id": 1, **box}]
    report = match_records(a, b, "bbox")
    assert report.matched == 1 and [im.image_id for im in report.worst_images] == [1]


def test_min_score_and_min_iou():
    a = [{"image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 10.0, 10.0], "score": 0.9},
         {"image_id": 1, "category_id": 1, "bbox": [100.0, 0.0, 10.0, 10.0], "score": 0.04}]
    b = [{"image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 10.0, 20.0], "score": 0.9}]  # IoU 0.5
    assert match_records(a, b, "bbox").matched == 1
    assert match_records(a, b, "bbox", min_iou=0.51).matched == 0
    report = match_records(a, b, "bbox", min_score=0.05)
    assert (report.n_a, report.matched, report.iou_deficit.max) == (1, 1, 0.5)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools' mask.decode
def test_segm_fixture_against_pycocotools_iou(test_data):
    from pycocotools import mask as mask_util

    path = test_data / "coco-mini-fake-results" / "segm_results.json"
    a = json.loads(path.read_text())
    b = copy.deepcopy(a[10:])
    big = int(np.argmax([mask_util.area(r["segmentation"]) for r in b]))
    shifted = np.asfortranarray(np.roll(mask_util.decode(b[big]["segmentation"]), 2, axis=1))
    rle = mask_util.encode(shifted)
    b[big]["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
    b[big + 1]["score"] += 0.25
    report = match_records(a, b, "segm")
    assert report.matched == len(b) and report.identical == len(b) - 2
    expected_iou = mask_util.iou([a[10 + big]["segmentation"]], [b[big]["segmentation"]], [0])[0, 0]
    assert report.iou_deficit.max == pytest.approx(1 - expected_iou, abs=1e-15)
    assert report.score_diff.max == pytest.approx(0.25)
    assert report.worst_images[0].unmatched > 0


def test_keypoint_fixture_distance(test_data, tmp_path):
    folder = test_data / "kp-one-image-139099"
    a = json.loads((folder / "dt_dataset.json").read_text())
    b = copy.deepcopy(a)
    for rec in b:
        rec["keypoints"] = [v + 0.5 if k % 3 == 0 else v for k, v in enumerate(rec["keypoints"])]
    (tmp_path / "b.json").write_text(json.dumps(b))
    report = match_files(folder / "dt_dataset.json", tmp_path / "b.json", ann=folder / "gt_dataset.json")
    assert report.iou_type == "keypoints" and report.matched == len(a) and report.identical == 0
    assert report.keypoint_distance.median == pytest.approx(0.5) and report.keypoint_distance.max == pytest.approx(0.5)
    assert report.score_diff.max == 0.0


def test_match_files_picks_common_type(test_data):
    path = test_data / "coco-mini-fake-results" / "two_image_dt.json"
    assert match_files(path, path).iou_type == "segm"
    assert match_files(path, path, iou_type="bbox").identical == 3
