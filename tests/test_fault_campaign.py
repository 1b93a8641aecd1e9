"""Interrupts in the phases of `labpgt train` on real-paced simulated instruments (reduced:
scripts/fault_campaign.py runs 4 trials of every phase x kind, 112 in all)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fault_campaign.py"

#: one of each kind, in the phases where each is the hardest: Ctrl-C while the start-up ramp waits
#: for the coil, SIGKILL with RF on and current flowing, an instrument dying in the probe,
#: SIGTERM during the ramp down
CASES = [("ramp", "sigint"), ("training", "sigkill"), ("probe", "death"), ("ramp-down", "sigterm")]


def test_interrupts_in_each_phase_leave_the_rig_safe_say_so_truly_and_leave_usable_files(tmp_path):
    spec = importlib.util.spec_from_file_location("fault_campaign", SCRIPT)
    campaign = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(campaign)
    # a short run (one step): its training is aimed at 1-2 s after RF on (the file created, the step 0
    # checkpoint written, measuring); the creation window is the crash test's (tests/test_crash.py)
    windows = {**campaign.WINDOWS_S, "training": (1.0, 2.0)}
    result = campaign.campaign(1, seed=3, budget=64, jobs=4, workdir=tmp_path, cases=CASES, windows=windows,
                               log=lambda *a: None)
    trials = {(t["phase"], t["kind"]): t for t in result["trials"]}
    assert set(trials) == set(CASES)
    for t in trials.values():
        assert t["problems"] == [], (t["phase"], t["kind"], t["problems"])
        assert t["exit"] is not None  # every command ended by itself
        assert t["largest_current_step_a"] <= campaign.RAMP_STEP_A + campaign.READBACK_RESOLUTION_A
    sigint = trials[("ramp", "sigint")]
    assert sigint["exit"] == 130 and sigint["safe_after"] and sigint["claims_safe"]
    killed = trials[("training", "sigkill")]
    # SIGKILL: nothing ran; with RF on and current flowing the rig was left as it was, then check made it safe
    assert killed["exit"] == -9 and killed["left_as_it_was"] and killed["state_after"]["current_output"]
    assert killed["safe_after_check"] and killed["check_exit"] == 0
    dead = trials[("probe", "death")]
    assert dead["exit"] not in (0, None) and dead["safe_after_check"]
    # never "left safe" unless it is; a warning whenever it is not (a silent instrument's state is unknown: a
    # warning even when the simulator shows it safe)
    assert (not dead["claims_safe"] or dead["safe_after"]) and (dead["warns"] or dead["safe_after"])
    down = trials[("ramp-down", "sigterm")]
    assert down["safe_after"] and down["claims_safe"]
    for t in trials.values():
        if t["file"]:
            assert t["file"]["usable"] and t["file"]["inspect_exit"] == 0, t["file"]
    assert killed["landed"] == "training" and killed["file"]["resume"] == "resumed"
    assert result["summary"]["total"]["unsafe"] == 0 and result["summary"]["total"]["unusable"] == 0
