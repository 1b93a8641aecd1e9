"""``labpgt export``: a clean copy of a run's effective rows for tools that cannot apply the
run file's rules (abandoned rows after a resume, in-flight rows beyond /committed, SWMR).

netcdf: one netCDF-4 file (written through h5netcdf) with a group per table --
measurements, steps, evaluations, checkpoints and, when the run made one, probe -- each the
table's :meth:`Run.to_xarray` view, and the run's status, experiment and metadata as root
attributes. csv: a directory with measurements.csv (scalars and features), traces.csv (one
trace a row, a column per trace point), steps.csv, evaluations.csv, checkpoints.csv and
run.json (status, experiment, metadata, units of every column).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from labpgt.runfile.views import Run, metadata_json, open_run

log = logging.getLogger(__name__)

FORMATS = ("netcdf", "csv")
_TABLES = ("measurements", "steps", "evaluations", "checkpoints")


def export_run(path, out, fmt: str = "netcdf", *, overwrite: bool = False) -> list[Path]:
    """Write the effective rows of the run file ``path`` to ``out`` as ``fmt``; returns the files written."""
    if fmt not in FORMATS:
        raise ValueError(f"export format {fmt!r} is not allowed; allowed: {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and not overwrite and (fmt == "netcdf" or any(out.iterdir())):
        raise FileExistsError(f"{out} exists already; choose a new --out")
    try:
        import pandas  # noqa: F401 - both formats go through the pandas / xarray views
        import xarray  # noqa: F401
        if fmt == "netcdf":
            import h5netcdf  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"labpgt export needs {exc.name}: pip install 'labpgt[notebook]' (in a checkout: pip install -e '.[notebook]')") from None
    with open_run(path) as run:
        written = _netcdf(run, out) if fmt == "netcdf" else _csv(run, out)
        log.info("exported the effective rows of %s (%s abandoned rows left out) to %s", path,
                 sum(run.abandoned().values()), out)
    return written


def _root_attributes(run: Run) -> dict:
    return {"title": f"labpgt run {run.path.name}: effective rows", "source": str(run.path),
            "status": run.status, "status_message": run.status_message,
            "experiment_toml": run.metadata["experiment_toml"], "metadata_json": metadata_json(run),
            "rows": "effective rows only: committed, and not abandoned by a --resume",
            "Conventions": "CF-1.10"}


def _netcdf(run: Run, out: Path) -> list[Path]:
    import xarray as xr

    out.parent.mkdir(parents=True, exist_ok=True)
    xr.Dataset(attrs=_root_attributes(run)).to_netcdf(out, mode="w", engine="h5netcdf")
    groups = [*_TABLES, "probe"]
    for table in groups:
        view = run.to_xarray(table)
        if view is None:  # no probe sweep
            continue
        view.attrs = {"table": table}
        view.to_netcdf(out, mode="a", group=table, engine="h5netcdf")
    return [out]


def _csv(run: Run, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    units = {}
    for table in _TABLES:
        frame = run.to_dataframe(table)
        units[table] = frame.attrs["units"]
        target = out / f"{table}.csv"
        frame.to_csv(target, index=table == "measurements")
        written.append(target)
    m = run.measurements
    freqs = run.trace_frequency_hz()
    header = ["row"] + ([f"{f:.17g}" for f in freqs] if freqs is not None else
                        [f"point_{j}" for j in range(m["trace_dbm"].shape[1])])
    target = out / "traces.csv"
    with open(target, "w") as fh:
        fh.write(",".join(header) + "\n")
        for row, trace in zip(m["row"], m["trace_dbm"]):
            fh.write(f"{row}," + ",".join(repr(float(v)) for v in trace) + "\n")
    written.append(target)
    target = out / "run.json"
    target.write_text(json.dumps({
        **_root_attributes(run), "metadata": run.metadata, "experiment": run.experiment, "units": units,
        "traces": "traces.csv: one row per measurement (its row in the run file), one column per trace point, "
                  "headed by its frequency in Hz when the run's analyzer window was fixed; values in dBm"},
        indent=2, sort_keys=True, default=str))
    written.append(target)
    return written
