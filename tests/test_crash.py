"""SIGKILL at random moments (reduced: scripts/crash_test.py does 20 and more)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "crash_test.py"


def test_killed_runs_keep_every_flushed_measurement_and_resume_to_the_same_parameters(tmp_path):
    spec = importlib.util.spec_from_file_location("crash_test", SCRIPT)
    crash_test = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(crash_test)
    result = crash_test.crash_test(kills=3, budget=700, seed=11, workdir=tmp_path, max_delay_s=2.0,
                                   log=lambda *a: None)
    assert result["problems"] == []
    assert result["kills"] == 3 and result["chains_completed"] >= 1
    assert result["files_checked"] + result["kills_before_file"] + result["kills_during_creation"] == 3
    assert result["ok"]
