"""Shared test fixtures: the reference folder (``../shared/reference``) and quiet, seeded runs."""

from __future__ import annotations

import json
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


def pytest_collection_modifyitems(config, items):
    """Under mutmut, run the quickest tests first: a mutant is killed by its first failure (``-x``).

    mutmut runs each mutant's tests from its ``mutants/`` copy, where it keeps every test's duration; a
    normal run has no such file and keeps the usual order. ``DSCT_MUTATION_TEST_LIMIT_S`` leaves out
    the tests slower than that (the quickest one stays), so that a surviving mutant costs seconds;
    it can only lower the score.
    """
    stats = Path("mutmut-stats.json")
    if "MUTANT_UNDER_TEST" not in os.environ or not stats.is_file():
        return
    durations = json.loads(stats.read_text()).get("duration_by_test", {})
    items.sort(key=lambda item: durations.get(item.nodeid, float("inf")))
    limit = float(os.environ.get("DSCT_MUTATION_TEST_LIMIT_S", "inf"))  # README "Tests": a quicker, stricter run
    if limit < float("inf") and items:
        items[:] = [item for item in items if durations.get(item.nodeid, 0.0) <= limit] or items[:1]
