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
# Small freely licensed real data shipped in the repository (tests/data/NOTICE.md): read on every checkout.
TEST_DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data; skips the test when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real-data folder {SHARED_DATA} is absent (fresh clone)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def test_data() -> Path:
    """Path of tests/data: 4 CC BY COCO images (``coco-cc-by``, laid out like coco-mini) and the small
    evaluation fixtures, under the same folder names as in ../shared/data."""
    return TEST_DATA


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def synthetic_pkls(test_data, tmp_path_factory) -> dict:
    """Calibrated Detectron-format .pkl files for the three models (Mask R-CNN's with
    momentum and preserved blobs, like a real model_final.pkl)."""
    from tests.models import make_pkl

    out = tmp_path_factory.mktemp("synthetic_pkls")
    return {kind: make_pkl(kind, test_data, out, with_extras=(kind == "mask"))
            for kind in ("faster", "mask", "keypoint")}
