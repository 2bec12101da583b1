"""Initialise the ResNet body from a torchvision ResNet checkpoint (for users without ``R-50.pkl``).

Why: Detectron's ImageNet ``R-50.pkl`` (MSRA's Caffe model) is not always at hand, while
torchvision's ``resnet50`` state dicts are. Two differences must be bridged:

* torchvision keeps BatchNorm (``weight``, ``bias``, ``running_mean``, ``running_var``,
  ``eps = 1e-5``); Detectron's body has a frozen ``AffineChannel``. BN in eval mode *is* an
  affine map per channel, ``y = x * s + b`` with ``s = weight / sqrt(running_var + eps)`` and
  ``b = bias - running_mean * s`` (folded in float64, stored float32), which is what
  Detectron's own conversion of BN models does (``tools/pickle_caffe_blobs.py`` folds the
  Caffe BN + Scale pairs the same way).
* torchvision's bottleneck strides on the 3x3 conv (``conv2``), MSRA's on the first 1x1:
  the config must say ``RESNETS.STRIDE_1X1: False`` (as Detectron's configs for Facebook's
  Torch-trained ResNets do).

Keys: ``conv1``/``bn1`` -> ``conv1``/``res_conv1_bn``; ``layer{1..4}.{i}.conv{1,2,3}``/``bn{1,2,3}``
-> ``res{2..5}.{i}.branch2{a,b,c}``/``..._bn``; ``downsample.0/.1`` -> ``branch1``/``branch1_bn``;
``fc`` is unused (like Detectron's ``fc1000``).
"""
from __future__ import annotations

import logging
import os
import pickle
import re

import torch
from torch import Tensor

from rcnn.engine.weights import WeightsError
from rcnn.modeling.generalized_rcnn import GeneralizedRCNN

logger = logging.getLogger(__name__)

_BRANCH = {"conv1": "branch2a", "bn1": "branch2a_bn", "conv2": "branch2b", "bn2": "branch2b_bn",
           "conv3": "branch2c", "bn3": "branch2c_bn", "downsample.0": "branch1", "downsample.1": "branch1_bn"}
_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(conv[123]|bn[123]|downsample\.[01])$")


def body_module_name(tv_module: str) -> str | None:
    """Our backbone module for a torchvision module path (``None`` for ``fc``)."""
    if tv_module == "conv1":
        return "conv1"
    if tv_module == "bn1":
        return "res_conv1_bn"
    m = _BLOCK.match(tv_module)
    if m is None:
        return None
    return f"res{int(m.group(1)) + 1}.{m.group(2)}.{_BRANCH[m.group(3)]}"


def fold_batch_norm(weight: Tensor, bias: Tensor, mean: Tensor, var: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """BN (eval) as AffineChannel ``(scale, bias)``, computed in float64, returned float32."""
    scale = weight.double() / torch.sqrt(var.double() + eps)
    return scale.float(), (bias.double() - mean.double() * scale).float()


def read_torchvision_state(path: str | os.PathLike) -> dict[str, Tensor]:
    """A torchvision ResNet state dict from ``torch.save`` (``weights_only``), refusing other files."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"torchvision weights file {path} does not exist") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:   # not a torch file
        raise WeightsError(f"{path} is not a torch state dict: {' '.join(str(e).split())[:200]}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "layer1.0.conv1.weight" not in state:
        raise WeightsError(f"{path} is not a torchvision ResNet state dict (no layer1.0.conv1.weight)")
    return state


@torch.no_grad()
def load_torchvision_backbone(model: GeneralizedRCNN, cfg, path: str | os.PathLike, eps: float = 1e-5) -> int:
    """Fill ``model.backbone`` from a torchvision ResNet state dict (strict on the body).

    Returns the number of body tensors set. Raises ``WeightsError`` for ``STRIDE_1X1: True``,
    missing or extra body tensors, or another shape.
    """
    if cfg.RESNETS.STRIDE_1X1:
        raise WeightsError("torchvision ResNets stride on the 3x3 conv: set RESNETS.STRIDE_1X1 False "
                           "(--set RESNETS.STRIDE_1X1 False)")
    state = read_torchvision_state(path)
    target = model.backbone.state_dict()
    new: dict[str, Tensor] = {}
    problems: list[str] = []
    modules = sorted({k.rsplit(".", 1)[0] for k in state})
    for tv in modules:
        ours = body_module_name(tv)
        if ours is None:
            if not tv.startswith("fc"):
                problems.append(f"{tv} (unknown)")
            continue
        if f"{ours}.weight" in target:     # a conv
            new[f"{ours}.weight"] = state[f"{tv}.weight"].float()
        else:
            try:
                s, b = fold_batch_norm(state[f"{tv}.weight"], state[f"{tv}.bias"], state[f"{tv}.running_mean"],
                                       state[f"{tv}.running_var"], eps)
            except KeyError as e:
                problems.append(f"{tv} lacks {str(e.args[0]).rsplit('.', 1)[-1]}")
                continue
            new[f"{ours}.scale"], new[f"{ours}.bias"] = s, b
    missing = sorted(set(target) - set(new))
    extra = sorted(set(new) - set(target))
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}" for k, v in new.items()
             if k in target and v.shape != target[k].shape]
    if missing or extra or wrong or problems:
        raise WeightsError(f"{path} does not hold this ResNet body: {len(missing)} missing ({', '.join(missing[:4])}), "
                           f"{len(extra) + len(problems)} unexpected ({', '.join((extra + problems)[:4])}), "
                           f"{len(wrong)} of another shape ({', '.join(wrong[:4])})")
    for key, tensor in target.items():
        tensor.copy_(new[key])
    logger.info("initialised the ResNet body from torchvision weights %s (%d tensors, BN folded)", path, len(new))
    return len(new)
