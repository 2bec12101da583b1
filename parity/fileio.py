"""File helpers shared by the parity tools: one error type for bad input, JSON loading
that names the file in every failure, and atomic writes.

Every command either writes a complete output file or leaves the old one untouched, so a
CI job that is killed half-way never leaves a truncated ``metrics.json`` or PNG behind.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike


class InputError(ValueError):
    """Bad user input (missing file, malformed JSON, invalid record).

    The message is one line that names the file and, where there is one, the record; the
    CLI prints it as ``error: <message>`` and exits with status 2.
    """


def load_json(path: PathLike, what: str = "file") -> Any:
    """Read a JSON file, turning every failure into an :class:`InputError` naming it."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: {what} is a directory, expected a JSON file") from None
    except PermissionError:
        raise InputError(f"{path}: {what} is not readable (permission denied)") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: {what} is not UTF-8 JSON ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise InputError(
            f"{path}: {what} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        ) from None


def check_output_path(path: PathLike) -> None:
    """Fail before any work is done if ``path`` cannot be written to later."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: output path is a directory")
    if not path.parent.is_dir():
        raise InputError(f"{path}: output directory {path.parent} does not exist")


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and
    ``os.replace``, so readers only ever see the old or the complete new file."""
    path = Path(path)
    check_output_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: PathLike, text: str) -> None:
    """UTF-8 text variant of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON; floats keep full precision (``repr`` round-trip)."""
    atomic_write_text(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")
