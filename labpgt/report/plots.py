"""PNG plots (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; a lab PC over ssh has no display
    import matplotlib.pyplot as plt

    return plt


def plot_trace(frequencies_hz: np.ndarray, power_dbm: np.ndarray, peaks, path: str | Path, title: str = "") -> Path:
    """One spectrum with its strongest peaks marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot(np.asarray(frequencies_hz) / 1e9, power_dbm, lw=0.8)
    for peak in peaks:
        ax.plot(peak.frequency_hz / 1e9, peak.power_dbm, "v", color="C3")
        ax.annotate(f"{peak.frequency_hz / 1e9:.5f} GHz\n{peak.power_dbm:.1f} dBm",
                    (peak.frequency_hz / 1e9, peak.power_dbm), textcoords="offset points",
                    xytext=(4, 6), fontsize=7)
    ax.set_xlabel("frequency (GHz)")
    ax.set_ylabel("power (dBm)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
