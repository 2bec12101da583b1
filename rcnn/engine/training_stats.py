"""Detectron's training statistics and its ``json_stats`` log line.

Why: training curves are compared with the model-zoo logs (``python -m parity losses``), so
the numbers must mean the same thing and the line must parse the same way. As in Detectron's
``utils/training_stats.py``:

* every loss and metric, and ``loss`` (the per-iteration sum of the losses), is the **median
  of the last 20 iterations** (``SmoothedValue(20)``), so ``loss`` is not the sum of the shown
  components;
* a line is written at every iteration divisible by ``LOG_PERIOD`` = 20 (0-based) and at
  ``MAX_ITER - 1``;
* ``time`` is the average seconds per iteration (tic/toc around the iteration only); the timer
  is reset after logging iteration ``start_iter + 20`` to drop the slow first iterations;
  ``eta`` is ``str(timedelta(seconds=int(time * (MAX_ITER - iter))))``;
* ``mb_qsize`` is the rounded median of the loader queue size, ``mem`` the peak GPU memory in
  MiB (``ceil(bytes / 1024 / 1024)``, max over ranks; 0 on CPU). Caffe2 tracked its allocator's
  peak; here it is torch's peak *allocated* memory (not reserved).

Number format: the 12_2017 model-zoo logs were written by the 2017 code, which set
``json.encoder.FLOAT_REPR`` to ``format(o, '.6f')``: floats are JSON *numbers* with 6 decimals
(``"lr": 0.020000``). That is the format written here (Detectron HEAD writes ``"0.020000"``
strings instead; ``parity.losses`` reads both). Small values lose digits (``lr`` 2.5e-05 is
``0.000025``), as in those logs.

With several processes the losses are averaged over ranks first (``mean_over_ranks``: Detectron
sums per-GPU losses scaled by 1/NUM_GPUS, and averages metrics). Every rank calls
``log_iter_stats`` (the memory maximum is a collective); rank 0 writes the line.
"""
from __future__ import annotations

import datetime
import json
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from detectron_parity.logformat import MARKER  # the line prefix `parity losses` looks for
from rcnn.engine.devices import rank_and_world


class ScalarWriter(Protocol):
    """What ``TrainingStats`` needs of a TensorBoard ``SummaryWriter``."""

    def add_scalar(self, tag: str, scalar_value: float, global_step: int) -> None: ...


class SmoothedValue:
    """The last ``window_size`` values of a series; Detectron reports their median."""

    def __init__(self, window_size: int) -> None:
        self.deque: deque[float] = deque(maxlen=window_size)

    def add_value(self, value: float) -> None:
        self.deque.append(value)

    def get_median_value(self) -> float:
        return float(np.median(self.deque))


class Timer:
    """Detectron's ``utils/timer.py``: average wall time of tic/toc pairs since the last reset."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.reset()

    def tic(self) -> None:
        self.start_time = self.clock()

    def toc(self) -> float:
        """Seconds since ``tic``; updates the average."""
        diff = self.clock() - self.start_time
        self.total_time += diff
        self.calls += 1
        self.average_time = self.total_time / self.calls
        return diff

    def reset(self) -> None:
        self.total_time = 0.0
        self.calls = 0
        self.start_time = 0.0
        self.average_time = 0.0


def _json_value(value: Any) -> str:
    """One value as the 2017 code printed it (JSON with ``FLOAT_REPR = '.6f'``)."""
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return format(value, ".6f")
    if isinstance(value, np.integer):
        value = int(value)
    if value is None or isinstance(value, (bool, int, str)):
        return json.dumps(value)
    raise TypeError(f"json_stats value {value!r} is not a number or string")


def format_json_stats(stats: Mapping[str, Any]) -> str:
    """``json_stats: `` + ``json.dumps(stats, sort_keys=True)`` with floats as 6-decimal numbers."""
    body = ", ".join(f"{json.dumps(key)}: {_json_value(stats[key])}" for key in sorted(stats))
    return MARKER + "{" + body + "}"


def _print_line(line: str) -> None:
    """Detectron prints the line to stdout (not through logging), so it has no prefix."""
    print(line, flush=True)


def mean_over_ranks(values: Mapping[str, Tensor | float], device: torch.device | str | None = None) -> dict[str, float]:
    """Average scalar losses/metrics over all ranks in one ``all_reduce`` (float64).

    Without a process group, the values themselves. Either way the device tensors are read
    back with one copy (one host-device sync, not one per value). ``device`` is where the
    reduction runs (must be CUDA for NCCL; default: the first tensor's device, else CPU)."""
    if not values:
        return {}
    if device is None:
        device = next((v.device for v in values.values() if isinstance(v, Tensor)), torch.device("cpu"))
    flat = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).detach().reshape(())
                        for v in values.values()])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= dist.get_world_size()
    return dict(zip(values, flat.tolist()))


def peak_gpu_memory_bytes(device: torch.device | str | None) -> int:
    """Peak allocated GPU memory of this process on ``device``, max over ranks; 0 off CUDA."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    if dist.is_available() and dist.is_initialized():
        t = torch.tensor([peak], dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        peak = int(t.item())
    return peak


def open_tb_writer(log_dir: str | Path) -> ScalarWriter:
    """A TensorBoard ``SummaryWriter`` for ``--use_tfboard`` (imported only when asked for)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise RuntimeError(f"--use_tfboard needs the tensorboard package ({e}); install it with "
                           "'pip install tensorboard' or leave the option off") from None
    return SummaryWriter(log_dir=str(log_dir))


class TrainingStats:
    """Track losses, metrics, time and queue size; write Detectron's ``json_stats`` lines.

    Per iteration: ``iter_tic()``, run it, ``iter_toc()``, ``update_iter_stats(...)``,
    ``log_iter_stats(cur_iter, lr)``. ``memory_bytes`` (default: ``peak_gpu_memory_bytes``
    of ``device``) and ``clock`` can be replaced (tests); ``emit`` receives each line
    (default: stdout, like Detectron); ``tb_writer`` also gets every logged value.
    """

    WIN_SZ = 20
    LOG_PERIOD = 20

    def __init__(self, max_iter: int, start_iter: int = 0, *, device: torch.device | str | None = None,
                 memory_bytes: Callable[[], int] | None = None, emit: Callable[[str], None] = _print_line,
                 tb_writer: ScalarWriter | None = None, clock: Callable[[], float] = time.time) -> None:
        self.max_iter = max_iter
        self.start_iter = start_iter
        self.memory_bytes = memory_bytes if memory_bytes is not None else (lambda: peak_gpu_memory_bytes(device))
        self.emit = emit
        self.tb_writer = tb_writer
        self.is_main = rank_and_world()[0] == 0
        self.iter_timer = Timer(clock)
        self.loss_keys: list[str] | None = None
        self.metric_keys: list[str] = []
        self.smoothed: dict[str, SmoothedValue] = {}
        self.smoothed_total_loss = SmoothedValue(self.WIN_SZ)
        self.smoothed_mb_qsize = SmoothedValue(self.WIN_SZ)
        self.iter_total_loss = math.nan

    def iter_tic(self) -> None:
        self.iter_timer.tic()

    def iter_toc(self) -> float:
        return self.iter_timer.toc()

    def update_iter_stats(self, losses: Mapping[str, float], metrics: Mapping[str, float], mb_qsize: int = 0) -> None:
        """Add one iteration's (rank-averaged) losses and metrics and the loader queue size.

        The keys are fixed by the first call, as Detectron fixes them when the model is built."""
        if self.loss_keys is None:
            self.loss_keys, self.metric_keys = list(losses), list(metrics)
            self.smoothed = {k: SmoothedValue(self.WIN_SZ) for k in self.loss_keys + self.metric_keys}
        if set(losses) != set(self.loss_keys) or set(metrics) != set(self.metric_keys):
            raise ValueError(f"losses/metrics {sorted(losses)} / {sorted(metrics)} differ from the first "
                             f"iteration's {sorted(self.loss_keys)} / {sorted(self.metric_keys)}")
        values = {**{k: float(losses[k]) for k in self.loss_keys}, **{k: float(metrics[k]) for k in self.metric_keys}}
        for key, value in values.items():
            self.smoothed[key].add_value(value)
        self.iter_total_loss = float(np.sum(np.array([values[k] for k in self.loss_keys], dtype=np.float64)))
        self.smoothed_total_loss.add_value(self.iter_total_loss)
        self.smoothed_mb_qsize.add_value(mb_qsize)

    def get_stats(self, cur_iter: int, lr: float) -> dict[str, Any]:
        """The ``json_stats`` dict of ``cur_iter`` (Detectron's ``GetStats``)."""
        eta_seconds = self.iter_timer.average_time * (self.max_iter - cur_iter)
        stats: dict[str, Any] = {
            "iter": cur_iter,
            "lr": float(lr),
            "time": self.iter_timer.average_time,
            "loss": self.smoothed_total_loss.get_median_value(),
            "eta": str(datetime.timedelta(seconds=int(eta_seconds))),
            "mb_qsize": int(np.round(self.smoothed_mb_qsize.get_median_value())),
            "mem": int(np.ceil(self.memory_bytes() / 1024 / 1024)),
        }
        for key, value in self.smoothed.items():
            stats[key] = value.get_median_value()
        return stats

    def log_iter_stats(self, cur_iter: int, lr: float) -> dict[str, Any] | None:
        """Write the line on logging iterations (returns the stats then), and reset the timer
        after iteration ``start_iter + LOG_PERIOD``. Call on every rank."""
        stats = None
        if cur_iter % self.LOG_PERIOD == 0 or cur_iter == self.max_iter - 1:
            stats = self.get_stats(cur_iter, lr)
            if self.is_main:
                self.emit(format_json_stats(stats))
                if self.tb_writer is not None:
                    for key, value in stats.items():
                        if key not in ("iter", "eta"):
                            self.tb_writer.add_scalar(key, value, cur_iter)
        if cur_iter == self.start_iter + self.LOG_PERIOD:
            self.iter_timer.reset()
        return stats
