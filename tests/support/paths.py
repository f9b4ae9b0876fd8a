"""Where the tests find what lives outside the repository: ../shared's datasets and field cases."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
GROCERY = Path(os.environ.get("E2C_DATASET") or SHARED / "datasets" / "grocery")
FACES = SHARED / "datasets" / "faces"
CASES = SHARED / "cases" / "field-2026-11"
