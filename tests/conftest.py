"""Shared test fixtures: the reference folder (``../shared/reference``) and quiet, seeded runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DSCT_SHARED_DIR", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The reference fixtures; tests that need them skip (with the reason) in a user's clone."""
    if not (REFERENCE / "README.md").is_file():
        pytest.skip(f"reference fixtures not found at {REFERENCE} (set DSCT_SHARED_DIR); they ship only with the project's shared folder")
    return REFERENCE


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
