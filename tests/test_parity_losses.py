"""parity.losses: Detectron json_stats logs in both number formats, sums, tables, plots."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from detectron_parity.fileio import InputError
from parity.__main__ import main
from parity.losses import default_iterations, parse_lines, parse_log, plot, table_lines, trailing_mean

LEVELS = range(2, 7)


def _stats(it: int, loss: float) -> dict:
    """One Detectron FPN json_stats dict; component losses derived from ``loss``."""
    stats = {"accuracy_cls": 0.9, "eta": "1 day, 4:43:31", "iter": it, "loss": loss, "loss_bbox": loss / 8,
             "loss_cls": loss / 4, "lr": 0.02, "mb_qsize": 64, "mem": 3084, "time": 0.544}
    for level in LEVELS:
        stats[f"loss_rpn_cls_fpn{level}"] = loss / (10 * level)
        stats[f"loss_rpn_bbox_fpn{level}"] = loss / (100 * level)
    return stats


def _detectron_2017_line(stats: dict) -> str:
    """12_2017 model-zoo format: floats as JSON numbers with 6 decimals."""
    body = ", ".join(f'"{k}": ' + (json.dumps(v) if isinstance(v, (str, int)) else f"{v:.6f}")
                     for k, v in sorted(stats.items()))
    return f"json_stats: {{{body}}}"


def _detectron_head_line(stats: dict) -> str:
    """HEAD format: floats pre-formatted as '{:.6f}' strings, ints kept."""
    return "json_stats: " + json.dumps({k: f"{v:.6f}" if isinstance(v, float) else v for k, v in stats.items()},
                                       sort_keys=True)


def _write_logs(tmp_path):
    losses_a = {it: 2.0 - it / 1000 for it in range(0, 400, 20)}
    a = ["INFO train_net.py: 218: Loading dataset: ('coco_2014_train',)",
         *(f"INFO net.py: 120: {_detectron_2017_line(_stats(it, v))}" for it, v in losses_a.items()),
         "INFO train_net.py: 280: Changing learning rate 0.006667 -> 0.020000 at iter 500"]
    losses_b = {it: 1.9 - it / 1000 for it in range(0, 400, 20)}
    b = [_detectron_head_line(_stats(it, v)) for it, v in losses_b.items()]
    b.insert(5, _detectron_head_line(_stats(60, 99.0)))  # a resumed run repeats iteration 60: last line wins
    (tmp_path / "detectron.log").write_text("\n".join(a) + "\n")
    (tmp_path / "ours.log").write_text("\n".join(b) + "\n")
    return losses_a, losses_b


def test_parse_both_formats(tmp_path):
    losses_a, losses_b = _write_logs(tmp_path)
    a = parse_log(tmp_path / "detectron.log")
    b = parse_log(tmp_path / "ours.log", label="ours")
    assert a.label == "detectron" and b.label == "ours"
    assert a.iters.tolist() == list(losses_a) == b.iters.tolist()
    assert a.values["loss"].tolist() == [float(f"{v:.6f}") for v in losses_a.values()]
    assert b.values["loss"][3] == 99.0  # the later line for iteration 60 replaced the earlier one
    assert b.values["loss"][4] == float(f"{losses_b[80]:.6f}")
    assert a.values["mem"][0] == 3084.0 and "eta" not in a.values
    for log in (a, b):
        expected_cls = sum(log.values[f"loss_rpn_cls_fpn{lv}"] for lv in LEVELS)
        expected_bbox = sum(log.values[f"loss_rpn_bbox_fpn{lv}"] for lv in LEVELS)
        np.testing.assert_allclose(log.values["loss_rpn_cls"], expected_cls, rtol=1e-15)
        np.testing.assert_allclose(log.values["loss_rpn_bbox"], expected_bbox, rtol=1e-15)
    assert a.values["loss_rpn_cls"][0] == pytest.approx(sum(2.0 / (10 * lv) for lv in LEVELS), abs=5e-6)


def test_single_rpn_loss_is_kept():
    log = parse_lines(['json_stats: {"iter": 0, "loss": 1.0, "loss_rpn_cls": 0.25, "loss_rpn_cls_fpn2": 0.5}'])
    assert log.values["loss_rpn_cls"].tolist() == [0.25]


@pytest.mark.parametrize("line,message", [
    ('json_stats: {"iter": 0, "loss": 1.0', "log:1: json_stats is not valid JSON"),
    ('json_stats: {"loss": 1.0}', "log:1: json_stats has no 'iter'"),
    ('json_stats: {"iter": 0, "loss": "n/a"}', "log:1: json_stats loss='n/a' is not a number"),
    ("no stats here", "log: no 'json_stats:' lines"),
])
def test_parse_errors(line, message):
    with pytest.raises(InputError, match=message):
        parse_lines([line], "log")


def test_trailing_mean():
    x = np.array([0.0, 20, 40, 60])
    y = np.array([4.0, 2.0, math.nan, 6.0])
    np.testing.assert_array_equal(trailing_mean(x, y, np.array([-1.0, 0, 30, 60]), 0), [math.nan, 4.0, 2.0, 6.0])
    np.testing.assert_array_equal(trailing_mean(x, y, np.array([20.0, 60.0]), 45), [3.0, 4.0])


def test_table_and_plot(tmp_path):
    _write_logs(tmp_path)
    logs = [parse_log(tmp_path / "detectron.log"), parse_log(tmp_path / "ours.log")]
    at = default_iterations(logs)
    assert at == [76, 152, 228, 304, 380]
    lines = table_lines(logs, [100, 380], window=50)
    assert lines[1].split() == ["key", "run", "100", "380"]
    loss_row = lines[2].split()
    assert loss_row[:2] == ["loss", "detectron"]
    assert float(loss_row[2]) == pytest.approx((1.94 + 1.92 + 1.9) / 3, abs=1e-6)  # iterations 60, 80, 100
    assert [ln.split()[0] for ln in lines[2::2]] == ["loss", "loss_cls", "loss_bbox", "loss_rpn_cls", "loss_rpn_bbox"]
    out = tmp_path / "losses.png"
    plot(logs, out, per_level=True, window=60)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["detectron.log", "losses.png", "ours.log"]
    with pytest.raises(InputError, match="unsupported plot format 'txt'"):
        plot(logs, tmp_path / "losses.txt")


def test_losses_cli(tmp_path, capsys):
    _write_logs(tmp_path)
    out = tmp_path / "cmp.png"
    status = main(["losses", f"Detectron={tmp_path / 'detectron.log'}", str(tmp_path / "ours.log"),
                   "--out", str(out), "--at", "100,190", "--window", "0", "--scale", "1", "0.5"])
    stdout = capsys.readouterr().out
    assert status == 0 and out.read_bytes()[:4] == b"\x89PNG"
    rows = [line.split() for line in stdout.splitlines()]
    assert rows[2] == ["loss", "Detectron", "1.900000", "1.820000"]
    assert rows[3] == ["ours", "1.700000", "1.520000"]  # iterations halved: 200 and 380 of the run
    status = main(["losses", str(tmp_path / "missing.log"), "--out", str(out)])
    assert status == 2 and "missing.log: log file not found" in capsys.readouterr().err
    status = main(["losses", f"dir={tmp_path}", "--out", str(out)])
    assert status == 2 and capsys.readouterr().err == f"error: {tmp_path}: log file is a directory, not a file\n"
