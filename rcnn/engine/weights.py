"""Building a model from a config and loading its weights, as the tools do.

``--load_detectron`` reads a Detectron ``.pkl`` (safely, strictly: ``convert``);
``--load_ckpt`` reads one of this project's checkpoints (``weights_only=True``) and
checks that it was made for the same model family as the running config.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from convert.checkpoint import load_detectron_weights, read_checkpoint
from convert.errors import ConvertError
from rcnn.config import cfg_from_yaml_text
from rcnn.modeling import GeneralizedRCNN, build_model

logger = logging.getLogger(__name__)

_FAMILY_KEYS = ("MODEL.CONV_BODY", "MODEL.NUM_CLASSES", "MODEL.MASK_ON", "MODEL.KEYPOINTS_ON",
                "MODEL.CLS_AGNOSTIC_BBOX_REG", "KRCNN.NUM_KEYPOINTS")


@dataclass
class WeightsInfo:
    """Where a model's weights came from (recorded in metrics.json)."""

    path: str
    sha256: str
    format: str          # "detectron-pkl" or "checkpoint"
    source: str          # "zoo" (Detectron-trained weights) or "scratch" (trained here)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def load_model(cfg, load_detectron: str | None = None, load_ckpt: str | None = None) -> tuple[GeneralizedRCNN, WeightsInfo]:
    """The model ``cfg`` describes with weights from exactly one of the two sources."""
    if (load_detectron is None) == (load_ckpt is None):
        raise ValueError("give exactly one of load_detectron / load_ckpt")
    path = load_detectron or load_ckpt
    if not Path(path).is_file():
        raise ConvertError(f"weights file {path} does not exist")
    model = build_model(cfg)
    if load_detectron:
        load_detectron_weights(model, load_detectron, cfg)
        info = WeightsInfo(str(path), file_sha256(path), "detectron-pkl", "zoo")
    else:
        ckpt = read_checkpoint(load_ckpt)
        saved = cfg_from_yaml_text(ckpt.cfg_yaml)
        diffs = [f"{k} {_get(saved, k)!r} (checkpoint) vs {_get(cfg, k)!r} (--cfg)"
                 for k in _FAMILY_KEYS if _get(saved, k) != _get(cfg, k)]
        if diffs:
            raise ConvertError(f"{load_ckpt} was made for another model: " + "; ".join(diffs))
        result = model.load_state_dict(ckpt.state_dict, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ConvertError(f"{load_ckpt} does not fit the model: missing {result.missing_keys[:10]}, "
                               f"unexpected {result.unexpected_keys[:10]}")
        source = "zoo" if "source_sha256" in ckpt.meta else ckpt.meta.get("weights_source", "scratch")
        info = WeightsInfo(str(path), file_sha256(path), "checkpoint", str(source))
    logger.info("loaded %s weights from %s", info.format, path)
    return model, info


class DeviceError(ValueError):
    """The requested device does not exist here."""


def resolve_device(name: str | None) -> torch.device:
    """``cuda`` when available unless asked otherwise; a clear error for an absent GPU."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r} (expected cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} requested but no CUDA GPU is available")
    return device
