"""Detectron's published COCO numbers of every model-zoo detector, derived from the zoo
catalog (:mod:`parity.zoo`, the one source of these numbers).

Values are percentages rounded to one decimal, exactly as published; ``None`` marks a
number that was never published. MODEL_ZOO.md publishes one AP per type (and proposal
AR@1000 for RPN models); all 12/12/10 stats are published for the three R-50-FPN 1x
baselines only (their catalog entries carry them as ``full_stats``):

- All 12 box / 12 mask / 10 keypoint stats: the "Detectron" rows of
  roytseng-tw/Detectron.pytorch ``BENCHMARK.md`` as last changed in commit
  ab028df7c73ca75cf4c7dc0a04b577a8e47722aa (unchanged up to 1b1c4ba58428b7277a45b0dce6cc1bce3744b86a),
  COCO2017 val (= Detectron's coco_2014_minival). That file labels the three keypoint
  recall columns AR1/AR10/AR100; COCOeval's keypoint stats at those positions are
  AR, AR50 and AR75 (maxDets 20), which the values (70.7, 90.9, 75.9) confirm.
- The headline APs (box 36.7; box 37.7 / mask 33.9; box 53.6 / kp 64.2) agree with
  facebookresearch/Detectron ``MODEL_ZOO.md`` (commit 0a5101df0d94c6696e3ee1a953f43969c857c99b),
  model ids 35857345, 35858933 and 37697547, which publishes only those.
"""
from __future__ import annotations

from dataclasses import dataclass

from detectron_parity.fileio import InputError
from parity.zoo import ZooModel, catalog

DETECTRON_PYTORCH_BENCHMARK = "roytseng-tw/Detectron.pytorch BENCHMARK.md @ ab028df7, 'Detectron' rows"
DETECTRON_MODEL_ZOO = "facebookresearch/Detectron MODEL_ZOO.md @ 0a5101df"


@dataclass(frozen=True)
class ReferenceModel:
    """Published numbers of one model: per type, the stats in ``STAT_NAMES`` order (%)."""

    name: str
    model_id: int
    stats: dict[str, tuple[float | None, ...]]
    source: str
    proposal_ar: float | None = None  # RPN models: published proposal AR@1000 (%)


_TYPES = (("bbox", "box_ap", 12), ("segm", "mask_ap", 12), ("keypoints", "kp_ap", 10))


def _reference(model: ZooModel) -> ReferenceModel:
    """The published row of a catalogued detector: every stat where the catalog has them
    (``full_stats``), else the headline AP of each type and ``None`` for the other stats."""
    if model.full_stats:
        stats = {t: tuple(model.full_stats[t]) for t, _, _ in _TYPES if t in model.full_stats}
        source = str(model.full_stats["source"])
    else:
        stats = {t: (model.published[key],) + (None,) * (n - 1)
                 for t, key, n in _TYPES if model.published[key] is not None}
        source = f"facebookresearch/Detectron {model.source} @ 04155a0"
    return ReferenceModel(model.name, model.id or 0, stats, source, model.published["prop_ar"])


MODELS: dict[str, ReferenceModel] = {m.name: _reference(m) for m in catalog().values() if m.is_detector}

_ALIASES = {"faster": "e2e_faster_rcnn_R-50-FPN_1x", "mask": "e2e_mask_rcnn_R-50-FPN_1x",
            "keypoint": "e2e_keypoint_rcnn_R-50-FPN_1x", "keypoints": "e2e_keypoint_rcnn_R-50-FPN_1x"}


def config_stem(name: str) -> str:
    """``e2e_mask_rcnn_R-50-FPN_1x`` from a config name or path (``.yaml``/``.yml``)."""
    stem = name.replace("\\", "/").rsplit("/", 1)[-1]
    for suffix in (".yaml", ".yml"):
        stem = stem.removesuffix(suffix)
    return stem


def resolve_model(name: str) -> str:
    """Canonical name of a model with published numbers, from an alias
    (faster/mask/keypoint), a config name or a config path such as
    ``configs/12_2017_baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml``."""
    stem = config_stem(name)
    stem = _ALIASES.get(stem, stem)
    if stem not in MODELS:
        raise InputError(f"no published reference for model {name!r} (known: {', '.join(list(_ALIASES)[:3])} "
                         "or a model-zoo name, see `python -m parity zoo list`)")
    return stem


def model_for_types(types: set[str]) -> str:
    """The reference model implied by the result types of a run (keypoints > segm > bbox)."""
    if "keypoints" in types:
        return "e2e_keypoint_rcnn_R-50-FPN_1x"
    if "segm" in types:
        return "e2e_mask_rcnn_R-50-FPN_1x"
    return "e2e_faster_rcnn_R-50-FPN_1x"
