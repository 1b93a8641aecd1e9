"""A new run file, laid out whole under a temporary name and then published under its own.

:meth:`labpgt.runfile.RunFile.create` writes every object of a new file (:func:`lay_out`) into
``.<name>.creating-<host>-<pid>`` beside the final path, switches it to SWMR, records its first
status row, and only then gives it its name (:func:`publish`: a hard link, atomic, that never
replaces a file which appeared in the meantime, then the temporary name is removed). A process
killed at any moment of creation therefore leaves either no file under the run's name, or a
complete one holding no checkpoint yet (``labpgt train --resume`` starts that run over in the same
file). The temporary name a killed creation leaves behind is removed by the next creation in the
same folder (:func:`remove_stale_partials`: only names of this host whose process is gone).
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from pathlib import Path

import h5py
import numpy as np

from labpgt.runfile.columns import new_column, new_text_column
from labpgt.runfile.conventions import annotate
from labpgt.runfile.format import (BLOCK_ROWS, FORMAT, FORMAT_VERSION, OPTIONAL_TABLES, TABLES, _CKPT_CHECKSUM,
                                   _CKPT_SCALARS, _EVAL_COLUMNS, _FAULT_COLUMNS, _MEAS_SCALARS, _RESUME_BUDGET,
                                   _RESUME_COLUMNS, _STATUS_COLUMNS, _STEP_COLUMNS)
from labpgt.runfile.probe import _write_probe
from labpgt.runfile.format import pid_alive as _alive

log = logging.getLogger(__name__)

_PARTIAL = re.compile(r"^\.(?P<name>.+)\.creating-(?P<host>.+)-(?P<pid>\d+)$")


# -- the temporary name -------------------------------------------------------------------

def partial_path(path: Path) -> Path:
    """Where ``path`` is built before it is published (same folder: the publishing link is atomic)."""
    return path.with_name(f".{path.name}.creating-{socket.gethostname()}-{os.getpid()}")


def publish(partial: Path, path: Path, *, overwrite: bool = False) -> None:
    """Give the complete file at ``partial`` its name ``path``; FileExistsError if a file took that
    name meanwhile (unless ``overwrite``). A kill between the link and the unlink leaves two names
    of one complete file; the next creation removes the temporary one."""
    if overwrite:
        os.replace(partial, path)
    else:
        try:
            os.link(partial, path)
        except FileExistsError:
            raise FileExistsError(f"run file {path} appeared while this one was being created; a run file is "
                                  "never overwritten: choose a new path") from None
        except OSError:  # a file system without hard links: a rename, after one more look
            if path.exists():
                raise FileExistsError(f"run file {path} appeared while this one was being created; a run file "
                                      "is never overwritten: choose a new path") from None
            os.rename(partial, path)
        else:
            os.unlink(partial)
    _sync_folder(path.parent)


def remove_stale_partials(folder: Path) -> list[Path]:
    """Remove the temporary names left by creations on this host whose process is gone."""
    removed = []
    host = socket.gethostname()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _PARTIAL.match(entry.name)
        if match is None or match["host"] != host or _alive(int(match["pid"])):
            continue
        try:
            os.unlink(entry.path)
        except OSError:
            continue
        log.info("removed %s, left by a run-file creation that was killed (process %s)", entry.path, match["pid"])
        removed.append(Path(entry.path))
    return removed



def _sync_folder(folder: Path) -> None:
    """Make the new name durable (the file's own data is flushed by HDF5 at every commit)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- the objects ----------------------------------------------------------------------------

def _text_scalar(group, name, text):
    group.create_dataset(name, data=text if text is not None else "", dtype=h5py.string_dtype("utf-8"))


def lay_out(f: h5py.File, *, n_params: int, param_names: list, features_per_measurement: int, trace_points: int,
            optimizer_state_shapes: dict, metadata: dict, metadata_json: str, features_units: str,
            trace_compression, probe, dataset, trace_frequency_hz, feature_bands_hz) -> None:
    """Every object of a new run file (labpgt/runfile/format.py), before SWMR; arguments checked by the caller."""
    a = f.attrs
    a["format"] = FORMAT
    a["format_version"] = FORMAT_VERSION
    a["created_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    a["n_params"] = int(n_params)
    a["features_per_measurement"] = int(features_per_measurement)
    a["trace_points"] = int(trace_points)

    meta = f.create_group("meta")
    _text_scalar(meta, "station_toml", metadata.get("station_toml", ""))
    _text_scalar(meta, "experiment_toml", metadata.get("experiment_toml", ""))
    _text_scalar(meta, "identities_json", json.dumps(metadata.get("identities", {}), sort_keys=True))
    _text_scalar(meta, "package_version", str(metadata.get("package_version", "")))
    _text_scalar(meta, "command_line", str(metadata.get("command_line", "")))
    _text_scalar(meta, "seed_json", json.dumps(metadata.get("seed")))
    _text_scalar(meta, "metadata_json", metadata_json)
    _text_scalar(meta, "param_names_json", json.dumps(param_names))

    tables = TABLES + OPTIONAL_TABLES
    c = f.create_dataset("committed", data=np.zeros(len(tables), dtype="i8"))
    c.attrs["units"] = "1"
    c.attrs["description"] = "complete rows of " + ", ".join(tables) + " (rows beyond are in flight)"

    m = f.create_group("measurements")
    for name, dtype, units, desc in _MEAS_SCALARS:
        new_column(m, name, dtype, units, desc)
    # 64 rows per trace chunk: one block write = one chunk, a chunk ~100-260 KB
    new_column(m, "trace_dbm", "f4", "dBm", "spectrum analyzer trace", (trace_points,),
               chunk_rows=BLOCK_ROWS, compression=trace_compression)
    new_column(m, "features", "f8", features_units, "readout features of the trace",
               (features_per_measurement,), chunk_rows=512)

    s = f.create_group("steps")
    for col in _STEP_COLUMNS:
        new_column(s, *col, chunk_rows=1024)
    e = f.create_group("evaluations")
    for col in _EVAL_COLUMNS:
        new_column(e, *col, chunk_rows=256)
    ck = f.create_group("checkpoints")
    for col in _CKPT_SCALARS + (_CKPT_CHECKSUM,):
        new_column(ck, *col, chunk_rows=64)
    new_column(ck, "params", "f8", "1", "trainable parameters (float64, see /meta/param_names_json)",
               (n_params,), chunk_rows=max(1, min(64, (1 << 20) // (8 * max(1, n_params)))))
    opt = ck.create_group("optimizer")
    for name, shape in optimizer_state_shapes.items():
        size = int(np.prod(shape)) if shape else 1
        new_column(opt, name, "f8", "1", f"optimizer state {name!r}", shape,
                   chunk_rows=max(1, min(64, (1 << 20) // (8 * size))))
    new_text_column(ck, "rng_state", "numpy bit_generator.state as JSON")
    new_text_column(ck, "extra", "trainer extras as JSON")
    st = f.create_group("status")
    for col in _STATUS_COLUMNS:
        new_column(st, *col, chunk_rows=64)
    new_text_column(st, "message", "status message")
    new_text_column(st, "host", "host name of the writer")
    rs = f.create_group("resumes")
    for col in _RESUME_COLUMNS + (_RESUME_BUDGET,):
        new_column(rs, *col, chunk_rows=16)
    fa = f.create_group("faults")
    for col in _FAULT_COLUMNS:
        new_column(fa, *col, chunk_rows=256)
    new_text_column(fa, "message", "what the driver reported")
    if probe is not None:
        _write_probe(f, probe)
    if dataset is not None:
        dataset.write(f.create_group("dataset"))
    # dimension scales and CF / NeXus attributes, for xarray, silx, NeXpy (before SWMR)
    annotate(f, tables=tables, trace_frequency_hz=trace_frequency_hz, feature_bands_hz=feature_bands_hz,
             param_names=param_names)
