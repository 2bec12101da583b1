"""Compare COCO results of runs with each other or with Detectron's published numbers.

A run is a ``metrics.json`` (or a directory holding one), or result JSON files scored
against a ground truth on the fly. Values are compared in percentage points, the unit of
every published table. Against published numbers (one decimal) a run's value is rounded
to one decimal first, so "within 0.1 AP" means what it says on the printed table.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from detectron_parity.fileio import InputError, load_json, split_label
from parity.evaluate import STAT_NAMES, evaluate
from parity.metrics import Metrics
from parity.proposals import AR_NAMES
from parity.records import IOU_TYPES, infer_iou_types, load_gt
from parity.reference import MODELS, config_stem, model_for_types, resolve_model

# RPN-only models are compared on Detectron's proposal recall (``box_proposal``), the rest on COCO stats.
NAMES: dict[str, tuple[str, ...]] = {**STAT_NAMES, "box_proposal": AR_NAMES}
_TYPES = (*IOU_TYPES, "box_proposal")
ZOO_TOLERANCE = 0.1  # AP points: converted zoo weights must reproduce the published numbers
SCRATCH_TOLERANCE = 1.0  # AP points: trained-here runs (Detectron.pytorch's keypoint trials differ by ~1.3)


@dataclass(frozen=True)
class Row:
    """One table row: values per type in percent (``None`` = not available)."""

    label: str
    values: dict[str, tuple[float | None, ...]]
    weights_source: str = "zoo"  # 'zoo', 'scratch' or 'reference'
    published: bool = False  # values are published, rounded to one decimal
    model: str | None = None  # config name from provenance (need not have published numbers)
    provenance: dict = field(default_factory=dict)
    metrics: Metrics | None = None  # the full-precision source of a run's values

    @classmethod
    def from_metrics(cls, label: str, metrics: Metrics) -> Row:
        """Percent values of a run; COCOeval's -1 (no object in range) becomes ``None``."""
        values = {t: tuple(None if v == -1 else 100.0 * v for v in s.stats) for t, s in metrics.by_type().items()}
        if metrics.box_proposal is not None:
            # NaN: no positive ground truth in that area range
            values["box_proposal"] = tuple(None if v is None or v != v else 100.0 * v for v in metrics.box_proposal.stats)
        prov = metrics.provenance
        model = config_stem(str(prov["model"])) if prov.get("model") else None
        source = prov.get("weights_source", "zoo")
        if source not in ("zoo", "scratch"):
            raise InputError(f"{label}: provenance weights_source must be 'zoo' or 'scratch', got {source!r}")
        return cls(label, values, source, model=model, provenance=dict(prov), metrics=metrics)


def reference_row(model: str) -> Row:
    """Detectron's published row for ``model`` (alias or config name)."""
    ref = MODELS[resolve_model(model)]
    values = dict(ref.stats)
    if ref.proposal_ar is not None:   # MODEL_ZOO.md publishes AR@1000 over all areas
        values["box_proposal"] = tuple(ref.proposal_ar if n == "AR@1000" else None for n in AR_NAMES)
    return Row("Detectron", values, "reference", published=True, model=ref.name,
               provenance={"model_id": ref.model_id, "source": ref.source})


def load_run(spec: str, ann: str | os.PathLike | None = None, backend: str = "pycocotools",
             progress: bool = False) -> Row:
    """A run from ``[LABEL=]PATH[,PATH...]``.

    PATH is a ``metrics.json``, a directory with one, or COCO result JSON files (their
    types read from the records) which are then scored against ``ann``. The label
    defaults to provenance ``label``, else the directory (for ``metrics.json``) or the
    first file's stem.
    """
    label, paths = split_label(spec)
    files = [Path(p) for p in paths.split(",") if p]
    if not files:
        raise InputError(f"{spec!r}: no path given")
    if len(files) == 1 and files[0].is_dir():
        files = [files[0] / "metrics.json"]
    loaded = [(f, load_json(f, "run file")) for f in files]
    if len(loaded) == 1 and isinstance(loaded[0][1], dict):
        path, data = loaded[0]
        metrics = Metrics.from_dict(data, str(path))
        default = path.parent.name if path.name == "metrics.json" and path.parent.name else path.stem
    else:
        metrics = _score_result_files(loaded, ann, backend, progress)
        default = files[0].stem
    return Row.from_metrics(label or str(metrics.provenance.get("label") or default), metrics)


def _score_result_files(loaded: list, ann: str | os.PathLike | None, backend: str, progress: bool) -> Metrics:
    if ann is None:
        raise InputError(f"{loaded[0][0]}: result files need the ground truth (--ann GT.json)")
    gt = load_gt(ann)
    scored: dict = {}
    for path, records in loaded:
        if not isinstance(records, list):
            raise InputError(f"{path}: neither a metrics.json object nor a result list")
        for iou_type in infer_iou_types(records, str(path)):
            if iou_type in scored:
                raise InputError(f"{path}: a second set of {iou_type} results in the same run")
            scored[iou_type] = evaluate(gt, records, iou_type, backend, progress=progress, source=str(path))
    return Metrics(provenance={"results": [str(p) for p, _ in loaded], "ground_truth": str(ann),
                               "backend": backend}, **scored)


@dataclass(frozen=True)
class Check:
    """One gated metric of one row against the baseline."""

    label: str
    iou_type: str
    metric: str
    value: float
    baseline: float
    delta: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return abs(self.delta) <= self.tolerance + 1e-9


@dataclass
class Comparison:
    """Rows (baseline last), per-metric deltas and the verdict."""

    rows: list[Row]
    baseline: Row
    checks: list[Check]
    iou_types: list[str]

    @property
    def passed(self) -> bool:
        """True when something was compared and every gated metric is within tolerance."""
        return bool(self.checks) and all(c.ok for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


def compare(runs: Sequence[Row], baseline: Row, tolerance: float | None = None,
            zoo_tolerance: float = ZOO_TOLERANCE, scratch_tolerance: float = SCRATCH_TOLERANCE,
            metrics: Sequence[str] | None = None) -> Comparison:
    """Deltas of every run against ``baseline`` and whether each gated metric is within
    tolerance: ``tolerance`` if given, else by the run's ``weights_source`` (zoo: 0.1,
    scratch: 1.0 AP points). ``metrics`` restricts the gate to some stat names (e.g.
    ``["AP"]``); by default every stat the baseline has is gated."""
    iou_types = [t for t in _TYPES if t in baseline.values or any(t in r.values for r in runs)]
    if metrics is not None:
        known = {n for t in iou_types for n in NAMES[t]}
        unknown = [m for m in metrics if m not in known]
        if unknown:
            raise InputError(f"unknown metric name(s) {unknown} (known: {', '.join(sorted(known))})")
    checks = []
    for run in runs:
        tol = tolerance if tolerance is not None else (scratch_tolerance if run.weights_source == "scratch" else zoo_tolerance)
        for iou_type in iou_types:
            if iou_type not in baseline.values or iou_type not in run.values:
                continue
            for name, value, base in zip(NAMES[iou_type], run.values[iou_type], baseline.values[iou_type]):
                if value is None or base is None or (metrics is not None and name not in metrics):
                    continue
                shown = round(value, 1) if baseline.published else value
                checks.append(Check(run.label, iou_type, name, value, base, shown - base, tol))
    return Comparison(list(runs) + [baseline], baseline, checks, iou_types)


def pick_model(runs: Sequence[Row], model: str | None) -> str:
    """The reference model: ``model`` if given, else the runs' provenance, else their types."""
    if model is not None:
        return resolve_model(model)
    named = {r.model for r in runs if r.model}
    if len(named) > 1:
        raise InputError(f"runs are of different models {sorted(named)}; compare one model at a time")
    if named:
        return resolve_model(named.pop())
    return model_for_types({t for r in runs for t in r.values})


def delta_lines(comparison: Comparison) -> list[str]:
    """Plain-text per-metric deltas (percentage points, ``*`` = outside tolerance) and
    the verdict line."""
    lines = []
    by_key = {(c.label, c.iou_type, c.metric): c for c in comparison.checks}
    for iou_type in comparison.iou_types:
        names = NAMES[iou_type]
        rows = [r for r in comparison.rows[:-1] if any((r.label, iou_type, n) in by_key for n in names)]
        if not rows:
            continue
        width = max(len(r.label) for r in rows) + 2
        lines.append(f"{iou_type}: delta vs {comparison.baseline.label} (percentage points, * = outside tolerance)")
        lines.append(" " * width + "".join(f"{n:>9}" for n in names))
        for r in rows:
            cells = []
            for n in names:
                c = by_key.get((r.label, iou_type, n))
                cells.append(" " * 9 if c is None else f"{c.delta:+8.2f}" + (" " if c.ok else "*"))
            lines.append(f"{r.label:<{width}}" + "".join(cells).rstrip())
        lines.append("")
    failures = comparison.failures()
    if not comparison.checks:
        lines.append("verdict: FAIL: no metric in common with the baseline")
    elif failures:
        worst = max(failures, key=lambda c: abs(c.delta) - c.tolerance)
        lines.append(f"verdict: FAIL: {len(failures)} of {len(comparison.checks)} metrics outside tolerance; worst "
                     f"{worst.label} {worst.iou_type} {worst.metric} {worst.delta:+.2f} (tolerance {worst.tolerance:g})")
    else:
        tols = sorted({c.tolerance for c in comparison.checks})
        lines.append(f"verdict: PASS: all {len(comparison.checks)} metrics within tolerance "
                     f"({', '.join(f'{t:g}' for t in tols)} AP points)")
    return lines
