"""The simulated instruments' output, pinned bit for bit.

The hashes were computed with the simulator as it was before its trace generation was made
cheaper (commit 67c3a5c): any change to the physics' numbers, the noise stream's use or the
wire encoding changes them. Old run files replay only if these stay (tests/test_old_runfiles.py
checks the replays; this checks the instruments directly, traces of every kind).
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

from sim.instruments import SimKepcoBOP, SimKeysightMXG, SimKeysightXSA, SimRig, SimRohdeFSV
from sim.ring import Ring

KEYSIGHT = [
    "1a4f5cb7a936478e55b4c59ea6d678ad4113159215df534a6affb2de40a775d5",
    "2b6c3f1bb95c5c688c5e8ea529c1977bef05133be9c4141df5b3c7f9bd2bc7e3",
    "c36456caa258b9df0827c8c4f12f42cf843aea1ef90e3a4c2bf7f27dc765c16e",
    "53854a3cdd574bc3c38959bb6698df00b453b27aa35558ccf4ba395782e7ac79",
    "e616c183eeb275792d730c12afae64554b6cdccc74ef1114c11e718a98e3b642",
    "da264ee0d6746b5c773ced15c5f305f418608886b8172d0f1c960a962b902909",
    "912a6ec5ee735bfd9c4d7c964dbb0086be87443117b82b230c69a424da0ae281",
    "0f6fd8c37d57f5aca217c0a9d450bae8d88d2a0dd7636d8985c1727dbb3280a3",
    "b17f22ddb633319ae043ab214f5cdcfb993e6452c36c49fdaf1ccae1d3c8e2d6",
    "a3fc8ee49a4734a5acee1514988fef3700a57a6c3ba2c3eb089be7466d8bb4aa",
    "ed68f88e52a62529b9dd7437399f00c69639a82d3fc4ca4a145f3954e914ea91",
]
KEYSIGHT_NOISE_STATE = "417a83eb8e6e245a1a159f784e2213aac154a53428ee8353988cda8897e87c27"
ROHDE = "c777bc56c97a113d27edb4bd8b8d709a3ed6041fed4d67dbffa2df7912d68c89"
DIRECT = [
    "5ee553efdef9d882892fb144341af43870a69e32c1721c79db473aa91d09a2e8",
    "8f2d7c3db1d058a6c2ee0a817dcfa17cdb552a034b1d2994244d723b72400d11",
    "fcabbfdf3b6f22a86af6432cf7c029d4f1f05e35a80aa28793d4b5842388d502",
]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_keysight_analyzer_traces_are_bit_identical():
    rig = SimRig(seed=7)
    gen, cur, sa = SimKeysightMXG(rig), SimKepcoBOP(rig), SimKeysightXSA(rig)
    assert cur.query("FUNC:MODE CURR;:VOLT 20;:CURR 1.8;:OUTP 1;*OPC?") == b"1\n"
    center = rig.ring.free_running(rig.ring.field_oe(rig.now()), rig.now())[0]
    assert sa.query(f"FORM:DATA REAL,32;:FORM:BORD SWAP;:SENS:FREQ:CENT {center:.3f};:SENS:FREQ:SPAN 20e6;"
                    ":SENS:BAND:RES 50e3;:SENS:SWE:POIN 401;:INIT:CONT 0;*OPC?;:SYST:ERR?") == b'1;+0,"No error"\n'
    got = []
    # locked, pulled, weak, RF off, far, very weak, at the span's edge
    for df, p, rf in [(0, -10, 1), (3e6, -20, 1), (-1.2e6, -35, 1), (0, 0, 0), (8e6, -5, 1),
                      (0.2e6, -50, 1), (-9.5e6, -1, 1)]:
        gen.query(f"SOUR:FREQ {center + df:.2f};:SOUR:POW {p:.2f};:OUTP {rf};*OPC?;:SYST:ERR?")
        reply = sa.query("INIT:IMM;*OPC?;:SYST:ERR?")
        got.append(sha(reply + sa.query("TRAC:DATA? TRACE1")))
    # a current change (the coil settling), averaged and max-hold traces, a 1001-point ASCII trace
    cur.query("CURR 1.5;*OPC?")
    sa.query("INIT:IMM;*OPC?")
    got.append(sha(sa.query("TRAC:DATA? TRACE1")))
    sa.query("TRAC:TYPE AVER;:AVER:COUN 4;:INIT:IMM;*OPC?")
    got.append(sha(sa.query("TRAC:DATA? TRACE1")))
    sa.query("TRAC:TYPE MAXH;:AVER:COUN 3;:INIT:IMM;*OPC?")
    got.append(sha(sa.query("TRAC:DATA? TRACE1")))
    sa.query("TRAC:TYPE WRIT;:FORM:DATA ASC;:SENS:SWE:POIN 1001;:SENS:FREQ:SPAN 200e6;:INIT:IMM;*OPC?")
    got.append(sha(sa.query("TRAC:DATA? TRACE1")))
    assert got == KEYSIGHT
    assert sha(json.dumps(rig.ring.get_state()["rng"], sort_keys=True).encode()) == KEYSIGHT_NOISE_STATE


def test_rohde_analyzer_trace_is_bit_identical():
    rig = SimRig(seed=3)
    gen, cur, sa = SimKeysightMXG(rig), SimKepcoBOP(rig), SimRohdeFSV(rig)
    cur.query("FUNC:MODE CURR;:VOLT 20;:CURR 1.2;:OUTP 1;*OPC?")
    center = rig.ring.free_running(rig.ring.field_oe(rig.now()), rig.now())[0]
    sa.query(f"FORM REAL,32;:SENS:FREQ:CENT {center:.3f};:SENS:FREQ:SPAN 30e6;:SENS:SWE:POIN 601;"
             ":INIT:CONT 0;*OPC?")
    gen.query(f"SOUR:FREQ {center + 1e6:.2f};:SOUR:POW -15;:OUTP 1;*OPC?")
    sa.query("INIT:IMM;*OPC?")
    assert sa.query("SYST:ERR?") == b'0,"No error"\n'
    assert sha(sa.query("TRAC:DATA? TRACE1")) == ROHDE


def test_direct_spectra_are_bit_identical():
    ring = Ring(seed=11)
    freqs = np.linspace(2.05e9, 2.09e9, 401)
    field = 3.0 + 140 * 1.8
    f = ring.free_running(field)[0]
    drives_hz, drives_dbm = f + np.linspace(-5e6, 5e6, 9), np.linspace(-40, 0, 9)
    noiseless = ring.spectra(freqs, 50e3, field, drives_hz, drives_dbm, None)
    noisy = ring.spectra(freqs, 50e3, field, drives_hz, drives_dbm, np.random.default_rng(1), t_s=12.5)
    descending = ring.spectra(freqs[::-1], 100e3, field, np.array([np.nan, f]), np.array([-10.0, -10.0]),
                              np.random.default_rng(2))
    assert [sha(noiseless.tobytes()), sha(noisy.tobytes()), sha(descending.tobytes())] == DIRECT


def test_training_on_the_embedded_ring_ends_with_the_same_bits(tmp_path):
    """A short ``labpgt train`` through the drivers, the wire and the simulated instruments: final
    parameters and every trace, pinned. Computed at commit 67c3a5c, pinned again when the RF-safety
    invariant (issue 11: the generator parked with RF off and read back at connect) added messages,
    and so simulated time, before the first measurement; nothing else has changed them since. Node
    perturbation, the dense model's default estimator until issue 16 item 4 (now named: the pins
    are node's, unchanged)."""
    import h5py

    from labpgt.cli import main

    path = tmp_path / "run.h5"
    assert main(["train", "--budget", "320", "--seed", "3", "--out", str(path), "--no-progress",
                 "--eval-every", "3", "--checkpoint-every", "2", "--estimator", "node"]) == 0
    with h5py.File(path, "r") as f:
        params = f["checkpoints/params"][-1]
        traces = f["measurements/trace_dbm"][:]
    assert traces.shape == (380, 401)
    assert sha(traces.tobytes()) == "8ae36b409c8adfb1f9ca5c524eb93992bd7a28ecc76bcc23d64b3c1075627fcd"
    assert sha(params.tobytes()) == "fe02163b9fa78a4d8026293b27345c6639485dc6160cc5a1fc54838d583b93d7"


def test_training_with_the_default_estimator_ends_with_the_same_bits(tmp_path):
    """``labpgt train`` with no estimator named: the twin on the dense model since issue 16 item 4
    (its tuned options: float32 buffer). Pinned when it became the default."""
    import h5py

    from labpgt.cli import main

    path = tmp_path / "run.h5"
    assert main(["train", "--budget", "320", "--seed", "3", "--out", str(path), "--no-progress",
                 "--eval-every", "3", "--checkpoint-every", "2"]) == 0
    with h5py.File(path, "r") as f:
        params = f["checkpoints/params"][-1]
        traces = f["measurements/trace_dbm"][:]
        options = json.loads(json.loads(f["meta/metadata_json"][()])["estimator_options"])
    assert options["buffer_dtype"] == "f4"
    assert traces.shape == (710, 401)
    assert sha(traces.tobytes()) == "6944ab5f116f61594df4baa1ad608dc150d66f668400142c48351aa985cd22ea"
    assert sha(params.tobytes()) == "99b777d2dec5f4df3f8ff0af4d8ee40757dd5bea16ae8655e3c137ec976a4389"
