"""The run file's layout (format_version 1): tables, columns, enumerations, flags.

HDF5 run files: one file per run, written while the run goes, readable while it grows (SWMR).

Layout (format_version 1)::

    /                       attrs: format="labpgt-run", format_version, created_utc, n_params,
                            features_per_measurement, trace_points (never change after creation)
    /meta/                  scalar UTF-8 string datasets written once, before SWMR:
                            station_toml, experiment_toml, identities_json, package_version,
                            command_line, seed_json, metadata_json (the whole metadata dict)
    /committed              int64 [6]: rows of measurements, steps, evaluations, checkpoints,
                            status, resumes that are complete on disk. Written after the data and a
                            flush, so rows below these counts are never half written.
    /measurements/          one row per measurement (sample x virtual node):
                            time_s, step, kind (enum train/probe/eval), sample_index, node,
                            perturbation_direction, perturbation_sign, frequency_hz, power_dbm,
                            current_a, trace_start_hz, trace_stop_hz, flags,
                            trace_dbm [N, trace_points] float32, features [N, F] float64
    /steps/                 step, loss, accuracy, grad_norm, measurements, time_s, current_a
    /evaluations/           step, measurements, test_loss, test_accuracy, time_s
    /checkpoints/           step, measurements, time_s, measurement_rows, step_rows,
                            evaluation_rows, params [N, n_params],
                            optimizer/<name> [N, *shape], rng_state_* and extra_* (text columns),
                            checksum (uint64: SHA-256 of the rest of the row, truncated; files
                            from before it lack the column until their next resume adds it, with
                            0 for the earlier rows: unverified)
    /resumes/               one row per --resume: the checkpoint continued from and the row ranges
                            of measurements/steps/evaluations recorded after it (abandoned), and
                            the training budget in force from then on (``budget``; files from
                            before it lack the column until their next resume adds it, with -1
                            for the earlier rows: not recorded)
    /faults/                (optional: files written before it have no such group and read as
                            "no faults") one row per instrument fault met while measuring:
                            time_s, step, measurement_row (the /measurements row it touched: the
                            row the repeated measurement got, or would have got), role, kind,
                            recovered, attempt, message_*; /committed then has a 7th count
    /status/                the status log (the current status is the last committed row):
                            time_s, code (enum running/completed/failed/aborted), pid, message_*,
                            host_*
    /probe/                 (optional: files written before it, and runs that had no station
                            probe, e.g. the in-process transformer, have no such group and read
                            as "no probe") where the drive's reference frequency came from,
                            written once at creation, before SWMR. Attributes: reference_source
                            ("probe" or "config"), reference_hz; for "probe" also time_s,
                            current_a, center_hz, span_hz, rbw_hz (read back), points,
                            reference_level_dbm, line_hz, line_dbm (the found line and its
                            level), rf_output_enabled (0: RF off), overloaded, min_prominence_db;
                            datasets frequency_hz [points] float64 and trace_dbm [points] (the
                            analyzer's trace as read, float32). "config": reference_hz was given,
                            no sweep was made, no datasets. A ``--resume`` that re-runs the probe
                            to replay a simulated world records nothing: /probe stays the sweep
                            that set the run's reference (the replayed sweep is the same one).
    /dataset/               (optional: files written before it have none; their experiment names a
                            bundled data set) the data set the run trained on, written once at
                            creation, before SWMR: split indices, standardisation, class names,
                            hashes, and the data itself when small (labpgt/data/record.py)

Text that changes (status messages, RNG state JSON) cannot live in attributes (read-only under
SWMR) nor in variable-length strings (unsafe under SWMR), so a text column ``x`` is stored as
``x_utf8`` (uint8, all rows' bytes concatenated) plus per-row ``x_offset`` and ``x_length``.

Every dataset carries ``units`` ("s", "Hz", "dBm", "A", or "1" for counts and indices) and a
``description`` attribute. Files from this version on also carry, added at creation before SWMR
(labpgt/runfile/conventions.py; readers of format_version 1 need none of it): HDF5 dimension
scales (each table's rows, ``trace_point``, ``feature``, ``param``, ...; in /measurements the
fixed coordinates ``trace_frequency_hz`` and ``feature_low_hz`` / ``feature_high_hz`` when the
analyzer window is fixed), CF ``long_name`` and ``flag_*`` attributes, ``/table`` (the names of
/committed's counts) and NXdata on /probe. A reader that walks a table group must take as row
columns only the datasets with an unlimited first axis that are not netCDF dimensions (their
``NAME`` attribute says "This is a netCDF dimension but not a netCDF variable").

A writer killed with SIGKILL leaves the superblock marked "open for writing": HDF5 then refuses
"""
from __future__ import annotations

import os


import h5py



FORMAT = "labpgt-run"
FORMAT_VERSION = 1
KINDS = ("train", "probe", "eval")
STATUSES = ("running", "completed", "failed", "aborted")
FLAG_BITS = {1: "overload", 2: "unlocked", 4: "repeated", 8: "fault", 16: "simulated"}
#: each dataset's chunk cache (h5py's rdcc_nbytes) in the writer and the readers. HDF5 2.0's
#: default is 8 MiB a dataset, and a run file has ~20 row columns: a writer's or a reader's memory
#: grew by the bytes it passed through each column until 8 MiB each (~150 MB). A writer needs
#: the chunk it is filling (32-100 KB), a streaming reader the window's chunks.
CHUNK_CACHE_BYTES = 1 << 20
BLOCK_ROWS = 64  # rows buffered before a block write (performance.md: ~6x cheaper than single rows)
TABLES = ("measurements", "steps", "evaluations", "checkpoints", "status", "resumes")
#: tables newer than format_version 1's first files: present or not, counted after TABLES in /committed
OPTIONAL_TABLES = ("faults",)
FAULT_ROLES = ("signal_generator", "current_source", "spectrum_analyzer", "station")
FAULT_KINDS = ("no_answer", "connection_lost", "bad_reply", "instrument_error", "overload", "unlocked", "other")

KIND_DTYPE = h5py.enum_dtype({k: i for i, k in enumerate(KINDS)}, basetype="i1")
STATUS_DTYPE = h5py.enum_dtype({k: i for i, k in enumerate(STATUSES)}, basetype="i1")
FAULT_ROLE_DTYPE = h5py.enum_dtype({k: i for i, k in enumerate(FAULT_ROLES)}, basetype="i1")
FAULT_KIND_DTYPE = h5py.enum_dtype({k: i for i, k in enumerate(FAULT_KINDS)}, basetype="i1")

# (name, dtype, units, description) of the per-measurement scalar columns
_MEAS_SCALARS = (
    ("time_s", "f8", "s", "unix time when the measurement was recorded"),
    ("step", "i8", "1", "optimisation step the measurement belongs to"),
    ("kind", KIND_DTYPE, "1", "train, probe or eval"),
    ("sample_index", "i8", "1", "index of the sample in its dataset split"),
    ("node", "i4", "1", "virtual node (time-multiplexed measurement within a sample)"),
    ("perturbation_direction", "i4", "1", "perturbation direction id within the step, -1 = none"),
    ("perturbation_sign", "i1", "1", "+1, -1, or 0 for a clean measurement"),
    ("frequency_hz", "f8", "Hz", "signal generator frequency"),
    ("power_dbm", "f8", "dBm", "signal generator power"),
    ("current_a", "f8", "A", "bias magnet current"),
    ("trace_start_hz", "f8", "Hz", "frequency of the trace's first point"),
    ("trace_stop_hz", "f8", "Hz", "frequency of the trace's last point"),
    ("flags", "u2", "1", "bitmask: " + ", ".join(f"{b} {n}" for b, n in FLAG_BITS.items())),
)
_STEP_COLUMNS = (
    ("step", "i8", "1", "optimisation step"),
    ("loss", "f8", "1", "training loss of the step's batch"),
    ("accuracy", "f8", "1", "training accuracy of the step's batch (fraction)"),
    ("grad_norm", "f8", "1", "norm of the gradient estimate"),
    ("measurements", "i8", "1", "measurements spent so far (cumulative)"),
    ("time_s", "f8", "s", "unix time at the end of the step"),
    ("current_a", "f8", "A", "bias magnet current after the step"),
)
_EVAL_COLUMNS = (
    ("step", "i8", "1", "optimisation step at which the evaluation ran"),
    ("measurements", "i8", "1", "measurements spent so far (cumulative)"),
    ("test_loss", "f8", "1", "loss on the test split"),
    ("test_accuracy", "f8", "1", "accuracy on the test split (fraction)"),
    ("time_s", "f8", "s", "unix time at the end of the evaluation"),
)
_CKPT_SCALARS = (
    ("step", "i8", "1", "steps completed when the checkpoint was taken"),
    ("measurements", "i8", "1", "measurements spent so far (cumulative)"),
    ("time_s", "f8", "s", "unix time of the checkpoint"),
    ("measurement_rows", "i8", "1", "rows in /measurements when the checkpoint was written"),
    ("step_rows", "i8", "1", "rows in /steps when the checkpoint was written"),
    ("evaluation_rows", "i8", "1", "rows in /evaluations when the checkpoint was written"),
)
#: kept apart from _CKPT_SCALARS: older files lack it (their checkpoints read as unverified; a resume
#: adds it, 0 in the earlier rows: not recorded). labpgt/runfile/checkpoints.py computes it
_CKPT_CHECKSUM = ("checksum", "u8", "1", "the first 8 bytes (big-endian) of the SHA-256 of the checkpoint's contents "
                  "(labpgt/runfile/checkpoints.py); 0: not recorded (written by an older version)")
_RESUME_COLUMNS = (
    ("time_s", "f8", "s", "unix time of the resume"),
    ("checkpoint", "i8", "1", "checkpoint row the run continued from, -1 = from the start"),
    ("measurements_start", "i8", "1", "first /measurements row abandoned (recorded after that checkpoint)"),
    ("measurements_stop", "i8", "1", "end of the abandoned /measurements rows"),
    ("steps_start", "i8", "1", "first /steps row abandoned"),
    ("steps_stop", "i8", "1", "end of the abandoned /steps rows"),
    ("evaluations_start", "i8", "1", "first /evaluations row abandoned"),
    ("evaluations_stop", "i8", "1", "end of the abandoned /evaluations rows"),
)
#: kept apart from _RESUME_COLUMNS: older files lack it (RunReader.resumes reads it as -1 there)
_RESUME_BUDGET = ("budget", "i8", "1", "training budget (measurements) in force from this resume on; -1: not "
                  "recorded (resumed by an older version)")
_STATUS_COLUMNS = (
    ("time_s", "f8", "s", "unix time of the status change"),
    ("code", STATUS_DTYPE, "1", "running, completed, failed or aborted"),
    ("pid", "i8", "1", "process id of the writer"),
)
_FAULT_COLUMNS = (
    ("time_s", "f8", "s", "unix time when the fault was met"),
    ("step", "i8", "1", "optimisation step of the measurement it touched"),
    ("measurement_row", "i8", "1", "/measurements row it touched (the repeat's row, or the row it would have had)"),
    ("role", FAULT_ROLE_DTYPE, "1", "instrument role: " + ", ".join(FAULT_ROLES)),
    ("kind", FAULT_KIND_DTYPE, "1", "what the fault looked like: " + ", ".join(FAULT_KINDS)),
    ("recovered", "u1", "1", "1 if the measurement was repeated successfully, 0 if not"),
    ("attempt", "i4", "1", "attempt of the measurement that met the fault (1 = the first)"),
)
_TEXT_COLUMNS = {"checkpoints": ("rng_state", "extra"), "status": ("message", "host"), "faults": ("message",)}


class RunFileError(ValueError):
    """A file that is not a readable labpgt run file; the message says what is wrong and what is expected."""


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` (on this host) still runs: a writer's, a creator's, a trial's."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True
