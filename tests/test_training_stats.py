"""rcnn.engine.training_stats: Detectron's statistics, its 2017 json_stats line, parity.losses.

``STATS_GOLDEN`` came from Detectron ``04155a0`` ``utils/training_stats.py::TrainingStats`` (with
``utils/logging.py::SmoothedValue`` and ``utils/timer.py::Timer``) run unmodified under NumPy
1.26.4 with stand-ins for Caffe2: a dict workspace for the loss blobs (1 GPU), a fake loader queue,
``GetGPUMemoryUsageStats`` returning the drawn byte count and a fake clock for ``time.time``.
Inputs are drawn below exactly as they were drawn there (``_golden_inputs``). The loop was Detectron's
``train_model`` order: tic, (run), toc, ``UpdateIterStats``, ``GetStats`` on logging iterations,
``ResetIterTimer`` after ``start_iter + 20``. Each row: the integer/string values, then every float as hex.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist

from parity.losses import parse_log
from rcnn.engine.training_stats import (
    TrainingStats,
    format_json_stats,
    mean_over_ranks,
    open_tb_writer,
    peak_gpu_memory_bytes,
)

LOSSES = ["loss_cls", "loss_bbox", "loss_rpn_cls_fpn2", "loss_rpn_bbox_fpn2", "loss_mask"]
METRICS = ["accuracy_cls"]

# (start_iter, MAX_ITER, [(ints and strings, floats as hex) per logged iteration])
STATS_GOLDEN = [
    (0, 65, [
        ({"eta": "0:03:31", "iter": 0, "mb_qsize": 10, "mem": 2720},
         """accuracy_cls:0x1.9fef3cp-4 loss:0x1.494d922p+1 loss_bbox:0x1.280c5cp-1 loss_cls:0x1.8f277cp-4
         loss_mask:0x1.a5bad6p-2 loss_rpn_bbox_fpn2:0x1.62292p-5 loss_rpn_cls_fpn2:0x1.71228p+0
         lr:0x1.47ae14p-6 time:0x1.ap+1"""),
        ({"eta": "0:00:41", "iter": 20, "mb_qsize": 28, "mem": 146},
         """accuracy_cls:0x1.202ddfp+0 loss:0x1.40b5996p+2 loss_bbox:0x1.f7ce63p-1 loss_cls:0x1.5d0b2p+0
         loss_mask:0x1.7ec01ep-1 loss_rpn_bbox_fpn2:0x1.cc4b8p-1 loss_rpn_cls_fpn2:0x1.dde60fp-1
         lr:0x1.47ae14p-6 time:0x1.dbd91caaaaaabp-1"""),
        ({"eta": "0:00:13", "iter": 40, "mb_qsize": 32, "mem": 1742},
         """accuracy_cls:0x1.278e3fp+0 loss:0x1.37d5ea86p+2 loss_bbox:0x1.584afap+0 loss_cls:0x1.0da6f2p+0
         loss_mask:0x1.2215bap-1 loss_rpn_bbox_fpn2:0x1.a38497p-1 loss_rpn_cls_fpn2:0x1.042de18p+0
         lr:0x1.47ae14p-6 time:0x1.1945a5p-1"""),
        ({"eta": "0:00:02", "iter": 60, "mb_qsize": 32, "mem": 2958},
         """accuracy_cls:0x1.1d22b9p+0 loss:0x1.78327dcp+2 loss_bbox:0x1.00829e8p+0 loss_cls:0x1.7b5973p-1
         loss_mask:0x1.5cadffp+0 loss_rpn_bbox_fpn2:0x1.cf6269p-1 loss_rpn_cls_fpn2:0x1.bbc2bfp+0
         lr:0x1.47ae14p-6 time:0x1.1962d86666666p-1"""),
        ({"eta": "0:00:00", "iter": 64, "mb_qsize": 30, "mem": 1135},
         """accuracy_cls:0x1.0f8419p+0 loss:0x1.6a7855208p+2 loss_bbox:0x1.d60bb7p-1 loss_cls:0x1.cc0328p-1
         loss_mask:0x1.6ba084p+0 loss_rpn_bbox_fpn2:0x1.af805p-1 loss_rpn_cls_fpn2:0x1.499f4cp+0
         lr:0x1.47ae14p-6 time:0x1.1a3d3e45d1746p-1"""),
    ]),
    (7, 50, [
        ({"eta": "0:00:33", "iter": 20, "mb_qsize": 34, "mem": 3086},
         """accuracy_cls:0x1.05c82b8p+0 loss:0x1.4279062p+2 loss_bbox:0x1.18100fp+0 loss_cls:0x1.70624cp+0
         loss_mask:0x1.5e9cf6p-1 loss_rpn_bbox_fpn2:0x1.fbe3b6p-1 loss_rpn_cls_fpn2:0x1.ee598fp-1
         lr:0x1.47ae14p-6 time:0x1.1fb42db6db6dbp+0"""),
        ({"eta": "0:00:05", "iter": 40, "mb_qsize": 17, "mem": 5786},
         """accuracy_cls:0x1.187119p+0 loss:0x1.3ac46266p+2 loss_bbox:0x1.1e8b7bp+0 loss_cls:0x1.13fc62p+0
         loss_mask:0x1.242043p-1 loss_rpn_bbox_fpn2:0x1.800d9bp-1 loss_rpn_cls_fpn2:0x1.3af04cp+0
         lr:0x1.47ae14p-6 time:0x1.1b5b604ec4ec5p-1"""),
        ({"eta": "0:00:00", "iter": 49, "mb_qsize": 32, "mem": 7644},
         """accuracy_cls:0x1.06a1d5p+0 loss:0x1.37d5ea86p+2 loss_bbox:0x1.42b986p+0 loss_cls:0x1.0da6f2p+0
         loss_mask:0x1.62abd9p-1 loss_rpn_bbox_fpn2:0x1.a38497p-1 loss_rpn_cls_fpn2:0x1.f76816p-1
         lr:0x1.47ae14p-6 time:0x1.1a2fdf745d174p-1"""),
    ]),
]


def _golden_inputs(start_iter: int, max_iter: int):
    """Per iteration: seconds inside tic/toc, loss/metric values, queue size, GPU bytes."""
    rng = np.random.RandomState(21)
    for it in range(start_iter, max_iter):
        dt = 3.25 if it < start_iter + 3 else float(np.float32(0.5 + 0.1 * rng.rand()))
        values = {k: float(np.float32(rng.rand() * 2)) for k in LOSSES + METRICS}
        qsize = int(rng.randint(0, 64))
        mem = int(rng.randint(1, 1 << 33))
        yield it, dt, values, qsize, mem


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("case", range(len(STATS_GOLDEN)))
def test_stats_match_detectron(case):
    start_iter, max_iter, expected = STATS_GOLDEN[case]
    clock, mem, lines = FakeClock(), [0], []
    stats = TrainingStats(max_iter, start_iter, memory_bytes=lambda: mem[0], emit=lines.append, clock=clock)
    got = []
    for it, dt, values, qsize, mem[0] in _golden_inputs(start_iter, max_iter):
        stats.iter_tic()
        clock.now += dt
        stats.iter_toc()
        clock.now += 0.125  # outside tic/toc
        stats.update_iter_stats({k: values[k] for k in LOSSES}, {k: values[k] for k in METRICS}, qsize)
        logged = stats.log_iter_stats(it, np.float32(0.02))
        if logged is not None:
            got.append(logged)
    assert len(got) == len(expected) == len(lines)
    for row, (ints, floats) in zip(got, expected):
        want = dict(ints)
        want.update({k: float.fromhex(h) for k, h in (item.split(":") for item in floats.split())})
        assert row.keys() == want.keys()
        for key, value in want.items():
            assert type(row[key]) is type(value), key
            assert row[key] == value, (row["iter"], key, row[key], value)
    assert [json.loads(line[len("json_stats: "):])["iter"] for line in lines] == [r["iter"] for r in got]


def test_line_format_is_the_2017_model_zoo_format():
    """Detectron issue #610 shows a 12_2017-era line; floats are 6-decimal JSON numbers."""
    stats = {"accuracy_cls": 1.0, "eta": "0:21:51", "iter": 55080, "loss": 0.024404, "lr": 0.000025,
             "mb_qsize": 64, "mem": 3084, "time": 0.266505}
    assert format_json_stats(stats) == (
        'json_stats: {"accuracy_cls": 1.000000, "eta": "0:21:51", "iter": 55080, "loss": 0.024404, '
        '"lr": 0.000025, "mb_qsize": 64, "mem": 3084, "time": 0.266505}')
    assert format_json_stats({"b": np.float64(2), "a": np.int64(3), "eta": "1 day, 4:43:31"}) == \
        'json_stats: {"a": 3, "b": 2.000000, "eta": "1 day, 4:43:31"}'
    line = format_json_stats({"iter": 1, "loss": math.nan, "x": math.inf, "y": -math.inf, "z": np.float32(0.5)})
    assert line == 'json_stats: {"iter": 1, "loss": NaN, "x": Infinity, "y": -Infinity, "z": 0.500000}'
    assert json.loads(line[len("json_stats: "):])["z"] == 0.5
    no_floats = {"iter": 3, "eta": "0:00:01", "mem": 0}
    assert format_json_stats(no_floats) == "json_stats: " + json.dumps(no_floats, sort_keys=True)
    with pytest.raises(TypeError):
        format_json_stats({"iter": [1]})


def _run(max_iter: int, start_iter: int = 0, **kw) -> tuple[TrainingStats, list[str], list[dict]]:
    lines: list[str] = []
    stats = TrainingStats(max_iter, start_iter, memory_bytes=lambda: 0, emit=lines.append, **kw)
    logged = []
    for it in range(start_iter, max_iter):
        stats.iter_tic()
        stats.iter_toc()
        losses = {f"loss_rpn_cls_fpn{lvl}": 0.01 * lvl + it * 1e-4 for lvl in range(2, 7)}
        losses.update({f"loss_rpn_bbox_fpn{lvl}": 0.001 * lvl for lvl in range(2, 7)})
        losses.update(loss_cls=1.0 / (it + 1), loss_bbox=0.25, loss_mask=0.5)
        stats.update_iter_stats(losses, {"accuracy_cls": 0.75}, mb_qsize=it % 3)
        row = stats.log_iter_stats(it, np.float32(0.02))
        if row is not None:
            logged.append(row)
    return stats, lines, logged


def test_log_period_and_parity_losses_reads_our_log(tmp_path):
    stats, lines, logged = _run(45)
    assert [r["iter"] for r in logged] == [0, 20, 40, 44]
    log = tmp_path / "train.log"
    other = "INFO solver.py: 1: Changing learning rate 0.000000 -> 0.006667 at iter 0"
    log.write_text("\n".join([other, *lines]) + "\n")
    parsed = parse_log(log)
    assert parsed.iters.tolist() == [0, 20, 40, 44]
    for key in ("loss", "loss_cls", "loss_bbox", "loss_mask", "accuracy_cls", "lr", "mem", "mb_qsize", "time"):
        assert parsed.values[key].tolist() == [round(r[key], 6) for r in logged], key
    rpn = [sum(round(r[f"loss_rpn_cls_fpn{lvl}"], 6) for lvl in range(2, 7)) for r in logged]
    np.testing.assert_allclose(parsed.values["loss_rpn_cls"], rpn, rtol=1e-12)
    assert "eta" not in parsed.values and logged[-1]["eta"] == "0:00:00"
    assert math.isclose(stats.iter_total_loss, 1 / 45 + 0.75 + sum(0.011 * lvl + 44e-4 for lvl in range(2, 7)))


def test_keys_are_fixed_by_the_first_iteration_and_nan_shows():
    stats = TrainingStats(10, emit=lambda line: None, memory_bytes=lambda: 0)
    stats.update_iter_stats({"loss_cls": 1.0}, {"accuracy_cls": 0.5})
    with pytest.raises(ValueError, match="differ from the first"):
        stats.update_iter_stats({"loss_cls": 1.0, "loss_mask": 1.0}, {"accuracy_cls": 0.5})
    stats.update_iter_stats({"loss_cls": math.nan}, {"accuracy_cls": 0.5})
    assert math.isnan(stats.iter_total_loss)


class FakeWriter:
    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []

    def add_scalar(self, tag: str, scalar_value: float, global_step: int) -> None:
        self.scalars.append((tag, scalar_value, global_step))


def test_tensorboard_scalars_for_every_logged_value():
    writer = FakeWriter()
    _, _, logged = _run(21, tb_writer=writer)
    steps = sorted({s for _, _, s in writer.scalars})
    assert steps == [0, 20]
    tags = {t for t, _, s in writer.scalars if s == 20}
    assert tags == set(logged[-1]) - {"iter", "eta"}
    assert ("loss_bbox", 0.25, 20) in writer.scalars
    for row in logged:  # every value, as logged
        assert {t: v for t, v, s in writer.scalars if s == row["iter"]} == \
            {k: v for k, v in row.items() if k not in ("iter", "eta")}
    assert len(writer.scalars) == sum(len(row) - 2 for row in logged)


def test_open_tb_writer(tmp_path):
    writer = open_tb_writer(tmp_path)     # tensorboard is a pinned dependency
    writer.add_scalar("loss", 1.0, 0)
    writer.close()
    events = list(tmp_path.glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0


def test_mean_over_ranks_and_memory(tmp_path):
    values = {"loss_cls": torch.tensor(0.5), "accuracy_cls": 0.75}
    assert mean_over_ranks(values) == {"loss_cls": 0.5, "accuracy_cls": 0.75}
    assert mean_over_ranks({}) == {}
    third = torch.tensor(1 / 3)  # float32: read back exactly, as float(tensor)
    means = mean_over_ranks({"b": third, "a": np.float32(0.1), "c": 2})
    assert list(means) == ["b", "a", "c"] and all(type(v) is float for v in means.values())
    assert means == {"b": float(third), "a": float(np.float32(0.1)), "c": 2.0}
    assert peak_gpu_memory_bytes("cpu") == 0
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert mean_over_ranks(values) == {"loss_cls": 0.5, "accuracy_cls": 0.75}
        assert mean_over_ranks({"b": third}) == {"b": float(third)}
        assert peak_gpu_memory_bytes(None) == 0
        _, lines, _ = _run(2)
        assert len(lines) == 2  # rank 0 writes
    finally:
        dist.destroy_process_group()
