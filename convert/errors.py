"""Exceptions of the converter.

Every problem with the *input* of a conversion (file, config, output location) is a ``ConvertError`` whose
message is a single line naming the file and what to do, so that the command line can print
``error: <message>`` and exit with status 2 instead of a traceback (``ConvertError`` is a
``detectron_parity.errors.UserError``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from detectron_parity.errors import UserError

if TYPE_CHECKING:
    from convert.checkpoint import LoadReport


def first_line(text: object, default: str) -> str:
    """The first non-empty line of ``str(text)`` (an exception's message), else ``default``."""
    lines = str(text).strip().splitlines()
    return lines[0] if lines else default


class ConvertError(UserError):
    """Bad input for the converter; ``str(e)`` is one line meant for the user."""


class UnsafePickleError(ConvertError):
    """A pickle asks for a Python object that a Detectron weights file never contains."""


class WeightsMismatchError(ConvertError):
    """The blobs of a file do not fit the model; ``report`` lists every blob by name."""

    def __init__(self, message: str, report: LoadReport) -> None:
        super().__init__(message)
        self.report = report


class CfgMismatchError(ConvertError):
    """The cfg embedded in a Detectron file disagrees with the YAML config in use."""
