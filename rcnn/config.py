"""Detectron's configuration: every default of ``detectron/core/config.py`` and its merge rules.

Why this exists: the model-zoo weights only reproduce Detectron's numbers when the model is
built and run with exactly the values Detectron would have used, so this module holds the
complete default tree of Detectron (commit 04155a0) under the same names, nesting and types,
and merges Detectron's own YAML files (unchanged) over it with Detectron's rules:

* a key that is not in the defaults is an error naming the full key (``ConfigKeyError``, also
  a ``KeyError`` like Detectron's), except renamed keys (error naming old and new key) and
  deprecated keys (ignored with a logged warning);
* string values (YAML scalars, ``--set`` arguments) go through ``ast.literal_eval`` first, so
  ``(800,)`` becomes a tuple and ``1e-4`` a float;
* a value must have the type of the default: no int -> float promotion (``BASE_LR: 1`` is an
  error), list <-> tuple is converted, and anything given for a string key is ``str()``-ed.

Deliberate differences from Detectron, forced by yacs and safe YAML holding only plain types:

* ``PIXEL_MEANS`` is a nested tuple of floats, shape (1, 1, 3) like Detectron's
  ``np.array([[[102.9801, 115.9465, 122.7717]]])`` (BGR); a value merged into it is converted
  like Detectron's ``np.array(value, dtype=float64)``: any numeric nesting, kept as given.
* ``BBOX_XFORM_CLIP`` is the Python float ``log(1000/16)``, bit-identical to Detectron's
  ``np.log(1000. / 16.)``; Detectron's ``np.float64`` default made every override a type error.
* Weights and proposal URLs are not downloaded (Detectron's ``cache_cfg_urls``).
* Legacy head-function names are remapped when the config is loaded (Detectron does it when it
  looks the function up, ``modeling/name_compat.py``), so the loaded config names real heads.
"""
from __future__ import annotations

import ast
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import yaml
from yacs.config import CfgNode

from detectron_parity.errors import UserError

__all__ = [
    "CfgNode",
    "ConfigError",
    "ConfigKeyError",
    "assert_and_infer_cfg",
    "cfg_from_yaml_text",
    "cfg_to_yaml",
    "get_default_cfg",
    "load_cfg",
    "merge_cfg_from_file",
    "merge_cfg_from_list",
]

logger = logging.getLogger(__name__)

class ConfigError(UserError, ValueError):
    """A config file, key or value that Detectron would reject (one exception for callers)."""


class ConfigKeyError(ConfigError, KeyError):
    """An unknown or renamed key; a ``KeyError`` too, as in Detectron."""

    def __str__(self) -> str:
        # KeyError.__str__ would print the repr of the message, quotes included.
        return str(self.args[0])


# Detectron writes its temporary files here; these defaults are Detectron's, not paths of ours.
_DETECTRON_TMP_DIR = "/tmp"

_C = CfgNode()

# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
_C.TRAIN = CfgNode()
_C.TRAIN.WEIGHTS = ""  # initialization weights (.pkl); URLs are kept as given
_C.TRAIN.DATASETS = ()  # names from rcnn.data.datasets; several = their union
_C.TRAIN.SCALES = (600,)  # shorter-side sizes; one is drawn per image (scale jitter)
_C.TRAIN.MAX_SIZE = 1000
_C.TRAIN.IMS_PER_BATCH = 2  # per GPU
_C.TRAIN.BATCH_SIZE_PER_IM = 64  # RoIs sampled per image
_C.TRAIN.FG_FRACTION = 0.25
_C.TRAIN.FG_THRESH = 0.5  # RoI is foreground if IoU >= FG_THRESH
_C.TRAIN.BG_THRESH_HI = 0.5  # background if IoU in [LO, HI)
_C.TRAIN.BG_THRESH_LO = 0.0
_C.TRAIN.USE_FLIPPED = True
_C.TRAIN.BBOX_THRESH = 0.5  # IoU needed for a box-regression target
_C.TRAIN.SNAPSHOT_ITERS = 80000  # divided by NUM_GPUS
_C.TRAIN.PROPOSAL_FILES = ()
_C.TRAIN.ASPECT_GROUPING = True
_C.TRAIN.GENERATE_PROPOSALS_ON_GPU = False
_C.TRAIN.RPN_POSITIVE_OVERLAP = 0.7  # anchor positive if IoU >= this
_C.TRAIN.RPN_NEGATIVE_OVERLAP = 0.3  # anchor negative if IoU < this
_C.TRAIN.RPN_FG_FRACTION = 0.5
_C.TRAIN.RPN_BATCH_SIZE_PER_IM = 256
_C.TRAIN.RPN_NMS_THRESH = 0.7
_C.TRAIN.RPN_PRE_NMS_TOP_N = 12000  # per FPN level with FPN
_C.TRAIN.RPN_POST_NMS_TOP_N = 2000  # total
_C.TRAIN.RPN_STRADDLE_THRESH = 0  # -1 keeps anchors crossing the image border
_C.TRAIN.RPN_MIN_SIZE = 0  # at original image scale
_C.TRAIN.CROWD_FILTER_THRESH = 0.7
_C.TRAIN.GT_MIN_AREA = -1
_C.TRAIN.FREEZE_CONV_BODY = False
_C.TRAIN.AUTO_RESUME = True
_C.TRAIN.COPY_WEIGHTS = False
_C.TRAIN.FREEZE_AT = 2  # stages up to res2 (and the stem) get no gradient

# ---------------------------------------------------------------------------------------------
# Data loader (Detectron's threaded loader; kept for completeness)
# ---------------------------------------------------------------------------------------------
_C.DATA_LOADER = CfgNode()
_C.DATA_LOADER.NUM_THREADS = 4
_C.DATA_LOADER.MINIBATCH_QUEUE_SIZE = 64
_C.DATA_LOADER.BLOBS_QUEUE_CAPACITY = 8

# ---------------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------------
_C.TEST = CfgNode()
_C.TEST.WEIGHTS = ""
_C.TEST.DATASETS = ()
_C.TEST.SCALE = 600  # shorter side
_C.TEST.MAX_SIZE = 1000  # longer side cap
_C.TEST.NMS = 0.3  # per-class NMS; IoU >= NMS suppresses
_C.TEST.BBOX_REG = True
_C.TEST.PROPOSAL_FILES = ()
_C.TEST.GENERATE_PROPOSALS_ON_GPU = False
_C.TEST.PROPOSAL_LIMIT = 2000
_C.TEST.RPN_NMS_THRESH = 0.7
_C.TEST.RPN_PRE_NMS_TOP_N = 12000  # per FPN level with FPN
_C.TEST.RPN_POST_NMS_TOP_N = 2000  # total
_C.TEST.RPN_MIN_SIZE = 0  # at original image scale
_C.TEST.DETECTIONS_PER_IM = 100
_C.TEST.SCORE_THRESH = 0.05  # strict '>'
_C.TEST.COMPETITION_MODE = True
_C.TEST.FORCE_JSON_DATASET_EVAL = False
_C.TEST.PRECOMPUTED_PROPOSALS = True  # inferred by assert_and_infer_cfg; do not set
_C.TEST.CLASS_SPECIFIC_AR = False

_C.TEST.BBOX_AUG = CfgNode()
_C.TEST.BBOX_AUG.ENABLED = False
_C.TEST.BBOX_AUG.SCORE_HEUR = "UNION"
_C.TEST.BBOX_AUG.COORD_HEUR = "UNION"
_C.TEST.BBOX_AUG.H_FLIP = False
_C.TEST.BBOX_AUG.SCALES = ()
_C.TEST.BBOX_AUG.MAX_SIZE = 4000
_C.TEST.BBOX_AUG.SCALE_H_FLIP = False
_C.TEST.BBOX_AUG.SCALE_SIZE_DEP = False
_C.TEST.BBOX_AUG.AREA_TH_LO = 50**2
_C.TEST.BBOX_AUG.AREA_TH_HI = 180**2
_C.TEST.BBOX_AUG.ASPECT_RATIOS = ()
_C.TEST.BBOX_AUG.ASPECT_RATIO_H_FLIP = False

_C.TEST.MASK_AUG = CfgNode()
_C.TEST.MASK_AUG.ENABLED = False
_C.TEST.MASK_AUG.HEUR = "SOFT_AVG"
_C.TEST.MASK_AUG.H_FLIP = False
_C.TEST.MASK_AUG.SCALES = ()
_C.TEST.MASK_AUG.MAX_SIZE = 4000
_C.TEST.MASK_AUG.SCALE_H_FLIP = False
_C.TEST.MASK_AUG.SCALE_SIZE_DEP = False
_C.TEST.MASK_AUG.AREA_TH = 180**2
_C.TEST.MASK_AUG.ASPECT_RATIOS = ()
_C.TEST.MASK_AUG.ASPECT_RATIO_H_FLIP = False

_C.TEST.KPS_AUG = CfgNode()
_C.TEST.KPS_AUG.ENABLED = False
_C.TEST.KPS_AUG.HEUR = "HM_AVG"
_C.TEST.KPS_AUG.H_FLIP = False
_C.TEST.KPS_AUG.SCALES = ()
_C.TEST.KPS_AUG.MAX_SIZE = 4000
_C.TEST.KPS_AUG.SCALE_H_FLIP = False
_C.TEST.KPS_AUG.SCALE_SIZE_DEP = False
_C.TEST.KPS_AUG.AREA_TH = 180**2
_C.TEST.KPS_AUG.ASPECT_RATIOS = ()
_C.TEST.KPS_AUG.ASPECT_RATIO_H_FLIP = False

_C.TEST.SOFT_NMS = CfgNode()
_C.TEST.SOFT_NMS.ENABLED = False
_C.TEST.SOFT_NMS.METHOD = "linear"
_C.TEST.SOFT_NMS.SIGMA = 0.5

_C.TEST.BBOX_VOTE = CfgNode()
_C.TEST.BBOX_VOTE.ENABLED = False
_C.TEST.BBOX_VOTE.VOTE_TH = 0.8
_C.TEST.BBOX_VOTE.SCORING_METHOD = "ID"
_C.TEST.BBOX_VOTE.SCORING_METHOD_BETA = 1.0

# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
_C.MODEL = CfgNode()
_C.MODEL.TYPE = ""  # e.g. 'generalized_rcnn'
_C.MODEL.CONV_BODY = ""  # e.g. 'FPN.add_fpn_ResNet50_conv5_body'
_C.MODEL.NUM_CLASSES = -1  # background included: 81 for COCO
_C.MODEL.CLS_AGNOSTIC_BBOX_REG = False
_C.MODEL.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # (wx, wy, ww, wh) of the box coder
_C.MODEL.FASTER_RCNN = False  # the RPN makes the proposals (training: end to end)
_C.MODEL.MASK_ON = False
_C.MODEL.KEYPOINTS_ON = False
_C.MODEL.RPN_ONLY = False
_C.MODEL.EXECUTION_TYPE = "dag"  # Caffe2 net type

# ---------------------------------------------------------------------------------------------
# RetinaNet
# ---------------------------------------------------------------------------------------------
_C.RETINANET = CfgNode()
_C.RETINANET.RETINANET_ON = False
_C.RETINANET.ASPECT_RATIOS = (0.5, 1.0, 2.0)
_C.RETINANET.SCALES_PER_OCTAVE = 3
_C.RETINANET.ANCHOR_SCALE = 4
_C.RETINANET.NUM_CONVS = 4
_C.RETINANET.BBOX_REG_WEIGHT = 1.0
_C.RETINANET.BBOX_REG_BETA = 0.11
_C.RETINANET.PRE_NMS_TOP_N = 1000
_C.RETINANET.POSITIVE_OVERLAP = 0.5
_C.RETINANET.NEGATIVE_OVERLAP = 0.4
_C.RETINANET.LOSS_ALPHA = 0.25
_C.RETINANET.LOSS_GAMMA = 2.0
_C.RETINANET.PRIOR_PROB = 0.01
_C.RETINANET.SHARE_CLS_BBOX_TOWER = False
_C.RETINANET.CLASS_SPECIFIC_BBOX = False
_C.RETINANET.SOFTMAX = False
_C.RETINANET.INFERENCE_TH = 0.05

# ---------------------------------------------------------------------------------------------
# Solver (used exactly as given: scale BASE_LR and the schedule yourself for other GPU counts)
# ---------------------------------------------------------------------------------------------
_C.SOLVER = CfgNode()
_C.SOLVER.BASE_LR = 0.001
_C.SOLVER.LR_POLICY = "step"  # see Detectron's utils/lr_policy.py
_C.SOLVER.GAMMA = 0.1
_C.SOLVER.STEP_SIZE = 30000
_C.SOLVER.STEPS = []
_C.SOLVER.LRS = []
_C.SOLVER.MAX_ITER = 40000
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.WEIGHT_DECAY = 0.0005
_C.SOLVER.WEIGHT_DECAY_GN = 0.0
_C.SOLVER.WARM_UP_ITERS = 500
_C.SOLVER.WARM_UP_FACTOR = 1.0 / 3.0
_C.SOLVER.WARM_UP_METHOD = "linear"
_C.SOLVER.SCALE_MOMENTUM = True  # rescale the momentum buffer by new_lr / old_lr ...
_C.SOLVER.SCALE_MOMENTUM_THRESHOLD = 1.1  # ... when the LR changes by more than this ratio
_C.SOLVER.LOG_LR_CHANGE_THRESHOLD = 1.1

# ---------------------------------------------------------------------------------------------
# Fast R-CNN box head
# ---------------------------------------------------------------------------------------------
_C.FAST_RCNN = CfgNode()
_C.FAST_RCNN.ROI_BOX_HEAD = ""  # e.g. 'fast_rcnn_heads.add_roi_2mlp_head'
_C.FAST_RCNN.MLP_HEAD_DIM = 1024
_C.FAST_RCNN.CONV_HEAD_DIM = 256
_C.FAST_RCNN.NUM_STACKED_CONVS = 4
_C.FAST_RCNN.ROI_XFORM_METHOD = "RoIPoolF"
_C.FAST_RCNN.ROI_XFORM_SAMPLING_RATIO = 0  # RoIAlign only
_C.FAST_RCNN.ROI_XFORM_RESOLUTION = 14

# ---------------------------------------------------------------------------------------------
# RPN
# ---------------------------------------------------------------------------------------------
_C.RPN = CfgNode()
_C.RPN.RPN_ON = False  # inferred by assert_and_infer_cfg; do not set
_C.RPN.SIZES = (64, 128, 256, 512)  # single-level RPN only; FPN uses FPN.RPN_*
_C.RPN.STRIDE = 16
_C.RPN.ASPECT_RATIOS = (0.5, 1, 2)

# ---------------------------------------------------------------------------------------------
# FPN
# ---------------------------------------------------------------------------------------------
_C.FPN = CfgNode()
_C.FPN.FPN_ON = False
_C.FPN.DIM = 256
_C.FPN.ZERO_INIT_LATERAL = False
_C.FPN.COARSEST_STRIDE = 32  # inputs are padded to a multiple of this
_C.FPN.MULTILEVEL_ROIS = False
_C.FPN.ROI_CANONICAL_SCALE = 224
_C.FPN.ROI_CANONICAL_LEVEL = 4
_C.FPN.ROI_MAX_LEVEL = 5
_C.FPN.ROI_MIN_LEVEL = 2
_C.FPN.MULTILEVEL_RPN = False
_C.FPN.RPN_MAX_LEVEL = 6
_C.FPN.RPN_MIN_LEVEL = 2
_C.FPN.RPN_ASPECT_RATIOS = (0.5, 1, 2)
_C.FPN.RPN_ANCHOR_START_SIZE = 32  # doubles per level: 32 .. 512 on P2 .. P6
_C.FPN.EXTRA_CONV_LEVELS = False
_C.FPN.USE_GN = False

# ---------------------------------------------------------------------------------------------
# Mask R-CNN head
# ---------------------------------------------------------------------------------------------
_C.MRCNN = CfgNode()
_C.MRCNN.ROI_MASK_HEAD = ""
_C.MRCNN.RESOLUTION = 14
_C.MRCNN.ROI_XFORM_METHOD = "RoIAlign"
_C.MRCNN.ROI_XFORM_RESOLUTION = 7
_C.MRCNN.ROI_XFORM_SAMPLING_RATIO = 0
_C.MRCNN.DIM_REDUCED = 256
_C.MRCNN.DILATION = 2
_C.MRCNN.UPSAMPLE_RATIO = 1
_C.MRCNN.USE_FC_OUTPUT = False
_C.MRCNN.CONV_INIT = "GaussianFill"
_C.MRCNN.CLS_SPECIFIC_MASK = True
_C.MRCNN.WEIGHT_LOSS_MASK = 1.0
_C.MRCNN.THRESH_BINARIZE = 0.5  # strict '>'

# ---------------------------------------------------------------------------------------------
# Keypoint R-CNN head
# ---------------------------------------------------------------------------------------------
_C.KRCNN = CfgNode()
_C.KRCNN.ROI_KEYPOINTS_HEAD = ""
_C.KRCNN.HEATMAP_SIZE = -1
_C.KRCNN.UP_SCALE = -1
_C.KRCNN.USE_DECONV = False
_C.KRCNN.DECONV_DIM = 256
_C.KRCNN.USE_DECONV_OUTPUT = False
_C.KRCNN.DILATION = 1
_C.KRCNN.DECONV_KERNEL = 4
_C.KRCNN.NUM_KEYPOINTS = -1
_C.KRCNN.NUM_STACKED_CONVS = 8
_C.KRCNN.CONV_HEAD_DIM = 256
_C.KRCNN.CONV_HEAD_KERNEL = 3
_C.KRCNN.CONV_INIT = "GaussianFill"
_C.KRCNN.NMS_OKS = False
_C.KRCNN.KEYPOINT_CONFIDENCE = "bbox"  # 'bbox', 'logit' or 'prob'
_C.KRCNN.ROI_XFORM_METHOD = "RoIAlign"
_C.KRCNN.ROI_XFORM_RESOLUTION = 7
_C.KRCNN.ROI_XFORM_SAMPLING_RATIO = 0
_C.KRCNN.MIN_KEYPOINT_COUNT_FOR_VALID_MINIBATCH = 20
_C.KRCNN.INFERENCE_MIN_SIZE = 0
_C.KRCNN.LOSS_WEIGHT = 1.0
_C.KRCNN.NORMALIZE_BY_VISIBLE_KEYPOINTS = True

# ---------------------------------------------------------------------------------------------
# R-FCN, ResNet, GroupNorm
# ---------------------------------------------------------------------------------------------
_C.RFCN = CfgNode()
_C.RFCN.PS_GRID_SIZE = 3

_C.RESNETS = CfgNode()
_C.RESNETS.NUM_GROUPS = 1
_C.RESNETS.WIDTH_PER_GROUP = 64
_C.RESNETS.STRIDE_1X1 = True  # MSRA ResNet: the stride sits on the 1x1 conv
_C.RESNETS.TRANS_FUNC = "bottleneck_transformation"
_C.RESNETS.STEM_FUNC = "basic_bn_stem"
_C.RESNETS.SHORTCUT_FUNC = "basic_bn_shortcut"
_C.RESNETS.RES5_DILATION = 1

_C.GROUP_NORM = CfgNode()
_C.GROUP_NORM.DIM_PER_GP = -1
_C.GROUP_NORM.NUM_GROUPS = 32
_C.GROUP_NORM.EPSILON = 1e-5

# ---------------------------------------------------------------------------------------------
# Miscellaneous
# ---------------------------------------------------------------------------------------------
_C.NUM_GPUS = 1
_C.USE_NCCL = False
_C.DEDUP_BOXES = 1 / 16.0
_C.BBOX_XFORM_CLIP = math.log(1000.0 / 16.0)  # caps dw, dh before exp()
_C.PIXEL_MEANS = (((102.9801, 115.9465, 122.7717),),)  # BGR, shape (1, 1, 3); see module doc
_C.RNG_SEED = 3
_C.EPS = 1e-14
_C.ROOT_DIR = os.getcwd()  # as Detectron: the working directory when this module is imported
_C.OUTPUT_DIR = _DETECTRON_TMP_DIR
_C.MATLAB = "matlab"
_C.MEMONGER = True
_C.MEMONGER_SHARE_ACTIVATIONS = False
_C.VIS = False
_C.VIS_TH = 0.9
_C.EXPECTED_RESULTS = []  # [[dataset, task, metric, value], ...]
_C.EXPECTED_RESULTS_RTOL = 0.1
_C.EXPECTED_RESULTS_ATOL = 0.005
_C.EXPECTED_RESULTS_SIGMA_TOL = 4
_C.EXPECTED_RESULTS_EMAIL = ""
_C.DOWNLOAD_CACHE = _DETECTRON_TMP_DIR + "/detectron-download-cache"

_C.CLUSTER = CfgNode()
_C.CLUSTER.ON_CLUSTER = False

# Keys Detectron removed: old configs that still set them load, with a warning.
_DEPRECATED_KEYS = frozenset(
    {
        "FINAL_MSG",
        "MODEL.DILATION",
        "ROOT_GPU_ID",
        "RPN.ON",
        "TRAIN.BBOX_NORMALIZE_TARGETS_PRECOMPUTED",
        "TRAIN.DROPOUT",
        "USE_GPU_NMS",
        "TEST.NUM_TEST_IMAGES",
    }
)

# Keys Detectron renamed: old name -> new name, or (new name, how to convert the value).
_RENAMED_KEYS: Mapping[str, str | tuple[str, str]] = {
    "EXAMPLE.RENAMED.KEY": "EXAMPLE.KEY",
    "MODEL.PS_GRID_SIZE": "RFCN.PS_GRID_SIZE",
    "MODEL.ROI_HEAD": "FAST_RCNN.ROI_BOX_HEAD",
    "MRCNN.MASK_HEAD_NAME": "MRCNN.ROI_MASK_HEAD",
    "TRAIN.DATASET": (
        "TRAIN.DATASETS",
        "Also convert to a tuple, e.g., 'coco_2014_train' -> ('coco_2014_train',) or "
        "'coco_2014_train:coco_2014_valminusminival' -> "
        "('coco_2014_train', 'coco_2014_valminusminival')",
    ),
    "TRAIN.PROPOSAL_FILE": (
        "TRAIN.PROPOSAL_FILES",
        "Also convert to a tuple, e.g., 'path/to/file' -> ('path/to/file',) or "
        "'path/to/file1:path/to/file2' -> ('path/to/file1', 'path/to/file2')",
    ),
    "TEST.SCALES": (
        "TEST.SCALE",
        "Also convert from a tuple, e.g. (600, ), to a integer, e.g. 600.",
    ),
    "TEST.DATASET": (
        "TEST.DATASETS",
        "Also convert from a string, e.g 'coco_2014_minival', to a tuple, "
        "e.g. ('coco_2014_minival', ).",
    ),
    "TEST.PROPOSAL_FILE": (
        "TEST.PROPOSAL_FILES",
        "Also convert from a string, e.g. '/path/to/props.pkl', to a tuple, "
        "e.g. ('/path/to/props.pkl', ).",
    ),
}

# Old builder-function names still found in configs (Detectron's modeling/name_compat.py).
_RENAMED_FUNCS: Mapping[str, str] = {
    "mask_rcnn_heads.ResNet_mask_rcnn_fcn_head_v1up4convs": "mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs",
    "mask_rcnn_heads.ResNet_mask_rcnn_fcn_head_v1up": "mask_rcnn_heads.mask_rcnn_fcn_head_v1up",
    "mask_rcnn_heads.ResNet_mask_rcnn_fcn_head_v0upshare": "mask_rcnn_heads.mask_rcnn_fcn_head_v0upshare",
    "mask_rcnn_heads.ResNet_mask_rcnn_fcn_head_v0up": "mask_rcnn_heads.mask_rcnn_fcn_head_v0up",
    "head_builder.add_roi_2mlp_head": "fast_rcnn_heads.add_roi_2mlp_head",
}
# The keys whose values Detectron resolves through name_compat (model_builder.get_func).
_FUNC_NAME_KEYS = (
    ("MODEL", "TYPE"),
    ("MODEL", "CONV_BODY"),
    ("FAST_RCNN", "ROI_BOX_HEAD"),
    ("MRCNN", "ROI_MASK_HEAD"),
    ("KRCNN", "ROI_KEYPOINTS_HEAD"),
)
# Keys that Detectron stores as float64 numpy arrays.
_FLOAT_ARRAY_KEYS = frozenset({"PIXEL_MEANS"})


def get_default_cfg() -> CfgNode:
    """A fresh, mutable copy of Detectron's defaults."""
    return _C.clone()


def load_cfg(path: str | os.PathLike[str] | None, opts: Sequence[Any] | None = None) -> CfgNode:
    """Defaults, then the YAML file ``path`` (if any), then ``--set`` pairs ``opts``;
    inferred values filled in; frozen.  This is Detectron's tools/test_net.py sequence."""
    cfg = get_default_cfg()
    if path is not None:
        merge_cfg_from_file(cfg, path)
    if opts:
        merge_cfg_from_list(cfg, opts)
    assert_and_infer_cfg(cfg)
    return cfg


def merge_cfg_from_file(cfg: CfgNode, path: str | os.PathLike[str]) -> None:
    """Merge a YAML config file into ``cfg``: one of Detectron's (plain YAML) or one that
    ``cfg_to_yaml`` wrote; read with a safe loader."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {os.fspath(path)}: {e.strerror or e}") from None
    _merge_a_into_b(_parse_yaml_mapping(text, os.fspath(path)), cfg, [])


def merge_cfg_from_list(cfg: CfgNode, opts: Sequence[Any]) -> None:
    """Merge ``[KEY, VALUE, KEY, VALUE, ...]`` (e.g. ``--set TEST.SCALE 400``) into ``cfg``.

    String values are decoded with ``literal_eval`` as in Detectron's merge_cfg_from_list."""
    if len(opts) % 2 != 0:
        raise ConfigError(f"config overrides must be KEY VALUE pairs; got an odd number of items: {list(opts)}")
    for full_key, raw in zip(opts[0::2], opts[1::2]):
        if _key_is_deprecated(full_key):
            continue
        _raise_if_renamed(full_key)
        *parents, leaf = full_key.split(".")
        node = cfg
        for name in parents:
            node = node.get(name)
            if not isinstance(node, CfgNode):
                raise ConfigKeyError(f"Non-existent config key: {full_key}")
        if leaf not in node:
            raise ConfigKeyError(f"Non-existent config key: {full_key}")
        if isinstance(node[leaf], CfgNode):
            raise ConfigError(f"{full_key} is a config section; set its keys one at a time, e.g. {full_key}.<KEY>")
        setattr(node, leaf, _check_and_coerce_cfg_value_type(_decode_cfg_value(raw), node[leaf], full_key))


def assert_and_infer_cfg(cfg: CfgNode) -> None:
    """Fill in the values Detectron infers instead of reading them, then freeze ``cfg``."""
    if cfg.MODEL.RPN_ONLY or cfg.MODEL.FASTER_RCNN:
        cfg.RPN.RPN_ON = True
    if cfg.RPN.RPN_ON or cfg.RETINANET.RETINANET_ON:
        cfg.TEST.PRECOMPUTED_PROPOSALS = False
    for section, key in _FUNC_NAME_KEYS:
        old = cfg[section][key]
        if old in _RENAMED_FUNCS:
            logger.info("Config %s.%s: legacy name %s -> %s", section, key, old, _RENAMED_FUNCS[old])
            cfg[section][key] = _RENAMED_FUNCS[old]
    cfg.freeze()


def cfg_to_yaml(cfg: CfgNode) -> str:
    """Serialize a config (e.g. into a checkpoint) as safe YAML that keeps tuples as tuples."""
    return yaml.dump(cfg, Dumper=_Dumper, default_flow_style=False, sort_keys=True, allow_unicode=True)


def cfg_from_yaml_text(text: str) -> CfgNode:
    """The frozen config that ``cfg_to_yaml`` wrote, exactly (no merging, no inference)."""
    cfg = CfgNode(_parse_yaml_mapping(text, "<config text>"))
    cfg.freeze()
    return cfg


# ---------------------------------------------------------------------------------------------
# Detectron's merge rules
# ---------------------------------------------------------------------------------------------
def _merge_a_into_b(a: Mapping[Any, Any], b: CfgNode, stack: list[str]) -> None:
    """Detectron's _merge_a_into_b: every key of ``a`` must exist in ``b``; sections recurse."""
    for k, v in a.items():
        if not isinstance(k, str):
            # YAML 1.1 reads unquoted ON/OFF/YES/NO as booleans (Detectron crashes with TypeError).
            raise ConfigError(
                f"config key {k!r} under {'.'.join(stack) or 'the top level'} is not a string "
                "(YAML reads unquoted ON/OFF/YES/NO keys as booleans)"
            )
        full_key = ".".join(stack + [k])
        if k not in b:
            if _key_is_deprecated(full_key):
                continue
            _raise_if_renamed(full_key)
            raise ConfigKeyError(f"Non-existent config key: {full_key}")
        value = _check_and_coerce_cfg_value_type(_decode_cfg_value(v), b[k], full_key)
        if isinstance(b[k], CfgNode):
            _merge_a_into_b(value, b[k], stack + [k])
        else:
            setattr(b, k, value)


def _key_is_deprecated(full_key: str) -> bool:
    if full_key in _DEPRECATED_KEYS:
        logger.warning("Deprecated config key (ignoring): %s", full_key)
        return True
    return False


def _raise_if_renamed(full_key: str) -> None:
    if full_key not in _RENAMED_KEYS:
        return
    new_key = _RENAMED_KEYS[full_key]
    note = ""
    if isinstance(new_key, tuple):
        new_key, how = new_key
        note = " Note: " + how
    raise ConfigKeyError(f"Key {full_key} was renamed to {new_key}; please update your config.{note}")


def _decode_cfg_value(value: Any) -> Any:
    """Strings become Python literals when they parse as one (``'(800,)'`` -> ``(800,)``);
    other strings (``RoIAlign``, paths, URLs) stay strings."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _check_and_coerce_cfg_value_type(value: Any, default: Any, full_key: str) -> Any:
    """Detectron's type rule: same type as the default, else one of its few conversions."""
    is_section, is_mapping = isinstance(default, CfgNode), isinstance(value, dict)
    if is_section or is_mapping:
        # A section takes a mapping and a mapping fits only a section (Detectron would
        # str() a mapping given for a string key).
        if is_section and is_mapping:
            return value
    elif full_key in _FLOAT_ARRAY_KEYS:
        return _as_float_array(value, full_key)
    elif type(value) is type(default):
        return value
    elif isinstance(default, str):
        return str(value)
    elif isinstance(value, tuple) and isinstance(default, list):
        return list(value)
    elif isinstance(value, list) and isinstance(default, tuple):
        return tuple(value)
    raise ConfigError(
        f"Type mismatch ({type(default)} vs. {type(value)}) with values ({default} vs. {value}) "
        f"for config key: {full_key}"
    )


def _as_float_array(value: Any, full_key: str) -> Any:
    """Detectron's ``np.array(value, dtype=float64)``, as nested tuples of Python floats."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config key {full_key} needs a (nested) sequence of numbers, got {value!r}: {e}") from None
    return _nested_tuple(array.tolist())


def _nested_tuple(x: Any) -> Any:
    return tuple(_nested_tuple(v) for v in x) if isinstance(x, list) else x


# ---------------------------------------------------------------------------------------------
# YAML
# ---------------------------------------------------------------------------------------------
_TUPLE_TAG = "tag:yaml.org,2002:python/tuple"  # the tag PyYAML itself (and Detectron) writes


class _Dumper(yaml.SafeDumper):
    """Safe YAML plus tuples, so a stored config reloads with the exact types."""


_Dumper.add_representer(CfgNode, lambda dumper, node: dumper.represent_dict(dict(node)))
_Dumper.add_representer(tuple, lambda dumper, t: dumper.represent_sequence(_TUPLE_TAG, t, flow_style=True))


class _Loader(yaml.SafeLoader):
    """Safe YAML plus ``!!python/tuple`` (nothing else that could run code)."""


_Loader.add_constructor(_TUPLE_TAG, lambda loader, node: tuple(loader.construct_sequence(node, deep=True)))


def _parse_yaml_mapping(text: str, source: str) -> dict[Any, Any]:
    """Parse YAML whose top level must be a mapping; errors are one line naming ``source``."""
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"malformed YAML in {source}{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must hold a YAML mapping of config keys, not a {type(data).__name__}")
    return data
