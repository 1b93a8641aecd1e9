"""What the watch page shows of one run file, read through SWMR from the watcher's own process.

:class:`WatchedRun` owns one :class:`labpgt.runfile.RunReader` for a file and turns it into an
immutable :class:`RunSnapshot` whenever the writer has committed something new. Every page of
that file shares the same snapshot, so the file is read once however many pages are open.
Only committed rows are read (rows beyond /committed are in flight), and the file is never
opened for writing.

A run whose status is final (completed, failed, aborted) or whose writer is gone without
saying so (killed, not resumed) is frozen: its reader is closed, and the file is only looked
at again (stat, no HDF5) in case a ``--resume`` brings it back to life.
"""
from __future__ import annotations

import json
import logging
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from labpgt.runfile import RunFileError, RunReader
from labpgt.runfile.format import pid_alive as _pid_alive

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

log = logging.getLogger(__name__)

#: how many recent traces the waterfall keeps
WATERFALL_TRACES = 60
#: how many recent measurements the knob plots keep (older ones scroll out of the browser too)
KNOB_MEASUREMENTS = 3_000
#: steps of the last this many seconds give the rate
RATE_WINDOW_S = 30.0
#: a poll within this long of the previous one returns the same snapshot (pages share polls)
MIN_POLL_INTERVAL_S = 0.5
FINAL_STATUSES = ("completed", "failed", "aborted")


@dataclass(frozen=True, eq=False)
class RunSnapshot:
    """One consistent view of a run file; ``version`` grows whenever the file changed.

    ``generation`` grows when rows shown before may have gone (a ``--resume`` abandons the rows
    recorded after its checkpoint): a page then replaces its data instead of appending.
    """

    path: Path
    version: int
    generation: int
    status: str  # running, completed, failed, aborted, killed, unknown
    status_message: str
    writer: str  # pid@host of the last status row
    step: int
    measurements: int  # training measurements spent (the budget's currency)
    rows: int  # committed /measurements rows (training, probe and evaluation)
    budget: int | None
    rate_per_s: float | None  # training measurements per second over the last RATE_WINDOW_S
    eta_s: float | None
    identities: dict
    seed: object
    options: dict
    command_line: str
    created_utc: str
    package_version: str
    steps: dict  # effective /steps rows: step, measurements, loss, accuracy, current_a, time_s
    evaluations: dict  # effective /evaluations rows: step, measurements, test_loss, test_accuracy, time_s
    knobs: dict  # recent measurements: row, time_s, detuning_hz, power_dbm, current_a, kind
    spectrum_hz: np.ndarray  # frequency axis of the recent traces
    spectra_dbm: np.ndarray  # [k, points] the latest traces, oldest first
    drive_hz: float | None  # drive frequency of the latest trace
    waterfall_dbm: np.ndarray  # [n, points], oldest first
    line_hz: float | None  # the ring's free-running line found by the probe (or reference_hz)
    bands_hz: list  # readout bands [(low, high)] in Hz
    faults: list  # dicts: time_s, step, role, kind, recovered, attempt, message
    status_log: list  # dicts: time_s, status, pid, host, message
    error: str = ""  # a file that cannot be read says why here

    @property
    def frozen(self) -> bool:
        return self.status != "running"



def _options(experiment_toml: str) -> dict:
    try:
        return tomllib.loads(experiment_toml) if experiment_toml else {}
    except tomllib.TOMLDecodeError:
        return {"experiment_toml": experiment_toml}


def _rate(steps: dict) -> float | None:
    t, m = steps["time_s"], steps["measurements"]
    if len(t) < 2:
        return None
    first = int(np.searchsorted(t, t[-1] - RATE_WINDOW_S))
    first = min(first, len(t) - 2)
    dt = float(t[-1] - t[first])
    return float(m[-1] - m[first]) / dt if dt > 0 else None


def _readout_bands(readout: dict) -> list:
    low = readout["center_hz"] - readout["span_hz"] / 2
    width = readout["span_hz"] / readout["n_bands"]
    return [(low + i * width, low + (i + 1) * width) for i in range(int(readout["n_bands"]))]


@dataclass
class _KnobTail:
    """The last KNOB_MEASUREMENTS measurements' settings, extended by the new rows of each poll."""

    rows_read: int = 0
    columns: dict = field(default_factory=dict)

    def extend(self, measurements, n_rows: int, reference_hz: float) -> dict:
        start = max(self.rows_read, n_rows - KNOB_MEASUREMENTS)
        if n_rows > start:
            sl = slice(start, n_rows)
            new = {
                "row": np.arange(start, n_rows),
                "time_s": measurements.column("time_s", sl),
                "detuning_hz": measurements.column("frequency_hz", sl) - reference_hz,
                "power_dbm": measurements.column("power_dbm", sl),
                "current_a": measurements.column("current_a", sl),
                "kind": measurements.column("kind", sl).astype(np.int8),
            }
            self.columns = {k: np.concatenate([self.columns[k], v])[-KNOB_MEASUREMENTS:] if self.columns else v
                            for k, v in new.items()}
        self.rows_read = n_rows
        return dict(self.columns)


class WatchedRun:
    """A run file and its latest snapshot; :meth:`poll` reads what the writer committed since."""

    def __init__(self, path, clock=time.monotonic):
        self.path = Path(path)
        self._clock = clock
        self._reader: RunReader | None = None
        self._snapshot: RunSnapshot | None = None
        self._fingerprint = None
        self._stat = None
        self._last_poll = -np.inf
        self._version = 0
        self._generation = 0
        self._resumes_seen = -1
        self._knobs = _KnobTail()
        self._static: dict | None = None

    # ------------------------------------------------------------------ reading
    def poll(self) -> RunSnapshot:
        """The current snapshot; reads the file if MIN_POLL_INTERVAL_S has passed."""
        now = self._clock()
        if self._snapshot is not None and now - self._last_poll < MIN_POLL_INTERVAL_S:
            return self._snapshot
        self._last_poll = now
        try:
            self._poll()
        except (RunFileError, OSError, KeyError, ValueError) as exc:
            log.warning("%s: %s", self.path, exc)
            self.close()
            self._snapshot = self._unreadable(str(exc))
        return self._snapshot

    def _poll(self) -> None:
        if self._snapshot is not None and self._snapshot.frozen:
            stat = self._file_stat()
            if stat == self._stat:
                return  # frozen and untouched: no HDF5 at all
        if self._reader is None:
            self._stat = self._file_stat()
            self._reader = RunReader(self.path)
            self._static = self._static_part(self._reader)
        else:
            self._reader.refresh()
        r = self._reader
        status_log = r.status_history()
        status = r.status
        last = status_log[-1] if status_log else None
        if (status == "running" and last is not None and last["host"] == socket.gethostname()
                and not _pid_alive(last["pid"])):
            status = "killed"
        fingerprint = (r.n_measurements, r.n_checkpoints, r.n_faults, len(status_log), status)
        if fingerprint != self._fingerprint:
            self._fingerprint = fingerprint
            self._version += 1
            self._snapshot = self._read(r, status, status_log)
        if status != "running":
            # frozen: let go of the file; a --resume changes it and brings the reader back
            self.close()
            self._stat = self._file_stat()

    def _file_stat(self):
        st = self.path.stat()
        return (st.st_mtime_ns, st.st_size)

    @staticmethod
    def _static_part(r: RunReader) -> dict:
        md = r.metadata
        layout = json.loads(md.get("physical_layer") or "null") or {}
        probe = r.probe()
        encoder, readout = layout.get("encoder") or {}, layout.get("readout")
        reference_hz = encoder.get("reference_hz", probe.reference_hz if probe is not None else None)
        line_hz = probe.line_hz if probe is not None and probe.swept else reference_hz
        options = _options(md.get("experiment_toml", ""))
        return {
            "identities": dict(md.get("identities") or {}), "seed": md.get("seed"), "options": options,
            "budget": options.get("budget"), "command_line": md.get("command_line", ""),
            "created_utc": r.created_utc, "package_version": md.get("package_version", ""),
            "reference_hz": reference_hz if reference_hz is not None else 0.0, "line_hz": line_hz,
            "bands_hz": _readout_bands(readout) if readout else [],
        }

    def _read(self, r: RunReader, status: str, status_log: list) -> RunSnapshot:
        resumes = len(r.resumes()["time_s"])  # (a few HDF5 reads: done once per change)
        if resumes != self._resumes_seen:
            # a resume abandons rows a page may show: start the page's data afresh
            self._resumes_seen = resumes
            self._generation += 1
            self._knobs = _KnobTail()
        steps_all, evals_all = r.steps(), r.evaluations()
        # rows abandoned by a resume are left out (effective_rows reads /resumes again: only when there are some)
        step_rows = r.effective_rows("steps") if resumes else slice(None)
        eval_rows = r.effective_rows("evaluations") if resumes else slice(None)
        steps = {k: steps_all[k][step_rows] for k in ("step", "measurements", "loss", "accuracy", "current_a", "time_s")}
        evals = {k: evals_all[k][eval_rows] for k in ("step", "measurements", "test_loss", "test_accuracy", "time_s")}
        static = self._static
        n_rows = r.n_measurements
        knobs = self._knobs.extend(r.measurements, n_rows, static["reference_hz"])
        first = max(0, n_rows - WATERFALL_TRACES)
        waterfall = r.measurements.column("trace_dbm", slice(first, n_rows))
        if n_rows:
            start, stop = (float(v) for v in r.measurements.column("trace_start_hz", slice(n_rows - 1, n_rows)).tolist()
                           + r.measurements.column("trace_stop_hz", slice(n_rows - 1, n_rows)).tolist())
            axis = np.linspace(start, stop, r.trace_points)
            drive_hz = float(r.measurements.column("frequency_hz", slice(n_rows - 1, n_rows))[0])
        else:
            axis, drive_hz = np.zeros(0), None
        measurements = int(steps["measurements"][-1]) if len(steps["step"]) else 0
        budget = static["budget"]
        rate = _rate(steps) if status == "running" else None
        eta = (max(0, budget - measurements) / rate) if (rate and budget) else None
        faults = r.faults()
        fault_rows = [{"time_s": float(faults["time_s"][i]), "step": int(faults["step"][i]),
                       "role": str(faults["role"][i]), "kind": str(faults["kind"][i]),
                       "recovered": bool(faults["recovered"][i]), "attempt": int(faults["attempt"][i]),
                       "message": faults["message"][i]} for i in range(r.n_faults)]
        last = status_log[-1] if status_log else {"pid": -1, "host": "?", "message": ""}
        return RunSnapshot(
            path=self.path, version=self._version, generation=self._generation, status=status,
            status_message=last["message"], writer=f"pid {last['pid']} on {last['host']}",
            step=int(steps["step"][-1]) if len(steps["step"]) else 0, measurements=measurements, rows=n_rows,
            budget=budget, rate_per_s=rate, eta_s=eta, identities=static["identities"], seed=static["seed"],
            options=static["options"], command_line=static["command_line"], created_utc=static["created_utc"],
            package_version=static["package_version"], steps=steps, evaluations=evals, knobs=knobs,
            spectrum_hz=axis, spectra_dbm=waterfall[-3:], drive_hz=drive_hz, waterfall_dbm=waterfall,
            line_hz=static["line_hz"], bands_hz=static["bands_hz"], faults=fault_rows, status_log=status_log)

    def _unreadable(self, message: str) -> RunSnapshot:
        self._version += 1
        empty = {}
        return RunSnapshot(
            path=self.path, version=self._version, generation=self._generation, status="unknown",
            status_message="", writer="", step=0, measurements=0, rows=0, budget=None, rate_per_s=None,
            eta_s=None, identities={}, seed=None, options={}, command_line="", created_utc="", package_version="",
            steps=empty, evaluations=empty, knobs=empty, spectrum_hz=np.zeros(0), spectra_dbm=np.zeros((0, 0)),
            drive_hz=None, waterfall_dbm=np.zeros((0, 0)), line_hz=None, bands_hz=[], faults=[], status_log=[],
            error=message)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def status_of(path) -> tuple[str, str]:
    """(status, one-line detail) of a run file for a directory listing; never raises for a bad file."""
    try:
        with RunReader(path) as r:
            history = r.status_history()
            status = r.status
            if status == "running" and history and history[-1]["host"] == socket.gethostname() \
                    and not _pid_alive(history[-1]["pid"]):
                status = "killed"
            steps = r.steps()
            spent = int(steps["measurements"][-1]) if len(steps["measurements"]) else 0
            budget = _options(r.metadata.get("experiment_toml", "")).get("budget")
            return status, f"{spent} / {budget} measurements" if budget else f"{spent} measurements"
    except (RunFileError, OSError, KeyError, ValueError) as exc:
        return "unreadable", str(exc).splitlines()[0][:200]
