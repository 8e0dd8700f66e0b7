"""Shared fixtures. Run: pytest  (fast suite); pytest -m slow  (real models)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("TINYLLM_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} is absent: the real datasets live in ../shared/data beside the checkout")
    return SHARED_DATA
