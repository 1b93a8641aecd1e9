"""The columns of a run file's tables: creating one, appending rows to it, and cutting it back.
"""
from __future__ import annotations

import h5py
import numpy as np

from labpgt.runfile.format import OPTIONAL_TABLES, TABLES


def new_column(group, name, dtype, units, description, width=(), chunk_rows=4096, compression=None):
    ds = group.create_dataset(
        name, shape=(0, *width), maxshape=(None, *width), dtype=dtype,
        chunks=(chunk_rows, *width), compression=compression,
    )
    ds.attrs["units"] = units
    ds.attrs["description"] = description
    return ds


def new_text_column(group, name, description):
    new_column(group, f"{name}_utf8", "u1", "1", f"{description}: UTF-8 bytes of all rows, concatenated")
    new_column(group, f"{name}_offset", "i8", "1", f"{description}: start of each row in {name}_utf8")
    new_column(group, f"{name}_length", "i8", "1", f"{description}: byte length of each row in {name}_utf8")


def append(ds, values, dtype=None) -> None:
    """Grow ``ds`` along axis 0 by len(values) rows and write them.

    Low-level h5py calls: about 3x cheaper than ``ds.resize`` + ``ds[a:b] = v`` (~27 vs ~88 us a
    call, measured), which dominates the per-measurement cost with 15 columns. ``dtype``: the
    dataset's own dtype when the caller knows it (``ds.dtype`` costs ~15 us a call).
    """
    values = np.ascontiguousarray(values, dtype=ds.dtype if dtype is None else dtype)
    k = values.shape[0]
    if k == 0:
        return
    dsid = ds.id
    # one dataspace read, grown to the new extent along with the dataset, and the memory space
    # of this block's shape made once: each h5py object costs a registry entry (~10 us)
    fspace = dsid.get_space()
    shape = fspace.shape
    n = shape[0]
    grown = (n + k, *shape[1:])
    dsid.set_extent(grown)
    fspace.set_extent_simple(grown)
    fspace.select_hyperslab((n, *(0 for _ in shape[1:])), values.shape)
    memory_space = _MEMORY_SPACES.get(values.shape)
    if memory_space is None:
        if len(_MEMORY_SPACES) > 64:
            _MEMORY_SPACES.clear()
        memory_space = _MEMORY_SPACES[values.shape] = h5py.h5s.create_simple(values.shape)
    dsid.write(memory_space, fspace, values)


#: block shape -> its memory dataspace (reused: a simple dataspace with everything selected)
_MEMORY_SPACES: dict = {}


def first_column(table):
    return {"measurements": "time_s", "steps": "step", "evaluations": "step",
            "checkpoints": "step", "status": "code", "resumes": "checkpoint", "faults": "time_s"}[table]


def tables_of(f) -> tuple:
    """The tables this file has, in /committed order (optional ones only where present)."""
    return TABLES + tuple(t for t in OPTIONAL_TABLES if t in f)


def truncate_group(g, n):
    for name, obj in g.items():
        if isinstance(obj, h5py.Group):
            truncate_group(obj, n)
        elif name.endswith("_utf8"):
            continue  # bytes beyond the last committed offset are unreferenced, harmless
        elif obj.maxshape[0] is not None:
            continue  # a fixed coordinate or dimension (labpgt/runfile/conventions.py), not a row column
        elif obj.shape[0] > n:
            obj.resize(n, axis=0)
