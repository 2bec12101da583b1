"""Detectron's published COCO numbers for the three 12_2017 R-50-FPN baselines.

Values are percentages rounded to one decimal, exactly as published; ``None`` would mark
a number that was never published (none is missing for these three models).

Sources:
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

from parity.fileio import InputError

DETECTRON_PYTORCH_BENCHMARK = "roytseng-tw/Detectron.pytorch BENCHMARK.md @ ab028df7, 'Detectron' rows"
DETECTRON_MODEL_ZOO = "facebookresearch/Detectron MODEL_ZOO.md @ 0a5101df"


@dataclass(frozen=True)
class ReferenceModel:
    """Published numbers of one model: per type, the stats in ``STAT_NAMES`` order (%)."""

    name: str
    model_id: int
    stats: dict[str, tuple[float | None, ...]]
    source: str


MODELS: dict[str, ReferenceModel] = {
    m.name: m
    for m in (
        ReferenceModel(
            "e2e_faster_rcnn_R-50-FPN_1x",
            35857345,
            {"bbox": (36.7, 58.4, 39.6, 21.1, 39.8, 48.1, 30.6, 48.0, 50.4, 31.8, 54.1, 63.4)},
            DETECTRON_PYTORCH_BENCHMARK,
        ),
        ReferenceModel(
            "e2e_mask_rcnn_R-50-FPN_1x",
            35858933,
            {
                "bbox": (37.7, 59.2, 40.9, 21.4, 40.8, 49.7, 31.3, 48.9, 51.2, 32.3, 54.8, 64.8),
                "segm": (33.9, 55.8, 35.8, 14.9, 36.3, 50.9, 29.2, 44.4, 46.2, 26.2, 50.1, 62.0),
            },
            DETECTRON_PYTORCH_BENCHMARK,
        ),
        ReferenceModel(
            "e2e_keypoint_rcnn_R-50-FPN_1x",
            37697547,
            {
                "bbox": (53.6, 82.8, 58.3, 36.5, 61.2, 69.7, 18.7, 54.3, 62.2, 47.6, 68.3, 76.8),
                "keypoints": (64.2, 86.4, 69.9, 58.5, 73.4, 70.7, 90.9, 75.9, 64.9, 79.0),
            },
            DETECTRON_PYTORCH_BENCHMARK,
        ),
    )
}

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
        raise InputError(f"no published reference for model {name!r} (known: {', '.join(list(_ALIASES)[:3] + list(MODELS))})")
    return stem


def model_for_types(types: set[str]) -> str:
    """The reference model implied by the result types of a run (keypoints > segm > bbox)."""
    if "keypoints" in types:
        return "e2e_keypoint_rcnn_R-50-FPN_1x"
    if "segm" in types:
        return "e2e_mask_rcnn_R-50-FPN_1x"
    return "e2e_faster_rcnn_R-50-FPN_1x"
