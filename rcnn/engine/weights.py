"""Building a model from a config and loading its weights, as the tools do.

``--load_detectron`` reads a Detectron ``.pkl`` (safely, strictly: ``convert``);
``--load_ckpt`` reads one of this project's checkpoints (``weights_only=True``) and
checks that it was made for the same model family as the running config.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from convert.checkpoint import load_detectron_weights, read_checkpoint
from convert.pickle_io import read_detectron_pkl
from detectron_parity.errors import UserError
from detectron_parity.fileio import file_sha256
from rcnn.config import cfg_from_yaml_text
from rcnn.modeling import GeneralizedRCNN, build_model
from rcnn.naming import key_to_blob

logger = logging.getLogger(__name__)


class WeightsError(UserError):
    """A weights file or checkpoint that is missing or does not fit the model (problems of a
    conversion are ``convert.errors.ConvertError``)."""

_FAMILY_KEYS = ("MODEL.CONV_BODY", "MODEL.NUM_CLASSES", "MODEL.MASK_ON", "MODEL.KEYPOINTS_ON",
                "MODEL.CLS_AGNOSTIC_BBOX_REG", "KRCNN.NUM_KEYPOINTS")


@dataclass
class WeightsInfo:
    """Where a model's weights came from (recorded in metrics.json)."""

    path: str
    sha256: str
    format: str          # "detectron-pkl" or "checkpoint"
    source: str          # "zoo" (Detectron-trained weights) or "scratch" (trained here)


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def load_checkpoint_weights(model: GeneralizedRCNN, cfg, path: str | os.PathLike) -> WeightsInfo:
    """Load one of this project's checkpoints (weights_only) made for the same model family."""
    ckpt = read_checkpoint(path)
    saved = cfg_from_yaml_text(ckpt.cfg_yaml)
    diffs = [f"{k} {_get(saved, k)!r} (checkpoint) vs {_get(cfg, k)!r} (--cfg)"
             for k in _FAMILY_KEYS if _get(saved, k) != _get(cfg, k)]
    if diffs:
        raise WeightsError(f"{path} was made for another model: " + "; ".join(diffs))
    try:
        result = model.load_state_dict(ckpt.state_dict, strict=False)
    except RuntimeError as e:   # a shape mismatch
        raise WeightsError(f"{path} does not fit the model: {' '.join(str(e).split())[:400]}") from None
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(f"{path} does not fit the model: missing {result.missing_keys[:10]}, "
                           f"unexpected {result.unexpected_keys[:10]}")
    source = "zoo" if "source_sha256" in ckpt.meta else ckpt.meta.get("weights_source", "scratch")
    return WeightsInfo(str(path), file_sha256(path), "checkpoint", str(source))


def load_model(cfg, load_detectron: str | None = None, load_ckpt: str | None = None) -> tuple[GeneralizedRCNN, WeightsInfo]:
    """The model ``cfg`` describes with weights from exactly one of the two sources."""
    if (load_detectron is None) == (load_ckpt is None):
        raise ValueError("give exactly one of load_detectron / load_ckpt")
    path = load_detectron or load_ckpt
    if not Path(path).is_file():
        raise WeightsError(f"weights file {path} does not exist")
    model = build_model(cfg)
    if load_detectron:
        load_detectron_weights(model, load_detectron, cfg)
        info = WeightsInfo(str(path), file_sha256(path), "detectron-pkl", "zoo")
    else:
        info = load_checkpoint_weights(model, cfg, load_ckpt)
    logger.info("loaded %s weights from %s", info.format, path)
    return model, info


@torch.no_grad()
def load_imagenet_backbone(model: GeneralizedRCNN, path: str | os.PathLike) -> list[str]:
    """Initialise the ResNet body from an ImageNet ``R-50.pkl`` (``TRAIN.WEIGHTS``).

    Strict about the body: every ``backbone`` blob must be in the file with its shape.
    Everything else in the file (``fc1000_*``, the zero conv biases, or a detector's
    heads) is unused, like Detectron's ``__preserve__`` blobs; their names are returned.
    """
    blobs = read_detectron_pkl(path).blobs
    state = model.backbone.state_dict()
    missing, wrong = [], []
    for key, tensor in state.items():
        blob = key_to_blob(f"backbone.{key}")
        if blob not in blobs:
            missing.append(blob)
        elif tuple(blobs[blob].shape) != tuple(tensor.shape):
            wrong.append(f"{blob} {tuple(blobs[blob].shape)} vs {tuple(tensor.shape)}")
    if missing or wrong:
        raise WeightsError(f"{path} does not hold this ResNet body: {len(missing)} missing "
                                   f"({', '.join(missing[:5])}), {len(wrong)} of another shape ({', '.join(wrong[:5])})")
    used = set()
    for key, tensor in state.items():   # state_dict tensors share the module's storage
        blob = key_to_blob(f"backbone.{key}")
        tensor.copy_(torch.from_numpy(blobs[blob].astype("float32")))
        used.add(blob)
    unused = sorted(set(blobs) - used)
    logger.info("initialised the ResNet body from %s (%d blobs; %d unused)", path, len(used), len(unused))
    return unused
