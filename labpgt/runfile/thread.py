"""A recorder's writes on a background thread, off the instruments' critical path.

:class:`RecorderThread` wraps the run file (:class:`labpgt.runfile.writer.RunFile`), itself a
:class:`labpgt.contracts.Recorder`:

* ``measurement`` and ``measurements_batch`` are queued and return at once; the queue is
  bounded (``max_pending`` items) and a full queue makes the caller *wait* -- nothing is
  ever dropped;
* ``step``, ``evaluation``, ``checkpoint``, ``fault``, ``set_status`` and ``flush`` are flush points:
  they are queued behind every measurement before them and the caller waits until the
  wrapped recorder has executed them (the run file flushes in each), so a process killed
  with SIGKILL loses at most the step in progress, as without the thread;
* every call is executed by the one writer thread, in the order the calls were made;
* an exception raised by the wrapped recorder stops the writer (nothing after it is
  written) and is raised again in the caller: by the call waiting on it, else by the next
  call, else by :meth:`close`;
* :meth:`close` writes what is queued and stops the thread (the wrapped recorder stays
  open: its owner closes it); calling it again does nothing.

Records are handed over, not copied: a caller must not modify a record's arrays after
handing it in (the physical layer allocates fresh arrays for every batch).
"""
from __future__ import annotations

import collections
import threading


class RecorderThread:
    """Queue a recorder's writes to one writer thread (see the module docstring)."""

    def __init__(self, recorder, *, max_pending: int = 64, name: str = "labpgt-writer"):
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.recorder = recorder
        self.max_pending = int(max_pending)
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._submitted = 0  # sequence number of the last item queued
        self._finished = 0  # sequence number of the last item executed (or abandoned after a failure)
        self._error: BaseException | None = None
        self._error_raised = False
        self._stopping = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ Recorder
    def measurement(self, record: dict) -> None:
        """One row (the run file's single-row append; the recorder contract's is measurements_batch)."""
        self._submit(self.recorder.measurement, (record,), wait=False)

    def measurements_batch(self, batch: dict) -> None:
        self._submit(self.recorder.measurements_batch, (batch,), wait=False)

    def step(self, record: dict) -> None:
        self._submit(self.recorder.step, (record,), wait=True)

    def evaluation(self, record: dict) -> None:
        self._submit(self.recorder.evaluation, (record,), wait=True)

    def checkpoint(self, state: dict) -> None:
        self._submit(self.recorder.checkpoint, (state,), wait=True)

    def fault(self, record: dict) -> None:
        self._submit(self.recorder.fault, (record,), wait=True)

    @property
    def n_measurements(self) -> int:
        """Rows in the file once everything queued is written."""
        self.drain()
        return self.recorder.n_measurements

    # ------------------------------------------------------------------ run-file extras
    def set_status(self, status: str, message: str = "") -> None:
        self._submit(self.recorder.set_status, (status, message), wait=True)

    def flush(self) -> None:
        """Wait until everything queued is written, then flush the run file."""
        self._submit(self.recorder.flush, (), wait=True)

    def drain(self) -> None:
        """Wait until everything queued so far has been executed; raise a writer error."""
        with self._cond:
            target = self._submitted
            while self._finished < target and self._error is None:
                self._cond.wait()
        self._raise_pending()

    # ------------------------------------------------------------------ lifetime
    @property
    def pending(self) -> int:
        """Items queued and not executed yet."""
        with self._cond:
            return self._submitted - self._finished

    def close(self) -> None:
        """Write everything queued, stop the thread, raise a writer error not raised yet."""
        if self._closed:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()
        self._closed = True
        self._raise_pending()

    def __enter__(self) -> "RecorderThread":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        else:  # an exception is on its way already: stop, but do not mask it
            try:
                self.close()
            except BaseException as writer_exc:  # noqa: BLE001 -- reported with the other
                if writer_exc is not exc:
                    exc.add_note(f"the run-file writer failed too: {writer_exc!r}")
        return False

    # ------------------------------------------------------------------ internals
    def _raise_pending(self) -> None:
        if self._error is not None and not self._error_raised:
            self._error_raised = True
            raise self._error

    def _check_usable(self) -> None:
        if self._error is not None:
            if not self._error_raised:
                self._error_raised = True
                raise self._error
            raise RuntimeError("the run-file writer failed earlier; nothing more is written") from self._error
        if self._closed or self._stopping:
            raise RuntimeError("the run-file writer is closed")

    def _submit(self, method, args: tuple, *, wait: bool) -> None:
        with self._cond:
            self._check_usable()
            while len(self._items) >= self.max_pending:  # full: wait for room, never drop
                self._cond.wait()
                self._check_usable()
            self._submitted += 1
            seq = self._submitted
            self._items.append((seq, method, args))
            self._cond.notify_all()
            if not wait:
                return
            while self._finished < seq and self._error is None:
                self._cond.wait()
            if self._error is not None:
                self._check_usable()

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._items and not self._stopping:
                    cond.wait()
                if not self._items:
                    return  # stopping and everything written
                seq, method, args = self._items[0]
            try:
                method(*args)
            except BaseException as exc:  # noqa: BLE001 -- handed to the caller's thread
                with cond:
                    self._error = exc
                    self._finished = self._submitted  # the rest is abandoned: the caller hears why
                    self._items.clear()
                    cond.notify_all()
                return
            with cond:
                self._items.popleft()
                self._finished = seq
                cond.notify_all()
