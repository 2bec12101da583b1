"""parity.evaluate against every evaluation fixture in tests/data: pycocotools' stats exactly,
faster-coco-eval within 1e-12, and clear errors on bad input."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import re

import numpy as np
import pytest

from detectron_parity.fileio import InputError
from parity.evaluate import STAT_NAMES, Stats, evaluate, summary_lines

MINI_INSTANCES = "../coco-mini-annotations/instances_val2017.json"
MINI_PERSONS = "../coco-mini-annotations/person_keypoints_val2017.json"
# (folder, ground truth, results, type, key in expected_stats.json)
FILE_CASES = [
    ("coco-mini-fake-results", MINI_INSTANCES, "bbox_results.json", "bbox", "bbox"),
    ("coco-mini-fake-results", MINI_INSTANCES, "segm_results.json", "segm", "segm"),
    ("coco-mini-fake-results", MINI_PERSONS, "keypoints_results.json", "keypoints", "keypoints"),
    ("coco-mini-fake-results", "two_image_gt.json", "two_image_dt.json", "bbox", "two_image_bbox"),
    ("coco-mini-fake-results", "two_image_gt.json", "two_image_dt.json", "segm", "two_image_segm"),
    ("kp-one-image-139099", "gt_dataset.json", "dt_dataset.json", "keypoints", "keypoints"),
    ("mmpose-coco-kp4", "test_coco.json", "test_coco_det_AP_H_56.json", "bbox", "bbox_person_dets_vs_gt"),
]
CASE_IDS = [f"{c[0]}-{c[4]}" for c in FILE_CASES]


def _expected(folder, key):
    return json.loads((folder / "expected_stats.json").read_text())["stats"][key]


def gt_as_detections(gt: dict, iou_type: str) -> list[dict]:
    """The coco-cc-by fixture's detections: non-crowd GT re-fed with score 1 (keypoints:
    only persons with keypoints; masks as RLE with str counts)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    dets = []
    for ann in gt["annotations"]:
        if ann["iscrowd"] or (iou_type == "keypoints" and ann["num_keypoints"] == 0):
            continue
        rec = {"image_id": ann["image_id"], "category_id": ann["category_id"], "score": 1.0}
        if iou_type == "bbox":
            rec["bbox"] = ann["bbox"]
        elif iou_type == "segm":
            rle = coco.annToRLE(ann)
            rec["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
        else:
            rec["keypoints"] = ann["keypoints"]
        dets.append(rec)
    return dets


MINI_CASES = [("instances_val2017.json", "bbox"), ("instances_val2017.json", "segm"),
              ("person_keypoints_val2017.json", "keypoints")]


@pytest.mark.parametrize("case", FILE_CASES, ids=CASE_IDS)
def test_fixture_stats_exact(test_data, case):
    name, gt, dt, iou_type, key = case
    folder = test_data / name
    stats = evaluate(folder / gt, folder / dt, iou_type)
    assert list(stats.stats) == _expected(folder, key)
    assert stats.names == STAT_NAMES[iou_type]


@pytest.mark.parametrize("case", FILE_CASES, ids=CASE_IDS)
def test_faster_backend_agrees(test_data, case):
    name, gt, dt, iou_type, key = case
    folder = test_data / name
    fast = evaluate(folder / gt, folder / dt, iou_type, backend="faster-coco-eval")
    np.testing.assert_allclose(fast.stats, _expected(folder, key), rtol=0, atol=1e-12)


@pytest.mark.parametrize("gt_file,iou_type", MINI_CASES)
@pytest.mark.parametrize("backend", ["pycocotools", "faster-coco-eval"])
def test_coco_gt_as_detections(test_data, gt_file, iou_type, backend):
    folder = test_data / "coco-cc-by"
    gt = json.loads((folder / gt_file).read_text())
    stats = evaluate(gt, gt_as_detections(gt, iou_type), iou_type, backend)
    expected = _expected(folder, f"gt_as_dt_{iou_type}")
    if backend == "pycocotools":
        assert list(stats.stats) == expected
    else:
        np.testing.assert_allclose(stats.stats, expected, rtol=0, atol=1e-12)


def _published_fake_results(text: str, iou_type: str) -> list[float]:
    block = text.split(f"type={iou_type}\n", 1)[1].split("-----", 1)[0]
    return [float(v) for v in re.findall(r"\] = (-?[\d.]+)", block)]


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_cocoapi_published_numbers(shared_data, iou_type):
    """The 3-decimal numbers cocoapi published in results/val2014_fake_eval_res.txt, pycocotools'
    full-precision stats of the same files, and the faster backend's agreement with them."""
    folder = shared_data / "cocoapi-fake-eval"
    published = _published_fake_results((folder / "val2014_fake_eval_res.txt").read_text(), iou_type)
    dets = folder / f"instances_val2014_fake{iou_type}100_results.json"
    stats = evaluate(folder / "instances_val2014_100.json", dets, iou_type)
    assert len(published) == 12
    assert [round(v, 3) for v in stats.stats] == published
    assert [float(line.rsplit("= ", 1)[1]) for line in summary_lines(stats)] == published
    assert list(stats.stats) == _expected(folder, iou_type)
    fast = evaluate(folder / "instances_val2014_100.json", dets, iou_type, backend="faster-coco-eval")
    np.testing.assert_allclose(fast.stats, stats.stats, rtol=0, atol=1e-12)


def test_summary_lines_match_pycocotools_print(test_data):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    folder = test_data / "kp-one-image-139099"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        gt = COCO(str(folder / "gt_dataset.json"))
        coco_eval = COCOeval(gt, gt.loadRes(str(folder / "dt_dataset.json")), "keypoints")
        coco_eval.evaluate()
        coco_eval.accumulate()
        start = printed.tell()
        coco_eval.summarize()
    expected = printed.getvalue()[start:].splitlines()
    stats = evaluate(folder / "gt_dataset.json", folder / "dt_dataset.json", "keypoints")
    assert summary_lines(stats) == expected


def test_in_memory_numpy_records_equal_json_round_trip(test_data):
    folder = test_data / "coco-mini-fake-results"
    records = json.loads((folder / "bbox_results.json").read_text())
    as_numpy = [{"image_id": np.int64(r["image_id"]), "category_id": np.int32(r["category_id"]),
                 "bbox": np.asarray(r["bbox"], np.float32), "score": np.float32(r["score"])} for r in records]
    written = json.loads(json.dumps(as_numpy, default=lambda o: o.tolist()))
    gt = folder / MINI_INSTANCES
    assert evaluate(gt, as_numpy, "bbox") == evaluate(gt, written, "bbox")


def test_fake_results_are_what_their_generator_writes():
    from tests.fake_results import FILES, FOLDER, TWO_IMAGE, fake_results, two_image_set

    for iou_type, name in FILES.items():
        assert json.loads((FOLDER / name).read_text()) == fake_results(iou_type), name
    for name, content in zip(TWO_IMAGE.values(), two_image_set()):
        assert json.loads((FOLDER / name).read_text()) == content, name


def _two_image(test_data):
    folder = test_data / "coco-mini-fake-results"
    return (json.loads((folder / "two_image_gt.json").read_text()),
            json.loads((folder / "two_image_dt.json").read_text()))


def test_inputs_not_modified(test_data):
    gt, dets = _two_image(test_data)
    gt_before, dets_before = copy.deepcopy(gt), copy.deepcopy(dets)
    for iou_type in ("bbox", "segm"):
        for backend in ("pycocotools", "faster-coco-eval"):
            evaluate(gt, dets, iou_type, backend)
    assert gt == gt_before and dets == dets_before


def _scored_with_one_coco_object(folder, gt: str, dt: str, keys: dict[str, str]) -> None:
    """Detectron scores bbox then segm with one COCO object; the numbers must not change."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(folder / gt))
    for iou_type in ("bbox", "segm", "bbox"):
        assert list(evaluate(coco, folder / dt, iou_type).stats) == _expected(folder, keys[iou_type])


def test_reused_pycocotools_gt_object(test_data):
    _scored_with_one_coco_object(test_data / "coco-mini-fake-results", "two_image_gt.json", "two_image_dt.json",
                                 {"bbox": "two_image_bbox", "segm": "two_image_segm"})


def test_detectron2_published_numbers(shared_data):
    """detectron2's 2-image evaluation case (tests/data/test_coco_evaluation.py, also asserted by
    faster_coco_eval): pycocotools' stats, the faster backend, and one COCO object reused."""
    folder = shared_data / "d2-coco-eval-2img"
    for iou_type in ("bbox", "segm"):
        stats = evaluate(folder / "gt.json", folder / "dt.json", iou_type)
        assert list(stats.stats) == _expected(folder, iou_type)
        fast = evaluate(folder / "gt.json", folder / "dt.json", iou_type, backend="faster-coco-eval")
        np.testing.assert_allclose(fast.stats, stats.stats, rtol=0, atol=1e-12)
    _scored_with_one_coco_object(folder, "gt.json", "dt.json", {"bbox": "bbox", "segm": "segm"})


@pytest.mark.parametrize("backend", ["pycocotools", "faster-coco-eval"])
@pytest.mark.parametrize("folder,gt,iou_type", [("coco-mini-fake-results", "two_image_gt.json", "segm"),
                                                ("kp-one-image-139099", "gt_dataset.json", "keypoints")])
def test_empty_detections_give_zeros(test_data, backend, folder, gt, iou_type):
    stats = evaluate(test_data / folder / gt, [], iou_type, backend)
    # 0 wherever the ground truth has objects, -1 for area ranges without any (here: large in the two-image set)
    expected = [0.0] * 10 if iou_type == "keypoints" else [0.0] * 5 + [-1.0] + [0.0] * 5 + [-1.0]
    assert list(stats.stats) == expected


@pytest.mark.parametrize("change,iou_type,message", [
    (lambda r: r.update(image_id=999), "bbox", "record 1 (image_id=999, category_id=1): image_id 999 is not in the ground truth"),
    (lambda r: r.update(category_id=7), "bbox", "unknown category_id 7"),
    (lambda r: r.pop("score"), "bbox", "missing or non-finite 'score'"),
    (lambda r: r.update(score=float("nan")), "bbox", "missing or non-finite 'score'"),
    (lambda r: r.update(image_id="139"), "bbox", "non-integer 'image_id'"),
    (lambda r: r.update(bbox=[1, 2, 3]), "bbox", "'bbox' must be 4 finite numbers"),
    (lambda r: r.update(bbox=[1, 2, -3, 4]), "bbox", "negative width or height"),
    (lambda r: r.pop("bbox"), "bbox", "missing 'bbox'"),
    (lambda r: r["segmentation"].update(size=[10, 10]), "segm", "size [10, 10] differs from the image size [640, 480]"),
    (lambda r: r.update(segmentation=[[1, 2, 3, 4, 5, 6]]), "segm", "must be a compressed RLE"),
])
def test_bad_records_name_the_record(test_data, change, iou_type, message):
    gt, dets = _two_image(test_data)
    change(dets[1])
    with pytest.raises(InputError, match=re.escape(message)) as err:
        evaluate(gt, dets, iou_type, source="dt.json")
    assert str(err.value).startswith("dt.json: record 1 ")


def test_bad_inputs(test_data, tmp_path):
    gt, dets = _two_image(test_data)
    with pytest.raises(InputError, match="missing.json: ground truth not found"):
        evaluate(tmp_path / "missing.json", dets, "bbox")
    (tmp_path / "gt.json").write_text('{"images": [')
    with pytest.raises(InputError, match=r"gt.json: ground truth is not valid JSON \(line 1"):
        evaluate(tmp_path / "gt.json", dets, "bbox")
    (tmp_path / "dt.json").write_text(json.dumps({"annotations": dets}))
    with pytest.raises(InputError, match="must be a JSON list of records, got a JSON object"):
        evaluate(gt, tmp_path / "dt.json", "bbox")
    with pytest.raises(InputError, match=r"annotations\[0\] \(id=568264\) has no 'keypoints'"):
        evaluate(gt, dets, "keypoints")
    with pytest.raises(InputError, match="unknown evaluation type 'mask'"):
        evaluate(gt, dets, "mask")
    with pytest.raises(InputError, match="unknown evaluation backend"):
        evaluate(gt, dets, "bbox", backend="detectron2")


def test_stats_dataclass():
    stats = Stats("keypoints", tuple(float(i) for i in range(10)))
    assert stats["AR75"] == 7.0
    assert stats.to_dict() == {"type": "keypoints", "names": list(STAT_NAMES["keypoints"]), "stats": list(stats.stats)}
    with pytest.raises(InputError, match="keypoints stats need 10 values, got 12"):
        Stats("keypoints", (0.0,) * 12)
