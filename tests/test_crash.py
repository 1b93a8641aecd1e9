"""SIGKILL at random moments over a run's whole life, the file's creation included (reduced:
scripts/crash_test.py does 20 and more)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "crash_test.py"


def test_killed_runs_keep_every_flushed_measurement_and_resume_to_the_same_parameters(tmp_path):
    spec = importlib.util.spec_from_file_location("crash_test", SCRIPT)
    crash_test = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(crash_test)
    # kills from 0 s after a start to the reference run's whole duration; half of a new run's in the
    # 0.2 s after its file appears
    result = crash_test.crash_test(kills=5, budget=700, seed=11, workdir=tmp_path, creation_share=0.5,
                                   log=lambda *a: None)
    assert result["problems"] == []
    assert result["kills"] == 5 and result["chains_completed"] >= 1
    assert result["files_checked"] + result["kills_before_file"] + result["kills_during_creation"] == 5
    assert result["kills_in_creation_window"] >= 1
    assert all(entry["after_s"] <= result["life_s"] for entry in result["kill_log"])
    # a file left unusable is one whose creation was cut (counted apart until creation is atomic)
    assert result["unusable_other"] == 0 and result["unusable_creation"] == result["kills_during_creation"]
    assert result["ok"]
