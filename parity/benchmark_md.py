"""HTML result tables in the layout of Detectron.pytorch's BENCHMARK.md, and the
generator of this project's ``BENCHMARK.md``.

``BENCHMARK.md`` is never edited by hand: it is rendered from Detectron's published rows
(:mod:`parity.reference`, from the zoo catalog) plus the runs recorded in a JSON data block at the end of the
file. ``parity benchmark-md --add RUN`` records a run there and re-renders everything, so
the numbers in the tables always come from ``metrics.json`` files at full precision.

Table layout follows Detectron.pytorch (one ``<table>`` per type, a title row, a header
row, one row per source, several trials of one source allowed) with three fixes to its
markup: ``colspan`` equals the real column count (11 for keypoints, not 13),
``</tbody></table>`` closes in order, and the keypoint recall columns are named for what
COCOeval reports there (AR50:95, AR50, AR75 at 20 detections, not AR1/AR10/AR100).
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detectron_parity.fileio import InputError, PathLike
from parity import zoo
from parity.compare import Row, reference_row
from parity.metrics import Metrics
from parity.records import IOU_TYPES
from parity.reference import DETECTRON_MODEL_ZOO, MODELS, resolve_model

TITLES = {"bbox": "Box", "segm": "Mask", "keypoints": "Keypoint"}
_DET_HEADERS = ("AP50:95", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
HEADERS = {
    "bbox": _DET_HEADERS,
    "segm": _DET_HEADERS,
    "keypoints": ("AP50:95", "AP50", "AP75", "APm", "APl", "AR50:95", "AR50", "AR75", "ARm", "ARl"),
}
SECTIONS = (("Faster R-CNN", "e2e_faster_rcnn_R-50-FPN_1x"), ("Mask R-CNN", "e2e_mask_rcnn_R-50-FPN_1x"),
            ("Keypoint R-CNN", "e2e_keypoint_rcnn_R-50-FPN_1x"))
_DATA_RE = re.compile(r"<!-- benchmark-md data\n(.*?)\n-->\n?\Z", re.S)


def html_table(iou_type: str, rows: Sequence[Row]) -> str:
    """One BENCHMARK.md table: title, header and one row per source (percent, 1 d.p.)."""
    headers = HEADERS[iou_type]
    out = ["<table><tbody>", f'<tr><th colspan="{len(headers) + 1}" bgcolor=#f8f8f8>{TITLES[iou_type]}</th></tr>',
           "<tr>", "<th>source</th>", *(f"<th>{h}</th>" for h in headers), "</tr>"]
    for row in rows:
        values = row.values.get(iou_type, (None,) * len(headers))
        out += ["<tr>", f"<th bgcolor=white>{row.label}</th>",
                *(f'<td align="right" bgcolor=white>{"-" if v is None else f"{v:.1f}"}</td>' for v in values), "</tr>"]
    out.append("</tbody></table>")
    return "\n".join(out)


def comparison_tables(rows: Sequence[Row], iou_types: Sequence[str]) -> str:
    """The tables of several types, blank-line separated (what ``compare`` prints)."""
    # Proposal recall has no table in BENCHMARK.md's format; its deltas are in the text lines.
    return "\n\n".join(html_table(t, rows) for t in iou_types if t != "box_proposal")


def run_entry(row: Row, model: str) -> dict[str, Any]:
    """The JSON record of one run in the data block (stats as fractions, full precision)."""
    if row.metrics is None:
        raise InputError(f"row {row.label!r} is not a run")
    entry: dict[str, Any] = {"model": model, "label": row.label, "weights_source": row.weights_source}
    entry.update({t: list(s.stats) for t, s in row.metrics.by_type().items()})
    entry["provenance"] = row.provenance
    return entry


def _entry_row(entry: dict[str, Any]) -> Row:
    metrics = Metrics.from_dict({t: {"stats": entry[t]} for t in IOU_TYPES if t in entry} |
                                {"provenance": {**entry.get("provenance", {}), "weights_source": entry["weights_source"]}},
                                f"BENCHMARK.md run {entry.get('label')!r}")
    return Row.from_metrics(entry["label"], metrics)


def read_data(path: PathLike) -> dict[str, Any]:
    """The data block of an existing BENCHMARK.md (empty data when the file is absent)."""
    path = Path(path)
    if not path.exists():
        return {"runs": [], "figures": {}, "speed": []}
    match = _DATA_RE.search(path.read_text(encoding="utf-8"))
    if match is None:
        raise InputError(f"{path}: no benchmark-md data block at the end; refusing to overwrite a hand-written file")
    try:
        data = json.loads(match.group(1))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: benchmark-md data block is not valid JSON ({e.msg})") from None
    return {"runs": list(data.get("runs", [])), "figures": dict(data.get("figures", {})),
            "speed": list(data.get("speed", [])), "notes": dict(data.get("notes", {}))}


def render(data: dict[str, Any]) -> str:
    """The whole BENCHMARK.md text for ``data`` (runs and figures)."""
    parts = [_HEADER.format(zoo=DETECTRON_MODEL_ZOO)]
    others = [m for m in MODELS if m not in dict(SECTIONS).values() and any(e["model"] == m for e in data["runs"])]
    sections = list(SECTIONS) + [("Other model-zoo models", m) for m in others]
    for i, (title, model) in enumerate(sections):
        ref = MODELS[model]
        runs = [_entry_row(e) for e in data["runs"] if e["model"] == model]
        rows = runs + [reference_row(model)]
        heading = f"## {title}\n\n" if i == 0 or title != sections[i - 1][0] else ""
        parts.append(f"{heading}### {model}\n\nDetectron model id {ref.model_id}.\n")
        parts.append(comparison_tables(rows, [t for t in IOU_TYPES if t in ref.stats]) + "\n")
        notes = [f"- `{r.label}`: {_describe(r)}" for r in runs]
        if notes:
            parts.append("Runs:\n\n" + "\n".join(notes) + "\n")
        figure = data["figures"].get(model)
        if figure:
            parts.append(f"- Total loss comparison:\n\n  ![img]({figure})\n")
    parts.append(zoo_section())
    if data.get("speed"):
        parts.append(speed_section(data["speed"]))
    for title, text in data.get("notes", {}).items():   # measurements that are not tables (--note)
        parts.append(f"## {title}\n\n{text.strip()}\n")
    block = json.dumps({k: data[k] for k in ("runs", "figures", "speed", "notes")
                        if k in ("runs", "figures") or data.get(k)}, indent=1, sort_keys=True)
    parts.append(f"<!-- benchmark-md data\n{block}\n-->\n")
    return "\n".join(parts)


def _describe(row: Row) -> str:
    keys = ("weights", "dataset", "backend", "git_commit", "date")
    details = [f"{k} {row.provenance[k]}" for k in keys if row.provenance.get(k)]
    return ", ".join([f"{row.weights_source} weights"] + details)


def add_runs(data: dict[str, Any], rows: Sequence[Row], model: str | None = None) -> dict[str, Any]:
    """``data`` with ``rows`` appended; each row's model is ``model``, else its provenance."""
    runs = list(data["runs"])
    for row in rows:
        if not (model or row.model):
            raise InputError(f"run {row.label!r}: no model in its provenance; pass --model")
        name = resolve_model(model or row.model)
        runs.append(run_entry(row, name))
    return {**data, "runs": runs}


def remove_runs(data: dict[str, Any], labels: Sequence[str]) -> dict[str, Any]:
    """``data`` without the runs and the speed measurements labelled ``labels`` (every trial with
    that label): a measurement superseded by a better one leaves the file."""
    entries = list(data["runs"]) + list(data.get("speed", []))
    missing = [lab for lab in labels if not any(e["label"] == lab for e in entries)]
    if missing:
        raise InputError(f"no run or speed measurement labelled {missing[0]!r} in BENCHMARK.md")
    return {**data, "runs": [e for e in data["runs"] if e["label"] not in labels],
            "speed": [e for e in data.get("speed", []) if e["label"] not in labels]}


def zoo_section() -> str:
    """Detectron's published numbers of every catalogued detector (one row each)."""
    lines = ["## Detectron model zoo: published numbers", "",
             "Every detector of Detectron's MODEL_ZOO.md and projects/GN/README.md (@ 04155a0), from the",
             "zoo catalog (`parity/zoo_catalog.json`, checked against those files by the tests); AP and",
             "proposal AR@1000 in percent as published, `-` = not published. Keypoint models: person",
             "class only. `python -m parity zoo run NAME` checks one of them.", "",
             "| model id | model | backbone | lr schd | box AP | mask AP | kp AP | prop. AR |",
             "|---:|---|---|---|---:|---:|---:|---:|"]
    for ref in MODELS.values():
        model = zoo.get(ref.name)
        aps = [ref.stats[t][0] if t in ref.stats else None for t in ("bbox", "segm", "keypoints")]
        cells = [f"{v:.1f}" if v is not None else "-" for v in (*aps, ref.proposal_ar)]
        lines.append(f"| {ref.model_id} | {ref.name} | {model.backbone}{', GN' if model.norm == 'GN' else ''} | "
                     f"{model.lr_schd} | " + " | ".join(cells) + " |")
        if model.without_test_aug:
            w = model.without_test_aug
            lines.append(f"| | {ref.name} without test-time aug. | | | {w['box_ap']:.1f} | {w['mask_ap']:.1f} | - | - |")
    return "\n".join(lines) + "\n"


_SPEED_ROW_KEYS = ("model", "ours_s_per_img", "torchvision_s_per_img")


def add_speed(data: dict[str, Any], bench: Any, label: str, source: str) -> dict[str, Any]:
    """``data`` with one ``tools/benchmark.py --json`` measurement appended under ``label``."""
    if isinstance(bench, dict) and bench.get("mode") in _OTHER_SPEED_MODES:
        if not isinstance(bench.get(_OTHER_SPEED_MODES[bench["mode"]]), dict):
            raise InputError(f"{source}: a tools/benchmark.py --mode {bench['mode']} result needs "
                             f"'{_OTHER_SPEED_MODES[bench['mode']]}'")
        return {**data, "speed": list(data.get("speed", [])) + [{"label": label, **bench}]}
    if not isinstance(bench, dict) or not isinstance(bench.get("rows"), list) or not bench["rows"]:
        raise InputError(f"{source}: not a tools/benchmark.py result (no 'rows')")
    for row in bench["rows"]:
        if not isinstance(row, dict) or any(not isinstance(row.get(k), (str, int, float)) for k in _SPEED_ROW_KEYS):
            raise InputError(f"{source}: every row needs {', '.join(_SPEED_ROW_KEYS)}")
    return {**data, "speed": list(data.get("speed", [])) + [{"label": label, **bench}]}


def speed_section(entries: Sequence[dict[str, Any]]) -> str:
    """Inference speed, ours vs torchvision, one line per model and measurement; then the
    measurements with per-pair spreads (``--mode``), convert, eval and fast-vs-exact tables."""
    legacy = [e for e in entries if "mode" not in e]
    out = _legacy_speed_table(legacy) if legacy else "## Speed\n"
    return out + speed_tables([e for e in entries if "mode" in e])


_OTHER_SPEED_MODES = {"convert": "convert", "eval": "eval", "fast-vs-exact": "fast"}


def _pair(spread: dict[str, Any]) -> str:
    return f"{spread['median']:.2f}x ({spread['min']:.2f}-{spread['max']:.2f}, n={spread['n']})"


def _mib(value: Any) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f}"


def _env(e: dict[str, Any]) -> str:
    return (f"{e.get('device_name') or e.get('device', '-')}, {e.get('threads', '-')} threads, torch {e.get('torch', '-')}, "
            f"torchvision {e.get('torchvision', '-')}, numpy {e.get('numpy', '-')}, python {e.get('python', '-')}")


def speed_tables(entries: Sequence[dict[str, Any]]) -> str:
    """Tables of ``tools/benchmark.py`` results that carry a ``mode`` (pairs with spreads)."""
    parts = []
    models = [e for e in entries if e["mode"] in ("infer", "train")]
    if models:
        lines = ["", "### Ours vs torchvision (alternating pairs)", "",
                 "`ours faster by` is the median over A/B pairs of torchvision's time over ours, with the",
                 "min-max of the per-pair ratios: a spread that straddles 1.00x is no result. Peak memory:",
                 "CUDA allocator peak (n/a on CPU).", "",
                 "| measurement | mode | device | precision | input | batch | model | ours s/img | torchvision s/img "
                 "| ours faster by (min-max, n) | peak MiB ours / tv |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
        for e in models:
            size = "x".join(str(v) for v in e.get("size", []))
            flags = "".join(f" {f}" for f in ("fast", "channels_last", "compile") if e.get(f))
            for r in e["rows"]:
                lines.append(f"| {e['label']} | {e['mode']}{flags} | {e.get('device', '-')} | {e.get('precision', '-')} | "
                             f"{size} | {e.get('batch', '-')} | {r['model']} | {r['ours_s_per_img']:.4f} | "
                             f"{r['torchvision_s_per_img']:.4f} | {_pair(r['ratio_spread'])} | "
                             f"{_mib(r.get('ours_peak_bytes'))} / {_mib(r.get('torchvision_peak_bytes'))} |")
        parts.append("\n".join(lines))
    convert = [e for e in entries if e["mode"] == "convert"]
    if convert:
        lines = ["", "### Convert vs pickle.load", "",
                 "`python -m convert` of a full-size Mask R-CNN `.pkl` (real blob names and shapes, momentum and",
                 "preserved blobs) against `pickle.load` of the same file; each run in its own subprocess, peak =",
                 "`ru_maxrss` minus the resident size after imports.", "",
                 "| measurement | file MiB | convert s | pickle.load s | convert / pickle.load (min-max, n) "
                 "| convert peak / file | pickle.load peak / file |",
                 "|---|---|---|---|---|---|---|"]
        for e in convert:
            c = e["convert"]
            lines.append(f"| {e['label']} | {c['file_bytes'] / 2**20:.0f} | {c['convert']['seconds']['median']:.2f} | "
                         f"{c['pickle']['seconds']['median']:.2f} | {_pair(c['time_ratio'])} | "
                         f"{c['convert']['peak_over_file']:.2f}x | {c['pickle']['peak_over_file']:.2f}x |")
        parts.append("\n".join(lines))
    evals = [e for e in entries if e["mode"] == "eval"]
    if evals:
        lines = ["", "### Evaluation: faster-coco-eval vs pycocotools", "",
                 "`parity.evaluate` with each backend on the same generated result set, alternating pairs; the",
                 "12 stats must agree to 1e-12 (`max diff` is the largest difference seen).", "",
                 "| measurement | images | results | type | faster-coco-eval s | pycocotools s "
                 "| faster by (min-max, n) | max diff |",
                 "|---|---|---|---|---|---|---|---|"]
        for e in evals:
            v = e["eval"]
            for r in v["rows"]:
                lines.append(f"| {e['label']} | {v['images']} | {v['detections']} | {r['type']} | "
                             f"{r['fast_seconds']['median']:.2f} | {r['pycocotools_seconds']['median']:.2f} | "
                             f"{_pair(r['speedup'])} | {r['max_stat_diff']:.2g} |")
        parts.append("\n".join(lines))
    fast = [e for e in entries if e["mode"] == "fast-vs-exact"]
    if fast:
        lines = ["", "### Fast mode (`--fast`) vs the exact path", "",
                 "Same forward pass, post-processed both ways (`tools/benchmark.py --mode fast-vs-exact`);",
                 "per-detection match (`parity.match`) and AP of each, same images and calibrated synthetic",
                 "weights (AP near 0: the per-detection match is the informative part).", "",
                 "| measurement | model | type | detections | matched | identical | 1-IoU / distance p99, max "
                 "| AP exact | AP fast | AP delta |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for e in fast:
            for r in e["fast"]["rows"]:
                d = r["keypoint_distance"] or r["iou_deficit"]
                lines.append(f"| {e['label']} | {r['model']} | {r['type']} | {r['n_a']} | {r['matched']} | "
                             f"{r['identical']} | {d['p99']:.3g}, {d['max']:.3g} | {100 * r['ap_exact']:.2f} | "
                             f"{100 * r['ap_fast']:.2f} | {100 * (r['ap_fast'] - r['ap_exact']):+.3f} |")
        parts.append("\n".join(lines))
    if entries:
        parts.append("\n".join(["", "Measurements (machine, versions, command):", ""] +
                               [f"- `{e['label']}`: {_env(e)}; `{e.get('command') or '-'}`" for e in entries]))
    return "\n".join(parts) + "\n" if parts else ""


def _legacy_speed_table(entries: Sequence[dict[str, Any]]) -> str:
    """The first table (results written before ``--mode`` existed: no spreads)."""
    lines = ["## Inference speed", "",
             "Measured by `tools/benchmark.py` (same images, same run, same machine; both pipelines from",
             "decoded uint8 images to pasted masks / decoded keypoints, 100 detections per image).",
             "Only ratios within one measurement are comparable.", "",
             "| measurement | device | threads | torch | input | batch | model | ours s/img | torchvision s/img "
             "| ours faster by |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        size = "x".join(str(v) for v in e.get("size", [])) or "-"
        for row in e["rows"]:
            lines.append(f"| {e['label']} | {e.get('device', '-')}{' tf32' if e.get('tf32') else ''} | "
                         f"{e.get('threads', '-')} | {e.get('torch', '-')} | {size} | {e.get('batch', '-')} | "
                         f"{row['model']} | {row['ours_s_per_img']:.4f} | {row['torchvision_s_per_img']:.4f} | "
                         f"{row['torchvision_s_per_img'] / row['ours_s_per_img']:.2f}x |")
    return "\n".join(lines) + "\n"


_HEADER = """# Benchmark results

<!-- Generated by `python -m parity benchmark-md`. Do not edit by hand: edits are lost. -->

This file is generated. Its tables are rendered from Detectron's published numbers (the
model-zoo catalog `parity/zoo_catalog.json`, read by `parity/reference.py`) and from the runs
recorded in the data block at the end of this file, which hold every `metrics.json` at full
precision.

    python -m parity benchmark-md --add [NAME=]outputs/RUN/metrics.json [--model mask]
    python -m parity benchmark-md --remove NAME
    python -m parity benchmark-md --figure mask=docs/loss_cmp_mask.png   # from `parity losses`
    python -m parity benchmark-md --check    # exit 1 when the file is not what the data renders to

- Scores are pycocotools `COCOeval.stats` with default parameters, in percent, rounded to
  one decimal; `-` means not available. Evaluation set: COCO 2017 val (= Detectron's
  `coco_2014_minival`). Box, Mask: 12 stats; Keypoint: 10 (AR50:95, AR50, AR75 are at 20
  detections per image).
- `Detectron` rows: the published results of the model-zoo weights, all stats from the
  Detectron rows of Detectron.pytorch's BENCHMARK.md (commit ab028df7); the AP columns agree
  with {zoo}.
- `python -m parity compare RUN --reference detectron` prints the same tables with
  per-metric deltas and a pass/fail verdict (0.1 AP for zoo weights, 1.0 for scratch runs).
"""
