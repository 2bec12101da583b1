"""``metrics.json``: the one file a test run leaves for ``parity compare`` to read.

Schema (every key optional except that at least one of the three types is present)::

    {
      "bbox":      {"names": ["AP", "AP50", ..., "ARl"], "stats": [12 floats]},
      "segm":      {"names": [...12...], "stats": [12 floats]},
      "keypoints": {"names": ["AP", ..., "ARl"],  "stats": [10 floats]},
      "box_proposal": {"names": ["AR@100", ..., "ARl@1000"], "stats": [8 floats or null]},
      "provenance": {...}
    }

``names`` must be exactly :data:`parity.evaluate.STAT_NAMES` for the type, ``stats`` are
``COCOeval.stats`` at full float precision; ``box_proposal`` (RPN-only models) holds Detectron's
proposal recall (:mod:`parity.proposals`), ``null`` where a range has no object. ``provenance`` is free-form JSON; the parity
tools read these keys of it:

- ``label``: row name in comparison tables (default: the run's directory name);
- ``model``: Detectron config name, e.g. ``e2e_mask_rcnn_R-50-FPN_1x`` (selects the reference rows);
- ``weights_source``: ``zoo`` (converted Detectron weights) or ``scratch`` (trained here): picks the tolerance;
- ``weights``, ``dataset``, ``backend``: path or URL of the weights evaluated, evaluation dataset
  name (e.g. ``coco_2017_val``), evaluation backend (pycocotools or faster-coco-eval), shown in
  BENCHMARK.md run notes.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from detectron_parity.fileio import InputError, PathLike, atomic_write_json, load_json
from parity.evaluate import STAT_NAMES, Stats
from parity.proposals import AR_NAMES, ProposalStats
from parity.records import IOU_TYPES


@dataclass
class Metrics:
    """Evaluation results of one run, by type, plus free-form provenance."""

    bbox: Stats | None = None
    segm: Stats | None = None
    keypoints: Stats | None = None
    box_proposal: ProposalStats | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def by_type(self) -> dict[str, Stats]:
        """The types present, in bbox/segm/keypoints order."""
        return {t: getattr(self, t) for t in IOU_TYPES if getattr(self, t) is not None}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            t: {"names": list(s.names), "stats": list(s.stats)} for t, s in self.by_type().items()
        }
        if self.box_proposal is not None:
            out["box_proposal"] = self.box_proposal.to_dict()
        out["provenance"] = self.provenance
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str = "metrics") -> Metrics:
        """Parse and check the schema above; raise :class:`InputError` naming the key."""
        if not isinstance(data, Mapping):
            raise InputError(f"{source}: metrics must be a JSON object")
        unknown = set(data) - set(IOU_TYPES) - {"box_proposal", "provenance"}
        if unknown:
            raise InputError(f"{source}: unknown key(s) {sorted(unknown)} "
                             "(expected bbox, segm, keypoints, box_proposal, provenance)")
        provenance = data.get("provenance", {})
        if not isinstance(provenance, Mapping):
            raise InputError(f"{source}: 'provenance' must be a JSON object")
        stats = {t: _parse_stats(data[t], t, source) for t in IOU_TYPES if t in data}
        proposal = _parse_proposal_stats(data["box_proposal"], source) if "box_proposal" in data else None
        if not stats and proposal is None:
            raise InputError(f"{source}: no bbox, segm or keypoints results (nor box_proposal)")
        return cls(provenance=dict(provenance), box_proposal=proposal, **stats)


def _parse_stats(entry: Any, iou_type: str, source: str) -> Stats:
    where = f"{source}: {iou_type!r}"
    if not isinstance(entry, Mapping) or "stats" not in entry:
        raise InputError(f"{where} must be an object with 'names' and 'stats'")
    names = entry.get("names", list(STAT_NAMES[iou_type]))
    if list(names) != list(STAT_NAMES[iou_type]):
        raise InputError(f"{where} names {list(names)} differ from {list(STAT_NAMES[iou_type])}")
    values = entry["stats"]
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise InputError(f"{where} 'stats' must be a list of numbers")
    if len(values) != len(names):
        raise InputError(f"{where} has {len(values)} stats, expected {len(names)}")
    return Stats(iou_type, tuple(float(v) for v in values))


def _parse_proposal_stats(entry: Any, source: str) -> ProposalStats:
    where = f"{source}: 'box_proposal'"
    if not isinstance(entry, Mapping) or list(entry.get("names", [])) != list(AR_NAMES):
        raise InputError(f"{where} must be an object with 'names' {list(AR_NAMES)} and 'stats'")
    values = entry.get("stats")
    if not isinstance(values, list) or len(values) != len(AR_NAMES) or not all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values):
        raise InputError(f"{where} 'stats' must be {len(AR_NAMES)} numbers (or null)")
    return ProposalStats(tuple(float("nan") if v is None else float(v) for v in values))


def load_metrics(path: PathLike) -> Metrics:
    """Read a ``metrics.json`` file."""
    return Metrics.from_dict(load_json(path, "metrics file"), str(path))


def save_metrics(metrics: Metrics, path: PathLike) -> None:
    """Write ``metrics.json`` atomically (temporary file + ``os.replace``)."""
    atomic_write_json(path, metrics.to_dict())
