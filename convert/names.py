"""The blobs a config's model has: what a Detectron ``.pkl`` for that config must contain.

``python -m convert --names CFG`` prints them. The model is built on PyTorch's ``meta``
device (shapes without memory or initialisation), so even the X-152 body lists instantly;
the names are ``rcnn.naming``'s rule applied to the model's state-dict keys, in model order
(body, FPN, RPN, then the heads). Only parameters are listed: the ``*_momentum`` and the
preserved ImageNet blobs that real files also carry are never required.
"""
from __future__ import annotations

from convert.errors import ConvertError
from rcnn.config import CfgNode


def model_blob_shapes(cfg: CfgNode, source: str = "config") -> list[tuple[str, tuple[int, ...]]]:
    """``[(blob name, shape)]`` of the model ``cfg`` builds; ``ConvertError`` naming ``source``
    if this project cannot build it."""
    import torch

    from rcnn.modeling import UnsupportedModelError, build_model
    from rcnn.naming import key_to_blob

    try:
        with torch.device("meta"):
            model = build_model(cfg)
    except UnsupportedModelError as e:
        raise ConvertError(f"{source}: {e}") from None
    return [(key_to_blob(k), tuple(v.shape)) for k, v in model.state_dict().items()]


def format_blob(name: str, shape: tuple[int, ...]) -> str:
    """``res2_0_branch2b_w (256, 4, 3, 3)``; a 1-d shape prints as ``(256,)``."""
    return f"{name} {shape}"
