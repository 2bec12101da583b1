"""What a Detectron weights file holds, told from its blob names and shapes.

Why this exists: the commonest failure with Detectron weights is a file of the wrong family
(ImageNet backbone given as a detector, keypoint weights with a box config, C4 weights with an
FPN config, docs/detectron.md §1.7). Naming what the file is, and which Detectron config family
it needs, turns that bare ``KeyError`` into an actionable message.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from convert.errors import ConvertError
from rcnn.config import CfgNode, load_cfg

logger = logging.getLogger(__name__)

# Where the shipped Detectron configs live, relative to this package (a source checkout), in the
# order a file's config is looked for (the model-zoo baselines first, test-time augmentation last).
_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
BASELINE_CONFIGS = tuple(_CONFIGS / d for d in ("12_2017_baselines", "04_2018_gn_baselines", "getting_started",
                                                "test_time_aug"))
# <family>[-IN5k]_<schedule>[_gn].yaml, e.g. e2e_mask_rcnn_X-152-32x8d-FPN-IN5k_1.44x, mask_rcnn_R-50-FPN_1x_gn.
_CONFIG_NAME = re.compile(r"^(?P<family>.+?)(-IN5k)?_(?P<schedule>s?\d+(\.\d+)?x)(?P<gn>_gn)?$")

_RES4_BLOCK = re.compile(r"^res4_(\d+)_")
_DEPTH_BY_RES4_BLOCKS = {6: 50, 23: 101, 36: 152}
_CONV_BODY = re.compile(r"ResNet(\d+)_conv\d_body$")
# Unused blobs that Detectron checkpoints inherit from the ImageNet init (docs/detectron.md §1.2, §1.5):
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
_FAST = {"faster": "fast"}   # Detectron's name of a box-only detector on precomputed proposals


@dataclass(frozen=True)
class FileKind:
    """What a set of blobs is.

    ``kind``: ``detector``, ``imagenet`` (a classification backbone such as ``R-50.pkl``),
    ``rpn-only``, ``retinanet`` or ``unknown``; ``backbone`` like ``R-50`` or ``X-101-32x8d``;
    ``fpn``: FPN (True) or single-level C4 (False) for detectors; ``heads``: a subset of
    ``box``, ``mask``, ``keypoint``; ``num_classes`` from ``cls_score_w`` or RetinaNet's class and box
    predictions (background included);
    ``gn``: GroupNorm model (``04_2018_gn_baselines``); ``e2e``: a detector with its own RPN
    (False: Fast R-CNN on precomputed proposals, Detectron's ``fast_rcnn_*``/``mask_rcnn_*`` configs).
    """

    kind: str
    backbone: str | None = None
    fpn: bool | None = None
    heads: tuple[str, ...] = ()
    num_classes: int | None = None
    num_keypoints: int | None = None
    gn: bool = False
    e2e: bool = True

    @property
    def family(self) -> str | None:
        """The Detectron config family: a config's name without its schedule, e.g.
        ``e2e_mask_rcnn_R-50-FPN``, ``fast_rcnn_R-50-C4``, ``e2e_mask_rcnn_R-50-FPN_gn`` (None for a backbone)."""
        body = f"{self.backbone or 'R-?'}-{'FPN' if self.fpn else 'C4'}"
        gn = "_gn" if self.gn else ""
        if self.kind == "detector" and self.heads in _HEAD_PREFIX:
            head = _HEAD_PREFIX[self.heads]
            return f"e2e_{head}_rcnn_{body}{gn}" if self.e2e else f"{_FAST.get(head, head)}_rcnn_{body}{gn}"
        if self.kind == "rpn-only":
            return f"rpn_{body}{gn}"
        if self.kind == "retinanet":
            return f"retinanet_{self.backbone or 'R-?'}-FPN{gn}"
        return None

    @property
    def baseline_config(self) -> Path | None:
        """The shipped config of the family (schedule 1x if there is one, else the first by name), if any."""
        if self.family is None:
            return None
        found = []
        for folder in BASELINE_CONFIGS:
            for path in sorted(folder.glob("*.yaml")):
                m = _CONFIG_NAME.match(path.stem)
                if m and m["family"] + (m["gn"] or "") == self.family:
                    found.append((m["schedule"] != "1x", path))
            if found:
                return min(found)[1]
        return None

    @property
    def baseline_config_name(self) -> str | None:
        """``<folder>/<config>.yaml`` as messages name it, if the project ships it."""
        path = self.baseline_config
        return f"{path.parent.name}/{path.name}" if path else None

    def describe(self) -> str:
        """E.g. ``Mask R-CNN detector, R-50-FPN, 81 classes``."""
        if self.kind == "imagenet":
            return f"ImageNet {self.backbone or 'classification'}{' GroupNorm' if self.gn else ''} backbone"
        if self.kind == "unknown":
            return "set of blobs of no known Detectron model"
        body = f"{self.backbone or 'unknown backbone'}-{'FPN' if self.fpn else 'C4'}"
        body += " with GroupNorm" if self.gn else ""
        if self.kind == "rpn-only":
            return f"RPN-only model, {body}"
        if self.kind == "retinanet":
            text = f"RetinaNet, {self.backbone or 'unknown backbone'}-FPN" + (" with GroupNorm" if self.gn else "")
            return text + (f", {self.num_classes} classes" if self.num_classes is not None else "")
        name = _HEAD_NAME.get(_HEAD_PREFIX.get(self.heads, ""), "+".join(self.heads))
        if not self.e2e:
            name = "Fast R-CNN" if self.heads == ("box",) else name
        text = f"{name} detector{'' if self.e2e else ' on precomputed proposals'}, {body}"
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
    """Tell what a file is from its ``{blob name: shape}``.

    The blob names each Detectron family creates (``modeling/*.py``): RetinaNet's ``retnet_*``
    towers (``retinanet_heads.py``); FPN's ``fpn_*`` convs and per-level ``conv_rpn_fpn2``
    (``FPN.py``) against C4's single ``conv_rpn`` (``rpn_heads.py``); ``ConvGN``'s ``*_gn_s``;
    the heads' ``cls_score``, ``mask_fcn_logits`` (also C4's ``v0upshare`` mask head, whose only
    own conv is ``conv5_mask``) and ``kps_score_lowres``. A detector without RPN blobs runs on
    precomputed proposals; RPN blobs without heads are an RPN-only model.
    """
    names = set(shapes)
    backbone = _backbone(shapes)
    gn = any(n.endswith("_gn_s") for n in names)
    heads = tuple(head for head, blob in (("box", "cls_score_w"), ("mask", "mask_fcn_logits_w"),
                                         ("keypoint", "kps_score_lowres_w")) if blob in names)
    rpn = "conv_rpn_fpn2_w" in names or "conv_rpn_w" in names
    fpn = "conv_rpn_fpn2_w" in names or any(n.startswith("fpn_") for n in names)
    if any(n.startswith("retnet_") for n in names):
        return FileKind("retinanet", backbone, True, num_classes=_retinanet_classes(shapes), gn=gn)
    if heads:
        num_classes = shapes["cls_score_w"][0] if "cls_score_w" in names else None
        num_keypoints = shapes["kps_score_lowres_w"][1] if "keypoint" in heads else None
        return FileKind("detector", backbone, fpn, heads, num_classes, num_keypoints, gn=gn, e2e=rpn)
    if rpn:
        return FileKind("rpn-only", backbone, fpn, gn=gn)
    if backbone is not None:
        return FileKind("imagenet", backbone, gn=gn)
    return FileKind("unknown")


def _retinanet_classes(shapes: Mapping[str, Sequence[int]]) -> int | None:
    """From the level-3 predictors: A anchors x 4 box deltas (class-agnostic), A x (K - 1) sigmoid
    logits (``RETINANET.SOFTMAX`` False, as every zoo model), K counting the background."""
    cls, box = shapes.get("retnet_cls_pred_fpn3_w"), shapes.get("retnet_bbox_pred_fpn3_w")
    if not cls or not box or box[0] % 4 or cls[0] % (box[0] // 4):
        return None
    return cls[0] // (box[0] // 4) + 1


def cfg_kind(cfg: CfgNode) -> FileKind:
    """The ``FileKind`` of the weights that the model ``cfg`` describes needs."""
    body = _CONV_BODY.search(cfg.MODEL.CONV_BODY)
    backbone = f"R-{body.group(1)}" if body else None
    if backbone and cfg.RESNETS.NUM_GROUPS > 1:
        backbone = f"X-{body.group(1)}-{cfg.RESNETS.NUM_GROUPS}x{cfg.RESNETS.WIDTH_PER_GROUP}d"
    gn = cfg.RESNETS.STEM_FUNC == "basic_gn_stem" or bool(cfg.FPN.USE_GN)
    fpn = bool(cfg.FPN.FPN_ON)
    if cfg.MODEL.TYPE == "retinanet" or cfg.RETINANET.RETINANET_ON:
        return FileKind("retinanet", backbone, True, num_classes=cfg.MODEL.NUM_CLASSES, gn=gn)
    if cfg.MODEL.RPN_ONLY:
        return FileKind("rpn-only", backbone, fpn, gn=gn)
    heads = ("box",) + (("mask",) if cfg.MODEL.MASK_ON else ()) + (("keypoint",) if cfg.MODEL.KEYPOINTS_ON else ())
    return FileKind("detector", backbone, fpn, heads, cfg.MODEL.NUM_CLASSES,
                    cfg.KRCNN.NUM_KEYPOINTS if cfg.MODEL.KEYPOINTS_ON else None, gn=gn, e2e=bool(cfg.MODEL.FASTER_RCNN))


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
    if kind.num_classes is not None and kind.num_classes != cfg.MODEL.NUM_CLASSES:
        raise ConvertError(f"{source} is a {kind.describe()}; the baseline config {path.name} has "
                           f"MODEL.NUM_CLASSES {cfg.MODEL.NUM_CLASSES}: pass a config of family {kind.family} "
                           f"with MODEL.NUM_CLASSES: {kind.num_classes} with --cfg")
    logger.info("%s: %s, using config %s", source, kind.describe(), path.name)
    return cfg
