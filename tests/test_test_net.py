"""tools/test_net.py on the shipped CC BY COCO images (tests/data) with synthetic Detectron weights: result files,
metrics.json, resume after a kill, and 2 gloo processes == 1 process."""
import json
import os
import shutil
import subprocess
import sys

import pytest
from pycocotools.coco import COCO

from parity.metrics import load_metrics
from tests.conftest import REPO_ROOT
from tests.models import CONFIGS, SMALL

PY = sys.executable
TEST_NET = str(REPO_ROOT / "tools" / "test_net.py")


def _dataset_args(test_data, kind):
    ann = "person_keypoints_val2017.json" if kind == "keypoint" else "instances_val2017.json"
    mini = test_data / "coco-cc-by"
    return ["--json", str(mini / ann), "--images", str(mini / "val2017")]


def _run(args, env=None, check=True):
    proc = subprocess.run([PY, TEST_NET, *args], capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _common(kind, test_data, pkls, out, limit=3):
    return ["--cfg", str(CONFIGS[kind]), "--load_detectron", str(pkls[kind]), *_dataset_args(test_data, kind),
            "--output_dir", str(out), "--limit", str(limit), "--set", *SMALL]


@pytest.fixture(scope="module")
def runs(test_data, synthetic_pkls, tmp_path_factory):
    out = tmp_path_factory.mktemp("test_net")
    for kind in ("faster", "mask", "keypoint"):
        _run(_common(kind, test_data, synthetic_pkls, out / kind))
    return out


FILES = {"faster": ["bbox"], "mask": ["bbox", "segmentations"], "keypoint": ["bbox", "keypoints"]}


@pytest.mark.parametrize("kind", ["faster", "mask", "keypoint"])
def test_result_files_and_metrics(kind, runs, test_data):
    out = runs / kind
    ann = _dataset_args(test_data, kind)[1]
    gt = COCO(ann)
    first3 = sorted(gt.getImgIds())[:3]
    for prefix in FILES[kind]:
        path = out / f"{prefix}_{os.path.basename(ann)[:-5]}_results.json"
        records = json.loads(path.read_text())
        assert {r["image_id"] for r in records} <= set(first3) and len(records) >= 150
        dt = gt.loadRes(str(path))                    # loads in pycocotools
        assert len(dt.getAnnIds()) == len(records)
        if prefix == "keypoints":
            assert all(len(r["keypoints"]) == 51 and r["keypoints"][2::3] == [1] * 17 for r in records)
        if prefix == "segmentations":
            assert all(isinstance(r["segmentation"]["counts"], str) for r in records)
    metrics = load_metrics(out / "metrics.json")
    types = {"faster": {"bbox"}, "mask": {"bbox", "segm"}, "keypoint": {"bbox", "keypoints"}}[kind]
    assert set(metrics.by_type()) == types
    assert all(len(s.stats) == (10 if t == "keypoints" else 12) for t, s in metrics.by_type().items())
    prov = metrics.provenance
    assert prov["images"] == 3 and prov["model"] == f"e2e_{kind}_rcnn_R-50-FPN_1x"
    assert prov["weights_source"] == "zoo" and len(prov["weights_sha256"]) == 64
    assert "torch" in prov["versions"] and "TEST:" in prov["config"]


def test_resume_after_kill_gives_the_same_files(runs, test_data, synthetic_pkls, tmp_path):
    """A run killed after 2 images, resumed, equals the uninterrupted run byte for byte."""
    out = tmp_path / "resumed"
    _run(_common("mask", test_data, synthetic_pkls, out, limit=2))
    partial = out / "partial" / "detections.rank0.jsonl"
    data = partial.read_bytes()
    partial.write_bytes(data + data.splitlines(keepends=True)[0][:100])   # a line cut by the kill
    for f in out.glob("*.json"):
        f.unlink()
    proc = _run(_common("mask", test_data, synthetic_pkls, out, limit=3) + ["--resume"])
    assert "incomplete last line" in proc.stderr
    lines = partial.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line) for line in lines)
    for name in ("bbox_instances_val2017_results.json", "segmentations_instances_val2017_results.json"):
        assert (out / name).read_bytes() == (runs / "mask" / name).read_bytes()


def test_two_gloo_processes_equal_one(test_data, synthetic_pkls, tmp_path):
    """Sharded over 2 processes, merged on rank 0: the same files as 1 process.

    Both use one thread per process: CPU conv kernels round differently with another
    thread count, so bit-equality needs equal thread counts (README, "Exactness").
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = tmp_path / "single"
    _run(_common("mask", test_data, synthetic_pkls, single), env=env)
    torchrun = shutil.which("torchrun", path=os.path.dirname(PY))
    out = tmp_path / "dist"
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", TEST_NET,
                           *_common("mask", test_data, synthetic_pkls, out), "--device", "cpu"],
                          capture_output=True, text=True, cwd=REPO_ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (out / "partial").iterdir()) == ["detections.rank0.jsonl", "detections.rank1.jsonl"]
    for name in ("bbox_instances_val2017_results.json", "segmentations_instances_val2017_results.json"):
        assert (out / name).read_bytes() == (single / name).read_bytes()
    assert load_metrics(out / "metrics.json").provenance["processes"] == 2


@pytest.mark.parametrize("case,args,message", [
    ("missing GT", ["--json", "nope.json", "--images", "."], "nope.json"),
    ("wrong dataset", ["--dataset", "coco_2099_val"], "coco_2099_val"),
    ("data root without COCO", ["--dataset", "coco2017"], "coco/annotations/instances_val2017.json not found"),
    ("no data root", ["--dataset", "coco2017"], "DETECTRON_DATA_ROOT"),
    ("missing weights", None, "does not exist"),
])
def test_bad_input_exits_2_with_one_line(case, args, message, test_data, synthetic_pkls, tmp_path):
    base = ["--cfg", str(CONFIGS["faster"]), "--output_dir", str(tmp_path / "o"), "--set", *SMALL]
    if args is None:
        args = ["--load_detectron", str(tmp_path / "none.pkl"), *_dataset_args(test_data, "faster")]
    else:
        args = ["--load_detectron", str(synthetic_pkls["faster"]), *args]
    env = {k: v for k, v in os.environ.items() if k != "DETECTRON_DATA_ROOT"}
    if case != "no data root":
        env["DETECTRON_DATA_ROOT"] = str(tmp_path)
    proc = _run(base + args, env=env, check=False)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]


def test_unreadable_image_exits_2(test_data, synthetic_pkls, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(test_data / "coco-cc-by" / "val2017", images)
    first = min(COCO(str(test_data / "coco-cc-by" / "instances_val2017.json")).imgs.values(),
                key=lambda im: im["id"])
    (images / first["file_name"]).write_bytes(b"broken")
    proc = _run(["--cfg", str(CONFIGS["faster"]), "--load_detectron", str(synthetic_pkls["faster"]),
                 "--json", str(test_data / "coco-cc-by" / "instances_val2017.json"),
                 "--images", str(images), "--output_dir", str(tmp_path / "o"), "--limit", "1", "--set", *SMALL],
                check=False)
    assert proc.returncode == 2 and "not a readable image" in proc.stderr.strip().splitlines()[-1]


def test_wrong_model_family_exits_2(test_data, synthetic_pkls, tmp_path):
    """Keypoint weights (2 classes) with the Mask R-CNN config: a clear error, not a traceback."""
    proc = _run(["--cfg", str(CONFIGS["mask"]), "--load_detectron", str(synthetic_pkls["keypoint"]),
                 *_dataset_args(test_data, "mask"), "--output_dir", str(tmp_path / "o"), "--set", *SMALL],
                check=False)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "keypoint" in last.lower()


def _eval_only(test_data, tmp_path, kind, gt, dets, opts=()):
    out = tmp_path / "reval"
    out.mkdir()
    prefixes = {"bbox": "bbox", "segm": "segmentations", "keypoints": "keypoints"}
    for iou_type, path in dets.items():
        shutil.copy(path, out / f"{prefixes[iou_type]}_{gt.stem}_results.json")
    args = ["--cfg", str(CONFIGS[kind]), "--json", str(gt), "--images", str(tmp_path), "--output_dir", str(out),
            "--eval_only"]
    if opts:
        args += ["--set", *opts]
    return _run(args, check=False), out


# (fixture, model, ground truth, results by type, options, prefix of the keys in expected_stats.json)
@pytest.mark.parametrize("fixture,kind,gt,dets,opts,key", [
    ("coco-mini-fake-results", "mask", "../coco-mini-annotations/instances_val2017.json",
     {"bbox": "bbox_results.json", "segm": "segm_results.json"}, (), ""),
    ("coco-mini-fake-results", "keypoint", "../coco-mini-annotations/person_keypoints_val2017.json",
     {"keypoints": "keypoints_results.json"}, (), ""),
    ("coco-mini-fake-results", "mask", "two_image_gt.json", {"bbox": "two_image_dt.json", "segm": "two_image_dt.json"},
     ("MODEL.NUM_CLASSES", "3"), "two_image_"),
    ("kp-one-image-139099", "keypoint", "gt_dataset.json", {"keypoints": "dt_dataset.json"}, (), ""),
])
def test_eval_only_reproduces_the_fixtures_exactly(fixture, kind, gt, dets, opts, key, test_data, tmp_path):
    folder = test_data / fixture
    expected = json.loads((folder / "expected_stats.json").read_text())["stats"]
    proc, out = _eval_only(test_data, tmp_path, kind, folder / gt, {t: folder / f for t, f in dets.items()}, opts)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = load_metrics(out / "metrics.json")
    for iou_type in dets:
        assert list(metrics.by_type()[iou_type].stats) == expected[key + iou_type]


def test_results_for_images_not_in_gt_exit_2(test_data, tmp_path):
    folder = test_data / "coco-mini-fake-results"
    bad = json.loads((folder / "two_image_dt.json").read_text())
    bad[0]["image_id"] = 999999
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    proc, _ = _eval_only(test_data, tmp_path, "mask", folder / "two_image_gt.json", {"bbox": tmp_path / "bad.json"},
                         ("MODEL.NUM_CLASSES", "3"))
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "999999" in last
