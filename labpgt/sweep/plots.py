"""The PNG of a sweep map: what a user looks at before choosing an operating point."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_sweep(path, out=None) -> Path:
    """Write the map's PNG (default: beside the file, .png) and return its path."""
    path = Path(path)
    out = Path(out) if out is not None else path.with_suffix(".png")
    with h5py.File(path, "r", swmr=True) as f:
        kind = str(f.attrs["kind"])
        freqs = f["frequency_hz"][()] / 1e9
        trace = f["trace_dbm"][()]
        line = f["line_hz"][()] / 1e9
        axis_name = [n for n in f.attrs["axes"]][0]
        axis_name = axis_name.decode() if isinstance(axis_name, bytes) else str(axis_name)
        axis = f[axis_name][()]
        locked = f["locked"][()]
        measured = f["measured"][()].astype(bool)
        powers = f["drive_power_dbm"][()] if kind == "lock" else None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    if kind == "current":
        mesh = ax.pcolormesh(axis, freqs, trace.T, shading="nearest", cmap="viridis")
        ax.plot(axis[measured], line[measured], "w.", ms=4, label="line")
        ax.set_xlabel("bias current (A)")
        ax.set_ylabel("frequency (GHz)")
        fig.colorbar(mesh, ax=ax, label="dBm")
        ax.set_title("tuning curve (RF off)")
    elif kind == "lock":
        shown = np.where(measured, locked, np.nan).astype(float)
        mesh = ax.pcolormesh(powers, axis / 1e6, shown, shading="nearest", cmap="RdYlGn", vmin=0, vmax=1)
        ax.set_xlabel("drive power (dBm)")
        ax.set_ylabel("detuning from the line (MHz)")
        fig.colorbar(mesh, ax=ax, label="locked (1) / unlocked (0)")
        ax.set_title("lock map (Arnold tongue)")
    elif kind == "drift":
        ax.plot(axis[measured], (line[measured] - np.nanmedian(line[measured])) * 1e3, ".-")
        ax.set_xlabel("elapsed (s, planned)")
        ax.set_ylabel(f"line - {np.nanmedian(line[measured]):.6f} GHz (MHz)")
        ax.set_title("drift of the line")
        ax.grid(alpha=0.3)
    else:
        for k in np.nonzero(measured)[0]:
            ax.plot(freqs, trace[k], lw=0.8, label=f"repeat {k}")
        ax.set_xlabel("frequency (GHz)")
        ax.set_ylabel("power (dBm)")
        ax.set_title("spectrum")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
