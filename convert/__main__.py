"""``python -m convert`` (console command ``detectron-convert``).

    detectron-convert IN.pkl OUT.pt [--cfg CONFIG.yaml] [--keep-momentum] [--keep-preserved] [--no-cfg-check]
    detectron-convert IN.pt OUT.pkl [--style {2017,2018}]
    detectron-convert --inspect FILE
    detectron-convert --names CONFIG.yaml

The direction follows the file extensions (``.pkl`` is Detectron's format, ``.pt``/``.pth``
ours). Without ``--cfg`` a ``.pkl`` is converted with the project's baseline config of the
family the file belongs to, when that is unambiguous. Bad input of any kind ends with one line
``error: ...`` on stderr and exit status 2, and leaves no output file behind.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from convert.detectron_cfg import parse_detectron_cfg
from convert.errors import ConvertError
from convert.kinds import FileKind, cfg_for_file, detect_kind, orphan_group
from convert.pickle_io import pickle_protocol, read_detectron_pkl
from detectron_parity import cli
from rcnn.config import cfg_from_yaml_text, load_cfg
from rcnn.naming import key_to_blob

# convert.checkpoint (torch, torchvision: ~3 s) is imported only where a model or a .pt is
# needed, so that --help, usage errors, bad .pkl files and --inspect of a .pkl answer at once.

_PKL = (".pkl",)
_PT = (".pt", ".pth")


class _Parser(argparse.ArgumentParser):
    """Usage errors are bad input too: one line and exit status 2, like every other error."""

    def error(self, message: str) -> NoReturn:
        raise ConvertError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="detectron-convert", description="Convert Detectron .pkl weights to and from "
                "detectron-parity .pt checkpoints, without executing anything from the input file.")
    p.add_argument("src", nargs="?", metavar="IN", help="input file (.pkl, or .pt/.pth)")
    p.add_argument("dst", nargs="?", metavar="OUT",
                   help="output file (.pt/.pth for a .pkl input, .pkl for a .pt input)")
    p.add_argument("--cfg", metavar="CONFIG", help="Detectron YAML config of the model (.pkl input; "
                   "default: the baseline config of the file's family)")
    p.add_argument("--keep-momentum", action="store_true",
                   help="carry the *_momentum blobs into the checkpoint (written back by OUT.pkl conversion)")
    p.add_argument("--keep-preserved", action="store_true",
                   help="carry the unused ImageNet blobs (fc1000_*, zero conv biases) into the checkpoint")
    p.add_argument("--no-cfg-check", action="store_true",
                   help="do not compare the cfg embedded in the .pkl with the config")
    p.add_argument("--style", choices=("2017", "2018"), default="2017",
                   help="Detectron cfg YAML style written into OUT.pkl (default: 2017, as the 12_2017 model zoo)")
    p.add_argument("--inspect", metavar="FILE", help="print what FILE holds and exit")
    p.add_argument("--names", metavar="CONFIG", help="print the blob names and shapes of the model CONFIG "
                   "describes, one 'name (d0, d1, ...)' per line, and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    return p


def _file_type(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in _PKL:
        return "pkl"
    if suffix in _PT:
        return "pt"
    raise ConvertError(f"cannot tell the format of {path} from its name: use .pkl (Detectron) or .pt/.pth")


def _blob_counts(names: Sequence[str]) -> str:
    groups = Counter(orphan_group(b) or "model" for b in names)
    return (f"{len(names)} in all: {groups['model']} model, {groups['momentum']} momentum, "
            f"{groups['preserved']} preserved ImageNet")


def _kind_lines(kind: FileKind) -> list[str]:
    lines = [f"kind: {kind.describe()}"]
    if kind.kind == "imagenet":
        lines.append("note: not a detector: use it as TRAIN.WEIGHTS for training, not for inference")
    if kind.family:
        where = kind.baseline_config_name or "no baseline config in this project"
        lines.append(f"config family: {kind.family} ({where})")
    if kind.num_classes is not None:
        lines.append(f"classes: {kind.num_classes} (background included)")
    return lines


def _cfg_line(model: dict) -> str:
    keys = ("NUM_CLASSES", "BBOX_REG_WEIGHTS", "MASK_ON", "KEYPOINTS_ON")
    return ", ".join(f"MODEL.{k}={model[k]!r}" for k in keys if k in model)


def inspect_file(path: str) -> list[str]:
    """What ``path`` holds, as lines for a person."""
    if _file_type(path) == "pkl":
        pkl = read_detectron_pkl(path)
        layout = "{'blobs', 'cfg'} dict" if pkl.wrapped else "flat name -> array dict"
        lines = [f"file: {path}", f"format: Detectron pickle, protocol {pickle_protocol(path)}, {layout}"]
        lines += _kind_lines(detect_kind(pkl.shapes))
        lines.append("blobs: " + _blob_counts(list(pkl.blobs)))
        if pkl.cfg_yaml is not None:
            try:
                lines.append("embedded cfg: " + _cfg_line(parse_detectron_cfg(pkl.cfg_yaml, path).get("MODEL", {})))
            except ConvertError as e:
                lines.append(f"embedded cfg: unreadable ({e})")
        return lines
    from convert.checkpoint import read_checkpoint

    ckpt = read_checkpoint(path)
    try:
        shapes = {key_to_blob(k): tuple(v.shape) for k, v in ckpt.state_dict.items()}
    except ValueError as e:
        raise ConvertError(f"{path}: {e}") from None
    lines = [f"file: {path}", f"format: detectron-parity checkpoint, {len(ckpt.state_dict)} tensors"]
    lines += _kind_lines(detect_kind(shapes))
    lines.append(f"extra blobs: {_blob_counts(list(ckpt.extra_blobs))}")
    lines.append("config: " + _cfg_line(cfg_from_yaml_text(ckpt.cfg_yaml).MODEL))
    lines += [f"meta {k}: {v}" for k, v in ckpt.meta.items()]
    return lines


def _check_output(path: str) -> None:
    """Fail before any work when OUT cannot be written (the write itself is atomic anyway)."""
    parent = Path(path).parent
    if Path(path).is_dir():
        raise ConvertError(f"cannot write {path}: it is a directory")
    if not parent.is_dir():
        raise ConvertError(f"cannot write {path}: {parent} is not an existing directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConvertError(f"cannot write {path}: no permission to create files in {parent}")


def _run(args: argparse.Namespace) -> None:
    if args.names:
        if args.src or args.dst or args.inspect:
            raise ConvertError("--names takes one CONFIG and no IN/OUT or --inspect")
        from convert.names import format_blob, model_blob_shapes

        blobs = model_blob_shapes(load_cfg(args.names), args.names)   # all of it before the first line is printed
        print("\n".join(format_blob(name, shape) for name, shape in blobs))
        return
    if args.inspect:
        if args.src or args.dst:
            raise ConvertError("--inspect takes one FILE and no IN/OUT")
        print("\n".join(inspect_file(args.inspect)))
        return
    if not (args.src and args.dst):
        raise ConvertError("give IN and OUT (or --inspect FILE); see --help")
    kinds = (_file_type(args.src), _file_type(args.dst))
    if os.path.abspath(args.src) == os.path.abspath(args.dst):
        raise ConvertError(f"OUT is the input file {args.src}")
    _check_output(args.dst)
    if kinds == ("pkl", "pt"):
        if args.style != "2017":
            raise ConvertError("--style applies to .pt -> .pkl conversion")
        # The input and the config are checked before torch is loaded, so that bad input fails fast.
        pkl = read_detectron_pkl(args.src)
        cfg = load_cfg(args.cfg) if args.cfg else cfg_for_file(detect_kind(pkl.shapes), args.src)
        from convert.checkpoint import pkl_to_pt

        report = pkl_to_pt(args.src, args.dst, cfg, keep_momentum=args.keep_momentum,
                           keep_preserved=args.keep_preserved, check_cfg=not args.no_cfg_check, pkl=pkl)
        kept = len(report.ignored_momentum) * args.keep_momentum + len(report.ignored_preserved) * args.keep_preserved
        print(f"converted {args.src} -> {args.dst}: {report.kind.describe()}; {report.summary()}"
              + (f"; {kept} of them kept as extra blobs" if kept else ""))
    elif kinds == ("pt", "pkl"):
        if args.cfg or args.keep_momentum or args.keep_preserved or args.no_cfg_check:
            raise ConvertError("--cfg, --keep-momentum, --keep-preserved and --no-cfg-check apply to .pkl -> .pt "
                               "conversion; a .pt checkpoint carries its config and extra blobs")
        from convert.checkpoint import pt_to_pkl

        report = pt_to_pkl(args.src, args.dst, style=args.style)
        print(f"converted {args.src} -> {args.dst}: {report.kind.describe()}; {len(report.loaded)} parameter blobs")
    else:
        raise ConvertError(f"cannot convert .{kinds[0]} to .{kinds[1]}: convert IN.pkl to OUT.pt, or IN.pt to OUT.pkl")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0, or 2 for bad input)."""
    return cli.run(lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    _run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
