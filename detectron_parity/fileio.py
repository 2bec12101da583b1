"""File helpers shared by the parity tools (and by ``convert``, ``rcnn`` and ``tools``): one
error type for bad input, opening and JSON loading that name the file in every failure,
``[LABEL=]PATH`` arguments, atomic writes, and the SHA-256 of a file.

Every command either writes a complete output file or leaves the old one untouched, so a
CI job that is killed half-way never leaves a truncated ``metrics.json`` or PNG behind.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from detectron_parity.errors import UserError

PathLike = str | os.PathLike


class InputError(UserError, ValueError):
    """Bad user input (missing file, malformed JSON, invalid record).

    The message is one line that names the file and, where there is one, the record; the
    CLI prints it as ``error: <message>`` and exits with status 2.
    """


def open_input(path: PathLike, what: str = "file", mode: str = "rb", **kwargs: Any) -> IO:
    """``open(path, mode, **kwargs)``, a missing, directory or unreadable ``path`` being an
    :class:`InputError` that names it as ``what``."""
    path = Path(path)
    try:
        return path.open(mode, **kwargs)
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: {what} is a directory, not a file") from None
    except PermissionError:
        raise InputError(f"{path}: {what} is not readable (permission denied)") from None


def load_json(path: PathLike, what: str = "file") -> Any:
    """Read a JSON file, turning every failure into an :class:`InputError` naming it."""
    with open_input(path, what) as f:
        try:
            return json.load(f)
        except UnicodeDecodeError as e:
            raise InputError(f"{path}: {what} is not UTF-8 JSON ({e.reason})") from None
        except json.JSONDecodeError as e:
            raise InputError(
                f"{path}: {what} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
            ) from None


def file_sha256(path: PathLike) -> str:
    """Hex SHA-256 of the file at ``path`` (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def split_label(spec: str) -> tuple[str, str]:
    """``(label, path)`` of a command-line ``[LABEL=]PATH``; the label is ``""`` when there is
    no ``=`` or when ``spec`` as a whole names an existing file (a path containing ``=``)."""
    label, sep, path = spec.partition("=")
    if not sep or os.path.exists(spec):
        return "", spec
    return label, path


def check_output_path(path: PathLike) -> None:
    """Fail before any work is done if ``path`` cannot be written to later."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: output path is a directory")
    if not path.parent.is_dir():
        raise InputError(f"{path}: output directory {path.parent} does not exist")


@contextlib.contextmanager
def atomic_file(path: PathLike) -> Iterator[IO[bytes]]:
    """Yield a binary file in ``path``'s directory that replaces ``path`` (mode 0644) only
    once the block has completed and the data is on disk (``fsync`` + ``os.replace``).

    On any failure the temporary file is removed and the exception (``OSError`` for an
    unwritable location) propagates, so readers only ever see the old or the complete new file.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_file`), after
    :func:`check_output_path`."""
    check_output_path(path)
    with atomic_file(path) as f:
        f.write(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    """UTF-8 text variant of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON; floats keep full precision (``repr`` round-trip)."""
    atomic_write_text(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")
