"""Checkpoint checksums: what makes a damaged checkpoint visible before a run continues from it.

Every checkpoint row carries ``checksum``: the first 8 bytes (big-endian, as an unsigned 64-bit
integer) of the SHA-256 of the row's contents in a fixed order (:func:`digest`): the counters
``step``, ``measurements``, ``measurement_rows``, ``step_rows``, ``evaluation_rows`` (int64,
little-endian), ``params`` (float64, little-endian), each optimizer state in name order (its
name as UTF-8, a 0 byte, its float64 values), then ``rng_state`` and ``extra`` (each as its
UTF-8 byte length, int64, and its bytes). The time of the row is left out. 0 is never a
checksum: it marks a row written without one (files from before checksums: *unverified*, and
accepted as they are).

``--resume`` continues from the last checkpoint that verifies (:func:`last_valid`), and says
which ones it passed over; ``labpgt inspect`` lists the corrupt ones (:func:`verdicts`).
"""
from __future__ import annotations

import hashlib

import numpy as np

from labpgt.runfile.format import RunFileError, _CKPT_CHECKSUM

_COUNTERS = ("step", "measurements", "measurement_rows", "step_rows", "evaluation_rows")
OK, CORRUPT, UNVERIFIED = "ok", "corrupt", "unverified"


def digest(row: dict) -> int:
    """The checksum of one checkpoint row (the writer's values, or the reader's)."""
    h = hashlib.sha256()
    h.update(np.array([int(row[name]) for name in _COUNTERS], dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(row["params"], dtype="<f8").tobytes())
    for name in sorted(row["optimizer"]):
        h.update(name.encode("utf-8") + b"\0")
        h.update(np.ascontiguousarray(row["optimizer"][name], dtype="<f8").tobytes())
    for text in (row["rng_state"], row["extra"]):
        data = text.encode("utf-8")
        h.update(np.array([len(data)], dtype="<i8").tobytes())
        h.update(data)
    return int.from_bytes(h.digest()[:8], "big") or 1


def verdict(reader, i: int) -> tuple[str, str]:
    """(OK | CORRUPT | UNVERIFIED, why) for checkpoint ``i`` of a :class:`labpgt.runfile.RunReader`."""
    g = reader._f["checkpoints"]
    try:
        row = reader.checkpoint(i)
        row["step_rows"] = int(g["step_rows"][i])
        row["evaluation_rows"] = int(g["evaluation_rows"][i])
        stored = int(g[_CKPT_CHECKSUM[0]][i]) if _CKPT_CHECKSUM[0] in g else 0
    except (RunFileError, KeyError, OSError, ValueError, RuntimeError) as exc:
        return CORRUPT, f"unreadable ({exc})"
    if stored == 0:
        return UNVERIFIED, "written without a checksum (an older version)"
    if digest(row) != stored:
        return CORRUPT, "its contents do not match its checksum"
    return OK, ""


def verdicts(reader, block_bytes: int = 64 << 20) -> list[tuple[str, str]]:
    """The verdict of every committed checkpoint, in order; read in blocks of rows of about
    ``block_bytes`` (each column once per block, not once per row: ``labpgt inspect`` of a long run)."""
    n = reader.n_checkpoints
    g = reader._f["checkpoints"]
    if _CKPT_CHECKSUM[0] not in g:
        return [(UNVERIFIED, "written without a checksum (an older version)")] * n
    try:
        row_bytes = 8 * (g["params"].shape[1] + sum(int(np.prod(ds.shape[1:])) for ds in g["optimizer"].values()))
    except (KeyError, OSError, ValueError, RuntimeError):
        return [verdict(reader, i) for i in range(n)]
    step = max(1, block_bytes // max(1, row_bytes))
    out = []
    for start in range(0, n, step):
        stop = min(n, start + step)
        try:
            out += _block_verdicts(g, start, stop)
        except (KeyError, OSError, ValueError, RuntimeError, UnicodeDecodeError):
            out += [verdict(reader, i) for i in range(start, stop)]  # damage: row by row says which
    return out


def _block_verdicts(g, start: int, stop: int) -> list[tuple[str, str]]:
    block = {name: g[name][start:stop] for name in (*_COUNTERS, "params", _CKPT_CHECKSUM[0])}
    optimizer = {name: ds[start:stop] for name, ds in g["optimizer"].items()}
    texts = {}
    for name in ("rng_state", "extra"):
        offsets, lengths = g[f"{name}_offset"][start:stop], g[f"{name}_length"][start:stop]
        lo, hi = int(offsets.min()), int((offsets + lengths).max())
        blob = g[f"{name}_utf8"][lo:hi].tobytes()
        texts[name] = [blob[int(o) - lo:int(o) - lo + int(k)].decode("utf-8") for o, k in zip(offsets, lengths)]
    out = []
    for j in range(stop - start):
        stored = int(block[_CKPT_CHECKSUM[0]][j])
        if stored == 0:
            out.append((UNVERIFIED, "written without a checksum (an older version)"))
            continue
        row = {name: block[name][j] for name in (*_COUNTERS, "params")}
        row.update(optimizer={name: values[j] for name, values in optimizer.items()},
                   rng_state=texts["rng_state"][j], extra=texts["extra"][j])
        out.append((OK, "") if digest(row) == stored else (CORRUPT, "its contents do not match its checksum"))
    return out


def last_valid(reader) -> tuple[int, dict | None, list[tuple[int, str]]]:
    """The checkpoint a resume continues from: (index, state, passed over), the last one whose
    checksum matches (or that has none); (-1, None, passed over) when none does (the run starts
    over). ``passed over``: (index, why) of the later, corrupt ones, last first."""
    passed = []
    for i in range(reader.n_checkpoints - 1, -1, -1):
        status, why = verdict(reader, i)
        if status != CORRUPT:
            return i, reader.checkpoint(i), passed
        passed.append((i, why))
    return -1, None, passed
