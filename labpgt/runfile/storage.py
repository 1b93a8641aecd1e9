"""A run file that can no longer grow: the disk is full (ENOSPC), a quota (EDQUOT) or the file size limit (EFBIG).

Two layers, both used by :class:`labpgt.runfile.RunFile`:

* **before a write** (:class:`Room`): every append first checks that the file can grow by what
  the append may allocate (every chunk it begins, whole, beside what the appends since the last
  flush may still allocate, and a reserve for HDF5's own metadata and for the end: the status row
  and the close), against the process's file size limit (``ulimit -f``) and the free space of the
  file's folder. When it cannot, nothing of that append is written, the rows buffered since the
  last commit are dropped and :class:`StorageExhausted` is raised; the reserve still takes the
  status "failed" and the close, and ``--resume`` continues the file from its last checkpoint
  once space is freed. This is the usual path (a run fills the disk itself).
* **after a failed write** (another process filled the disk in between): HDF5 reports the failure
  as an error whose text carries the errno; HDF5 then holds writes it cannot make, and a failed
  close leaves it to crash the process later (SIGSEGV/SIGBUS at exit). :func:`abandon` therefore
  points HDF5's file descriptor at /dev/null, drops every handle into the file and closes it (what
  HDF5 still holds is written there: the close succeeds and the run file stays its last commit),
  and sets the superblock's end-of-file address back to the file's real length (HDF5 had moved
  it past what it could write; with SWMR nothing on disk refers to the part never written: a
  child is written before its parent). Then the status "failed" is recorded if the file still
  takes it (:meth:`labpgt.runfile.RunFile._out_of_room`).
"""
from __future__ import annotations

import errno
import gc
import logging
import os
import re
import resource
import sys
import time
import traceback
from pathlib import Path

import h5py
import numpy as np

from labpgt.runfile.superblock import _superblock, set_end_of_file

log = logging.getLogger(__name__)

_ERRNO = re.compile(r"errno = (\d+)")
_WORDS = {errno.ENOSPC: "No space left on device", errno.EFBIG: "File too large", errno.EDQUOT: "Disk quota exceeded"}
#: kept free beyond what the chunks of an append take: HDF5's own metadata (chunk indexes, object
#: headers) and, after a refused write, the status row and the close
RESERVE_BYTES = 256 << 10
#: farther than this from both limits, the limits are looked at again only every _FAR_SECONDS
_FAR_BYTES, _FAR_SECONDS = 64 << 20, 1.0


class StorageExhausted(OSError):
    """The run file could not be written: no space left, a quota, or the file size limit."""


def describe(code: int) -> str:
    if code == errno.EFBIG:
        return "the file size limit was reached (ulimit -f)"
    if code == errno.EDQUOT:
        return "the disk quota is exhausted"
    return "the disk is full"


def exhausted(path: Path, code: int, where: str, *, resumable: bool = True) -> StorageExhausted:
    """The error that stops a run for lack of room: what happened, and how to go on."""
    then = (f"the file keeps everything up to its last commit. Free space (or raise the limit) and continue with: "
            f"labpgt train --resume {path}") if resumable else \
        "nothing was kept. Free space (or raise the limit) and run the command again"
    exc = StorageExhausted(f"{path}: {describe(code)} {where}; {then}")
    exc.errno = code
    return exc


def storage_errno(exc: BaseException) -> int | None:
    """ENOSPC, EDQUOT or EFBIG if ``exc`` (or an error behind it) is a write that ran out of room, else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _WORDS:
            return exc.errno
        text = str(exc)
        for match in _ERRNO.finditer(text):
            if int(match.group(1)) in _WORDS:
                return int(match.group(1))
        for code, words in _WORDS.items():
            if words in text:
                return code
        exc = exc.__cause__ or exc.__context__
    return None


# -- before a write ----------------------------------------------------------------------------

class Room:
    """How far a run file may still grow, and what an append of a table may need."""

    def __init__(self, f: h5py.File, path: Path):
        self._f = f
        self.path = Path(path)
        self._columns = {}  # table -> [(chunk rows, chunk bytes, text column?)] of its row columns
        for table, group in f.items():
            if isinstance(group, h5py.Group):
                self._columns[table] = _chunk_costs(group)
        self.pending = 0  # bytes the appends since the last flush may still allocate
        self._known = None  # (room, errno, file end, monotonic time) of the last full look
        self.reserve = RESERVE_BYTES + self.need("status", 1, 1, 4096)

    def need(self, table: str, rows_before: int, rows: int, text_bytes: int = 0) -> int:
        """Bytes an append of ``rows`` rows (after ``rows_before``), with ``text_bytes`` of text, may
        allocate: every chunk it starts, whole (HDF5 allocates a chunk when it first writes it)."""
        total = 0
        for chunk_rows, chunk_bytes, text in self._columns.get(table, ()):
            if text:
                total += (text_bytes // chunk_rows + 1) * chunk_bytes
            else:  # chunks whose first row lies in [rows_before, rows_before + rows)
                total += ((rows_before + rows - 1) // chunk_rows - (rows_before - 1) // chunk_rows) * chunk_bytes
        return total

    def left(self) -> tuple[int, int]:
        """(bytes the file may still grow by, the errno that would stop it). Far from both limits the
        last answer, less what the file grew since, is good for up to a second (two system calls
        saved on every append)."""
        end = self._f.id.get_filesize()
        if self._known is not None:
            room, code, then_end, then = self._known
            room -= end - then_end
            if room > _FAR_BYTES and time.monotonic() - then < _FAR_SECONDS:
                return room, code
        room, code = self._limits(end)
        self._known = (room, code, end, time.monotonic())
        return room, code

    def _limits(self, end: int) -> tuple[int, int]:
        room, code = sys.maxsize, errno.ENOSPC
        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY:
            room, code = soft - end, errno.EFBIG
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return room, code
        free = st.f_bavail * st.f_frsize
        return (free, errno.ENOSPC) if free < room else (room, code)

    def check(self, table: str, rows_before: int, rows: int, text_bytes: int = 0, *, final: bool = False) -> None:
        """StorageExhausted unless the append fits beside what is pending, with the reserve kept
        (``final``: the status row of a run that stops, which may use the reserve)."""
        need = self.need(table, rows_before, rows, text_bytes)
        room, code = self.left()
        if self.pending + need + (0 if final else self.reserve) > room:
            raise exhausted(self.path, code, f"(room for {max(room, 0)} more bytes; the next write may need "
                                             f"{self.pending + need}, and {self.reserve} are kept for the end)")
        self.pending += need


def _chunk_costs(group: h5py.Group) -> list[tuple[int, int, bool]]:
    out = []

    def visit(name, obj):
        dimension_only = b"not a netCDF variable" in bytes(obj.attrs.get("NAME", b"")) if isinstance(
            obj, h5py.Dataset) else True  # a netCDF dimension (labpgt/runfile/conventions.py): never written
        if not dimension_only and obj.chunks is not None and obj.maxshape[0] is None:
            out.append((int(obj.chunks[0]), int(np.prod(obj.chunks)) * obj.dtype.itemsize, name.endswith("_utf8")))
    group.visititems(visit)
    return out


# -- after a failed write ----------------------------------------------------------------------

def abandon(f: h5py.File, path: Path, *, error: BaseException | None = None, drop_handles=None) -> None:
    """Close an HDF5 file whose writes fail for lack of room, without a crash, leaving the file on
    disk as its last commit (the module docstring). ``error``: the failed write (its traceback's
    frames hold handles into the file: they are cleared); ``drop_handles``: called first, to
    forget the caller's own handles."""
    hook = sys.unraisablehook
    sys.unraisablehook = _quiet  # a dataset's close that fails all the same is said once, by the caller
    stderr = _muted_stderr()  # HDF5's C library prints its error stacks itself
    try:
        # the scratch first: closing a dataset writes its cached chunks, and a close that fails
        # leaves HDF5 to crash the process later
        with _scratch_for(f, path):
            seen = set()
            while error is not None and id(error) not in seen:
                seen.add(id(error))
                traceback.clear_frames(error.__traceback__)
                error = error.__cause__ or error.__context__
            if drop_handles is not None:
                drop_handles()
            gc.collect()
            try:
                f.close()
            except Exception as exc:  # noqa: BLE001 - said, and the file is repaired below all the same
                log.warning("%s: HDF5 could not close it cleanly (%s)", path, str(exc).splitlines()[0])
            gc.collect()
    finally:
        _restore_stderr(stderr)
        sys.unraisablehook = hook
    repair_end_of_file(path)


class _scratch_for:
    """Point HDF5's file descriptor at /dev/null while it closes: the writes it still holds land
    there, and succeed (no offset to exceed, no space to run out of), so that the close succeeds
    and the run file stays its last commit."""

    def __init__(self, f: h5py.File, path: Path):
        self.fd = f.id.get_vfd_handle()
        self.saved = None

    def __enter__(self):
        try:
            null = os.open(os.devnull, os.O_RDWR)
        except OSError:
            return self
        self.saved = os.dup(self.fd)
        os.dup2(null, self.fd)
        os.close(null)
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            os.close(self.saved)  # the run file's description (and HDF5's lock on it) ends here
        return False


def _muted_stderr():
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        return saved
    except (OSError, ValueError):
        return None


def _restore_stderr(saved) -> None:
    if saved is not None:
        os.dup2(saved, 2)
        os.close(saved)


def repair_end_of_file(path: Path) -> bool:
    """Set the superblock's end-of-file address back to the file's length when it points past it
    (the writer ran out of room); True if it did."""
    sb = _superblock(path)
    size = os.path.getsize(path)
    if sb is None or not sb["checksum_ok"] or sb["eof"] <= size:
        return False
    set_end_of_file(path, size)
    log.info("%s: HDF5 had reserved %d bytes it could not write; the file now ends at its last commit",
                path, sb["eof"] - size)
    return True


def _quiet(unraisable) -> None:
    log.debug("while closing a run file after a storage error: %s", unraisable.exc_value)
