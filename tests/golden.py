"""Access to the golden fixtures produced by Detectron's own NumPy code (see
fixtures/golden/PROVENANCE.md for how and with which versions)."""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "golden"


@cache
def npz(name: str) -> dict:
    with np.load(GOLDEN / f"{name}.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@cache
def js(name: str):
    return json.loads((GOLDEN / f"{name}.json").read_text())
