"""The text of ``labpgt inspect``: what a run file holds, readable even when damaged.
"""
from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from labpgt.runfile.checkpoints import CORRUPT, OK, UNVERIFIED, verdicts
from labpgt.runfile.format import FAULT_KINDS, FORMAT, RunFileError
from labpgt.runfile.opening import copy_file, open_for_reading
from labpgt.runfile.superblock import _superblock, clear_write_flags
from labpgt.runfile.reader import RunReader
from labpgt.runfile.writer import _pid_alive

_SWMR_WRITE_FLAG = 0x04  # the superblock's "open for SWMR writing" bit (0x01: open for writing)


# inspect

def inspect(path) -> str:
    """Human-readable account of what a run file holds; for a damaged file, what is readable and what is not."""
    path = Path(path)
    lines = [f"run file: {path}"]
    if not path.exists():
        return lines[0] + "\n  does not exist"
    size = path.stat().st_size
    lines.append(f"  size: {size} bytes")
    try:
        with RunReader(path) as r:
            _describe(r, lines)
            lines += how_to_open(path, r)
        return "\n".join(lines)
    except RunFileError as e:
        lines.append(f"  PROBLEM: {e}")
    except (KeyError, OSError, ValueError, RuntimeError, TypeError) as e:  # h5py's words for damage met later
        lines.append(f"  PROBLEM: {path} is damaged: {e}; what is readable:")
    sb = _superblock(path)
    if sb is None:
        return "\n".join(lines)
    tmp = None
    target = path
    truncated = sb["checksum_ok"] and sb["eof"] > size
    if truncated or sb["flags"]:
        # work on a scratch copy: padded with zeros to the stored length so HDF5 opens it (what
        # lived in the missing tail then reads as unreadable, the rest is intact), and with the
        # writer's mark cleared so no SWMR read (which retries corrupt metadata for ages) is needed
        fd, tmp = tempfile.mkstemp(suffix=".h5")
        os.close(fd)
        copy_file(path, tmp)
        if truncated:
            os.truncate(tmp, sb["eof"])
            lines.append(f"  the last {sb['eof'] - size} bytes are missing; reading what remains:")
        clear_write_flags(tmp)
        target = Path(tmp)
    try:
        try:
            f = open_for_reading(target, swmr=False)
        except Exception as e:  # noqa: BLE001
            lines.append(f"  HDF5 cannot open it at all: {e}")
            return "\n".join(lines)
        with f:
            try:
                for k, v in f.attrs.items():
                    lines.append(f"  attr {k} = {v!r}")
            except Exception as e:  # noqa: BLE001
                lines.append(f"  root attributes UNREADABLE ({e})")
            _walk_damaged(f, lines)
    finally:
        if tmp:
            os.unlink(tmp)
    return "\n".join(lines)


def _checkpoint_lines(r: RunReader) -> list[str]:
    """What the checkpoints' checksums say (labpgt/runfile/checkpoints.py); a corrupt one is a PROBLEM."""
    found = verdicts(r)
    if not found:
        return []
    count = {v: sum(1 for verdict, _ in found if verdict == v) for v in (OK, UNVERIFIED)}
    lines = [f"  checkpoint checksums: {count[OK]} verified"
             + (f", {count[UNVERIFIED]} unverified (written before checksums)" if count[UNVERIFIED] else "")]
    resumes = r.resumes()
    for i, (verdict, why) in enumerate(found):
        if verdict != CORRUPT:
            continue
        written = float(r._f["checkpoints/time_s"][i])
        passed_by = [k for k, (j, when) in enumerate(zip(resumes["checkpoint"], resumes["time_s"]))
                     if j < i and written <= when]
        if passed_by:  # a later resume continued from an earlier checkpoint: this one is abandoned
            lines.append(f"  checkpoint {i} is corrupt ({why}); resume {passed_by[0]} passed it over: no longer used")
        else:
            lines.append(f"  PROBLEM: checkpoint {i} is corrupt ({why}); --resume passes it over and continues from "
                         f"the last valid one before it")
    return lines


def how_to_open(path, r: RunReader) -> list[str]:
    """For a file still marked open for writing (a live writer, or one that was killed): why a
    plain ``h5py.File(path, "r")`` refuses it and what opens it."""
    sb = _superblock(path)
    if sb is None or not sb["flags"]:
        return []
    history = r.status_history()
    last = history[-1] if history else None
    live = (last is not None and r.status == "running" and last["host"] == socket.gethostname()
            and _pid_alive(last["pid"]))
    swmr = bool(sb["flags"] & _SWMR_WRITE_FLAG)
    who = f"being written by process {last['pid']}" if live else "marked open by a writer that is gone (killed)"
    lines = [f"  open for writing: {who}; a plain h5py.File(path, 'r') refuses it. Read it with:"]
    lines.append(f"    labpgt.open_run({str(path)!r})   (committed rows only, abandoned ones left out)")
    if swmr:
        lines.append(f"    h5py.File({str(path)!r}, 'r', swmr=True)   (every row, in-flight ones included)")
    lines.append(f"    labpgt export {path} --format netcdf   (a clean copy any tool opens)")
    if not live:
        lines.append(f"  continue the run with: labpgt train --resume {path}   (or clear the mark by hand: h5clear -s {path})")
    return lines


def _walk_damaged(group, lines, indent="  "):
    try:
        names = list(group.keys())
    except Exception as e:  # noqa: BLE001 - any HDF5 error here means "unreadable"
        lines.append(f"{indent}{group.name}: UNREADABLE group ({e})")
        return
    for name in names:
        try:
            obj = group[name]
        except Exception as e:  # noqa: BLE001
            lines.append(f"{indent}{group.name.rstrip('/')}/{name}: UNREADABLE ({e})")
            continue
        if isinstance(obj, h5py.Group):
            lines.append(f"{indent}{obj.name}/")
            _walk_damaged(obj, lines, indent + "  ")
        else:
            try:
                obj[-1:] if obj.shape and obj.shape[0] else obj[()]
                ok = "readable"
            except Exception as e:  # noqa: BLE001
                ok = f"UNREADABLE data ({str(e)[:80]})"
            lines.append(f"{indent}{obj.name} {obj.shape} {obj.dtype} units={obj.attrs.get('units', '?')}: {ok}")


def _describe(r: RunReader, lines: list) -> None:
    md = r.metadata
    lines.append(f"  format: {FORMAT} version {r.format_version}, created {r.created_utc}")
    lines.append(f"  status: {r.status}" + (f" ({r.status_message})" if r.status_message else ""))
    lines.append(f"  package_version: {md.get('package_version')}   seed: {md.get('seed')}")
    lines.append(f"  command_line: {md.get('command_line')}")
    for role, idn in sorted(md.get("identities", {}).items()):
        lines.append(f"  instrument {role}: {idn}")
    lines.append(f"  station_toml: {len(md.get('station_toml', ''))} chars; "
                 f"experiment_toml: {len(md.get('experiment_toml', ''))} chars")
    last_eval = r.last_evaluation()  # the counts and one row: nothing here grows with the run
    lines.append(f"  measurements: {r.n_measurements}   steps: {r.n_rows('steps')}   "
                 f"evaluations: {r.n_rows('evaluations')}   checkpoints: {r.n_checkpoints}")
    lines += _checkpoint_lines(r)
    if r.n_faults:
        fl = r.faults()
        kinds = ", ".join(f"{k} {int(np.sum(fl['kind'] == k))}" for k in FAULT_KINDS if np.any(fl["kind"] == k))
        lines.append(f"  instrument faults: {r.n_faults} ({int(fl['recovered'].sum())} recovered; {kinds})")
    try:
        probe = r.probe()
        lines.append("  probe: " + (probe.describe() if probe is not None else "not recorded (no /probe group)"))
    except RunFileError as e:  # the rest of the file is shown; the damage still makes inspect exit 1
        lines.append("  probe: UNREADABLE")
        lines.append(f"  PROBLEM: {e}")
    try:
        record = r.dataset()
        lines.append("  dataset: " + (record.describe() if record is not None else
                                      "not recorded (no /dataset group: the experiment names a bundled data set or task)"))
    except RunFileError as e:
        lines.append("  dataset: UNREADABLE")
        lines.append(f"  PROBLEM: {e}")
    if last_eval is not None:
        lines.append(f"  last test accuracy: {last_eval['test_accuracy']:.4f} at step {last_eval['step']}")
    lines.append(f"  parameters: {r.n_params}; trace points: {r.trace_points}; "
                 f"features per measurement: {r.features_per_measurement}")
    lines.append("  datasets:")

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            units = obj.attrs.get("units", "")
            lines.append(f"    /{name} {obj.shape} {obj.dtype}" + (f" [{units}]" if units else ""))
    r._f.visititems(visit)
    for h in r.status_history():
        lines.append(f"  status log: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(h['time_s']))} "
                     f"{h['status']} pid {h['pid']}@{h['host']} {h['message']}")
