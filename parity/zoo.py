"""Detectron's model zoo as data: every model of its ``MODEL_ZOO.md`` and of
``projects/GN/README.md`` with the published numbers, the config and the download URL.

The catalog is ``parity/zoo_catalog.json`` (shipped with the package); it is the one source
of the published numbers used by ``parity compare --reference detectron`` and ``BENCHMARK.md``
(:mod:`parity.reference` derives its rows from it), and ``tests/test_zoo_catalog.py`` checks
it against the numbers parsed from those two files (``tests/fixtures/model_zoo_md.json``).
"""
from __future__ import annotations

import difflib
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detectron_parity.fileio import InputError

CATALOG_FILE = Path(__file__).with_name("zoo_catalog.json")
TASKS = ("box", "mask", "keypoint", "proposal")
# task -> the catalog's published key
PUBLISHED_KEYS = {"box": "box_ap", "mask": "mask_ap", "keypoint": "kp_ap", "proposal": "prop_ar"}


@dataclass(frozen=True)
class ZooModel:
    """One catalogued model (see ``zoo_catalog.json`` for the field meanings)."""

    name: str
    id: int | None
    family: str  # Detectron's config-name prefix (e2e_mask_rcnn, rpn, retinanet, ...) or 'imagenet'
    backbone: str  # R-50-FPN, X-101-64x4d-FPN, ... (ImageNet models: R-50, ...)
    norm: str  # 'BN' (frozen, affine) or 'GN'
    tasks: tuple[str, ...]  # the tasks with published numbers, in TASKS order
    lr_schd: str | None
    config: str | None  # path under the repository root, Detectron's own name
    url: str | None  # model_final.pkl; None where nothing is published (GN scratch models)
    md5_url: str | None
    published: dict[str, float | None]  # box_ap, mask_ap, kp_ap, prop_ar (%)
    source: str
    dataset: str | None = None  # Detectron's test dataset name
    im_per_gpu: int | None = None
    train_mem_gb: float | None = None
    train_time_s_per_iter: float | None = None
    train_time_total_hr: float | None = None
    inference_time_s_per_im: tuple[float, ...] | None = None  # (GPU,) or (GPU, CPU)
    full_stats: dict[str, Any] | None = None  # all COCO stats, where published elsewhere
    without_test_aug: dict[str, Any] | None = None  # the X-152 model's second row

    @property
    def is_detector(self) -> bool:
        return self.family != "imagenet"


@functools.lru_cache(maxsize=1)
def catalog() -> dict[str, ZooModel]:
    """Every catalogued model by name, in the order of Detectron's tables."""
    with open(CATALOG_FILE, encoding="utf-8") as f:
        entries = json.load(f)["models"]
    models = {}
    for e in entries:
        e = dict(e)
        e["tasks"] = tuple(e["tasks"])
        if e.get("inference_time_s_per_im") is not None:
            e["inference_time_s_per_im"] = tuple(e["inference_time_s_per_im"])
        models[e["name"]] = ZooModel(**e)
    return models


def get(name: str) -> ZooModel:
    """A model by catalog name, numeric model id, or config name/path (``.yaml``)."""
    models = catalog()
    key = name.replace("\\", "/").rsplit("/", 1)[-1].removesuffix(".yaml").removesuffix(".pkl")
    if key in models:
        return models[key]
    by_id = {str(m.id): m for m in models.values() if m.id is not None}
    if key in by_id:
        return by_id[key]
    close = difflib.get_close_matches(key, list(models), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise InputError(f"{name!r} is not in the model zoo catalog (see `python -m parity zoo list`){hint}")


def select(family: str | None = None, body: str | None = None, task: str | None = None) -> list[ZooModel]:
    """The catalogued models of a family, a backbone (``R-50`` matches ``R-50-C4`` and
    ``R-50-FPN`` too) and with published numbers for a task."""
    if task is not None and task not in TASKS:
        raise InputError(f"unknown task {task!r} (known: {', '.join(TASKS)})")
    families = sorted({m.family for m in catalog().values()})
    if family is not None and family not in families:
        raise InputError(f"unknown family {family!r} (known: {', '.join(families)})")
    return [m for m in catalog().values()
            if (family is None or m.family == family)
            and (body is None or m.backbone == body or m.backbone.startswith(body + "-"))
            and (task is None or task in m.tasks)]


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def list_lines(models: list[ZooModel]) -> list[str]:
    """``zoo list`` output: one line per model with its published numbers (%)."""
    width = max([len(m.name) for m in models] + [4])
    lines = [f"{'id':>9}  {'name':<{width}}  {'box':>5} {'mask':>5} {'kp':>5} {'AR':>5}  family"]
    for m in models:
        p = m.published
        note = "" if m.url else "  (no download published)"
        lines.append(f"{m.id or '-':>9}  {m.name:<{width}}  {_num(p['box_ap']):>5} {_num(p['mask_ap']):>5} "
                     f"{_num(p['kp_ap']):>5} {_num(p['prop_ar']):>5}  {m.family}{note}")
    lines.append(f"{len(models)} models (AP and proposal AR@1000 in %, as published by Detectron)")
    return lines
