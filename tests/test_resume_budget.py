"""`labpgt train --resume RUN.h5 --budget N`: the budget changes and is recorded; any other option
that would change the experiment is refused by name; the run stays bit for bit the uninterrupted one."""
from __future__ import annotations

import numpy as np
import pytest

from labpgt.cli import main
from labpgt.runfile import RunReader

ARGS = ["--estimator", "node", "--seed", "4", "--checkpoint-every", "2", "--eval-every", "4", "--no-progress"]


def params(path) -> bytes:
    with RunReader(path) as r:
        return np.asarray(r.last_checkpoint()["params"]).tobytes()


def test_resume_extends_the_budget_records_it_and_refuses_other_changes(tmp_path, capsys, monkeypatch,
                                                                       ctrl_c_at_checkpoint):
    path = tmp_path / "run.h5"
    with monkeypatch.context() as m:
        ctrl_c_at_checkpoint(m, at_call=3)  # checkpoints at steps 0 and 2, then Ctrl-C
        assert main(["train", "--budget", "640", "--out", str(path), *ARGS]) == 130
    with RunReader(path) as r:
        spent = int(r.last_checkpoint()["measurements"])
        assert r.status == "aborted" and spent == 128  # 2 steps x 32 samples x 2 (antithetic)
    before = path.read_bytes()

    refusals = [
        (["--budget", "100"], f"--budget 100 is already spent: the run continues from a checkpoint after {spent} "
                              f"training measurements; allowed: {spent} or more"),
        (["--seed", "9"], "--seed 9 would change the recorded experiment (seed = 4)"),
        (["--dataset", "digits"], "--dataset 'digits' would change the recorded experiment (dataset = 'iris')"),
        (["--lr", "0.3", "--budget", "2000"], "--lr 0.3 would change the recorded experiment (lr not set)"),
    ]
    for extra, message in refusals:
        capsys.readouterr()
        assert main(["train", "--resume", str(path), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err, err
        if extra[0] != "--budget":
            assert "allowed with --resume: --budget, --progress/--no-progress" in err
        assert path.read_bytes() == before  # refused before anything was written

    # extend to 1280 (the same seed may be repeated), interrupted again on the way ...
    with monkeypatch.context() as m:
        ctrl_c_at_checkpoint(m, at_call=2)
        assert main(["train", "--resume", str(path), "--budget", "1280", "--seed", "4", "--no-progress"]) == 130
    assert "with a budget of 1280 training measurements (was 640; 128 spent" in capsys.readouterr().err
    # ... and resumed without --budget: the extended budget stays in force
    assert main(["train", "--resume", str(path), "--no-progress"]) == 0
    with RunReader(path) as r:
        assert r.status == "completed" and int(r.last_checkpoint()["measurements"]) >= 1280
        assert r.resumes()["budget"].tolist() == [1280, 1280]
        assert r.budget_in_force() == 1280
        assert any(h["message"] == "resumed; budget 1280" for h in r.status_history())

    # the same as one uninterrupted run with budget 1280, and it replays bit for bit
    straight = tmp_path / "straight.h5"
    assert main(["train", "--budget", "1280", "--out", str(straight), *ARGS]) == 0
    assert params(path) == params(straight)
    capsys.readouterr()
    assert main(["replay", str(path)]) == 0
    assert "bit for bit" in capsys.readouterr().out

    # a completed run is not extended
    assert main(["train", "--resume", str(path), "--budget", "5000"]) == 2
    assert "already completed" in capsys.readouterr().err


def test_resume_can_shorten_a_budget_not_yet_spent(tmp_path, monkeypatch, ctrl_c_at_checkpoint):
    path = tmp_path / "run.h5"
    with monkeypatch.context() as m:
        ctrl_c_at_checkpoint(m, at_call=3)
        assert main(["train", "--budget", "2000", "--out", str(path), *ARGS]) == 130
    assert main(["train", "--resume", str(path), "--budget", "384", "--no-progress"]) == 0
    straight = tmp_path / "straight.h5"
    assert main(["train", "--budget", "384", "--out", str(straight), *ARGS]) == 0
    assert params(path) == params(straight)
    with RunReader(path) as r:
        assert int(r.last_checkpoint()["measurements"]) == 384 and r.resumes()["budget"].tolist() == [384]


@pytest.mark.parametrize("flag", ["--config"])
def test_a_config_file_with_resume_is_held_to_the_same_rule(tmp_path, capsys, monkeypatch, flag, ctrl_c_at_checkpoint):
    path = tmp_path / "run.h5"
    with monkeypatch.context() as m:
        ctrl_c_at_checkpoint(m, at_call=2)
        assert main(["train", "--budget", "640", "--out", str(path), *ARGS]) == 130
    (tmp_path / "exp.toml").write_text('seed = 4\nestimator = "spsa"\n')
    capsys.readouterr()
    assert main(["train", "--resume", str(path), flag, str(tmp_path / "exp.toml")]) == 2
    assert "--estimator 'spsa' would change the recorded experiment (estimator = 'node')" in capsys.readouterr().err
