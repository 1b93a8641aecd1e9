"""Soak: a long training run on the simulated ring with instrument faults injected.

    python scripts/soak.py                         # 100,000 training measurements (default)
    python scripts/soak.py --measurements 20000 --spread-seeds 3
    python scripts/soak.py --measurements 2000 --fault-every 16 --fault-seeds 6 --spread-seeds 1

Faults are injected at about 1 in ``--fault-every`` (200) measurements: every kind the
simulator has (timeout, garbled, truncated reply or block, dropped connection, error-queue
entry, analyzer overload, unlocked synthesizer, slow reply) with equal shares, as seeded
per-message probabilities on every instrument, from the first message the instruments receive:
connecting the station, the first ramp, the probe sweep and the measurement set-up meet them
too, and are recovered under the same policy as the measurements
(labpgt/reservoirs/recovery.py ``RecoveryPolicy.start_up``). The run goes through the real
stack: loopback sockets, pyvisa-py, the drivers, the station, StationReservoir with its recovery
policy, the trainer and an HDF5 run file. ``--fault-seeds K`` runs K faulty runs (seeds seed ..
seed+K-1) and reports how many started. Reported:

* measurements lost: measurements the trainer consumed that are not rows of the run file (target 0)
* unsafe exits: the rig not left safe at the end (RF on, output on, current not ~0, analyzer
  not continuous) or any jump of the magnet current larger than the station's ramp step (plus the
  current source's read-back resolution, 25 uA) in the whole run (target 0)
* faults injected (by the simulator), met by the drivers, recovered and unrecovered (run file)
* final test accuracy beside a fault-free run with the same seed, and the seed-to-seed spread
  of fault-free runs (``--spread-seeds`` seeds)

JSON to scripts/results/soak.json and a printed table.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KINDS_BY_ROLE = {
    "signal_generator": ("timeout", "garbled", "truncated", "disconnect", "error", "unlocked", "slow"),
    "current_source": ("timeout", "garbled", "truncated", "disconnect", "error", "slow"),
    "spectrum_analyzer": ("timeout", "garbled", "truncated", "truncated_block", "disconnect", "error", "overload",
                          "slow"),
}
#: a ramp starts from the current read back, which the simulated Kepco gives to 6 significant digits
#: (2.5 A -> 10 uA): a step may exceed the ramp step by that much (an older set-point not read exactly)
READBACK_RESOLUTION_A = 2.5e-5
#: program messages per measurement on the keysight flavour (generator settings; sweep; trace)
MESSAGES_PER_MEASUREMENT = 3


def fault_spec(fault_every: int, seed: int) -> str:
    """Per-message probabilities that add up to about one fault per ``fault_every`` measurements."""
    per_message = 1.0 / (fault_every * MESSAGES_PER_MEASUREMENT)
    kinds = sorted({k for ks in KINDS_BY_ROLE.values() for k in ks})
    items = [f"seed={seed}", "slow_s=0.05", "unlock_s=1.0"]
    for role, ks in KINDS_BY_ROLE.items():
        for kind in ks:
            items.append(f"{role}:{kind}={per_message / len(ks):.3e}")
    assert set(kinds) >= {k for ks in KINDS_BY_ROLE.values() for k in ks}
    return ";".join(items)


def run_once(measurements: int, seed: int, faults: str | None, workdir: Path, timeout_s: float = 0.5) -> dict:
    from instruments.station import Station
    from labpgt.reservoirs.encoding import BandReadout, KnobEncoder
    from labpgt.contracts import FLAG_FAULT, FLAG_REPEATED
    from labpgt.experiment.builder import build_trainer
    from labpgt.experiment.options import OPTIONS
    from labpgt.experiment.probe import station_physical_layer
    from labpgt.reservoirs.recovery import RecoveryPolicy, StartUpFailed
    from labpgt.reservoirs.station import StationReservoir
    from labpgt.experiment.options import ConfigError
    from labpgt.runfile import RunFile, RunReader
    from sim.server import SimServer

    config = {name: opt.default for name, opt in OPTIONS.items()}
    config.update(budget=int(measurements), seed=int(seed), progress=False)
    path = workdir / f"soak-s{seed}-{'faults' if faults else 'clean'}.h5"
    t0 = time.monotonic()
    error = None
    trainer = reservoir = None
    started = False
    policy = RecoveryPolicy()
    # the faults act from the instruments' first message: connect, ramp, probe and set-up meet them too
    with SimServer(seed=seed, timeout_s=timeout_s, faults=faults) as server:
        station = Station.from_text(server.station_toml(), "<soak station>")
        try:
            policy.start_up(station, "connecting the station", station.connect)
            with station:
                station.spectrum_analyzer.sweep_timeout_margin_s = 0.3  # the sweep takes ~0 s of wall time here
                layout = policy.start_up(station, "the first ramp and the probe sweep",
                                         lambda: station_physical_layer(station, config), not_faults=(ConfigError,))
                encoder, readout = KnobEncoder(**layout["encoder"]), BandReadout(**layout["readout"])
                reservoir = StationReservoir(station, encoder, readout, simulated=True, recovery=policy)
                trainer = build_trainer(config, reservoir, current_bounds_a=layout["current_bounds_a"])
                run = RunFile.create(path, n_params=trainer.model.params().size,
                                     features_per_measurement=readout.n_bands, trace_points=readout.points,
                                     optimizer_state_shapes={k: np.shape(v) for k, v in trainer.opt_state.items()},
                                     metadata={"experiment": "soak", "faults": faults or ""}, overwrite=True)
                started = True
                with run:
                    reservoir.recorder = trainer.recorder = run
                    for record in policy.start_up_faults:  # met before the file existed
                        run.fault(record)
                    try:
                        status = trainer.run()
                    except Exception as exc:  # noqa: BLE001 - reported, the run file says "failed"
                        status, error = "failed", f"{type(exc).__name__}: {exc}"
                    run.set_status("completed" if status == "completed" else "failed", status)
        except StartUpFailed as exc:  # the run never started (the rig left safe on the way out)
            error, status = f"{type(exc).__name__}: {exc}", "never started"
        except Exception as exc:  # noqa: BLE001 - leaving the rig safe had problems: an unsafe exit
            error = (error + "; " if error else "") + f"{type(exc).__name__}: {exc}"
        insts = server.instruments
        injected = {role: len(inst.faults.injected) for role, inst in insts.items()}
        for inst in insts.values():
            inst.faults.clear()
        cs, sg, san = insts["current_source"], insts["signal_generator"], insts["spectrum_analyzer"]
        ramp_step = station.roles["current_source"].limits["ramp_step_a"]
        drive = np.array([i for _, i in cs.drive_log])
        jumps = np.abs(np.diff(drive)) if len(drive) > 1 else np.zeros(0)
        state = {"rf_output": bool(sg.output), "current_output": bool(cs.output),
                 "current_setpoint_a": float(cs.i_set), "analyzer_continuous": bool(san.continuous),
                 "largest_current_step_a": float(jumps.max()) if len(jumps) else 0.0,
                 "current_steps": int(len(jumps))}
    safe = (not state["rf_output"] and not state["current_output"] and abs(state["current_setpoint_a"]) < 0.01
            and state["analyzer_continuous"] and state["largest_current_step_a"] <= ramp_step + READBACK_RESOLUTION_A)
    start_up = {"start_up_faults": len(policy.start_up_faults),
                "start_up_faults_unrecovered": sum(not f["recovered"] for f in policy.start_up_faults)}
    if not started:
        return {"seed": seed, "faults": bool(faults), "started": False, "status": status, "error": error,
                "seconds": round(time.monotonic() - t0, 1), **start_up, "rig_state_at_exit": state,
                "safe_exit": bool(safe), "measurements_lost": 0, "final_test_accuracy": float("nan")}
    with RunReader(path) as r:
        rows = r.n_measurements
        flags = r.measurements.column("flags")
        fl = r.faults()
        status_file = r.status
    final = trainer.evaluations[-1]["test_accuracy"] if trainer.evaluations else float("nan")
    out = {
        "seed": seed, "faults": bool(faults), "started": True, **start_up, "status": status,
        "status_in_file": status_file, "error": error,
        "seconds": round(time.monotonic() - t0, 1),
        "training_measurements": trainer.train_measurements, "eval_measurements": trainer.eval_measurements,
        "measurements": int(reservoir.measurements), "rows_in_run_file": int(rows),
        "measurements_lost": int(reservoir.measurements) - int(rows),
        "rows_repeated": int(np.count_nonzero(flags & FLAG_REPEATED)),
        "rows_fault_flag": int(np.count_nonzero(flags & FLAG_FAULT)),
        "faults_injected": injected, "faults_injected_total": int(sum(injected.values())),
        "faults_recorded": int(len(fl["kind"])), "faults_recovered": int(np.count_nonzero(fl["recovered"])),
        "faults_unrecovered": int(np.count_nonzero(~fl["recovered"])) if len(fl["kind"]) else 0,
        "faults_by_kind": {k: int(np.count_nonzero(fl["kind"] == k)) for k in sorted(set(fl["kind"]))},
        "rig_state_at_exit": state, "safe_exit": bool(safe),
        "final_test_accuracy": float(final),
    }
    path.unlink(missing_ok=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measurements", type=int, default=100_000, help="training measurements (budget)")
    parser.add_argument("--fault-every", type=int, default=200, help="about one fault per this many measurements")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spread-seeds", type=int, default=3,
                        help="fault-free runs on seeds seed..seed+N-1 for the seed-to-seed spread")
    parser.add_argument("--fault-seeds", type=int, default=1,
                        help="runs with faults on seeds seed..seed+K-1 (the first is compared with the fault-free "
                             "runs; all count for started / unsafe)")
    parser.add_argument("--json", default=str(ROOT / "scripts" / "results" / "soak.json"))
    args = parser.parse_args(argv)
    spec = fault_spec(args.fault_every, args.seed)
    with tempfile.TemporaryDirectory(prefix="labpgt-soak-") as tmp:
        work = Path(tmp)
        faulty_runs = []
        for k in range(max(1, args.fault_seeds)):
            faulty_runs.append(run_once(args.measurements, args.seed + k, fault_spec(args.fault_every, args.seed + k),
                                        work))
            r = faulty_runs[-1]
            print(f"with faults, seed {r['seed']}: {r['status']} in {r['seconds']} s ({r['start_up_faults']} start-up "
                  f"faults, {r['start_up_faults_unrecovered']} unrecovered){'' if r['safe_exit'] else '  UNSAFE EXIT'}",
                  flush=True)
        faulty = faulty_runs[0]
        clean = [run_once(args.measurements, args.seed + k, None, work) for k in range(args.spread_seeds)]
    accs = np.array([c["final_test_accuracy"] for c in clean])
    spread = {"seeds": [c["seed"] for c in clean], "accuracies": accs.tolist(),
              "min": float(accs.min()), "max": float(accs.max()), "std": float(accs.std(ddof=1)) if len(accs) > 1 else 0.0}
    same_seed = clean[0]["final_test_accuracy"]
    within = spread["min"] <= faulty["final_test_accuracy"] <= spread["max"] or \
        abs(faulty["final_test_accuracy"] - same_seed) <= (spread["max"] - spread["min"])
    result = {"measurements": args.measurements, "fault_every": args.fault_every, "fault_spec": spec,
              "with_faults": faulty, "with_faults_all_seeds": faulty_runs,
              "runs_with_faults_started": sum(r["started"] for r in faulty_runs),
              "runs_with_faults_unsafe": sum(not r["safe_exit"] for r in faulty_runs),
              "fault_free": clean, "accuracy_spread": spread,
              "accuracy_difference_same_seed": faulty["final_test_accuracy"] - same_seed,
              "accuracy_within_spread": bool(within)}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    f = faulty
    if not f["started"]:
        print(f"the first run with faults never started: {f['error']}")
        return 1
    rows = [
        ("runs with faults started (from the first message)",
         f"{result['runs_with_faults_started']} of {len(faulty_runs)}"),
        ("start-up faults met / unrecovered, all runs",
         f"{sum(r['start_up_faults'] for r in faulty_runs)} / "
         f"{sum(r['start_up_faults_unrecovered'] for r in faulty_runs)}"),
        ("unsafe exits, all runs with faults", f"{result['runs_with_faults_unsafe']}"),
        ("training measurements", f"{f['training_measurements']}"),
        ("measurements (incl. evaluation)", f"{f['measurements']}"),
        ("measurements lost (target 0)", f"{f['measurements_lost']}"),
        ("unsafe exits (target 0)", f"{0 if f['safe_exit'] else 1}"),
        ("largest magnet current step, A", f"{f['rig_state_at_exit']['largest_current_step_a']:.4f}"),
        ("faults injected by the simulator", f"{f['faults_injected_total']}  ({f['faults_injected']})"),
        ("faults met by the drivers (run file)", f"{f['faults_recorded']}  {f['faults_by_kind']}"),
        ("  recovered / unrecovered", f"{f['faults_recovered']} / {f['faults_unrecovered']}"),
        ("rows repeated", f"{f['rows_repeated']}"),
        ("run status", f"{f['status']}" + (f" ({f['error']})" if f["error"] else "")),
        ("final test accuracy, with faults", f"{f['final_test_accuracy']:.4f}"),
        ("final test accuracy, fault-free same seed", f"{same_seed:.4f}"),
        ("fault-free spread over seeds", f"{spread['min']:.4f} .. {spread['max']:.4f} ({spread['accuracies']})"),
        ("within the spread", "yes" if within else "NO"),
        ("wall time with faults / fault-free, s", f"{f['seconds']} / {clean[0]['seconds']}"),
    ]
    width = max(len(a) for a, _ in rows)
    print()
    for a, b in rows:
        print(f"{a:<{width}}  {b}")
    ok = (f["measurements_lost"] == 0 and all(r["safe_exit"] for r in faulty_runs + clean)
          and all(r["started"] for r in faulty_runs))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
