"""``python -m parity`` / ``detectron-parity``: COCO evaluation and parity tools.

Exit status: 0 success; 1 a comparison, match or zoo run outside tolerance (for CI gates);
2 bad input, reported as one line ``error: ...`` naming the file or record.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from detectron_parity import cli
from detectron_parity.fileio import (
    InputError,
    atomic_write_json,
    atomic_write_text,
    check_output_path,
    load_json,
    split_label,
)
from parity import benchmark_md, compare, losses, match, zoo
from parity.evaluate import BACKENDS, evaluate, summary_lines
from parity.records import IOU_TYPES
from parity.reference import resolve_model


def _cmd_eval(args: argparse.Namespace) -> int:
    if args.proposals:
        return _eval_proposals(args)
    if not args.dets or not args.type:
        raise InputError("eval needs --dets and --type (or --proposals)")
    stats = evaluate(args.ann, args.dets, args.type, args.backend, progress=True)
    print(f"type={stats.iou_type} backend={args.backend}")
    print("\n".join(summary_lines(stats)))
    if args.out:
        atomic_write_json(args.out, stats.to_dict())
    return 0


def _eval_proposals(args: argparse.Namespace) -> int:
    """Detectron's proposal recall of an ``rpn_proposals.pkl`` (``parity.proposals``)."""
    from parity.proposals import evaluate_proposal_file
    from rcnn.data.datasets import COCODataset

    dataset = COCODataset(args.ann, Path(args.ann).parent)
    stats = evaluate_proposal_file(dataset, args.proposals)
    print("type=box_proposal")
    print("\n".join(stats.lines()))
    if args.out:
        atomic_write_json(args.out, {"type": "box_proposal", **stats.to_dict()})
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    runs = [compare.load_run(spec, args.ann, args.backend, progress=True) for spec in args.runs]
    if args.scratch:
        runs = [dataclasses.replace(r, weights_source="scratch") for r in runs]
    if args.reference:
        model = compare.pick_model(runs, args.model)
        baseline = compare.reference_row(model)
        title = f"{model}: runs vs Detectron's published numbers"
    else:
        if len(runs) < 2:
            raise InputError("compare needs two runs, or one run and --reference detectron")
        baseline, runs = runs[0], runs[1:]
        title = f"runs vs {baseline.label}"
    metrics = args.metrics.split(",") if args.metrics else None
    result = compare.compare(runs, baseline, args.tolerance, args.zoo_tolerance, args.scratch_tolerance, metrics)
    tables = benchmark_md.comparison_tables(result.rows, result.iou_types)
    deltas = "\n".join(compare.delta_lines(result))
    print(tables + "\n\n" + deltas)
    if args.out:
        atomic_write_text(args.out, f"# {title}\n\n{tables}\n\n```\n{deltas}\n```\n")
    return 0 if result.passed else 1


def _cmd_match(args: argparse.Namespace) -> int:
    report = match.match_files(args.dets_a, args.dets_b, args.type, args.ann, min_iou=args.min_iou,
                               min_score=args.min_score, worst=args.worst, progress=True)
    print("\n".join(report.lines(args.dets_a, args.dets_b)))
    if args.out:
        atomic_write_json(args.out, report.to_dict())
    if args.min_matched is not None and min(report.frac_matched_a, report.frac_matched_b) < args.min_matched:
        print(f"FAIL: matched fraction below {args.min_matched:g}")
        return 1
    return 0


def _cmd_losses(args: argparse.Namespace) -> int:
    if args.scale and len(args.scale) != len(args.logs):
        raise InputError(f"--scale needs one factor per log ({len(args.logs)}), got {len(args.scale)}")
    logs = []
    for i, spec in enumerate(args.logs):
        label, path = split_label(spec)
        log = losses.parse_log(path, label or None)
        log.scale = args.scale[i] if args.scale else 1.0
        logs.append(log)
    at = [int(t) for t in args.at.split(",")] if args.at else losses.default_iterations(logs)
    print("\n".join(losses.table_lines(logs, at, args.window, args.per_level)))
    losses.plot(logs, args.out, args.per_level, args.window)
    print(f"wrote {args.out}")
    return 0


def _cmd_benchmark_md(args: argparse.Namespace) -> int:
    data = benchmark_md.read_data(args.file)
    if args.remove:
        data = benchmark_md.remove_runs(data, args.remove)
    if args.add:
        rows = [compare.load_run(spec, args.ann, args.backend, progress=True) for spec in args.add]
        data = benchmark_md.add_runs(data, rows, args.model)
    for spec in args.add_speed or []:
        label, path = split_label(spec)
        data = benchmark_md.add_speed(data, load_json(path, "benchmark result"), label or Path(path).stem, path)
    for spec in args.figure or []:
        model, sep, path = spec.partition("=")
        if not sep:
            raise InputError(f"--figure {spec!r}: expected MODEL=PATH")
        if path:
            data["figures"][resolve_model(model)] = path
        else:
            data["figures"].pop(resolve_model(model), None)
    for spec in args.note or []:
        title, sep, path = spec.partition("=")
        if not sep or not title:
            raise InputError(f"--note {spec!r}: expected TITLE=FILE")
        notes = dict(data.get("notes", {}))
        if path:
            notes[title] = Path(path).read_text(encoding="utf-8")
        else:
            notes.pop(title, None)
        data = {**data, "notes": notes}
    text = benchmark_md.render(data)
    if args.check:
        current = Path(args.file).read_text(encoding="utf-8") if Path(args.file).exists() else ""
        if current != text:
            print(f"{args.file} is stale: run `python -m parity benchmark-md` to regenerate it")
            return 1
        print(f"{args.file} is up to date")
        return 0
    atomic_write_text(args.file, text)
    print(f"wrote {args.file} ({len(data['runs'])} runs)")
    return 0


def _cmd_zoo_list(args: argparse.Namespace) -> int:
    models = zoo.select(args.family, args.body, args.task)
    if not models:
        raise InputError("no catalogued model matches these filters")
    print("\n".join(zoo.list_lines(models)))
    return 0


def _cmd_zoo_download(args: argparse.Namespace) -> int:
    from parity.zoo_run import fetch_weights

    print(fetch_weights(zoo.get(args.name), args.mirror, args.timeout))
    return 0


def _cmd_zoo_run(args: argparse.Namespace) -> int:
    from parity.zoo_run import ZooRunOptions, run

    if args.limit is not None and args.limit <= 0:
        raise InputError("--limit must be positive")
    options = ZooRunOptions(args.data_root, args.device, args.limit, args.weights, args.output_dir, args.opts,
                            args.mirror, args.timeout)
    result, text = run(args.name, options)
    print(text)
    return 0 if result.passed else 1


def _add_zoo_parser(sub) -> None:
    zp = sub.add_parser("zoo", help="Detectron's model zoo: list models, check one against its published numbers")
    zsub = zp.add_subparsers(dest="zoo_command", required=True)
    p = zsub.add_parser("list", help="catalogued models with their published numbers")
    p.add_argument("--family", help="e.g. e2e_mask_rcnn, retinanet, rpn, imagenet")
    p.add_argument("--body", help="backbone, e.g. R-50-FPN or R-50 (both R-50 bodies)")
    p.add_argument("--task", choices=zoo.TASKS, help="models with published numbers for this task")
    p.set_defaults(func=_cmd_zoo_list)
    run_help = "download, convert, test on COCO val and compare (exit 1 outside tolerance)"
    for name, helptext, func in (("run", run_help, _cmd_zoo_run),
                                 ("download", "only download a model's .pkl into the cache (prints its path)",
                                  _cmd_zoo_download)):
        p = zsub.add_parser(name, help=helptext)
        p.add_argument("name", help="catalog name (see `zoo list`), model id or config name")
        p.add_argument("--mirror", default=os.environ.get("DETECTRON_ZOO_MIRROR"),
                       help="base URL replacing https://dl.fbaipublicfiles.com/ (default: $DETECTRON_ZOO_MIRROR)")
        p.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds")
        p.set_defaults(func=func)
        if name == "run":
            p.add_argument("--data_root", help="data root laid out like Detectron's (coco/annotations/, "
                                               "coco/val2017/; default: $DETECTRON_DATA_ROOT)")
            p.add_argument("--device", help="cpu | cuda | cuda:N (default: cuda if available)")
            p.add_argument("--limit", type=int, help="only the first N images by id (a quick check)")
            p.add_argument("--weights", help="a model_final.pkl you already have: no download")
            p.add_argument("--output_dir", help="default: outputs/zoo/<name>")
            p.add_argument("--set", dest="opts", nargs="+", default=[], metavar="KEY VALUE",
                           help="config overrides, e.g. TEST.SCALE 600")


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of all subcommands."""
    parser = argparse.ArgumentParser(prog="python -m parity", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("eval", help="COCOeval stats of a result file (pycocotools, default params)")
    p.add_argument("--ann", required=True, help="COCO ground-truth JSON")
    p.add_argument("--dets", help="COCO result JSON (list of records); needs --type")
    p.add_argument("--type", choices=IOU_TYPES)
    p.add_argument("--proposals", help="instead: a Detectron rpn_proposals.pkl, scored with Detectron's "
                                       "proposal recall (AR@100/1000 per area)")
    p.add_argument("--out", help='write {"type", "names", "stats"} JSON here')
    p.add_argument("--backend", choices=BACKENDS, default="pycocotools",
                   help="faster-coco-eval agrees with pycocotools to ~1e-16; pycocotools is the reference")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("compare", help="tables, deltas and a verdict for runs (exit 1 outside tolerance)")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="[LABEL=]metrics.json | run dir | result JSONs joined by ',' (needs --ann)")
    p.add_argument("--reference", choices=["detectron"], help="compare against Detectron's published numbers")
    p.add_argument("--model", help="reference model: faster, mask, keypoint or a config name "
                                   "(default: the runs' provenance, else their result types)")
    p.add_argument("--ann", help="ground truth for runs given as result JSONs")
    p.add_argument("--backend", choices=BACKENDS, default="pycocotools")
    p.add_argument("--tolerance", type=float, help="one tolerance (AP points) for every run")
    p.add_argument("--zoo-tolerance", type=float, default=compare.ZOO_TOLERANCE,
                   help="tolerance for runs of zoo weights (default %(default)s AP points)")
    p.add_argument("--scratch-tolerance", type=float, default=compare.SCRATCH_TOLERANCE,
                   help="tolerance for scratch-trained runs (default %(default)s AP points)")
    p.add_argument("--scratch", action="store_true", help="treat every run as scratch-trained")
    p.add_argument("--metrics", help="gate only these stats, e.g. AP,AP50 (default: all)")
    p.add_argument("--out", help="write the tables, deltas and verdict here (markdown)")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("match", help="per-detection parity of two result files")
    p.add_argument("dets_a")
    p.add_argument("dets_b")
    p.add_argument("--ann", help="ground truth: validate both files against it")
    p.add_argument("--type", choices=IOU_TYPES, help="default: the most specific type both files hold")
    p.add_argument("--min-iou", type=float, default=0.5, help="similarity needed to pair (default %(default)s)")
    p.add_argument("--min-score", type=float, default=0.0, help="drop detections scoring below this first")
    p.add_argument("--worst", type=int, default=10, help="list this many worst images")
    p.add_argument("--min-matched", type=float, help="exit 1 if either side's matched fraction is below this")
    p.add_argument("--out", help="write the report as JSON here")
    p.set_defaults(func=_cmd_match)

    p = sub.add_parser("losses", help="plot and tabulate training losses of several logs")
    p.add_argument("logs", nargs="+", metavar="LOG", help="[LABEL=]training log with json_stats lines")
    p.add_argument("--out", required=True, help="plot file (.png, .pdf, .svg)")
    p.add_argument("--per-level", action="store_true", help="also plot each FPN level's RPN losses")
    p.add_argument("--window", type=float, default=500, help="smoothing window in iterations (0: none)")
    p.add_argument("--at", help="comma-separated iterations for the table (default: 5 evenly spaced)")
    p.add_argument("--scale", type=float, nargs="+", help="per-log factor on iterations (align batch sizes)")
    p.set_defaults(func=_cmd_losses)

    p = sub.add_parser("benchmark-md", help="regenerate BENCHMARK.md (never edit it by hand)")
    p.add_argument("--file", default="BENCHMARK.md")
    p.add_argument("--add", nargs="+", metavar="RUN", help="record runs ([LABEL=]metrics.json or run dir)")
    p.add_argument("--model", help="model of the added runs (default: their provenance)")
    p.add_argument("--ann", help="ground truth for runs given as result JSONs")
    p.add_argument("--backend", choices=BACKENDS, default="pycocotools")
    p.add_argument("--remove", nargs="+", metavar="LABEL", help="drop the runs and speed measurements with these labels")
    p.add_argument("--figure", action="append", metavar="MODEL=PATH",
                   help="loss plot shown under a model's tables (empty PATH removes it)")
    p.add_argument("--add-speed", nargs="+", metavar="BENCH", help="record tools/benchmark.py --json results ([LABEL=]FILE)")
    p.add_argument("--note", action="append", metavar="TITLE=FILE",
                   help="a section of measurements in prose (Markdown FILE) after the tables (empty FILE removes it)")
    p.add_argument("--check", action="store_true", help="exit 1 if the file differs from its rendering")
    p.set_defaults(func=_cmd_benchmark_md)

    _add_zoo_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; return the exit status."""
    args = build_parser().parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    return cli.run(lambda: _dispatch(args))


def _dispatch(args: argparse.Namespace) -> int:
    if getattr(args, "out", None):
        check_output_path(args.out)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
