"""metrics.json schema, Detectron reference rows, deltas/verdicts and the HTML tables."""
from __future__ import annotations

import dataclasses
import json
import re

import pytest

from detectron_parity.fileio import InputError
from parity import benchmark_md
from parity.compare import Row, compare, delta_lines, load_run, pick_model, reference_row
from parity.evaluate import STAT_NAMES, Stats
from parity.metrics import Metrics, load_metrics, save_metrics
from parity.reference import MODELS, resolve_model


def _metrics_like_reference(model: str, shift: float = 0.0, **provenance) -> Metrics:
    """Stats equal to the published numbers (as fractions) plus ``shift`` AP points."""
    stats = {t: Stats(t, tuple((v + shift) / 100 for v in values)) for t, values in MODELS[model].stats.items()}
    return Metrics(provenance={"model": model, **provenance}, **stats)


def test_metrics_round_trip_full_precision(tmp_path):
    m = Metrics(bbox=Stats("bbox", (0.1 + 0.2,) + (1 / 3,) * 11), keypoints=Stats("keypoints", (-1.0,) * 10),
                provenance={"model": "e2e_keypoint_rcnn_R-50-FPN_1x", "weights_source": "zoo"})
    save_metrics(m, tmp_path / "metrics.json")
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert set(data) == {"bbox", "keypoints", "provenance"}
    assert data["keypoints"]["names"] == list(STAT_NAMES["keypoints"])
    assert load_metrics(tmp_path / "metrics.json") == m
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left


@pytest.mark.parametrize("data,message", [
    ([], "metrics must be a JSON object"),
    ({"provenance": {}}, "no bbox, segm or keypoints results"),
    ({"box": {}}, "unknown key(s) ['box']"),
    ({"bbox": {"names": list(STAT_NAMES["keypoints"]), "stats": [0.0] * 10}}, "'bbox' names"),
    ({"segm": {"stats": [0.0] * 10}}, "'segm' has 10 stats, expected 12"),
    ({"segm": {"stats": ["0.3"] * 12}}, "'stats' must be a list of numbers"),
    ({"bbox": {"stats": [0.0] * 12}, "provenance": []}, "'provenance' must be a JSON object"),
])
def test_metrics_schema_errors(data, message):
    with pytest.raises(InputError, match=re.escape(message)):
        Metrics.from_dict(data, "m.json")


def test_reference_rows_complete_and_published():
    expected_types = {"e2e_faster_rcnn_R-50-FPN_1x": {"bbox"}, "e2e_mask_rcnn_R-50-FPN_1x": {"bbox", "segm"},
                      "e2e_keypoint_rcnn_R-50-FPN_1x": {"bbox", "keypoints"}}
    for name, types in expected_types.items():
        ref = MODELS[name]
        assert set(ref.stats) == types
        for t, values in ref.stats.items():
            assert len(values) == len(STAT_NAMES[t]) and None not in values
    # headline numbers of Detectron's MODEL_ZOO.md
    assert MODELS["e2e_faster_rcnn_R-50-FPN_1x"].stats["bbox"][0] == 36.7
    assert MODELS["e2e_mask_rcnn_R-50-FPN_1x"].stats["segm"][0] == 33.9
    assert MODELS["e2e_keypoint_rcnn_R-50-FPN_1x"].stats["keypoints"][0] == 64.2
    assert resolve_model("configs/12_2017_baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml") == "e2e_mask_rcnn_R-50-FPN_1x"
    assert resolve_model("keypoint") == "e2e_keypoint_rcnn_R-50-FPN_1x"
    # every other zoo model: MODEL_ZOO.md's headline APs only
    assert resolve_model("e2e_mask_rcnn_R-101-FPN_1x.yaml") == "e2e_mask_rcnn_R-101-FPN_1x"
    assert MODELS["e2e_mask_rcnn_R-101-FPN_1x"].stats == {"bbox": (40.0,) + (None,) * 11,
                                                          "segm": (35.9,) + (None,) * 11}
    with pytest.raises(InputError, match="no published reference for model 'e2e_mask_rcnn_R-152-FPN_1x.yaml'"):
        resolve_model("e2e_mask_rcnn_R-152-FPN_1x.yaml")


def test_zoo_run_within_tolerance_after_rounding():
    model = "e2e_mask_rcnn_R-50-FPN_1x"
    run = Row.from_metrics("ours", _metrics_like_reference(model, shift=0.14))  # shows as +0.1
    result = compare([run], reference_row(model))
    assert result.passed and len(result.checks) == 24
    assert all(abs(c.delta - 0.1) < 1e-9 for c in result.checks)
    assert delta_lines(result)[-1] == "verdict: PASS: all 24 metrics within tolerance (0.1 AP points)"


def test_zoo_run_outside_tolerance_fails():
    model = "e2e_faster_rcnn_R-50-FPN_1x"
    run = Row.from_metrics("ours", _metrics_like_reference(model, shift=-0.16))  # shows as -0.2
    result = compare([run], reference_row(model))
    assert not result.passed and len(result.failures()) == 12
    lines = delta_lines(result)
    assert lines[-1].startswith("verdict: FAIL: 12 of 12 metrics outside tolerance")
    assert "-0.20*" in lines[2]


def test_rpn_model_is_gated_on_published_proposal_recall():
    """RPN-only runs (``box_proposal`` in metrics.json) are compared on MODEL_ZOO.md's AR@1000."""
    from parity.proposals import ProposalStats
    ref = reference_row("rpn_R-50-FPN_1x")
    assert ref.values == {"box_proposal": (None, None, None, None, 57.2, None, None, None)}
    for ar1000, passed in ((0.5724, True), (0.5736, False)):   # shows as 57.2 / 57.4
        stats = ProposalStats((0.41, 0.2, 0.5, 0.6, ar1000, float("nan"), 0.6, 0.7))
        run = Row.from_metrics("ours", Metrics(provenance={"model": "rpn_R-50-FPN_1x"}, box_proposal=stats))
        assert run.values["box_proposal"][5] is None
        result = compare([run], ref)
        assert [(c.iou_type, c.metric) for c in result.checks] == [("box_proposal", "AR@1000")]
        assert result.passed is passed
        assert delta_lines(result)[0].startswith("box_proposal: delta vs Detectron")


def test_scratch_tolerance_and_metric_gate():
    model = "e2e_keypoint_rcnn_R-50-FPN_1x"
    run = Row.from_metrics("scratch", _metrics_like_reference(model, shift=-0.8, weights_source="scratch"))
    assert compare([run], reference_row(model)).passed  # 1.0 AP points by default
    assert not compare([run], reference_row(model), scratch_tolerance=0.5).passed
    assert not compare([run], reference_row(model), tolerance=0.1).passed
    gated = compare([run], reference_row(model), tolerance=0.1, metrics=["AP"])
    assert [(c.iou_type, c.metric) for c in gated.checks] == [("bbox", "AP"), ("keypoints", "AP")]
    with pytest.raises(InputError, match="unknown metric name"):
        compare([run], reference_row(model), metrics=["mAP"])


def test_runs_against_each_other_full_precision():
    model = "e2e_faster_rcnn_R-50-FPN_1x"
    a = Row.from_metrics("a", _metrics_like_reference(model))
    b = Row.from_metrics("b", _metrics_like_reference(model, shift=0.04))
    result = compare([b], a)
    assert all(abs(c.delta - 0.04) < 1e-9 for c in result.checks) and result.passed
    assert not compare([b], a, tolerance=0.03).passed


def test_no_common_metric_is_a_failure():
    keypoint_only = Row("kp", {"keypoints": (50.0,) * 10})
    assert not compare([keypoint_only], reference_row("faster")).passed


def test_minus_one_is_not_compared():
    model = "e2e_faster_rcnn_R-50-FPN_1x"
    m = _metrics_like_reference(model)
    m.bbox = Stats("bbox", m.bbox.stats[:5] + (-1.0,) + m.bbox.stats[6:])
    result = compare([Row.from_metrics("x", m)], reference_row(model))
    assert len(result.checks) == 11 and "APl" not in {c.metric for c in result.checks}


def test_pick_model():
    faster = Row("f", {"bbox": (1.0,) * 12})
    mask = Row("m", {"bbox": (1.0,) * 12, "segm": (1.0,) * 12})
    assert pick_model([faster], None) == "e2e_faster_rcnn_R-50-FPN_1x"
    assert pick_model([mask], None) == "e2e_mask_rcnn_R-50-FPN_1x"
    assert pick_model([dataclasses.replace(faster, model="e2e_keypoint_rcnn_R-50-FPN_1x")], None) == \
        "e2e_keypoint_rcnn_R-50-FPN_1x"
    assert pick_model([mask], "keypoint") == "e2e_keypoint_rcnn_R-50-FPN_1x"
    with pytest.raises(InputError, match="different models"):
        pick_model([dataclasses.replace(faster, model="a"), dataclasses.replace(mask, model="b")], None)
    assert pick_model([dataclasses.replace(faster, model="e2e_faster_rcnn_R-101-FPN_1x")], None) == \
        "e2e_faster_rcnn_R-101-FPN_1x"
    r152 = dataclasses.replace(faster, model="e2e_faster_rcnn_R-152-FPN_1x")
    with pytest.raises(InputError, match="no published reference"):
        pick_model([r152], None)
    assert compare([r152], faster).passed  # runs without published numbers still compare with each other


def test_html_table_layout():
    rows = [Row("PyTorch", {"keypoints": (0.628 * 100, 85.5, 68.3, 57.0, 71.9, 69.7, 90.1, 74.9, 63.7, None)}),
            reference_row("keypoint")]
    html = benchmark_md.html_table("keypoints", rows)
    lines = html.splitlines()
    assert lines[:3] == ["<table><tbody>", '<tr><th colspan="11" bgcolor=#f8f8f8>Keypoint</th></tr>', "<tr>"]
    assert lines[3:15] == ["<th>source</th>", "<th>AP50:95</th>", "<th>AP50</th>", "<th>AP75</th>", "<th>APm</th>",
                           "<th>APl</th>", "<th>AR50:95</th>", "<th>AR50</th>", "<th>AR75</th>", "<th>ARm</th>",
                           "<th>ARl</th>", "</tr>"]
    assert lines[15:18] == ["<tr>", "<th bgcolor=white>PyTorch</th>", '<td align="right" bgcolor=white>62.8</td>']
    assert lines[26] == '<td align="right" bgcolor=white>-</td>'
    assert lines[-1] == "</tbody></table>"
    assert html.count("<td ") == 20
    box = benchmark_md.html_table("bbox", [reference_row("faster")])
    assert '<th colspan="13" bgcolor=#f8f8f8>Box</th>' in box and box.count("<td ") == 12


def test_load_run_forms(test_data, tmp_path):
    model = "e2e_mask_rcnn_R-50-FPN_1x"
    run_dir = tmp_path / "run7"
    run_dir.mkdir()
    save_metrics(_metrics_like_reference(model), run_dir / "metrics.json")
    assert load_run(str(run_dir)).label == "run7"
    assert load_run(f"trial={run_dir / 'metrics.json'}").label == "trial"
    odd = tmp_path / "lr=0.02"  # a path with '=' in it is a path, not LABEL=PATH
    odd.mkdir()
    save_metrics(_metrics_like_reference(model), odd / "metrics.json")
    assert load_run(str(odd)).label == "lr=0.02"
    assert load_run(f"x={odd}").label == "x"
    folder = test_data / "coco-mini-fake-results"
    row = load_run(f"two={folder / 'two_image_dt.json'}", ann=folder / "two_image_gt.json")
    assert set(row.values) == {"bbox", "segm"}  # records that carry both (detectron2's do) are scored both ways
    expected = json.loads((folder / "expected_stats.json").read_text())["stats"]
    assert row.values["segm"][0] == pytest.approx(100 * expected["two_image_segm"][0])   # 67.57
    assert row.values["bbox"][0] == pytest.approx(100 * expected["two_image_bbox"][0])   # 85.05
    with pytest.raises(InputError, match="need the ground truth"):
        load_run(str(folder / "two_image_dt.json"))
    with pytest.raises(InputError, match="run file not found"):
        load_run(str(tmp_path / "nothing"))


def test_benchmark_md_speed_section(tmp_path):
    """tools/benchmark.py results render as a speed table and survive re-rendering."""
    from parity.__main__ import main

    bench = {"device": "cpu", "threads": 2, "torch": "2.x", "batch": 1, "size": [800, 1216], "tf32": False,
             "rows": [{"model": "mask", "ours_s_per_img": 2.0, "torchvision_s_per_img": 5.0, "speedup": 2.5}]}
    (tmp_path / "b.json").write_text(json.dumps(bench))
    md = tmp_path / "BENCHMARK.md"
    assert main(["benchmark-md", "--file", str(md), "--add-speed", f"cpu-run={tmp_path / 'b.json'}"]) == 0
    text = md.read_text()
    assert "| cpu-run | cpu | 2 | 2.x | 800x1216 | 1 | mask | 2.0000 | 5.0000 | 2.50x |" in text
    assert benchmark_md.read_data(md)["speed"][0]["label"] == "cpu-run"
    assert main(["benchmark-md", "--file", str(md), "--check"]) == 0
    (tmp_path / "bad.json").write_text("{}")
    assert main(["benchmark-md", "--file", str(md), "--add-speed", str(tmp_path / "bad.json")]) == 2
    assert main(["benchmark-md", "--file", str(md), "--remove", "cpu-run"]) == 0   # superseded: it leaves
    assert benchmark_md.read_data(md)["speed"] == [] and "| cpu-run |" not in md.read_text()
    assert main(["benchmark-md", "--file", str(md), "--remove", "cpu-run"]) == 2
