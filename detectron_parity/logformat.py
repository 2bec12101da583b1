"""The training log's stats line, written by ``rcnn.engine.training_stats`` and read by
``parity losses``: Detectron's ``utils/logging.py::log_json_stats`` prints each iteration's
stats as ``json_stats: {...}`` (docs/detectron.md §7), so logs of both programs parse alike.
"""
from __future__ import annotations

MARKER = "json_stats: "
