"""`labpgt study`: study files checked up front, trials as train runs on a real Dask LocalCluster
(2 worker processes), resumed after Ctrl-C, retried when a worker dies, queued on a station."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed")
pytest.importorskip("optuna")

from labpgt.runfile import RunReader  # noqa: E402
from labpgt.study.spec import StudyError, load_study, trial_name  # noqa: E402

WAIT_S = 120  # the longest a test waits for an event before it fails (never a timing assertion)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def wait_until(condition, what: str):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


def run_state(path: Path) -> dict:
    from labpgt.study.trial import run_file_state

    return run_file_state(path)


@pytest.fixture(scope="module")
def cluster():
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", scheduler_kwargs={"dashboard": False}) as local:
        yield local


# --------------------------------------------------------------------------- the study file
@pytest.mark.parametrize("body, expected", [
    ("[base]\nbudgett = 100\n", ["[base]", "'budgett'", "allowed:", "budget"]),
    ("[base]\nbudget = 'many'\n", ["budget", "'many'", "int"]),
    ("[grid]\nestimator = ['node', 'magic']\n", ["estimator", "'magic'", "allowed:", "twin"]),
    ("[grid]\nestimator = 'node'\n", ["[grid] estimator", "'node'", "non-empty list"]),
    ("[grid]\nseed = [1, 2]\n", ["[grid] seed", "[study] seeds"]),
    ("[base]\nout = 'x'\n", ["[base] out", "set by the study"]),
    ("[study]\nseeds = [1, 1]\n", ["[study] seeds", "distinct"]),
    ("[study]\nworker = 2\n", ["[study]", "'worker'", "allowed: out, seeds, workers"]),
    ("[sweep]\nx = 1\n", ["'sweep'", "allowed: study, base, grid, variants, search"]),
    ("[search]\ntrials = 3\n[search.space]\nlr = { low = 0.1, high = 0.01 }\n", ["lr", "low < high"]),
    ("[search]\ntrials = 3\n[search.space]\ndataset = { low = 1, high = 2 }\n", ["dataset", "choices"]),
    ("[search]\ntrials = 0\n[search.space]\nlr = { low = 0.01, high = 0.1 }\n", ["[search] trials", "1 or more"]),
    ("[search]\ntrials = 2\nobjective = 'speed'\n[search.space]\nlr = { low = 0.01, high = 0.1 }\n",
     ["objective", "'speed'", "final_test_accuracy"]),
    ("[grid]\nestimator = ['node']\n[search]\ntrials = 2\n[search.space]\nlr = { low = 0.01, high = 0.1 }\n",
     ["[search]", "[grid]"]),
    ("[base]\nestimator = 'backprop'\n", ["backprop", "transformer"]),
])
def test_a_bad_study_file_is_refused_in_one_line_naming_file_key_and_allowed(tmp_path, body, expected):
    path = write(tmp_path / "bad.toml", body)
    with pytest.raises(StudyError) as info:
        load_study(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for part in expected:
        assert part in message, message


def test_the_cli_refuses_a_bad_study_file_with_exit_2(tmp_path):
    path = write(tmp_path / "bad.toml", "[grid]\nestimator = ['node', 'magic']\n")
    proc = subprocess.run([sys.executable, "-m", "labpgt.cli", "study", str(path)], capture_output=True, text=True,
                          timeout=WAIT_S)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and str(path) in proc.stderr and "magic" in proc.stderr
    assert not (tmp_path / "studies").exists()


def test_grid_and_variants_cross_with_seeds_under_stable_names(tmp_path):
    path = write(tmp_path / "s.toml", "[study]\nseeds = [3, 4]\n[base]\nbudget = 640\n"
                                      "[grid]\nestimator = ['node', 'pgt']\n[[variants]]\nlr = 0.05\n"
                                      "[[variants]]\nlr = 0.02\nbatch_size = 16\n")
    study = load_study(path, out=str(tmp_path / "out"))
    trials = study.trials()
    assert [t.overrides for t in trials[:3]] == [{"lr": 0.05, "estimator": "node", "seed": 3},
                                                 {"lr": 0.05, "estimator": "node", "seed": 4},
                                                 {"lr": 0.05, "estimator": "pgt", "seed": 3}]
    assert len(trials) == 8 and len({t.name for t in trials}) == 8
    assert trials[0].experiment["budget"] == 640 and trials[0].experiment["progress"] is False
    # the name depends on the options only: a rerun of the same study finds the same folders
    assert trial_name({"lr": 0.05, "estimator": "node", "seed": 3}) == trials[0].name
    assert trial_name({"estimator": "node", "lr": 0.05, "seed": 3}) == trials[0].name


# --------------------------------------------------------------------------- running
def test_a_study_runs_fails_one_trial_stops_on_ctrl_c_and_resumes(tmp_path):
    """Two worker processes (the CLI's own LocalCluster); SIGINT to the driver stops both trials,
    their run files marked aborted; the rerun resumes them from their checkpoints, keeps the
    failed trial's error, and prints the summary."""
    out = tmp_path / "study"
    path = write(tmp_path / "s.toml", f"""
[study]
out = "{out}"
seeds = [0, 1]
[base]
budget = 6000
eval_every = 5
checkpoint_every = 5
[[variants]]
estimator = "node"
[[variants]]
estimator = "node"
budget = 10        # smaller than one batch: this trial fails, the study goes on
""")
    command = [sys.executable, "-m", "labpgt.cli", "study", str(path), "--workers", "2"]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def two_past_their_first_checkpoint():
            states = [run_state(p) for p in (out / "trials").glob("*/run.h5")]
            return sum(s["status"] != "unreadable" and s.get("steps", 0) > 5 for s in states) >= 2
        wait_until(two_past_their_first_checkpoint, "two trials past their first checkpoint")
        driver.send_signal(signal.SIGINT)
        output, _ = driver.communicate(timeout=WAIT_S)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, output
    assert "interrupted" in output
    index = json.loads((out / "index.json").read_text())
    aborted = [name for name, e in index["trials"].items() if e["status"] == "aborted"]
    assert aborted, index  # (on a loaded machine one trial may have finished before the signal)
    for name in aborted:
        with RunReader(out / "trials" / name / "run.h5") as reader:
            assert reader.status == "aborted"

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=WAIT_S * 3)
    assert rerun.returncode == 1, rerun.stdout + rerun.stderr  # 1: one trial failed
    index = json.loads((out / "index.json").read_text())
    statuses = sorted(e["status"] for e in index["trials"].values())
    assert statuses == ["completed", "completed", "failed", "failed"]
    for name in aborted:
        entry = index["trials"][name]
        assert entry["status"] == "completed" and entry["action"] == "resumed" and entry["resumes"] == 1
        assert entry["final_measurements"] >= 6000 and 0.0 <= entry["final_test_accuracy"] <= 1.0
    failed = [e for e in index["trials"].values() if e["status"] == "failed"]
    assert all("budget 10 is smaller than one batch" in e["error"] for e in failed)
    assert "| estimator=node |" in rerun.stdout and "| estimator=node budget=10 |" in rerun.stdout
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trials_on_a_station_file_run_one_at_a_time(tmp_path, cluster):
    """Two workers, two trials on one (simulated) station: the second starts after the first ended."""
    from dask.distributed import Client
    from sim.server import SimServer

    from labpgt.study.runner import StudyRunner

    with SimServer(seed=2) as server:
        station = write(tmp_path / "station.toml", server.station_toml())
        path = write(tmp_path / "s.toml", f"[study]\nout = '{tmp_path / 'out'}'\nseeds = [0, 1]\n"
                                          f"[base]\nstation = '{station}'\nbudget = 64\neval_every = 2\n")
        study = load_study(path)
        lines = []
        with Client(cluster) as client:
            assert StudyRunner(study, client, report=lines.append).run() == 0
    intervals = []
    for trial in study.trials():
        with RunReader(tmp_path / "out" / "trials" / trial.name / "run.h5") as reader:
            history = reader.status_history()
            assert reader.status == "completed"
            intervals.append((history[0]["time_s"], history[-1]["time_s"]))
    (first_start, first_end), (second_start, second_end) = sorted(intervals)
    assert first_end <= second_start
    assert any("one at a time" in line for line in lines)


def test_an_optuna_search_spends_its_trial_budget_and_resumes_without_rerunning(tmp_path, cluster):
    from dask.distributed import Client

    from labpgt.study.runner import StudyRunner
    from labpgt.study.summary import read_index

    path = write(tmp_path / "s.toml", f"""
[study]
out = "{tmp_path / 'out'}"
seeds = [0]
[base]
estimator = "node"
budget = 320
eval_every = 2
[search]
trials = 3
sampler = "random"
seed = 7
[search.space]
lr = {{ low = 0.01, high = 0.1, log = true }}
batch_size = {{ choices = [16, 32] }}
""")
    study = load_study(path)
    with Client(cluster) as client:
        assert StudyRunner(study, client, report=lambda line: None).run() == 0
        index = read_index(study.out)
        points = index["search_points"]
        assert sorted(points) == ["0", "1", "2"] and all(p["state"] == "complete" for p in points.values())
        assert all(0.01 <= p["params"]["lr"] <= 0.1 and p["params"]["batch_size"] in (16, 32) for p in points.values())
        best = index["search_best"]
        assert best["value"] == max(p["value"] for p in points.values())
        # the same study again: the budget is spent, every trial is completed, nothing runs
        lines = []
        assert StudyRunner(load_study(path), client, report=lines.append).run() == 0
    assert not any(line.startswith("trial ") for line in lines)
    assert read_index(study.out)["search_points"] == points


def test_a_worker_lost_mid_trial_is_retried_and_the_run_resumes(tmp_path):
    """SIGKILL the worker process running a trial: its child stops (PR_SET_PDEATHSIG), Dask runs
    the task again on a worker, which resumes the run file from its last checkpoint."""
    import psutil
    from dask.distributed import LocalCluster

    out = tmp_path / "out"
    path = write(tmp_path / "s.toml", f"[study]\nout = '{out}'\nseeds = [5]\n"
                                      f"[base]\nestimator = 'node'\nbudget = 12000\neval_every = 10\n"
                                      f"checkpoint_every = 10\n")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", scheduler_kwargs={"dashboard": False}) as local:
        driver = subprocess.Popen([sys.executable, "-m", "labpgt.cli", "study", str(path), "--scheduler",
                                   local.scheduler_address], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
        try:
            run_file = wait_until(lambda: next(iter((out / "trials").glob("*/run.h5")), None)
                                  if (out / "trials").exists() else None, "the trial's run file")
            state = wait_until(lambda: (s := run_state(run_file))["status"] == "running" and s["steps"] > 10 and s,
                               "the trial past its first checkpoint")
            worker = psutil.Process(state["writer_pid"]).parent()
            os.kill(worker.pid, signal.SIGKILL)
            output, _ = driver.communicate(timeout=WAIT_S * 2)
        finally:
            if driver.poll() is None:
                driver.kill()
    assert driver.returncode == 0, output
    entry = next(iter(json.loads((out / "index.json").read_text())["trials"].values()))
    assert entry["status"] == "completed" and entry["attempts"] == 2 and entry["action"] == "resumed"
    assert entry["resumes"] == 1 and "[attempt 2]" in output
    with RunReader(run_file) as reader:
        assert reader.status == "completed"
        assert [h["status"] for h in reader.status_history()][:2] == ["running", "aborted"]


def test_bench_training_trials_give_the_scripts_own_results(tmp_path, cluster):
    """Trial kind "bench-training": bench_training's run_one on a worker; the same job run here
    gives the same numbers (the runs are seeded)."""
    from dask.distributed import Client

    from labpgt.study.kinds import run_bench_training
    from labpgt.study.runner import StudyRunner
    from labpgt.study.summary import read_index

    path = write(tmp_path / "s.toml", f"[study]\nkind = 'bench-training'\nout = '{tmp_path / 'out'}'\nseeds = [2]\n"
                                      "[base]\nmethod = 'node'\nbudget = 320\nfinal_repeats = 1\n"
                                      "[grid]\ncondition = ['default', 'noise3']\n")
    study = load_study(path)
    with Client(cluster) as client:
        assert StudyRunner(study, client, report=lambda line: None).run() == 0
    index = read_index(study.out)
    for trial in study.trials():
        stored = json.loads((study.out / "trials" / trial.name / "result.json").read_text())
        here = run_bench_training(trial.experiment)
        assert stored["curve"] == [list(point) for point in here["curve"]]
        assert stored["final_accuracy"] == here["final_accuracy"]
        assert index["trials"][trial.name]["final_test_accuracy"] == here["final_accuracy"]


def test_a_bench_training_study_refuses_an_unknown_method(tmp_path):
    path = write(tmp_path / "s.toml", "[study]\nkind = 'bench-training'\n[grid]\nmethod = ['node', 'adam']\n")
    with pytest.raises(StudyError, match=r"'adam' is not allowed; allowed: oracle, node"):
        load_study(path)
