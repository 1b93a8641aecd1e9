"""Do runs start when the instruments misbehave from their first message? (issue 17, item 8)

    python scripts/startup_faults.py                      # 12 seeds, faults at ~1 in 16 measurements
    PYTHONPATH=/path/to/other/checkout python scripts/startup_faults.py --json /tmp/before.json

For each seed, the simulated station (keysight flavour, loopback, client timeout 0.5 s) serves
with the soak's fault mix (scripts/soak.py ``fault_spec``: every kind, seeded per-message
probabilities) active from the instruments' first message, and ``labpgt train`` (through
``run_experiment``: connect, the first ramp, the probe, the set-up, then ``--budget``
training measurements) is run against it. Counted: runs that started (a run file with its step 0
checkpoint), completed, start-up faults recorded in the run file (step 0, "start-up" messages),
and whether the simulator was left safe. Run it with another checkout first on PYTHONPATH to
measure that checkout's code (the before of a change).

JSON to scripts/results/startup_faults.json and a table.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(seed: int, fault_every: int, budget: int, workdir: Path) -> dict:
    import labpgt
    from labpgt.experiment.options import defaults
    from labpgt.experiment.run import run_experiment
    from labpgt.runfile import RunReader
    from sim.server import SimServer

    saved = list(sys.path)  # soak puts this checkout first on the path: the code measured stays the one given
    sys.path.insert(0, str(ROOT / "scripts"))
    from soak import fault_spec
    sys.path[:] = saved

    spec = fault_spec(fault_every, seed)
    path = workdir / f"run-{seed}.h5"
    t0 = time.monotonic()
    out = {"seed": seed, "code": str(Path(labpgt.__file__).parents[1])}
    with SimServer(seed=seed, timeout_s=0.5, faults=spec) as server:
        station = workdir / f"station-{seed}.toml"
        station.write_text(server.station_toml())
        config = defaults()
        config.update(budget=budget, seed=seed, progress=False, station=str(station), out=str(path))
        try:
            out["status"] = run_experiment(config).status
        except Exception as exc:  # noqa: BLE001 - the finding: how the run ended
            out["status"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        for inst in server.instruments.values():
            inst.faults.clear()
        rig = server.rig
        cs = rig.current_source
        out["left_safe"] = (rig.drive()[0] is None and not cs.output
                            and abs(cs.coil.current(rig.clock.now())) <= 1e-3)
        out["injected"] = sum(len(i.faults.injected) for i in server.instruments.values())
    out["started"] = path.exists()
    if path.exists():
        with RunReader(path) as r:
            faults = r.faults()
        out["start_up_faults"] = int(sum(str(m).startswith("start-up") for m in faults["message"]))
    out["seconds"] = round(time.monotonic() - t0, 1)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=12)
    parser.add_argument("--fault-every", type=int, default=16, help="about one fault per this many measurements")
    parser.add_argument("--budget", type=int, default=128, help="training measurements per run")
    parser.add_argument("--json", default=str(ROOT / "scripts" / "results" / "startup_faults.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="labpgt-startup-") as tmp:
        runs = [one(seed, args.fault_every, args.budget, Path(tmp)) for seed in range(args.seeds)]
    result = {"fault_every": args.fault_every, "budget": args.budget, "runs": runs,
              "started": sum(r["started"] for r in runs), "completed": sum(r["status"] == "completed" for r in runs),
              "left_safe": sum(r["left_safe"] for r in runs),
              "start_up_faults": sum(r.get("start_up_faults", 0) for r in runs),
              "command": "python scripts/startup_faults.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'seed':>4}  {'status':<40}  {'start-up faults':>15}  {'left safe':>9}")
    for r in runs:
        print(f"{r['seed']:>4}  {r['status'][:40]:<40}  {r.get('start_up_faults', '-')!s:>15}  {r['left_safe']!s:>9}")
    print(f"started {result['started']} of {len(runs)}, completed {result['completed']}, left safe "
          f"{result['left_safe']}, start-up faults recorded {result['start_up_faults']} (code: {runs[0]['code']})")
    return 0 if result["started"] == len(runs) and result["left_safe"] == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
