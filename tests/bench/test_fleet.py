"""bench/fleet.py end to end with two sites: a real core, two site processes with their own
nats-servers on leaf links, a rollout, a canary, a price change and a site that was off
while a model rolled out; the JSON says no site was left behind and models went head-only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_two_sites_follow_every_change_and_none_is_left_behind(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "fleet.py"), "--sites", "2", "--per-process", "1",
         "--canary", "1", "--offline-hold-s", "1", "--min-load-s", "5", "--rate", "1",
         "--keep", str(tmp_path / "fleet")],
        capture_output=True, text=True, timeout=280, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["sites"] == 2 and result["offline_sites"] == 1
    assert result["sites_left_behind"] == 0
    assert result["photos_stored"] > 0 and result["captures_refused_at_sites"] == 0
    delivered = result["model_bytes_delivered"]
    # Sites held the backbone after the first model: every later model came as its head alone.
    assert delivered.get("full", 0) == 0 and delivered["head"] > 0
    assert result["model_bytes"]["head"] < 10_000
    for key in ("rollout_all_s", "catalogue_all_s", "canary_s", "offline_converge_s", "core_rss_mb",
                "core_connections", "db_bytes_per_site", "core_cpu_ms_per_photo"):
        assert result[key] is not None and result[key] >= 0, key
