"""What every command line shares: the common flags and the one place errors become exit statuses.

The flags keep Detectron.pytorch's spellings (``--cfg``, ``--load_detectron``, ``--load_ckpt``,
``--dataset``, ``--output_dir``), so that its commands run here unchanged. ``run`` is the
wrapper of every ``main``: a :class:`~detectron_parity.errors.UserError` or an ``OSError``
ends the command with one line ``error: ...`` on stderr and status 2 (``exit_status`` of the
error), Ctrl-C with one line and 130, as a shell reports an interrupted program.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from detectron_parity.errors import UserError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def add_cfg_args(p: argparse.ArgumentParser) -> None:
    """``--cfg`` (required) and ``--set KEY VALUE ...`` (into ``args.opts``)."""
    p.add_argument("--cfg", required=True, help="Detectron YAML config")
    p.add_argument("--set", dest="opts", nargs="+", default=[], metavar="KEY VALUE", help="config overrides")


def add_weights_args(p: argparse.ArgumentParser, required: bool = False) -> argparse._MutuallyExclusiveGroup:
    """``--load_detectron`` / ``--load_ckpt``, one of them; the group takes further sources."""
    w = p.add_mutually_exclusive_group(required=required)
    w.add_argument("--load_detectron", help="Detectron .pkl weights")
    w.add_argument("--load_ckpt", help="checkpoint written by this project")
    return w


def add_coco_args(p: argparse.ArgumentParser, dataset_help: str) -> None:
    """``--dataset`` (a name) or ``--json`` with ``--images`` (a COCO-format file), ``--data_root``."""
    d = p.add_argument_group("dataset: --dataset, or --json with --images")
    d.add_argument("--dataset", help=dataset_help)
    d.add_argument("--data_root", help="data root laid out like Detectron's (default: $DETECTRON_DATA_ROOT)")
    d.add_argument("--json", help="COCO-format annotation file")
    d.add_argument("--images", help="image folder of --json")


def add_output_dir_arg(p: argparse.ArgumentParser, default: str | None = None, help: str | None = None) -> None:
    p.add_argument("--output_dir", default=default, help=help)


def add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="cpu | cuda | cuda:N (default: cuda if available)")


def error_line(e: BaseException) -> str:
    """``e`` as the one line after ``error: ``; an ``OSError`` names its file first."""
    if isinstance(e, OSError) and not isinstance(e, UserError) and e.filename:
        text = f"{e.filename}: {e.strerror or e}"
    else:
        text = str(e)
    return " ".join(text.split("\n"))


def run(body: Callable[[], int], interrupted: str = "interrupted") -> int:
    """``body()``'s exit status; user errors and ``OSError`` as one line and status 2 (the
    error's ``exit_status``), Ctrl-C as the line ``interrupted`` and 130."""
    try:
        return body()
    except (UserError, OSError) as e:
        print(f"error: {error_line(e)}", file=sys.stderr)
        return e.exit_status if isinstance(e, UserError) else EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return EXIT_INTERRUPTED
