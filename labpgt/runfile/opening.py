"""Opening a run file for reading so that damage can never hang a reader, and a reader never
blocks a writer.

Three things, all on the read path:

* **Bounded SWMR retries.** A SWMR reader re-reads checksummed metadata that fails its check,
  because a live writer may be half-way through writing it. libhdf5 retries 100 times by default
  and doubles a sleep between tries (1 ns, 2 ns, ... 2**99 ns): on a *damaged* file (a flipped
  byte, never going to heal) that is a hang, in C code, that neither Ctrl-C nor SIGTERM
  interrupts. :data:`SWMR_READ_ATTEMPTS` tries sleep about 0.07 s in all, which is what a
  writer needs to finish a metadata write; the transient retries below cover longer races.
  h5py does not expose ``H5Pset_metadata_read_attempts``, so it is called through ctypes on the
  very libhdf5 h5py has loaded (found in ``/proc/self/maps``; never a second copy). Where that
  is not possible the reader logs it and keeps libhdf5's default; the commands that read a file
  that may be damaged (``inspect``, ``--resume``) check it in a child process first in any case
  (labpgt/runfile/precheck.py).
* **No file locks for readers.** libhdf5 takes a shared lock for every reader, and ``--resume``
  (which opens the file for writing before it switches to SWMR) then fails with "[Errno 11]
  unable to lock file". A run file reader never writes, and reads a live file through SWMR
  (checksummed metadata, retried while a writer is mid-write; rows only below the committed
  counts, which the writer raises after the rows are flushed), so it does not need the lock.
* **Transient races.** A SWMR reader of a live file sometimes sees a half-updated index ("can't
  insert duplicate key", a checksum that fails every attempt, ...). :func:`retry_transient`
  repeats a read a few times, with a short back-off, before anything is called damaged.
"""
from __future__ import annotations

import ctypes
import logging
import os
import re
import time
from pathlib import Path

import h5py

log = logging.getLogger(__name__)

#: metadata read attempts of a SWMR reader: the sleeps between them double from 1 ns, so 26
#: attempts sleep 2**26 ns ~ 0.07 s in all (libhdf5's default, 100, sleeps ~ 4e13 years);
#: the environment variable LABPGT_SWMR_READ_ATTEMPTS overrides it (1..100)
SWMR_READ_ATTEMPTS = 26
#: back-off (s) before each repeat of a read that failed while a writer may be live
TRANSIENT_BACKOFF_S = (0.02, 0.1, 0.3)

#: what h5py raises for a read that a writer's concurrent update (or damage) made fail
TRANSIENT = (KeyError, OSError, ValueError, RuntimeError, TypeError, IndexError)

_SET_ATTEMPTS: list = []  # [the ctypes function, or None when it cannot be had]; looked up once


def _set_read_attempts_function():
    if _SET_ATTEMPTS:
        return _SET_ATTEMPTS[0]
    function = None
    try:
        maps = Path("/proc/self/maps").read_text()
        loaded = sorted(set(re.findall(r"(/\S*/libhdf5(?:-[0-9a-f]+)?\.so[0-9.]*)\s*$", maps, re.MULTILINE)))
        if len(loaded) == 1:
            lib = ctypes.CDLL(loaded[0], mode=ctypes.RTLD_GLOBAL | 4)  # 4: RTLD_NOLOAD, the copy already loaded
            function = lib.H5Pset_metadata_read_attempts
            function.argtypes = [ctypes.c_int64, ctypes.c_uint]
            function.restype = ctypes.c_int
        else:
            log.debug("libhdf5 loaded as %s: SWMR metadata read attempts left at libhdf5's default", loaded)
    except (OSError, AttributeError) as exc:
        log.debug("cannot bound libhdf5's SWMR metadata read attempts (%s); left at the default", exc)
        function = None
    _SET_ATTEMPTS.append(function)
    return function


def read_attempts_bounded() -> bool:
    """True if this process can bound libhdf5's SWMR metadata read attempts (Linux, h5py's libhdf5)."""
    return _set_read_attempts_function() is not None


def read_attempts() -> int:
    """The SWMR metadata read attempts in force (ValueError for a bad LABPGT_SWMR_READ_ATTEMPTS)."""
    text = os.environ.get("LABPGT_SWMR_READ_ATTEMPTS", "").strip()
    if not text:
        return SWMR_READ_ATTEMPTS
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise ValueError(f"LABPGT_SWMR_READ_ATTEMPTS={text!r}: expected a whole number from 1 to 100 "
                         f"(default {SWMR_READ_ATTEMPTS})")
    return int(text)


_NO_LOCKS = [False]  # set by readers_take_no_locks()


def readers_take_no_locks() -> None:
    """From now on this process reads run files without file locks (labpgt's commands: their
    process opens run files only through labpgt). Not the default: in a process of the user's, an
    open without locks and one with them (h5py, xarray) of the same file refuse each other
    ("file locking flag values don't match")."""
    _NO_LOCKS[0] = True


def open_for_reading(path, *, swmr: bool, rdcc_nbytes: int | None = None) -> h5py.File:
    """``h5py.File(path, "r", swmr=swmr, rdcc_nbytes=rdcc_nbytes)`` with, for SWMR, bounded
    metadata read attempts, and without file locks after :func:`readers_take_no_locks` (unless the
    process has the file open with them already)."""
    try:
        return _open(path, swmr, rdcc_nbytes, locking=not _NO_LOCKS[0])
    except OSError as exc:
        if "file locking flag values don't match" not in str(exc):
            raise
        return _open(path, swmr, rdcc_nbytes, locking=_NO_LOCKS[0])  # as the open already there


def _open(path, swmr: bool, rdcc_nbytes: int | None, locking: bool) -> h5py.File:
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)  # as h5py.File makes it: a second open in-process must match
    if not locking:
        fapl.set_file_locking(False, True)
    if rdcc_nbytes is not None:
        cache = list(fapl.get_cache())
        cache[2] = int(rdcc_nbytes)
        fapl.set_cache(*cache)
    flags = h5py.h5f.ACC_RDONLY
    if swmr:
        flags |= h5py.h5f.ACC_SWMR_READ
        function = _set_read_attempts_function()
        attempts = read_attempts()
        if function is not None and function(fapl.id, attempts) < 0:
            log.debug("H5Pset_metadata_read_attempts refused %d", attempts)
    fid = h5py.h5f.open(str(Path(path)).encode(), flags, fapl=fapl)
    return h5py.File(fid)


def is_lock_conflict(exc: BaseException) -> bool:
    """libhdf5's words for a file another process holds locked."""
    text = str(exc)
    return "unable to lock file" in text or "Resource temporarily unavailable" in text


def retry_transient(read, *, live: bool, before_retry=None):
    """``read()``; if it fails and a writer may be live (``live``: the file is read through SWMR),
    call ``before_retry()`` (e.g. refresh the reader's view) and repeat it, after each back-off of
    :data:`TRANSIENT_BACKOFF_S`; the last failure propagates."""
    if not live:
        return read()
    for pause in TRANSIENT_BACKOFF_S:
        try:
            return read()
        except FileNotFoundError:
            raise
        except TRANSIENT as exc:  # RunFileError (a ValueError) included: what was read may have been torn
            log.debug("read failed, retrying in %.2f s (a live writer may be mid-write): %s", pause, exc)
            time.sleep(pause)
            if before_retry is not None:
                before_retry()
    return read()


def copy_file(src, dst, piece: int = 1 << 26) -> None:
    """Copy ``src`` to ``dst`` in 64 MiB pieces: many short calls, so that the damaged-file check
    (labpgt/runfile/precheck.py) sees a large copy progress rather than one call that never returns."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while True:
            block = fin.read(piece)
            if not block:
                break
            fout.write(block)
