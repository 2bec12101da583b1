"""What inference reads of the config, as typed frozen parameters built once.

``Detector`` builds a ``DetectorParams`` at construction; its per-batch code
(``rcnn.inference.detector``, ``rcnn.inference.stages``) reads only these, so the
config is parsed once and a batch never depends on a config changed afterwards.
Names follow the config keys (``TEST.*``, ``MODEL.*``, ``MRCNN.*``, ``KRCNN.*``).
"""
from __future__ import annotations

from dataclasses import dataclass

from rcnn.inference.postprocess import NmsVariants
from rcnn.inference.retinanet import RetinaNetTestParams
from rcnn.modeling.proposals import ProposalParams


@dataclass(frozen=True)
class BoxDecodeParams:
    """``im_detect_bbox``'s box decoding: ``TEST.BBOX_REG``, ``MODEL.CLS_AGNOSTIC_BBOX_REG``,
    ``MODEL.BBOX_REG_WEIGHTS``, ``BBOX_XFORM_CLIP``."""

    bbox_reg: bool
    cls_agnostic: bool
    weights: tuple[float, float, float, float]
    xform_clip: float

    @classmethod
    def from_cfg(cls, cfg) -> BoxDecodeParams:
        return cls(cfg.TEST.BBOX_REG, cfg.MODEL.CLS_AGNOSTIC_BBOX_REG, tuple(cfg.MODEL.BBOX_REG_WEIGHTS),
                   cfg.BBOX_XFORM_CLIP)


@dataclass(frozen=True)
class BoxResultParams:
    """``box_results_with_nms_and_limit``: ``TEST.SCORE_THRESH``, ``TEST.NMS``,
    ``TEST.DETECTIONS_PER_IM`` and the ``TEST.SOFT_NMS`` / ``TEST.BBOX_VOTE`` variants."""

    score_thresh: float
    nms: float
    detections_per_im: int
    variants: NmsVariants | None

    @classmethod
    def from_cfg(cls, cfg) -> BoxResultParams:
        t = cfg.TEST
        return cls(t.SCORE_THRESH, t.NMS, t.DETECTIONS_PER_IM, NmsVariants.from_cfg(cfg))


@dataclass(frozen=True)
class MaskTestParams:
    """``MRCNN.CLS_SPECIFIC_MASK``, ``THRESH_BINARIZE`` and ``RESOLUTION`` (``MODEL.MASK_ON``)."""

    cls_specific: bool
    thresh_binarize: float
    resolution: int

    @classmethod
    def from_cfg(cls, cfg) -> MaskTestParams:
        m = cfg.MRCNN
        return cls(m.CLS_SPECIFIC_MASK, m.THRESH_BINARIZE, m.RESOLUTION)


@dataclass(frozen=True)
class KeypointTestParams:
    """``KRCNN.INFERENCE_MIN_SIZE`` and ``NUM_KEYPOINTS`` (``MODEL.KEYPOINTS_ON``)."""

    inference_min_size: int
    num_keypoints: int

    @classmethod
    def from_cfg(cls, cfg) -> KeypointTestParams:
        return cls(cfg.KRCNN.INFERENCE_MIN_SIZE, cfg.KRCNN.NUM_KEYPOINTS)


@dataclass(frozen=True)
class DetectorParams:
    """Everything ``Detector`` reads per image or batch."""

    scale: int                       # TEST.SCALE
    max_size: int                    # TEST.MAX_SIZE
    pixel_means: tuple[float, float, float]
    blob_stride: int                 # FPN.COARSEST_STRIDE with FPN; 1 (unpadded) for C4
    rpn_only: bool                   # MODEL.RPN_ONLY
    precomputed_proposals: bool      # TEST.PRECOMPUTED_PROPOSALS
    proposal_limit: int              # TEST.PROPOSAL_LIMIT
    dedup_boxes: float               # DEDUP_BOXES
    augment: bool                    # any of TEST.BBOX_AUG / MASK_AUG / KPS_AUG
    proposals: ProposalParams        # TEST.RPN_*
    box_decode: BoxDecodeParams
    box_results: BoxResultParams
    mask: MaskTestParams | None      # None unless MODEL.MASK_ON
    keypoints: KeypointTestParams | None   # None unless MODEL.KEYPOINTS_ON
    retinanet: RetinaNetTestParams | None  # None unless RETINANET.RETINANET_ON

    @classmethod
    def from_cfg(cls, cfg) -> DetectorParams:
        t = cfg.TEST
        return cls(
            t.SCALE, t.MAX_SIZE, tuple(cfg.PIXEL_MEANS),
            # im_list_to_blob pads to FPN.COARSEST_STRIDE only with FPN; C4 blobs are unpadded.
            cfg.FPN.COARSEST_STRIDE if cfg.FPN.FPN_ON else 1,
            cfg.MODEL.RPN_ONLY, t.PRECOMPUTED_PROPOSALS, t.PROPOSAL_LIMIT, cfg.DEDUP_BOXES,
            t.BBOX_AUG.ENABLED or t.MASK_AUG.ENABLED or t.KPS_AUG.ENABLED,
            ProposalParams.from_cfg(cfg, train=False), BoxDecodeParams.from_cfg(cfg), BoxResultParams.from_cfg(cfg),
            MaskTestParams.from_cfg(cfg) if cfg.MODEL.MASK_ON else None,
            KeypointTestParams.from_cfg(cfg) if cfg.MODEL.KEYPOINTS_ON else None,
            RetinaNetTestParams.from_cfg(cfg) if cfg.RETINANET.RETINANET_ON else None)
