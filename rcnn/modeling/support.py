"""Which Detectron configs this project builds: the one error and check every model family uses."""
from __future__ import annotations

from detectron_parity.errors import UserError


class UnsupportedModelError(UserError, ValueError):
    """The config asks for a Detectron model family this project does not build."""


def require(cond: bool, what: str) -> None:
    """Raise ``UnsupportedModelError`` naming the unsupported setting ``what`` unless ``cond``."""
    if not cond:
        raise UnsupportedModelError(f"unsupported config: {what}")
