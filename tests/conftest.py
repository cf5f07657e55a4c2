"""Shared fixtures: the read-only ../shared/data folder (skipped when absent) and the demo data."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WBC_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared_path(name: str) -> Path:
    """``../shared/data/<name>``, or skip the test with a reason when it is absent."""
    p = SHARED / name
    if not p.exists():
        pytest.skip(f"{p} not present (set WBC_SHARED_DATA to the shared data folder)")
    return p


@pytest.fixture
def pbc6() -> Path:
    return shared_path("pbc6")


@pytest.fixture
def zheng() -> Path:
    return shared_path("zheng2018-d1")


@pytest.fixture
def bccd() -> Path:
    return shared_path("bccd-fields")


@pytest.fixture
def demo_dir() -> Path:
    from wbc_nnabla import io
    return io.demo_data()
