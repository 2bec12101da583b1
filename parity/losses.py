"""Training-loss curves from Detectron's logs and this project's, side by side.

Both write one ``json_stats: {...}`` line per logged iteration (Detectron: every 20
iterations, 0-based, each value the median of the last 20). Detectron's 12_2017 code
printed floats as JSON numbers, later code as 6-decimal strings; both parse to floats
here. Detectron logs the FPN RPN losses per level (``loss_rpn_cls_fpn2`` ... ``fpn6``);
their sums ``loss_rpn_cls`` / ``loss_rpn_bbox`` are added so curves compare with single
RPN losses. Plots are drawn with matplotlib's Agg canvas directly (no pyplot state).
"""
from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detectron_parity.fileio import InputError, PathLike, atomic_write_bytes, open_input
from detectron_parity.logformat import MARKER

MAIN_KEYS = ("loss", "loss_cls", "loss_bbox", "loss_rpn_cls", "loss_rpn_bbox", "loss_mask", "loss_kps")
_LEVEL_RE = re.compile(r"^(loss_rpn_(?:cls|bbox))_fpn(\d+)$")


@dataclass
class LossLog:
    """Logged values of one run: ``iters`` sorted and unique, one array per key (NaN
    where a line lacks the key). ``scale`` multiplies iterations on plots and tables
    (e.g. 0.5 for a run whose iterations see half as many images)."""

    label: str
    iters: np.ndarray
    values: dict[str, np.ndarray]
    scale: float = 1.0

    @property
    def x(self) -> np.ndarray:
        """Aligned iterations."""
        return self.iters * self.scale


def parse_lines(lines: Iterable[str], source: str = "log", label: str | None = None) -> LossLog:
    """Parse ``json_stats:`` lines (other lines are skipped). A later line for the same
    iteration replaces an earlier one (a resumed run repeats iterations)."""
    rows: dict[int, dict[str, float]] = {}
    for lineno, line in enumerate(lines, 1):
        pos = line.find(MARKER)
        if pos < 0:
            continue
        try:
            stats = json.loads(line[pos + len(MARKER):])
        except json.JSONDecodeError as e:
            raise InputError(f"{source}:{lineno}: json_stats is not valid JSON ({e.msg})") from None
        if not isinstance(stats, dict) or "iter" not in stats:
            raise InputError(f"{source}:{lineno}: json_stats has no 'iter'")
        row = {}
        for key, value in stats.items():
            if key == "eta":
                continue
            try:
                row[key] = float(value)
            except (TypeError, ValueError):
                raise InputError(f"{source}:{lineno}: json_stats {key}={value!r} is not a number") from None
        rows[int(row.pop("iter"))] = row
    if not rows:
        raise InputError(f"{source}: no '{MARKER.strip()}' lines")
    iters = np.array(sorted(rows), np.int64)
    keys = sorted({k for row in rows.values() for k in row})
    values = {k: np.array([rows[i].get(k, math.nan) for i in iters], np.float64) for k in keys}
    _add_rpn_sums(values)
    return LossLog(label if label is not None else source, iters, values)


def _add_rpn_sums(values: dict[str, np.ndarray]) -> None:
    """``loss_rpn_cls`` / ``loss_rpn_bbox`` as the sum over FPN levels, unless logged."""
    for total in ("loss_rpn_cls", "loss_rpn_bbox"):
        levels = [v for k, v in values.items() if (m := _LEVEL_RE.match(k)) and m.group(1) == total]
        if levels and total not in values:
            values[total] = np.sum(levels, axis=0)


def parse_log(path: PathLike, label: str | None = None) -> LossLog:
    """Parse a training log file (label defaults to the file's stem)."""
    path = Path(path)
    with open_input(path, "log file", "r", encoding="utf-8", errors="replace") as f:
        return parse_lines(f, str(path), label if label is not None else path.stem)


def plot_keys(logs: Sequence[LossLog], per_level: bool = False) -> list[str]:
    """Keys to plot: total and components present in any log, then per-level RPN losses."""
    present = {k for log in logs for k in log.values}
    keys = [k for k in MAIN_KEYS if k in present]
    if per_level:
        keys += sorted((k for k in present if _LEVEL_RE.match(k)), key=lambda k: (_LEVEL_RE.match(k).group(1), k))
    return keys


def trailing_mean(x: np.ndarray, y: np.ndarray, at: np.ndarray, window: float) -> np.ndarray:
    """Mean of the finite ``y`` with ``t - window < x <= t`` for each ``t`` in ``at``
    (``window`` 0: the last value at or before ``t``); NaN where there is none."""
    ok = np.isfinite(y)
    x, y = x[ok], y[ok]
    hi = np.searchsorted(x, at, side="right")
    if window <= 0:
        out = np.full(len(at), math.nan)
        out[hi > 0] = y[hi[hi > 0] - 1]
        return out
    lo = np.searchsorted(x, at - window, side="right")
    csum = np.concatenate([[0.0], np.cumsum(y)])
    n = hi - lo
    return np.divide(csum[hi] - csum[lo], n, out=np.full(len(at), math.nan), where=n > 0)


def default_iterations(logs: Sequence[LossLog], count: int = 5) -> list[int]:
    """``count`` evenly spaced iterations up to the last one every log reached."""
    end = min(float(log.x[-1]) for log in logs)
    return [int(round(end * k / count)) for k in range(1, count + 1)]


def table_lines(logs: Sequence[LossLog], at: Sequence[int], window: float, per_level: bool = False) -> list[str]:
    """Smoothed losses at the iterations ``at``, one block per key, one row per log."""
    at_arr = np.asarray(at, np.float64)
    keys = plot_keys(logs, per_level)
    kw = max(len(k) for k in keys) + 2
    width = max(len(log.label) for log in logs) + 2
    lines = [f"smoothed losses (mean over the {window:g} iterations up to each point)" if window > 0
             else "losses at the last logged iteration up to each point",
             f"{'key':<{kw}}{'run':<{width}}" + "".join(f"{int(t):>12}" for t in at)]
    for key in keys:
        first = True
        for log in logs:
            if key not in log.values:
                continue
            vals = trailing_mean(log.x, log.values[key], at_arr, window)
            lines.append(f"{key if first else '':<{kw}}{log.label:<{width}}" + "".join(f"{v:>12.6f}" for v in vals))
            first = False
    return lines


def plot(logs: Sequence[LossLog], out: PathLike, per_level: bool = False, window: float = 0.0) -> None:
    """Plot total loss and each component (one panel per key, one line per log) into
    ``out`` (format from its suffix), written atomically. With ``window`` > 0 the raw
    curves are drawn faint under their trailing means."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out)
    fmt = out.suffix.lstrip(".").lower()
    keys = plot_keys(logs, per_level)
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(5 * cols, 3.6 * rows), layout="constrained")
    canvas = FigureCanvasAgg(fig)
    if fmt not in canvas.get_supported_filetypes():
        raise InputError(f"{out}: unsupported plot format {fmt!r} (use .png, .pdf or .svg)")
    for n, key in enumerate(keys):
        ax = fig.add_subplot(rows, cols, n + 1)
        for i, log in enumerate(logs):
            if key not in log.values:
                continue
            color = f"C{i}"
            y = log.values[key]
            if window > 0:
                ax.plot(log.x, y, color=color, alpha=0.25, linewidth=0.7)
                y = trailing_mean(log.x, y, log.x, window)
            ax.plot(log.x, y, color=color, linewidth=1.2, label=log.label)
        ax.set_title("total loss" if key == "loss" else key)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if n == 0:
            ax.legend()
    fig.suptitle("Total loss comparison")
    buf = io.BytesIO()
    canvas.print_figure(buf, format=fmt, dpi=100)
    atomic_write_bytes(out, buf.getvalue())
