"""The ``python -m parity`` command line: outputs, exit statuses and one-line errors."""
from __future__ import annotations

import json
import shutil

from parity.__main__ import main
from parity.benchmark_md import read_data
from parity.evaluate import Stats, summary_lines
from parity.metrics import Metrics, save_metrics
from parity.reference import MODELS

from .conftest import REPO_ROOT


def _run(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_eval_prints_summary_and_writes_json(test_data, tmp_path, capsys):
    folder = test_data / "coco-mini-fake-results"
    out = tmp_path / "bbox.json"
    status, stdout, _ = _run(capsys, "eval", "--ann", test_data / "coco-mini-annotations" / "instances_val2017.json",
                             "--dets", folder / "bbox_results.json", "--type", "bbox", "--out", out)
    assert status == 0
    lines = stdout.splitlines()
    assert lines[1] == " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.407"
    assert len(lines) == 13
    expected = json.loads((folder / "expected_stats.json").read_text())["stats"]["bbox"]
    assert json.loads(out.read_text()) == {"type": "bbox", "names": ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1",
                                                                     "AR10", "AR100", "ARs", "ARm", "ARl"],
                                           "stats": expected}


def test_eval_fast_backend_flag(test_data, tmp_path, capsys):
    folder = test_data / "kp-one-image-139099"
    status, stdout, _ = _run(capsys, "eval", "--ann", folder / "gt_dataset.json", "--dets", folder / "dt_dataset.json",
                             "--type", "keypoints", "--backend", "faster-coco-eval")
    assert status == 0 and "backend=faster-coco-eval" in stdout and len(stdout.splitlines()) == 11
    # the printed (3-decimal) summary is pycocotools' own
    expected = json.loads((folder / "expected_stats.json").read_text())["stats"]["keypoints"]
    assert stdout.splitlines()[1:] == summary_lines(Stats("keypoints", tuple(expected)))


def test_bad_input_is_one_line_and_exit_2(test_data, tmp_path, capsys):
    folder = test_data / "coco-mini-fake-results"
    gt, dt = folder / "two_image_gt.json", folder / "two_image_dt.json"
    out = tmp_path / "stats.json"
    out.write_text("old")
    dets = json.loads(dt.read_text())
    dets[2]["image_id"] = 4242
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    cases = [
        (["--ann", tmp_path / "missing.json", "--dets", dt], "missing.json: ground truth not found"),
        (["--ann", gt, "--dets", tmp_path / "dt.json"],
         "dt.json: record 2 (image_id=4242, category_id=1): image_id 4242 is not in the ground truth"),
        (["--ann", dt, "--dets", dt], "ground truth must be a JSON object"),
    ]
    for args, message in cases:
        status, stdout, stderr = _run(capsys, "eval", *args, "--type", "segm", "--out", out)
        assert status == 2
        assert stderr.count("\n") == 1 and stderr.startswith("error: ") and message in stderr
        assert stdout == ""
        assert out.read_text() == "old"  # never half-written, never clobbered on error
    status, _, stderr = _run(capsys, "eval", "--ann", gt, "--dets", dt,
                             "--type", "bbox", "--out", tmp_path / "no_dir" / "x.json")
    assert status == 2 and "output directory" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dt.json", "stats.json"]


def test_eval_empty_results(test_data, tmp_path, capsys):
    (tmp_path / "empty.json").write_text("[]")
    gt = test_data / "coco-mini-fake-results" / "two_image_gt.json"
    status, stdout, _ = _run(capsys, "eval", "--ann", gt, "--dets", tmp_path / "empty.json", "--type", "bbox")
    assert status == 0 and stdout.splitlines()[1].endswith("= 0.000")
    # 0 where the ground truth has objects, -1 for the empty "large" area range
    zeros = (0.0,) * 5 + (-1.0,) + (0.0,) * 5 + (-1.0,)
    assert stdout.splitlines()[1:] == summary_lines(Stats("bbox", zeros))


def _save_run(path, model, shift, **provenance):
    stats = {t: Stats(t, tuple((v + shift) / 100 for v in vals)) for t, vals in MODELS[model].stats.items()}
    path.mkdir()
    save_metrics(Metrics(provenance={"model": model, **provenance}, **stats), path / "metrics.json")
    return path


def test_compare_exit_status_and_output(tmp_path, capsys):
    model = "e2e_mask_rcnn_R-50-FPN_1x"
    good = _save_run(tmp_path / "good", model, 0.02, weights_source="zoo")
    bad = _save_run(tmp_path / "bad", model, -0.3, weights_source="zoo")
    report = tmp_path / "cmp.md"
    status, stdout, _ = _run(capsys, "compare", good, "--reference", "detectron", "--out", report)
    assert status == 0 and "verdict: PASS" in stdout
    assert stdout.count("<table><tbody>") == 2 and "<th bgcolor=white>good</th>" in stdout
    assert report.read_text().startswith("# e2e_mask_rcnn_R-50-FPN_1x: runs vs Detectron's published numbers")
    status, stdout, _ = _run(capsys, "compare", good, bad, "--reference", "detectron")
    assert status == 1 and "verdict: FAIL: 24 of 48" in stdout
    assert _run(capsys, "compare", good, bad, "--reference", "detectron", "--scratch")[0] == 0
    assert _run(capsys, "compare", good, bad, "--tolerance", "0.5")[0] == 0
    status, _, stderr = _run(capsys, "compare", good)
    assert status == 2 and stderr == "error: compare needs two runs, or one run and --reference detectron\n"


def test_match_cli(test_data, tmp_path, capsys):
    folder = test_data / "kp-one-image-139099"
    dets = json.loads((folder / "dt_dataset.json").read_text())
    (tmp_path / "b.json").write_text(json.dumps(dets[:-8]))
    out = tmp_path / "report.json"
    status, stdout, _ = _run(capsys, "match", folder / "dt_dataset.json", tmp_path / "b.json",
                             "--ann", folder / "gt_dataset.json", "--out", out, "--min-matched", "0.9")
    assert status == 0 and "120 pairs = 93.75% of A, 100.00% of B" in stdout
    report = json.loads(out.read_text())
    assert report["matched"] == 120 and report["keypoint_distance"]["max"] == 0.0
    assert _run(capsys, "match", folder / "dt_dataset.json", tmp_path / "b.json", "--min-matched", "0.95")[0] == 1
    status, _, stderr = _run(capsys, "match", folder / "dt_dataset.json", tmp_path / "b.json",
                             "--ann", test_data / "coco-mini-fake-results" / "two_image_gt.json")
    assert status == 2 and "image_id 139099 is not in the ground truth" in stderr


def test_benchmark_md_add_check_remove(tmp_path, capsys):
    bench = tmp_path / "BENCHMARK.md"
    assert _run(capsys, "benchmark-md", "--file", bench)[0] == 0
    assert _run(capsys, "benchmark-md", "--file", bench, "--check")[0] == 0
    text = bench.read_text()
    assert text.count("<th bgcolor=white>Detectron</th>") == 5 and text.count("<table><tbody>") == 5
    run = _save_run(tmp_path / "run", "e2e_keypoint_rcnn_R-50-FPN_1x", 0.0, weights_source="scratch")
    assert _run(capsys, "benchmark-md", "--file", bench, "--add", f"trial1={run}", f"trial2={run}",
                "--figure", "keypoint=loss_kp.png")[0] == 0
    data = read_data(bench)
    assert [r["label"] for r in data["runs"]] == ["trial1", "trial2"]
    assert data["runs"][0]["bbox"] == json.loads((run / "metrics.json").read_text())["bbox"]["stats"]
    text = bench.read_text()
    assert text.count("<th bgcolor=white>trial1</th>") == 2 and "![img](loss_kp.png)" in text
    bench.write_text(text.replace("64.2", "64.3"))
    assert _run(capsys, "benchmark-md", "--file", bench, "--check")[0] == 1
    assert _run(capsys, "benchmark-md", "--file", bench, "--remove", "trial1")[0] == 0
    assert [r["label"] for r in read_data(bench)["runs"]] == ["trial2"]
    bench.write_text("# hand written\n")
    status, _, stderr = _run(capsys, "benchmark-md", "--file", bench)
    assert status == 2 and "refusing to overwrite" in stderr


def test_repository_benchmark_md_is_generated(tmp_path, capsys):
    """BENCHMARK.md in the repository is exactly what `benchmark-md` renders."""
    path = REPO_ROOT / "BENCHMARK.md"  # tracked in the repository: its absence is a failure
    shutil.copy(path, tmp_path / "BENCHMARK.md")
    assert _run(capsys, "benchmark-md", "--file", tmp_path / "BENCHMARK.md", "--check")[0] == 0


def test_benchmark_md_notes_are_rendered_kept_and_removed(tmp_path, capsys):
    """A --note section is rendered after the tables, survives regeneration, and an empty FILE drops it."""
    md = tmp_path / "BENCHMARK.md"
    shutil.copy(REPO_ROOT / "BENCHMARK.md", md)
    note = tmp_path / "note.md"
    note.write_text("Iterations/s: 1.23 (spread 1.1-1.4).\n")
    assert _run(capsys, "benchmark-md", "--file", md, "--note", f"Training probe={note}")[0] == 0
    assert "## Training probe\n\nIterations/s: 1.23 (spread 1.1-1.4).\n" in md.read_text()
    assert _run(capsys, "benchmark-md", "--file", md)[0] == 0          # kept from the data block alone
    assert "## Training probe" in md.read_text()
    assert _run(capsys, "benchmark-md", "--file", md, "--note", "Training probe=")[0] == 0
    assert "## Training probe" not in md.read_text()
    status, _, err = _run(capsys, "benchmark-md", "--file", md, "--note", "no-equals-sign")
    assert status == 2 and "TITLE=FILE" in err
