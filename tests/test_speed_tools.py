"""Speed tooling on tiny inputs: alternating A/B timing, tools/benchmark.py JSON and its
BENCHMARK.md tables, convert/eval benchmarks, and device_check without CUDA."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from detectron_parity.timing import ab_pairs
from parity import benchmark_md

TOOLS = Path(__file__).resolve().parents[1] / "tools"


@pytest.fixture(scope="module")
def tools_path():
    sys.path.insert(0, str(TOOLS))
    yield
    sys.path.remove(str(TOOLS))


def test_ab_pairs_alternates_order_and_reports_ratio_spread(monkeypatch):
    calls, clock = [], iter(np.arange(0.0, 100.0, 1.0))
    monkeypatch.setattr("detectron_parity.timing.time.perf_counter", lambda: next(clock))
    out = ab_pairs(lambda: calls.append("a"), lambda: calls.append("b"), iters=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]   # warm-up, then A B, B A, A B
    assert out["a"]["n"] == out["b"]["n"] == out["ratio"]["n"] == 3
    assert out["ratio"] == {"min": 1.0, "median": 1.0, "max": 1.0, "n": 3}
    with pytest.raises(ValueError):
        ab_pairs(lambda: None, lambda: None, iters=0)


def test_benchmark_infer_json_renders_in_benchmark_md(tools_path, tmp_path):
    import benchmark

    out = tmp_path / "b.json"
    assert benchmark.main(["--mode", "infer", "--models", "faster", "--device", "cpu", "--size", "64x96",
                           "--iters", "1", "--warmup", "0", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    row = result["rows"][0]
    assert result["mode"] == "infer" and result["size"] == [64, 96] and result["device"] == "cpu"
    assert row["model"] == "faster" and row["ours_peak_bytes"] is None and row["ratio_spread"]["n"] == 1
    assert row["speedup"] == pytest.approx(row["torchvision_s_per_img"] / row["ours_s_per_img"])
    assert row["dets_per_img"][1] == 100         # torchvision keeps 100 (score threshold 0)
    data = benchmark_md.add_speed(benchmark_md.read_data(tmp_path / "none.md"), result, "tiny", str(out))
    text = benchmark_md.render(data)
    assert f"| tiny | infer | cpu | fp32 | 64x96 | 1 | faster | {row['ours_s_per_img']:.4f} |" in text
    assert "- `tiny`: " in text


def test_recorded_command_names_no_machine_folder(tools_path, monkeypatch):
    import benchmark

    repo = TOOLS.parent
    monkeypatch.setattr(sys, "argv", ["tools/benchmark.py", "--images", str(repo.parent / "shared" / "data" / "x"),
                                      "--pkl", str(repo / "tests" / "m.pkl"), "--json", "/tmp/bench/out.json",
                                      "--iters", "3", "--data", "../shared/data/y"])
    assert benchmark._command() == ("python tools/benchmark.py --images ../shared/data/x --pkl tests/m.pkl "
                                    "--json out.json --iters 3 --data ../shared/data/y")


def test_benchmark_md_tables_of_the_other_modes():
    s = {"min": 1.5, "median": 2.0, "max": 2.5, "n": 3}
    conv = {"mode": "convert", "convert": {"file_bytes": 2**20 * 340, "time_ratio": s,
                                           "convert": {"seconds": s, "peak_over_file": 1.25},
                                           "pickle": {"seconds": s, "peak_over_file": 1.0}}}
    ev = {"mode": "eval", "eval": {"images": 10, "detections": 99, "rows": [
        {"type": "segm", "fast_seconds": s, "pycocotools_seconds": s, "speedup": s, "max_stat_diff": 0.0}]}}
    fast = {"mode": "fast-vs-exact", "fast": {"rows": [
        {"model": "mask", "type": "segm", "n_a": 7, "matched": 7, "identical": 6, "keypoint_distance": None,
         "iou_deficit": {"p99": 0.001, "max": 0.002}, "ap_exact": 0.25, "ap_fast": 0.2501}]}}
    data = {"runs": [], "figures": {}, "speed": []}
    for label, bench in (("c", conv), ("e", ev), ("f", fast)):
        data = benchmark_md.add_speed(data, bench, label, label)
    text = benchmark_md.render(data)
    assert "| c | 340 | 2.00 | 2.00 | 2.00x (1.50-2.50, n=3) | 1.25x | 1.00x |" in text
    assert "| e | 10 | 99 | segm | 2.00 | 2.00 | 2.00x (1.50-2.50, n=3) | 0 |" in text
    assert "| f | mask | segm | 7 | 7 | 6 | 0.001, 0.002 | 25.00 | 25.01 | +0.010 |" in text
    with pytest.raises(benchmark_md.InputError, match="needs 'convert'"):
        benchmark_md.add_speed(data, {"mode": "convert"}, "x", "x.json")


def test_eval_benchmark_backends_agree():
    pytest.importorskip("faster_coco_eval")
    from parity.eval_benchmark import bench_eval

    out = bench_eval(images=8, iters=1)
    assert [r["type"] for r in out["rows"]] == ["bbox", "segm"]
    for r in out["rows"]:
        assert r["max_stat_diff"] <= 1e-12 and r["stats"][0] > 0.05   # jittered copies of the ground truth score


def test_convert_benchmark_measures_both_in_subprocesses(synthetic_pkls):
    from convert.benchmark import bench_convert

    out = bench_convert(iters=1, pkl=synthetic_pkls["faster"])
    assert out["file_bytes"] == Path(synthetic_pkls["faster"]).stat().st_size
    for side in ("convert", "pickle"):
        assert out[side]["seconds"]["median"] > 0 and out[side]["peak_bytes"]["n"] == 1
    assert out["time_ratio"]["median"] == pytest.approx(out["convert"]["seconds"]["median"]
                                                        / out["pickle"]["seconds"]["median"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_device_check_skips_without_cuda(tools_path, tmp_path, capsys):
    import device_check

    assert device_check.main(["--device", "cuda", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "device_check.json").read_text()) == {"skipped": "CUDA is not available"}
    assert "skipped" in capsys.readouterr().out
