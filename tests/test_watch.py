"""labpgt watch: what the page is fed from a run file, which paths it serves, and its HTTP gate."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from labpgt.runfile import Probe, RunFile
from labpgt.watch.listing import PathRefused, WatchRoot
from labpgt.watch.snapshot import WatchedRun, status_of

ROOT = Path(__file__).resolve().parents[1]
POINTS, BANDS, NP = 40, 4, 3
LINE_HZ = 2.0852e9
LAYOUT = {"encoder": {"n_nodes": 1, "reference_hz": LINE_HZ}, "readout": {"center_hz": LINE_HZ, "span_hz": 20e6,
                                                                          "points": POINTS, "n_bands": BANDS}}


def _probe():
    freqs = np.linspace(1.97e9, 2.17e9, 11)
    return Probe("probe", LINE_HZ, time_s=1.7e9, current_a=1.8, center_hz=2.07e9, span_hz=200e6, rbw_hz=1e5,
                 points=11, reference_level_dbm=0.0, line_hz=LINE_HZ, line_dbm=-9.0, rf_output_enabled=0,
                 overloaded=0, min_prominence_db=15.0, frequency_hz=freqs, trace_dbm=np.full(11, -100.0))


def new_run(path, budget=64):
    return RunFile.create(path, n_params=NP, features_per_measurement=BANDS, trace_points=POINTS, probe=_probe(),
                          metadata={"experiment_toml": f'estimator = "node"\nbudget = {budget}\nseed = 7\n',
                                    "identities": {"signal_generator": "Keysight,N5183B,SIM1,1"}, "seed": 7,
                                    "physical_layer": json.dumps(LAYOUT), "command_line": "labpgt train"})


def write_step(run, step, per_step=8, t0=1.7e9):
    """per_step measurements then the step row; measurement i's trace peaks at point i % POINTS."""
    first = run.n_measurements
    for i in range(first, first + per_step):
        trace = np.full(POINTS, -100.0, np.float32)
        trace[i % POINTS] = -10.0
        run.measurement({"time_s": t0 + i, "step": step, "kind": "train", "sample_index": i,
                         "settings": {"frequency_hz": LINE_HZ + 1e6 * (i % 5), "power_dbm": -20.0 - i % 3,
                                      "current_a": 1.8 + 1e-4 * step},
                         "trace_dbm": trace, "frequency_axis": (LINE_HZ - 10e6, LINE_HZ + 10e6, POINTS),
                         "features": np.zeros(BANDS)})
    run.step({"step": step, "loss": 1.0 / step, "accuracy": 0.1 * step, "grad_norm": 1.0,
              "measurements": step * per_step, "time_s": t0 + step * per_step, "current_a": 1.8 + 1e-4 * step})


class Clock:
    """A clock the test moves, so polls are never coalesced by MIN_POLL_INTERVAL_S."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 1.0
        return self.now


def test_snapshot_of_a_completed_run(tmp_path):
    path = tmp_path / "done.h5"
    with new_run(path) as run:
        for step in (1, 2, 3):
            write_step(run, step)
        run.evaluation({"step": 3, "measurements": 24, "test_loss": 0.5, "test_accuracy": 0.75, "time_s": 1.7e9 + 30})
        run.fault({"time_s": 1.7e9 + 5, "step": 1, "measurement_row": 4, "role": "spectrum_analyzer",
                   "kind": "no_answer", "recovered": True, "message": "timeout"})
        run.set_status("completed", "completed")
    watched = WatchedRun(path, clock=Clock())
    snap = watched.poll()
    assert (snap.status, snap.step, snap.measurements, snap.rows, snap.budget) == ("completed", 3, 24, 24, 64)
    assert snap.frozen and snap.rate_per_s is None and snap.eta_s is None
    assert snap.seed == 7 and snap.options["estimator"] == "node"
    assert snap.identities == {"signal_generator": "Keysight,N5183B,SIM1,1"}
    assert list(snap.steps["loss"]) == [1.0, 0.5, 1 / 3]
    assert list(snap.evaluations["test_accuracy"]) == [0.75]
    assert snap.line_hz == LINE_HZ
    assert snap.bands_hz[0] == (LINE_HZ - 10e6, LINE_HZ - 5e6) and len(snap.bands_hz) == BANDS
    assert snap.waterfall_dbm.shape == (24, POINTS) and snap.spectra_dbm.shape == (3, POINTS)
    assert int(np.argmax(snap.spectra_dbm[-1])) == 23 % POINTS  # the latest trace last
    assert snap.drive_hz == LINE_HZ + 1e6 * (23 % 5)
    assert snap.spectrum_hz[0] == LINE_HZ - 10e6 and snap.spectrum_hz[-1] == LINE_HZ + 10e6
    np.testing.assert_allclose(snap.knobs["detuning_hz"][:5], [0, 1e6, 2e6, 3e6, 4e6])
    assert [(f["role"], f["kind"], f["recovered"]) for f in snap.faults] == [("spectrum_analyzer", "no_answer", True)]
    assert [s["status"] for s in snap.status_log] == ["running", "completed"]
    # frozen: the reader is let go, and an untouched file is not read again
    assert watched._reader is None and watched.poll() is snap


def test_snapshot_follows_a_live_writer_and_only_committed_rows(tmp_path):
    path = tmp_path / "live.h5"
    clock = Clock()
    with new_run(path, budget=80) as run:
        write_step(run, 1)
        watched = WatchedRun(path, clock=clock)
        first = watched.poll()
        assert (first.status, first.step, first.rows) == ("running", 1, 8)
        run.measurement({"time_s": 1.7e9, "step": 2, "kind": "train", "sample_index": 0,
                         "settings": {"frequency_hz": LINE_HZ, "power_dbm": -20.0, "current_a": 1.8},
                         "trace_dbm": np.zeros(POINTS), "features": np.zeros(BANDS)})
        assert watched.poll() is first  # in flight (buffered, not committed): nothing new
        write_step(run, 2)
        write_step(run, 3)
        snap = watched.poll()
        assert (snap.step, snap.rows, snap.version) == (3, 25, first.version + 1)
        assert snap.rate_per_s == pytest.approx(16 / 16)  # 16 measurements in 16 s (the steps' time_s)
        assert snap.eta_s == pytest.approx((80 - 24) / 1.0)
        assert len(snap.knobs["row"]) == 25 and snap.generation == first.generation
        watched.close()


def test_a_writer_gone_without_a_word_is_killed(tmp_path):
    path = tmp_path / "killed.h5"
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
              f"import test_watch as t, os\nrun = t.new_run({str(path)!r}); t.write_step(run, 1)\nos._exit(0)\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    snap = WatchedRun(path, clock=Clock()).poll()
    assert (snap.status, snap.step) == ("killed", 1)
    assert status_of(path) == ("killed", "8 / 64 measurements")


def test_paths_outside_the_watched_directory_are_refused(tmp_path):
    runs = tmp_path / "runs"
    (runs / "sub").mkdir(parents=True)
    new_run(runs / "sub" / "a.h5").close()
    (runs / "notes.txt").write_text("x")
    secret = tmp_path / "secret.h5"
    new_run(secret).close()
    (runs / "link.h5").symlink_to(secret)
    root = WatchRoot(runs)
    assert root.resolve("sub/a.h5") == (runs / "sub" / "a.h5").resolve()
    for bad in ("../secret.h5", "sub/../../secret.h5", str(secret), "link.h5", "notes.txt", "nothere.h5", ""):
        with pytest.raises(PathRefused):
            root.resolve(bad)
    assert [r.name for r in root.runs()] == ["sub/a.h5"]  # the link leading outside is not listed
    assert root.runs()[0].status == "running"  # this process, alive, never closed it as completed
    one = WatchRoot(runs / "sub" / "a.h5")
    assert one.resolve(None) == (runs / "sub" / "a.h5").resolve()
    with pytest.raises(PathRefused):
        one.resolve("a.h5")
    with pytest.raises(FileNotFoundError):
        WatchRoot(tmp_path / "missing.h5")


# --------------------------------------------------------------------------------------------- HTTP
@pytest.fixture
def watcher(tmp_path):
    """``labpgt watch DIR --token`` in its own process; yields (port, token)."""
    pytest.importorskip("bokeh")
    runs = tmp_path / "runs"
    runs.mkdir()
    with new_run(runs / "a.h5") as run:
        write_step(run, 1)
        run.set_status("completed", "completed")
    new_run(tmp_path / "outside.h5").close()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "labpgt.cli", "watch", str(runs), "--token"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        token = proc.stdout.readline().split()[1]
        url = urllib.parse.urlsplit(line.rsplit(" at ", 1)[1].strip())
        assert url.hostname == "127.0.0.1"
        yield url.port, token
    finally:
        proc.terminate()  # SIGTERM (SIGINT may be ignored in a background job)
        try:
            proc.communicate(timeout=120)  # a loaded machine can take a while to stop the server
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def _get(port, target, headers=None, method="GET"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, target, headers=headers or {})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), body


def test_the_token_is_checked_on_every_request_and_outside_paths_are_refused(watcher):
    port, token = watcher
    cookie = {"Cookie": f"labpgt_watch_{port}={token}"}
    websocket = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                 "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Origin": f"http://127.0.0.1:{port}"}
    for target in ("/", "/?run=a.h5", "/static/js/bokeh.min.js", "/ws", "/?token=wrong"):
        assert _get(port, target)[0] == 403, target
    assert _get(port, "/ws", websocket)[0] == 403  # the websocket handshake too
    status, headers, _ = _get(port, f"/?run=a.h5&token={token}")
    assert status == 302 and headers["Location"] == "/?run=a.h5"
    assert headers["Set-Cookie"] == f"labpgt_watch_{port}={token}; Path=/; HttpOnly; SameSite=Strict"
    status, _, body = _get(port, "/", cookie)
    assert status == 200 and b"bokeh" in body
    status, _, body = _get(port, "/?run=a.h5", cookie)
    assert status == 200
    # the page's scripts are served by the watcher itself, never from another host
    assert b"https://" not in body and b"cdn." not in body
    assert _get(port, "/static/js/bokeh.min.js", cookie)[0] == 200
    for bad in ("../outside.h5", "%2E%2E/outside.h5", urllib.parse.quote(str(Path("/etc/passwd"))), "nothere.h5"):
        status, _, body = _get(port, f"/?run={bad}", cookie)
        assert status == 403 and body.startswith(b"refused"), bad
    assert _get(port, "/", cookie, method="POST")[0] == 405  # read-only


def test_watch_refuses_bad_input_with_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "labpgt.cli", "watch", str(tmp_path / "missing.h5")], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "does not exist" in result.stderr


def test_a_non_loopback_host_gets_a_token():
    pytest.importorskip("bokeh")
    from labpgt.watch.server import needs_token

    assert not needs_token("127.0.0.1") and not needs_token("::1") and not needs_token("localhost")
    assert needs_token("127.0.0.1", forced=True)
    assert needs_token("0.0.0.0") and needs_token("192.168.1.5") and needs_token("lab-pc")
