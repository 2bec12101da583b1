"""What a Detectron weights file holds, told from its blob names and shapes.

Why this exists: the commonest failure with Detectron weights is a file of the wrong family
(ImageNet backbone given as a detector, keypoint weights with a box config, C4 weights with an
FPN config, peers.md §1.6 item 3). Naming what the file is, and which Detectron config family
it needs, turns that bare ``KeyError`` into an actionable message.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from convert.errors import ConvertError
from rcnn.config import CfgNode, load_cfg

logger = logging.getLogger(__name__)

# Where the baseline configs of the project live, relative to this package (a source checkout).
BASELINE_CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "12_2017_baselines"

_RES4_BLOCK = re.compile(r"^res4_(\d+)_")
_DEPTH_BY_RES4_BLOCKS = {6: 50, 23: 101, 36: 152}
_CONV_BODY = re.compile(r"ResNet(\d+)_conv\d_body$")
# Unused blobs that Detectron checkpoints inherit from the ImageNet init (reference §1.2, §1.5):
# a (zero) bias beside every ResNet conv weight, and the classifier.
_RESNET_CONV = r"(conv1|res\d+_\d+_branch(1|2[abc]))"
RESNET_CONV_WEIGHT = re.compile(f"^{_RESNET_CONV}_w$")
RESNET_CONV_BIAS = re.compile(f"^{_RESNET_CONV}_b$")
IMAGENET_CLASSIFIER = ("fc1000_w", "fc1000_b")
_HEAD_PREFIX = {
    ("box",): "faster",
    ("box", "mask"): "mask",
    ("box", "keypoint"): "keypoint",
    ("box", "mask", "keypoint"): "mask_keypoint",
}
_HEAD_NAME = {"faster": "Faster R-CNN", "mask": "Mask R-CNN", "keypoint": "Keypoint R-CNN",
              "mask_keypoint": "Mask + Keypoint R-CNN"}


@dataclass(frozen=True)
class FileKind:
    """What a set of blobs is.

    ``kind``: ``detector``, ``imagenet`` (a classification backbone such as ``R-50.pkl``),
    ``rpn-only``, ``retinanet`` or ``unknown``; ``backbone`` like ``R-50`` or ``X-101-32x8d``;
    ``fpn``: FPN (True) or single-level C4 (False) for detectors; ``heads``: a subset of
    ``box``, ``mask``, ``keypoint``; ``num_classes`` from ``cls_score_w`` or RetinaNet's class and box
    predictions (background included).
    """

    kind: str
    backbone: str | None = None
    fpn: bool | None = None
    heads: tuple[str, ...] = ()
    num_classes: int | None = None
    num_keypoints: int | None = None

    @property
    def family(self) -> str | None:
        """The Detectron config family, e.g. ``e2e_mask_rcnn_R-50-FPN`` (None for a backbone)."""
        body = f"{self.backbone or 'R-?'}-{'FPN' if self.fpn else 'C4'}"
        if self.kind == "detector" and self.heads in _HEAD_PREFIX:
            return f"e2e_{_HEAD_PREFIX[self.heads]}_rcnn_{body}"
        if self.kind == "rpn-only":
            return f"rpn_{body}"
        if self.kind == "retinanet":
            return f"retinanet_{self.backbone or 'R-?'}-FPN"
        return None

    @property
    def baseline_config(self) -> Path | None:
        """This project's 12_2017 baseline config for the family, if it ships one."""
        if self.family is None:
            return None
        path = BASELINE_CONFIGS / f"{self.family}_1x.yaml"
        return path if path.is_file() else None

    @property
    def baseline_config_name(self) -> str | None:
        """``12_2017_baselines/<family>_1x.yaml`` as messages name it, if the project ships it."""
        path = self.baseline_config
        return f"{path.parent.name}/{path.name}" if path else None

    def describe(self) -> str:
        """E.g. ``Mask R-CNN detector, R-50-FPN, 81 classes``."""
        if self.kind == "imagenet":
            return f"ImageNet {self.backbone or 'classification'} backbone"
        if self.kind == "unknown":
            return "set of blobs of no known Detectron model"
        body = f"{self.backbone or 'unknown backbone'}-{'FPN' if self.fpn else 'C4'}"
        if self.kind == "rpn-only":
            return f"RPN-only model, {body}"
        if self.kind == "retinanet":
            return f"RetinaNet, {self.backbone or 'unknown backbone'}-FPN"
        text = f"{_HEAD_NAME.get(_HEAD_PREFIX.get(self.heads, ''), '+'.join(self.heads))} detector, {body}"
        if self.num_classes is not None:
            text += f", {self.num_classes} classes"
        if self.num_keypoints is not None:
            text += f", {self.num_keypoints} keypoints"
        return text


def orphan_group(blob: str) -> str | None:
    """``momentum`` or ``preserved`` for the blobs every Detectron checkpoint carries unused:
    ``<param>_momentum``, and the ImageNet init's classifier and zero ResNet conv biases."""
    if blob.endswith("_momentum"):
        return "momentum"
    if blob in IMAGENET_CLASSIFIER or RESNET_CONV_BIAS.match(blob):
        return "preserved"
    return None


def _backbone(shapes: Mapping[str, Sequence[int]]) -> str | None:
    """``R-<depth>`` from the number of res4 blocks; ``X-<depth>-<groups>x<width>d`` if grouped."""
    blocks = {int(m.group(1)) for name in shapes if (m := _RES4_BLOCK.match(name))}
    if not blocks:
        return None
    res4_blocks = max(blocks) + 1
    depth = _DEPTH_BY_RES4_BLOCKS.get(res4_blocks)
    if depth is None:
        return f"ResNet with {res4_blocks} res4 blocks"
    branch2b = shapes.get("res2_0_branch2b_w")
    if branch2b is not None and len(branch2b) == 4 and branch2b[1] != branch2b[0]:
        return f"X-{depth}-{branch2b[0] // branch2b[1]}x{branch2b[1]}d"
    return f"R-{depth}"


def detect_kind(shapes: Mapping[str, Sequence[int]]) -> FileKind:
    """Tell what a file is from its ``{blob name: shape}``."""
    names = set(shapes)
    backbone = _backbone(shapes)
    heads = tuple(head for head, blob in (("box", "cls_score_w"), ("mask", "mask_fcn_logits_w"),
                                         ("keypoint", "kps_score_lowres_w")) if blob in names)
    fpn = "conv_rpn_fpn2_w" in names or any(n.startswith("fpn_") for n in names)
    if any(n.startswith("retnet_") for n in names):
        cls_pred, bbox_pred = shapes.get("retnet_cls_pred_fpn3_w"), shapes.get("retnet_bbox_pred_fpn3_w")
        # A * (K - 1) class channels, 4A box channels (class-agnostic)
        num_classes = cls_pred[0] * 4 // bbox_pred[0] + 1 if cls_pred and bbox_pred else None
        return FileKind("retinanet", backbone, True, num_classes=num_classes)
    if heads:
        num_classes = shapes["cls_score_w"][0] if "cls_score_w" in names else None
        num_keypoints = shapes["kps_score_lowres_w"][1] if "keypoint" in heads else None
        return FileKind("detector", backbone, fpn, heads, num_classes, num_keypoints)
    if fpn or "conv_rpn_w" in names:
        return FileKind("rpn-only", backbone, fpn)
    if backbone is not None:
        return FileKind("imagenet", backbone)
    return FileKind("unknown")


def cfg_kind(cfg: CfgNode) -> FileKind:
    """The ``FileKind`` of the weights that the model ``cfg`` describes needs."""
    body = _CONV_BODY.search(cfg.MODEL.CONV_BODY)
    backbone = f"R-{body.group(1)}" if body else None
    if backbone and cfg.RESNETS.NUM_GROUPS > 1:
        backbone = f"X-{body.group(1)}-{cfg.RESNETS.NUM_GROUPS}x{cfg.RESNETS.WIDTH_PER_GROUP}d"
    if cfg.RETINANET.RETINANET_ON:
        return FileKind("retinanet", backbone, True, num_classes=cfg.MODEL.NUM_CLASSES)
    heads = ("box",) + (("mask",) if cfg.MODEL.MASK_ON else ()) + (("keypoint",) if cfg.MODEL.KEYPOINTS_ON else ())
    return FileKind("detector", backbone, bool(cfg.FPN.FPN_ON), heads, cfg.MODEL.NUM_CLASSES,
                    cfg.KRCNN.NUM_KEYPOINTS if cfg.MODEL.KEYPOINTS_ON else None)


def not_a_detector(source: str, kind: FileKind) -> ConvertError:
    """The error for an ImageNet backbone given where a detector is needed."""
    return ConvertError(f"{source} is an {kind.describe()}, not a detector: use it as TRAIN.WEIGHTS "
                        "for training, not for inference")


def cfg_for_file(kind: FileKind, source: str) -> CfgNode:
    """The shipped baseline config for a file whose family is unambiguous, else a ``ConvertError``."""
    if kind.kind == "imagenet":
        raise not_a_detector(source, kind)
    path = kind.baseline_config
    if path is None:
        need = f"a Detectron config of family {kind.family}" if kind.family else "the config it was trained with"
        raise ConvertError(f"{source} is a {kind.describe()}; cannot pick its config: pass {need} with --cfg")
    cfg = load_cfg(path)
    if kind.num_classes != cfg.MODEL.NUM_CLASSES:
        raise ConvertError(f"{source} is a {kind.describe()}; the baseline config {path.name} has "
                           f"MODEL.NUM_CLASSES {cfg.MODEL.NUM_CLASSES}: pass a config of family {kind.family} "
                           f"with MODEL.NUM_CLASSES: {kind.num_classes} with --cfg")
    logger.info("%s: %s, using config %s", source, kind.describe(), path.name)
    return cfg
