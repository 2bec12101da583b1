"""Shared test fixtures.

Real COCO data lives beside the checkout in ``../shared/data`` (CI has it, a fresh
clone does not): tests that need it take the ``shared_data`` fixture, which skips
with a reason when the folder is absent.
"""
from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data; skips the test when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real-data folder {SHARED_DATA} is absent (fresh clone)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def synthetic_pkls(shared_data, tmp_path_factory) -> dict:
    """Calibrated Detectron-format .pkl files for the three models (Mask R-CNN's with
    momentum and preserved blobs, like a real model_final.pkl)."""
    from tests.models import make_pkl

    out = tmp_path_factory.mktemp("synthetic_pkls")
    return {kind: make_pkl(kind, shared_data, out, with_extras=(kind == "mask"))
            for kind in ("faster", "mask", "keypoint")}
