"""RecorderThread: order kept, nothing dropped on a full queue, flush points, errors surface, close."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from labpgt.runfile import RunReader
from labpgt.runfile.thread import RecorderThread
from tests.test_runfile import assert_rows, create, row, step_rec

ROOT = Path(__file__).resolve().parents[1]


class ListRecorder:
    """Keeps every call, in order, with the thread that made it."""

    def __init__(self):
        self.calls = []

    def _keep(self, name, payload):
        self.calls.append((name, payload, threading.current_thread().name))

    def measurement(self, record):
        self._keep("measurement", record["i"])

    def measurements_batch(self, batch):
        self._keep("measurements_batch", tuple(batch["i"]))

    def step(self, record):
        self._keep("step", record["i"])

    def evaluation(self, record):
        self._keep("evaluation", record["i"])

    def checkpoint(self, state):
        self._keep("checkpoint", state["i"])

    def flush(self):
        self._keep("flush", None)


class GatedRecorder(ListRecorder):
    """Blocks in every measurement until ``gate`` is set; ``started`` tells the first one began."""

    def __init__(self, fail_on=None):
        super().__init__()
        self.gate = threading.Event()
        self.started = threading.Event()
        self.fail_on = fail_on

    def measurement(self, record):
        self.started.set()
        self.gate.wait()
        if record["i"] == self.fail_on:
            raise OSError(f"disk full at {record['i']}")
        super().measurement(record)


def test_every_call_is_executed_in_order_on_the_writer_thread():
    rec = ListRecorder()
    expected = []
    with RecorderThread(rec, max_pending=3, name="writer-under-test") as w:
        for s in range(20):
            for i in range(7):
                w.measurement({"i": (s, i)})
                expected.append(("measurement", (s, i)))
            w.measurements_batch({"i": [s, -1, -2]})
            expected.append(("measurements_batch", (s, -1, -2)))
            w.step({"i": s})
            expected.append(("step", s))
            if s % 5 == 4:
                w.evaluation({"i": s})
                w.checkpoint({"i": s})
                expected += [("evaluation", s), ("checkpoint", s)]
        w.measurement({"i": "last"})
        expected.append(("measurement", "last"))
    assert [(name, payload) for name, payload, _ in rec.calls] == expected
    assert {thread for *_, thread in rec.calls} == {"writer-under-test"}


def test_a_full_queue_makes_the_caller_wait_and_nothing_is_dropped():
    rec = GatedRecorder()
    w = RecorderThread(rec, max_pending=2)
    pending_seen = []

    def submit():
        for i in range(10):
            w.measurement({"i": i})
            pending_seen.append(w.pending)

    submitter = threading.Thread(target=submit)
    submitter.start()
    assert rec.started.wait(10)  # the writer holds item 0 and cannot finish it
    submitter.join(0.3)
    assert submitter.is_alive()  # blocked on the full queue rather than dropping
    assert w.pending == 2
    rec.gate.set()
    submitter.join(30)
    assert not submitter.is_alive()
    w.close()
    assert [payload for _, payload, _ in rec.calls] == list(range(10))
    assert max(pending_seen) <= 2


def test_a_step_returns_only_after_everything_before_it_was_written():
    rec = ListRecorder()
    w = RecorderThread(rec, max_pending=64)
    for i in range(50):
        w.measurement({"i": i})
    w.step({"i": 0})
    # synchronous: no waiting here, the recorder has seen all 50 and the step already
    assert [payload for _, payload, _ in rec.calls] == list(range(50)) + [0]
    w.measurement({"i": 50})
    w.flush()
    assert rec.calls[-2:] == [("measurement", 50, w._thread.name), ("flush", None, w._thread.name)]
    w.close()


def test_run_file_through_the_writer_is_committed_at_each_step(tmp_path):
    path = tmp_path / "w.h5"
    with create(path) as rf:
        with RecorderThread(rf, max_pending=4) as w:
            for i in range(130):
                w.measurement(row(i, step=0))
            w.step(step_rec(0, 130))
            # the run file flushed inside step(): /committed counts every row
            assert rf._committed[0] == 130
            assert w.n_measurements == 130  # attributes are read after the queue drained
            w.set_status("completed")
    with RunReader(path) as r:
        assert r.status == "completed" and r.n_measurements == 130
        assert_rows(r.measurements[:], range(130))


KILLED_WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from labpgt.runfile.thread import RecorderThread
    from tests.test_runfile import create, row, step_rec
    rf = create(sys.argv[1])
    w = RecorderThread(rf, max_pending=8)
    n = 0
    for s in range(4):
        for _ in range(70):
            w.measurement(row(n, step=s)); n += 1
        w.step(step_rec(s, n))
        print("step", s, n, flush=True)
    for _ in range(40):  # the step in progress
        w.measurement(row(n, step=4)); n += 1
    print("inflight", flush=True)
    time.sleep(60)
""")


def test_kill_9_with_the_writer_loses_at_most_the_step_in_progress(tmp_path):
    path = tmp_path / "killed.h5"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), str(ROOT)], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line.split())
            if line.startswith("inflight"):
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert lines[-2] == ["step", "3", "280"], lines
    with h5py.File(path, "r", swmr=True) as f:
        assert list(f["committed"][:2]) == [280, 4]
        m = {k: f["measurements"][k][:280] for k in f["measurements"]}
    assert_rows(m, range(280))


def test_an_error_in_the_writer_is_raised_in_the_caller():
    rec = GatedRecorder(fail_on=3)
    rec.gate.set()
    w = RecorderThread(rec, max_pending=100)
    for i in range(6):
        w.measurement({"i": i})
    with pytest.raises(OSError, match="disk full at 3") as info:
        w.step({"i": 0})  # the flush point waits and hears why nothing more was written
    first = info.value
    assert [payload for _, payload, _ in rec.calls] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="failed earlier") as again:
        w.measurement({"i": 7})
    assert again.value.__cause__ is first
    w.close()  # already reported: close does not raise it twice
    w.close()


def test_an_error_reaches_a_caller_waiting_on_a_full_queue_and_close():
    rec = GatedRecorder(fail_on=0)
    w = RecorderThread(rec, max_pending=1)
    w.measurement({"i": 0})
    assert rec.started.wait(10)
    errors = []

    def submit():
        try:
            w.measurement({"i": 1})  # waits: the queue is full
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    submitter = threading.Thread(target=submit)
    submitter.start()
    rec.gate.set()  # item 0 fails now
    submitter.join(30)
    assert not submitter.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], OSError)
    w.close()

    # an error nobody asked about is raised by close()
    rec2 = GatedRecorder(fail_on=0)
    rec2.gate.set()
    w2 = RecorderThread(rec2)
    w2.measurement({"i": 0})
    with pytest.raises(OSError, match="disk full at 0"):
        w2.close()
    w2.close()


def test_close_is_idempotent_and_refuses_later_writes():
    rec = ListRecorder()
    w = RecorderThread(rec)
    w.measurement({"i": 1})
    w.close()
    w.close()
    assert not w._thread.is_alive()
    assert rec.calls[0][:2] == ("measurement", 1)
    with pytest.raises(RuntimeError, match="closed"):
        w.measurement({"i": 2})
    with pytest.raises(RuntimeError, match="closed"):
        w.step({"i": 0})


def test_exit_with_an_exception_does_not_mask_it():
    rec = GatedRecorder(fail_on=0)
    rec.gate.set()
    with pytest.raises(KeyError) as info:
        with RecorderThread(rec) as w:
            w.measurement({"i": 0})
            raise KeyError("the trainer's own error")
    # close() joined the writer, so its failure is known: reported alongside, not instead
    assert info.value.args == ("the trainer's own error",)
    assert any("disk full at 0" in note for note in getattr(info.value, "__notes__", []))


def test_invalid_queue_size():
    with pytest.raises(ValueError):
        RecorderThread(ListRecorder(), max_pending=0)


def test_records_are_handed_over_unchanged():
    rec = ListRecorder()
    rec.measurements_batch = lambda batch: rec.calls.append(("batch", batch, ""))
    batch = {"i": np.arange(3), "trace_dbm": np.ones((3, 4), np.float32)}
    with RecorderThread(rec) as w:
        w.measurements_batch(batch)
    assert rec.calls[0][1] is batch
