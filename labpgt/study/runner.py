"""The study's driver: hands trials to Dask workers, keeps the index, stops cleanly.

- Trials run as Dask tasks (:func:`labpgt.study.trial.run_trial`), at most one per worker
  thread at a time, so the driver keeps the order and can hold trials back.
- A trial that names a station file joins that station's queue: one trial at a time per
  station, never two in parallel (a real rig is never shared). The embedded simulator has no
  queue: every trial has its own.
- A worker lost mid-trial: Dask reschedules the task on another worker (up to the scheduler's
  ``allowed-failures``); the new attempt resumes the run file from its last checkpoint.
- Ctrl-C (or SIGTERM): every worker stops its trial children (one SIGTERM each: they finish the
  step in flight, checkpoint, mark their run files aborted), the index and summary are written,
  exit 130. Rerunning the study skips completed trials and resumes the others.
"""
from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from labpgt.study import summary as summary_mod
from labpgt.study.options import config_to_toml
from labpgt.study.kinds import KINDS
from labpgt.study.spec import Study, Trial
from labpgt.study.trial import (RUN_FILE, STOP_TIMEOUT_S, TrialTask, direct_result_state, pid_alive, run_file_state,
                                run_trial, stop_children)

log = logging.getLogger(__name__)

TRIALS_FOLDER = "trials"
EXTRA_HINT = "pip install 'labpgt[study]'"


@contextmanager
def dask_client(workers: int, scheduler: str | None = None) -> Iterator:
    """A Dask client: on ``scheduler`` (an existing cluster), else on a local cluster of
    ``workers`` processes with one thread each, bound to loopback, no dashboard."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise RuntimeError(f"labpgt study runs on Dask distributed, which is not installed: {EXTRA_HINT}") from None
    if scheduler is not None:
        with Client(scheduler) as client:
            yield client
        return
    # loopback only, no dashboard: the scheduler's small HTTP server (health checks) on a free
    # loopback port, never the default ":8787", which means every interface
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", scheduler_kwargs={"dashboard": False},
                      worker_dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client


def trial_toml(trial: Trial) -> str:
    """The trial's experiment file: every option the study resolved, except those it owns."""
    config = {k: v for k, v in trial.experiment.items() if k not in KINDS["train"].owned}
    if config.get("station") is not None:
        # relative to where the study was started (as for labpgt train), absolute for the workers
        config["station"] = str(Path(config["station"]).resolve())
    return config_to_toml(config)


@dataclass
class _Point:
    """A search point: its parameters, the Optuna trial (None when resumed from the index), its seeds' trials."""

    number: int
    params: dict
    optuna_trial: object | None
    trials: list[str] = field(default_factory=list)


class StudyRunner:
    def __init__(self, study: Study, client, report: Callable[[str], None] = log.info):
        self.study, self.client, self.report = study, client, report
        self.folder = study.out.resolve()  # absolute: workers need not share the driver's cwd
        self.trials_folder = self.folder / TRIALS_FOLDER
        self.index = summary_mod.read_index(self.folder)
        self.index["study_file"] = str(study.path)
        self.index["study_toml"] = study.text
        self.pending: list[Trial] = []
        self.in_flight: dict = {}  # future -> Trial
        self.busy_stations: set[str] = set()
        self.points: dict[int, _Point] = {}
        self.optuna_study = None

    # ------------------------------------------------------------------ bookkeeping
    def _entry(self, trial: Trial) -> dict:
        entry = self.index["trials"].setdefault(trial.name, {})
        entry.update({"options": trial.overrides, "search_point": trial.search_point, "kind": trial.kind,
                      "station": trial.station})
        if trial.kind == "train":
            entry["run_file"] = str(Path(TRIALS_FOLDER) / trial.name / RUN_FILE)
        entry.setdefault("status", "pending")
        return entry

    def _record(self, trial: Trial, result: dict) -> None:
        entry = self._entry(trial)
        for key in ("evaluations", "final_test_accuracy", "final_test_loss", "final_measurements", "error"):
            entry.pop(key, None)  # figures of an earlier attempt are replaced, not merged
        entry.update({k: v for k, v in result.items() if k not in ("name",)})
        summary_mod.write_index(self.folder, self.index)

    def _station_key(self, trial: Trial) -> str | None:
        return None if trial.station is None else str(Path(trial.station).resolve())

    def _capacity(self) -> int:
        return max(1, sum(self.client.nthreads().values()))

    # ------------------------------------------------------------------ scheduling
    def _state(self, trial: Trial) -> dict:
        folder = self.trials_folder / trial.name
        return run_file_state(folder / RUN_FILE) if trial.kind == "train" else direct_result_state(folder)

    def _already_done(self, trial: Trial) -> bool:
        state = self._state(trial)
        if state["status"] != "completed":
            return False
        entry = self._entry(trial)
        if entry.get("status") != "completed":  # index lost or behind the run files: catch up
            self._record(trial, {**state, "action": "skipped"})
        return True

    def _submit_ready(self) -> None:
        capacity = self._capacity()
        for trial in list(self.pending):
            if len(self.in_flight) >= capacity:
                return
            station = self._station_key(trial)
            if station is not None and station in self.busy_stations:
                continue  # this station's queue: wait for its trial in flight
            self.pending.remove(trial)
            task = TrialTask(name=trial.name, folder=str(self.trials_folder / trial.name), kind=trial.kind,
                             config_toml=trial_toml(trial) if trial.kind == "train" else "",
                             job=trial.experiment)
            future = self.client.submit(run_trial, task, key=f"trial-{trial.name}-{time.time_ns()}", pure=False)
            self.in_flight[future] = trial
            if station is not None:
                self.busy_stations.add(station)
            self._entry(trial)["status"] = "running"

    def _finish(self, future, trial: Trial) -> None:
        station = self._station_key(trial)
        self.busy_stations.discard(station)
        try:
            result = future.result()
        except Exception as exc:  # the task itself failed (e.g. every worker holding it was lost)
            state = self._state(trial)
            result = {**state, "status": "failed" if state["status"] != "completed" else "completed",
                      "error": f"{type(exc).__name__}: {exc}"}
        self._record(trial, result)
        figure = (f", test accuracy {result['final_test_accuracy']:.3f} at {result['final_measurements']} "
                  f"measurements" if result.get("final_test_accuracy") is not None else "")
        action = result.get("action", "")
        self.report(f"trial {trial.name}: {result['status']}{figure}"
                    + (f" ({action})" if action in ("resumed", "skipped") else "")
                    + (f" [attempt {result['attempts']}]" if result.get("attempts", 1) > 1 else "")
                    + (f" - {result['error']}" if result.get("error") else ""))
        if trial.search_point is not None:
            self._point_finished(trial.search_point)

    def _wait_one(self) -> None:
        from dask.distributed import wait

        done, _ = wait(list(self.in_flight), return_when="FIRST_COMPLETED")
        for future in done:
            self._finish(future, self.in_flight.pop(future))

    # ------------------------------------------------------------------ search
    def _setup_search(self) -> None:
        try:
            import optuna
        except ImportError:
            raise RuntimeError(f"[search] runs on Optuna, which is not installed: {EXTRA_HINT}") from None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        search = self.study.search
        sampler = (optuna.samplers.TPESampler(seed=search.seed) if search.sampler == "tpe"
                   else optuna.samplers.RandomSampler(seed=search.seed))
        self.optuna_study = optuna.create_study(direction=search.direction, sampler=sampler)
        self.distributions = _distributions(search)
        # points from an earlier run of this study: finished ones are told to the sampler, the
        # others run again (their trials resume)
        for number_text, point in sorted(self.index["search_points"].items(), key=lambda kv: int(kv[0])):
            number = int(number_text)
            if point.get("state") in ("complete", "fail"):
                self._tell_finished(point)
                continue
            self._queue_point(number, point["params"], None)

    def _queue_point(self, number: int, params: dict, optuna_trial) -> None:
        point = _Point(number, params, optuna_trial)
        self.points[number] = point
        self.index["search_points"][str(number)] = {"params": params, "state": "running"}
        for seed in self.study.seeds:
            trial = self.study.trial(params, seed, search_point=number)
            point.trials.append(trial.name)
            self._entry(trial)
            if not self._already_done(trial):
                self.pending.append(trial)
        if not any(t.search_point == number for t in self.pending) and not self._point_in_flight(number):
            self._point_finished(number)

    def _point_in_flight(self, number: int) -> bool:
        return any(t.search_point == number for t in self.in_flight.values())

    def _ask_points(self) -> None:
        """New points while the budget lasts and workers are idle (the sampler sees every result so far)."""
        search = self.study.search
        while (len(self.index["search_points"]) < search.trials and not self.pending
               and len(self.in_flight) < self._capacity()):
            trial = self.optuna_study.ask(self.distributions)
            number = max(map(int, self.index["search_points"]), default=-1) + 1
            self._queue_point(number, dict(trial.params), trial)

    def _point_finished(self, number: int) -> None:
        point = self.points[number]
        if any(t.search_point == number for t in self.pending) or self._point_in_flight(number):
            return
        entries = [self.index["trials"][name] for name in point.trials]
        objective = self.study.search.objective
        values = [e[objective] for e in entries if e["status"] == "completed" and e.get(objective) is not None]
        record = self.index["search_points"][str(number)]
        if any(e["status"] not in ("completed", "failed") for e in entries):
            return  # interrupted: neither told nor counted as failed; rerun resumes it
        record.update({"state": "complete" if values else "fail",
                       "value": float(_median(values)) if values else None, "seeds_completed": len(values)})
        self._tell_finished(record, point.optuna_trial)
        summary_mod.write_index(self.folder, self.index)

    def _tell_finished(self, record: dict, optuna_trial=None) -> None:
        import optuna

        state = optuna.trial.TrialState.COMPLETE if record["state"] == "complete" else optuna.trial.TrialState.FAIL
        if optuna_trial is not None:
            self.optuna_study.tell(optuna_trial, record["value"] if record["state"] == "complete" else None,
                                   state=state)
        else:
            self.optuna_study.add_trial(optuna.trial.create_trial(
                params=record["params"], distributions=self.distributions, state=state,
                value=record["value"] if record["state"] == "complete" else None))

    def _best_point(self) -> dict | None:
        search = self.study.search
        done = [(int(n), p) for n, p in self.index["search_points"].items() if p.get("state") == "complete"]
        if not done:
            return None
        pick = max if search.direction == "maximize" else min
        number, point = pick(done, key=lambda np_: np_[1]["value"])
        return {"point": number, "params": point["params"], "value": point["value"], "objective": search.objective}

    # ------------------------------------------------------------------ the run
    def run(self) -> int:
        self.trials_folder.mkdir(parents=True, exist_ok=True)
        stations = self.study.stations()
        if stations:
            self.report(f"station file(s) {', '.join(sorted(stations))}: their trials run one at a time (a queue)")
        if self.study.search is None:
            trials = self.study.trials()
            for trial in trials:
                self._entry(trial)["in_study"] = True
                if self._already_done(trial):
                    continue
                self.pending.append(trial)
            # trials of an earlier version of the study file stay in the index (and on disk) but
            # leave the summary
            for name in set(self.index["trials"]) - {trial.name for trial in trials}:
                self.index["trials"][name]["in_study"] = False
        else:
            self._setup_search()
        summary_mod.write_index(self.folder, self.index)
        known = sum(entry.get("in_study", True) for entry in self.index["trials"].values())
        skipped = known - len(self.pending)
        self.report(f"study {self.study.path}: {known} trials known, {skipped} already completed; "
                    f"folder {self.folder}; {self._capacity()} worker thread(s)")
        interrupted = False
        try:
            while True:
                if self.study.search is not None:
                    self._ask_points()
                self._submit_ready()
                if not self.in_flight:
                    break
                self._wait_one()
        except KeyboardInterrupt:
            interrupted = True
            self._stop()
        finally:
            if self.study.search is not None:
                self.index["search_best"] = self._best_point()
            summary_mod.write_index(self.folder, self.index)
        text, files = summary_mod.write_summary(self.folder, self.index, self.study.path.stem)
        self.report("\n" + text)
        self.report("\n".join(f"written: {path}" for path in [self.folder / summary_mod.INDEX_FILE, *files]))
        if interrupted:
            self.report(f"interrupted: rerun `labpgt study {self.study.path}` to resume")
            return 130
        return 0 if not summary_mod.failures(self.index) else 1

    def _stop(self) -> None:
        """Ctrl-C: stop the children on every worker, record their run files, cancel the rest."""
        self.report(f"interrupted: stopping {len(self.in_flight)} trial(s) in flight (each checkpoints and is "
                    f"marked aborted)")
        try:
            self.client.run(stop_children, STOP_TIMEOUT_S)
        except Exception as exc:  # workers already gone: their children got SIGTERM from the kernel
            log.warning("stopping the trials through the workers failed (%s); waiting for the children", exc)
        for future, trial in self.in_flight.items():
            future.cancel()
            entry = self._entry(trial)
            if trial.kind != "train":  # in-process: nothing to stop or resume; reruns from the start
                entry["status"] = "pending"
                continue
            state = _settled_state(self.trials_folder / trial.name / RUN_FILE)
            entry.update({k: v for k, v in state.items() if k not in ("writer_pid", "writer_host")})
            if state["status"] == "missing":
                entry["status"] = "pending"
        self.in_flight.clear()


def _settled_state(path: Path, timeout_s: float = STOP_TIMEOUT_S) -> dict:
    """A run file's state once its writer (a stopped child on this host) has exited."""
    deadline = time.monotonic() + timeout_s
    state = run_file_state(path)
    while (state["status"] == "running" and state.get("writer_host") == socket.gethostname()
           and state.get("writer_pid") and pid_alive(state["writer_pid"]) and time.monotonic() < deadline):
        time.sleep(0.2)
        state = run_file_state(path)
    return state


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])


def _distributions(search) -> dict:
    import optuna.distributions as d

    out = {}
    for dim in search.space:
        if dim.choices is not None:
            out[dim.name] = d.CategoricalDistribution(list(dim.choices))
        elif isinstance(dim.low, int):
            out[dim.name] = d.IntDistribution(dim.low, dim.high, log=dim.log, step=int(dim.step or 1))
        else:
            out[dim.name] = d.FloatDistribution(dim.low, dim.high, log=dim.log, step=dim.step)
    return out


def run_study(study: Study, workers: int, scheduler: str | None = None,
              report: Callable[[str], None] = log.info) -> int:
    """Run (or resume) ``study`` on a local cluster of ``workers`` processes or on ``scheduler``."""
    study.out.mkdir(parents=True, exist_ok=True)
    with dask_client(workers, scheduler) as client:
        return StudyRunner(study, client, report).run()
