"""Reading a run file that may be damaged in a child process, with a time limit.

libhdf5 can loop, sleep or crash on damaged metadata, inside one C call that does not return: no
Python signal handler runs then, so neither a time limit nor Ctrl-C can stop it in-process. The
commands that read a file which may be damaged therefore read it first in a child process
(:func:`run_in_child`): ``labpgt inspect`` does all its reading there, ``labpgt train --resume``
(and ``labpgt.resume``) reads there everything a resume reads before it touches the file or any
instrument. Twice a second the child says it is alive if its reading thread has called or returned
from any function since (a profile hook counts them): if it is silent for :data:`READ_LIMIT_S` (one
libhdf5 call stuck on damaged metadata), reads for longer than :data:`READ_CAP_S`, or dies of a
signal, the file is called damaged and nothing was changed; a slow but working read keeps saying it
is alive. Ctrl-C or SIGTERM while waiting kills the child and goes on as usual (an interrupt).

Also here: :func:`check_not_locked`, whether another program holds a lock on the file (libhdf5
locks a file for every process that opens it, unless told not to), before ``--resume`` opens it
for writing.
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from labpgt.runfile.format import TABLES, RunFileError

log = logging.getLogger(__name__)

#: seconds the child may be silent while it reads: twice a second it says it is alive if its reading
#: thread has called or returned from a function since (a libhdf5 call stuck on damaged metadata,
#: looping or sleeping, with or without the GIL, makes it silent)
READ_LIMIT_S = 5.0
#: seconds the child may read in all, alive or not (a slow disk, a copy of a large file)
READ_CAP_S = 300.0
#: seconds the child may take to start (import numpy and h5py), generous for a loaded machine
START_LIMIT_S = 60.0
_BEAT_S = 0.5


class _Lines:
    """The child's stdout, line by line, with deadlines."""

    def __init__(self, proc: subprocess.Popen):
        import selectors

        self._fd = proc.stdout.fileno()
        self._buf = b""
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._fd, selectors.EVENT_READ)

    def next(self, deadline: float) -> bytes | None:
        """The next line (b"" at the end of the output), or None if it did not come by ``deadline``."""
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if not self._sel.select(timeout=min(left, 0.5)):
                continue
            chunk = os.read(self._fd, 1 << 16)
            if not chunk:
                line, self._buf = self._buf, b""
                return line
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line + b"\n"

    def close(self):
        self._sel.close()


def run_in_child(task: str, path, *, limit_s: float = READ_LIMIT_S, cap_s: float = READ_CAP_S) -> dict:
    """Run ``task`` ("inspect" or "check") on ``path`` in a child process; its JSON answer.

    Raises RunFileError if, after its start-up, the child was silent for ``limit_s`` (hung in
    libhdf5), read for more than ``cap_s`` in all, or died. KeyboardInterrupt (Ctrl-C, or SIGTERM
    under ``terminate_as_interrupt``) kills the child first.
    """
    import tempfile

    path = Path(path)
    # -I: neither the working directory nor PYTHONPATH on the child's import path; this labpgt first
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r}); "
            "from labpgt.runfile.precheck import _child; sys.exit(_child(sys.argv[1], sys.argv[2]))")
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty child never blocks on it
        proc = subprocess.Popen([sys.executable, "-I", "-c", code, task, str(path)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=err, start_new_session=True)
        lines = _Lines(proc)
        try:
            line = lines.next(time.monotonic() + START_LIMIT_S)
            if line is None:
                raise RunFileError(f"{path}: the check of the file did not start within {START_LIMIT_S:.0f} s "
                                   "(is the machine overloaded?); nothing was changed")
            if line != b"ready\n":
                proc.kill()
                proc.wait()
                err.seek(0)
                raise RuntimeError(f"the run file check could not start: {err.read().decode(errors='replace')[-500:]}")
            cap = time.monotonic() + cap_s
            while True:
                line = lines.next(min(time.monotonic() + limit_s, cap))
                if line is None:
                    raise RunFileError(f"{path} is damaged: reading its HDF5 structure did not finish (libhdf5 stuck "
                                       f"for {limit_s:.0f} s{'' if time.monotonic() < cap else ', or over the cap'}); "
                                       "nothing was changed")
                if line != b"beat\n":
                    break
            try:
                return json.loads(line)
            except ValueError:
                proc.kill()
                code = proc.wait()
                raise RunFileError(f"{path} is damaged: libhdf5 {_death(code)} reading its HDF5 structure; "
                                   "nothing was changed") from None
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            lines.close()
            proc.stdout.close()


def _death(code: int) -> str:
    if code < 0:
        try:
            return f"crashed ({signal.Signals(-code).name})"
        except ValueError:
            return f"crashed (signal {-code})"
    return f"failed (exit status {code})"


def check_readable(path) -> None:
    """Raise RunFileError (saying what is wrong, and that nothing was changed) unless the run file's
    structure reads within the time limit: every table's committed rows and the rows beyond them,
    the last checkpoint, the status log, /probe, /dataset."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"run file {path} does not exist")
    answer = run_in_child("check", path)
    if not answer.get("ok"):
        raise RunFileError(f"{answer['error']}; nothing was changed")


def check_before_resume(path) -> None:
    """What ``--resume`` checks before it reads the file itself: :func:`check_readable`, then
    :func:`check_not_locked`."""
    check_readable(path)
    check_not_locked(path)


def inspect_in_child(path) -> str:
    """:func:`labpgt.runfile.inspect.inspect`, read in a child process; a hang or crash there is a
    PROBLEM line."""
    try:
        return run_in_child("inspect", path)["text"]
    except RunFileError as exc:
        return f"run file: {path}\n  PROBLEM: {exc}"


# -- the child ---------------------------------------------------------------------------

def _read_structure(path) -> None:
    """What a resume reads, and every row column's rows from the committed count on (the rows a
    resume truncates) and its last committed row (not whole columns: memory stays bounded)."""
    import h5py

    from labpgt.runfile.checkpoints import last_valid
    from labpgt.runfile.reader import RunReader

    with RunReader(path) as r:
        r.status_history()
        r.last_evaluation()
        r.resumes()
        r.faults()
        last_valid(r)  # the checkpoint a resume continues from, and the later ones it passes over
        r.probe()
        r.dataset()
        committed = dict(zip(TABLES, r._committed))
        failures = []

        def visit(name, obj):
            if not isinstance(obj, h5py.Dataset):
                return
            try:
                table = name.split("/", 1)[0]
                if obj.shape and obj.maxshape[0] is None:
                    n = committed.get(table, obj.shape[0])
                    obj[max(0, min(n, obj.shape[0]) - 1):]
                else:
                    obj[()]
            except (KeyError, OSError, ValueError, RuntimeError, TypeError) as exc:
                failures.append(f"/{name} is unreadable ({exc})")
        try:
            r._f.visititems(visit)
        except (KeyError, OSError, ValueError, RuntimeError, TypeError) as exc:
            failures.append(f"its groups are unreadable ({exc})")
        if failures:
            raise RunFileError(f"{path} is damaged: {failures[0]}")


def _die_with_parent() -> None:
    """SIGKILL from the kernel when the command that started this child dies (Linux): a SIGKILLed
    ``labpgt inspect`` could not stop a child stuck in libhdf5 itself, and it must not outlive it."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() == 1:  # the parent died before the request took effect
            os._exit(1)


def _child(task: str, path: str) -> int:
    import threading

    from labpgt.runfile.opening import readers_take_no_locks

    _die_with_parent()
    readers_take_no_locks()
    os.write(1, b"ready\n")
    done = threading.Event()
    calls = [0]

    def count(frame, event, arg):  # every Python and C function call and return of the reading thread
        calls[0] += 1

    def beat():  # says "alive" only if the reading thread got on: a call that never returns stops it
        seen = -1
        while not done.wait(_BEAT_S):
            if calls[0] != seen:
                seen = calls[0]
                os.write(1, b"beat\n")
    beating = threading.Thread(target=beat, daemon=True)
    beating.start()
    sys.setprofile(count)
    try:
        answer = _answer(task, path)
    finally:
        sys.setprofile(None)
        done.set()
        beating.join()
    os.write(1, (json.dumps(answer) + "\n").encode())
    return 0


def _answer(task: str, path: str) -> dict:
    if task == "inspect":
        from labpgt.runfile.inspect import inspect

        try:
            text = inspect(path)
        except (KeyError, OSError, ValueError, RuntimeError, TypeError) as exc:  # damage inspect did not expect
            text = f"run file: {path}\n  PROBLEM: {path} is damaged: {type(exc).__name__}: {exc}"
        if "PROBLEM:" not in text and Path(path).is_file():
            try:  # what a resume reads besides: the last rows of every column, the checkpoints
                _read_structure(path)
            except (RunFileError, KeyError, OSError, ValueError, RuntimeError, TypeError) as exc:
                text += f"\n  PROBLEM: {exc}"
        answer = {"text": text}
    else:
        try:
            _read_structure(path)
            answer = {"ok": True}
        except (RunFileError, KeyError, OSError, ValueError, RuntimeError, TypeError) as exc:
            answer = {"ok": False, "error": str(exc) if isinstance(exc, RunFileError)
                      else f"{path} is damaged: {type(exc).__name__}: {exc}"}
    return answer


# -- locks ---------------------------------------------------------------------------------

def _lock_holders(path) -> list[str]:
    """Processes that hold a flock on ``path`` (from /proc/locks; empty where there is none)."""
    try:
        st = os.stat(path)
        text = Path("/proc/locks").read_text()
    except OSError:
        return []
    holders = []
    for line in text.splitlines():
        m = re.match(r"\d+:\s+FLOCK\s+\S+\s+\S+\s+(\d+)\s+([0-9a-f]+):([0-9a-f]+):(\d+)\s", line)
        if m and int(m.group(4)) == st.st_ino and (int(m.group(2), 16), int(m.group(3), 16)) == \
                (os.major(st.st_dev), os.minor(st.st_dev)):
            pid = int(m.group(1))
            try:
                name = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                name = "?"
            holders.append(f"{pid} ({name})")
    return holders


def check_not_locked(path) -> None:
    """RunFileError if another process holds a lock on ``path`` that would refuse opening it for
    writing (libhdf5's "[Errno 11] unable to lock file")."""
    import fcntl

    if os.environ.get("HDF5_USE_FILE_LOCKING", "").upper() == "FALSE":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holders = _lock_holders(path)
            who = f" (process {', '.join(holders)})" if holders else ""
            raise RunFileError(f"{path} is open in another program{who}, e.g. a notebook or h5py session, "
                               "which locks it; close it there and retry (nothing was changed)") from None
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

