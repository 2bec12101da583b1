"""The one base of the errors a user can fix: bad input, config, files, devices.

Every command catches ``UserError`` in one place (``detectron_parity.cli.run``) and prints
``error: <message>`` on one line instead of a traceback, exiting with ``exit_status`` (2 for
bad input). Each package derives its own errors from it (``ConfigError``, ``DatasetError``,
``ConvertError``, ``InputError``, ...), so that callers may catch one family or all of them.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; ``str(e)`` is one line that names the file or option."""

    #: exit status of a command that ends with this error: 2 is bad input (as argparse's usage
    #: errors); a failed run that is no input error (a diverged training) sets 1.
    exit_status: int = 2
