"""Streaming readers: effective rows as ranges, replay and report reading a window at a time.

A replay holds a window of recorded rows, not the run's columns; these tests check that it reads
in windows (the rows of each h5py read, counted), that the windows cross resumes' abandoned rows
and the requests' boundaries without changing a bit, and that the row ranges are the rows the
per-row index named before.
"""
from __future__ import annotations

import numpy as np
import pytest

from labpgt.experiment.replay import replay
from labpgt.report import summary
from labpgt.reservoirs.replay import ReplayReservoir
from labpgt.runfile import RunFile, RunReader
from labpgt.runfile.reader import EffectiveRows, Measurements, rows_of
from test_replay import ENCODER, RecordedToy, _trainer, new_run

JUNK_ROWS = 37  # rows a killed writer left after the checkpoint: abandoned by the resume


class ResumingRecorder:
    """Forwards to a RunFile; after the checkpoints named in ``kill_after``, writes junk rows and a
    step (what a killed run leaves after its last checkpoint), closes the file as aborted and goes
    on in the same file reopened with ``--resume`` (RunFile.open_append)."""

    def __init__(self, path, run: RunFile, kill_after=(2, 4)):
        self.path, self.run = path, run
        self.kill_after = set(kill_after)
        self.checkpoints = 0
        self.toy = None  # the RecordedToy writing measurement rows through this recorder

    def measurement(self, record):
        self.run.measurement(record)

    def measurements_batch(self, batch):
        self.run.measurements_batch(batch)

    def step(self, record):
        self.run.step(record)

    def evaluation(self, record):
        self.run.evaluation(record)

    def fault(self, record):
        return self.run.fault(record)

    @property
    def n_measurements(self):
        return self.run.n_measurements

    def checkpoint(self, state):
        self.run.checkpoint(state)
        self.checkpoints += 1
        if self.checkpoints not in self.kill_after:
            return
        rng = np.random.default_rng(self.checkpoints)
        for i in range(JUNK_ROWS):
            self.run.measurement({
                "time_s": 0.0, "step": -1, "kind": "train", "sample_index": i, "node": 0,
                "perturbation_direction": -1, "perturbation_sign": 0,
                "settings": {"frequency_hz": 1.0, "power_dbm": 0.0, "current_a": 0.0},
                "trace_dbm": rng.normal(size=16).astype(np.float32), "frequency_axis": (2.05e9, 2.08e9, 16),
                "features": rng.normal(size=4), "flags": 0})
        self.run.step({"step": -1, "loss": 9.0, "accuracy": 0.0, "grad_norm": 9.0,
                       "measurements": 0, "time_s": 0.0, "current_a": 0.0})
        self.run.set_status("aborted")
        self.run.close()
        self.run = RunFile.open_append(self.path)
        self.toy.recorder = self


def _record(path, *, resume: bool):
    probe = _trainer(RecordedToy(None), None)
    shapes = {k: np.shape(v) for k, v in probe.opt_state.items()}
    run = new_run(path, n_params=probe.model.params().size, shapes=shapes)
    recorder = ResumingRecorder(path, run, kill_after=(2, 4) if resume else ())
    toy = RecordedToy(recorder)
    recorder.toy = toy
    trainer = _trainer(toy, recorder)
    status = trainer.run()
    recorder.run.set_status("completed", status)
    recorder.run.close()
    return trainer


def _old_effective_rows(reader: RunReader, table: str) -> np.ndarray:
    """The per-row index effective_rows returned before it was built from ranges."""
    n = reader.n_rows(table)
    keep = np.ones(n, dtype=bool)
    r = reader.resumes()
    for a, b in zip(r[f"{table}_start"], r[f"{table}_stop"]):
        keep[a:b] = False
    return np.flatnonzero(keep)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A toy training run recorded straight, and the same run recorded with two resumes that
    each abandoned JUNK_ROWS rows and a step."""
    folder = tmp_path_factory.mktemp("stream")
    plain, resumed = folder / "plain.h5", folder / "resumed.h5"
    trainer = _record(plain, resume=False)
    _record(resumed, resume=True)
    return plain, resumed, trainer


def test_the_resumed_recording_holds_the_plain_one_plus_abandoned_rows(recorded):
    plain, resumed, _ = recorded
    with RunReader(plain) as a, RunReader(resumed) as b:
        assert len(b.resumes()["checkpoint"]) == 2
        assert b.n_measurements == a.n_measurements + 2 * JUNK_ROWS
        ranges = b.effective_ranges("measurements")
        assert len(ranges) == 3
        rows = rows_of(ranges)
        for name in ("features", "frequency_hz", "step"):
            assert b.measurements.column(name)[rows].tobytes() == a.measurements.column(name).tobytes()


def test_effective_ranges_are_the_rows_of_the_old_per_row_index(recorded):
    _, resumed, _ = recorded
    with RunReader(resumed) as r:
        for table in ("measurements", "steps", "evaluations"):
            old = _old_effective_rows(r, table)
            assert len(old) < r.n_rows(table) or table == "evaluations"
            assert r.effective_rows(table).tolist() == old.tolist()
            ranges = r.effective_ranges(table)
            assert all(a < b for a, b in ranges) and all(b1 < a2 for (_, b1), (a2, _) in zip(ranges, ranges[1:]))
            rows = EffectiveRows(ranges)
            assert len(rows) == len(old)
            assert [rows.file_row(i) for i in range(len(old))] == old.tolist()


def test_effective_ranges_with_overlapping_and_out_of_range_abandoned_rows(tmp_path, monkeypatch):
    path = tmp_path / "r.h5"
    with new_run(path):
        pass
    with RunReader(path) as r:
        r._committed[0] = 100
        table = {"measurements_start": np.array([10, 15, 40, 90, 120]),
                 "measurements_stop": np.array([20, 30, 40, 150, 130])}
        monkeypatch.setattr(r, "resumes", lambda: table)
        assert r.effective_ranges("measurements") == [(0, 10), (30, 90)]
        assert r.effective_rows("measurements").tolist() == _old_effective_rows(r, "measurements").tolist()


def test_effective_rows_read_pieces_across_ranges(recorded):
    _, resumed, _ = recorded
    with RunReader(resumed) as r:
        rows = EffectiveRows(r.effective_ranges("measurements"))
        every = rows_of(rows.ranges)
        whole = r.measurements.column("features")
        for lo, hi in ((0, 1), (0, len(rows)), (5, 700), (len(rows) - 3, len(rows)), (10, 10)):
            got = rows.read(r.measurements, ("features",), lo, hi)["features"]
            assert got.tobytes() == whole[every[lo:hi]].tobytes()
        seen = np.concatenate([w["features"] for _, w in rows.windows(r.measurements, ("features",), 64)])
        assert seen.tobytes() == whole[every].tobytes()


class CountingReads:
    """Counts the rows of every h5py read of a measurement column."""

    def __init__(self, monkeypatch):
        self.rows: dict[str, list[int]] = {}
        column = Measurements.column

        def counted(measurements, name, index=slice(None)):
            out = column(measurements, name, index)
            self.rows.setdefault(name, []).append(len(out))
            return out
        monkeypatch.setattr(Measurements, "column", counted)


@pytest.mark.parametrize("window_rows", [1, 7, 64, 100_000])
def test_replay_through_resumes_in_small_windows_is_bit_identical(recorded, monkeypatch, window_rows):
    plain, resumed, trainer = recorded
    reads = CountingReads(monkeypatch)
    requests = []
    measure = ReplayReservoir.measure

    def counted(reservoir, u, **kw):
        requests.append(len(u) * reservoir.n_nodes)
        return measure(reservoir, u, **kw)
    monkeypatch.setattr(ReplayReservoir, "measure", counted)
    result = replay(resumed, _trainer, encoder=ENCODER, window_rows=window_rows)
    assert result.ok, result.message
    assert result.params_equal and result.steps == trainer.step and result.step_mismatches == []
    with RunReader(plain) as r:
        assert result.measurements_replayed == result.measurements_recorded == r.n_measurements
        assert r.last_checkpoint()["params"].tobytes() == trainer.model.params().tobytes()
    # no read is longer than a window or a request (a batch, or the test split), and every
    # row is read about once
    largest_request = max(requests)
    assert largest_request < result.measurements_recorded / 10
    features = reads.rows["features"]
    assert max(features) <= max(window_rows, largest_request)
    assert result.measurements_recorded <= sum(features) <= 2 * result.measurements_recorded + largest_request
    if window_rows == 100_000:  # one window holds the run: one read per range of effective rows
        assert len([n for n in features if n]) == 3


def test_replay_reservoir_holds_one_window(recorded):
    _, resumed, _ = recorded
    with RunReader(resumed) as r:
        rep = ReplayReservoir(r, ENCODER, window_rows=50)
        assert rep.recorded == r.n_measurements - 2 * JUNK_ROWS
        trainer = _trainer(rep, None)
        trainer.run()
        assert rep.remaining == 0
        assert len(rep._window["features"]) <= 60  # a window, or the last request (the test split: 30 x 2)


def test_report_counts_and_samples_window_by_window(recorded, tmp_path, monkeypatch):
    _, resumed, _ = recorded
    monkeypatch.setattr(summary, "SCAN_ROWS", 64)
    reads = CountingReads(monkeypatch)
    with RunReader(resumed) as r:
        counts = summary._kind_counts(r)
        kinds = r.measurements.column("kind")
        assert counts == {k: int((kinds == i).sum()) for i, k in enumerate(summary.KINDS)}
        assert sum(counts.values()) == r.n_measurements
        rows = EffectiveRows(r.effective_ranges("measurements"))
        freq, step = summary._evenly_spaced(r, rows, ("frequency_hz", "step"), 50)
        pick = np.unique(np.linspace(0, len(rows) - 1, 50).astype(np.int64))
        every = r.effective_rows("measurements")
        assert freq.tobytes() == r.measurements.column("frequency_hz")[every[pick]].tobytes()
        assert step.tolist() == r.measurements.column("step")[every[pick]].tolist()
        assert -1 not in step.tolist()  # the abandoned junk rows are not sampled
    assert max(reads.rows["frequency_hz"][:-1]) <= 64
    files = summary.report(resumed, tmp_path / "report")
    text = (tmp_path / "report" / "summary.txt").read_text()
    assert f"measurements recorded: {sum(counts.values())} (" in text and len(files) == 4


def test_writer_and_reader_cap_each_datasets_chunk_cache(tmp_path):
    """HDF5 2.0 caches 8 MiB of every dataset: ~20 row columns kept up to ~150 MB of a long run in
    a writer's (and a reader's) memory. Both open run files with CHUNK_CACHE_BYTES a dataset."""
    from labpgt.runfile.format import CHUNK_CACHE_BYTES

    assert CHUNK_CACHE_BYTES <= 1 << 20
    path = tmp_path / "r.h5"
    with new_run(path) as run:
        assert run._f.id.get_access_plist().get_cache()[2] == CHUNK_CACHE_BYTES
        with RunReader(path) as r:  # a reader of a file being written (SWMR)
            assert r._f.id.get_access_plist().get_cache()[2] == CHUNK_CACHE_BYTES
        run.set_status("aborted")
    with RunFile.open_append(path) as run:
        assert run._f.id.get_access_plist().get_cache()[2] == CHUNK_CACHE_BYTES
        run.set_status("completed")
    with RunReader(path) as r:
        assert r._f.id.get_access_plist().get_cache()[2] == CHUNK_CACHE_BYTES


def test_report_draws_at_most_max_curve_points_per_step_curve(recorded, tmp_path, monkeypatch):
    _, resumed, _ = recorded
    monkeypatch.setattr(summary, "MAX_CURVE_POINTS", 10)
    drawn = []
    plot = summary.plt.Axes.plot

    def counted(ax, *args, **kw):
        drawn.append((len(args[0]), kw.get("label", "")))
        return plot(ax, *args, **kw)
    monkeypatch.setattr(summary.plt.Axes, "plot", counted)
    summary.report(resumed, tmp_path / "report")
    with RunReader(resumed) as r:
        n_steps = len(r.effective_rows("steps"))
    k = -(-n_steps // 10)
    assert n_steps > 10 and k > 1
    # loss and accuracy per step, labelled so, and the bias current per step (no label)
    train = [n for n, label in drawn if label.startswith("train")]
    assert train == [len(range(0, n_steps, k))] * 2 and all(n <= 10 for n in train)
    assert (f"train (batch, every {k}th step)") in [label for _, label in drawn]
    assert [n for n, label in drawn if label == ""] == [len(range(0, n_steps, k))]
