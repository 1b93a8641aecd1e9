"""Costs that stay flat as a run grows: the simulated world's checkpointed state does not grow
with the run, and forgetting the coil's old history changes no number."""
from __future__ import annotations

import json

import numpy as np

from sim.ring import Ring
from sim.server import SimServer


def ramped_ring(seed: int, changes: int) -> Ring:
    ring = Ring(seed=seed)
    for k in range(changes):
        ring.set_current(0.5 * k, 1.0 + 0.8 * ((k * 7) % 11) / 10.0)
    return ring


def test_pruning_the_coil_history_changes_no_field_and_no_trace():
    full, pruned = ramped_ring(3, 200), ramped_ring(3, 200)
    pruned.prune_coil_history(80.0)
    assert len(pruned.get_state()["coil_t"]) < 50 < len(full.get_state()["coil_t"])
    times = np.linspace(80.0, 130.0, 301)
    assert [full.field_oe(t) for t in times] == [pruned.field_oe(t) for t in times]
    # later setpoints and sweeps: the same bits from both
    freqs = np.linspace(2.0e9, 2.12e9, 401)
    for k, t in enumerate((100.2, 100.9, 140.0)):
        for ring in (full, pruned):
            ring.set_current(t, 1.3 + 0.1 * k)
        a, _ = full.spectrum(t + 0.3, freqs, 300e3, 2.06e9, -20.0)
        b, _ = pruned.spectrum(t + 0.3, freqs, 300e3, 2.06e9, -20.0)
        assert a.tobytes() == b.tobytes()


def test_the_world_state_stays_small_and_restores_the_same_world():
    sizes = []
    with SimServer(seed=4) as server:
        current = server.instruments["current_source"]
        current.handle(b"FUNC:MODE CURR;:VOLT 20;:OUTP 1")
        for k in range(400):
            current.handle(f"CURR {0.5 + (k % 9) * 0.05:.3f};*OPC?".encode())
            if k in (20, 399):
                sizes.append(len(json.dumps(server.world_state())))
        state = server.world_state()
        now = server.rig.clock.now()
        fields = [server.rig.ring.field_oe(now + dt) for dt in (0.0, 0.01, 1.0)]
    assert sizes[1] <= sizes[0] + 64  # a few numbers whatever the run's length (was: every setpoint)
    with SimServer(seed=4) as again:
        again.load_world_state(json.loads(json.dumps(state)))
        assert [again.rig.ring.field_oe(now + dt) for dt in (0.0, 0.01, 1.0)] == fields


def test_a_sweep_begun_keeps_the_history_it_needs():
    with SimServer(seed=1) as server:
        current, analyzer = server.instruments["current_source"], server.instruments["spectrum_analyzer"]
        current.handle(b"FUNC:MODE CURR;:VOLT 20;:OUTP 1;:CURR 1.8;*OPC?")
        analyzer.handle(b"FORM:DATA REAL,32;:SENS:FREQ:CENT 2.07e9;:SENS:FREQ:SPAN 20e6;:INIT:CONT 0;:INIT:IMM")
        start = analyzer.pending_sweep_start_s()
        assert start is not None
        current.handle(b"CURR 1.7;*OPC?")  # the clock moves on while the sweep waits to be computed
        assert server.rig.clock.now() > start
        server.world_state()
        assert server.rig.ring.get_state()["coil_t"][0] <= start
