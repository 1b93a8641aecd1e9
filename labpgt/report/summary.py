"""Plots and a text summary of a run file: ``report(path, out_dir) -> [paths]``.

- loss_accuracy.png: training loss and accuracy per step, test loss and accuracy per
  evaluation, against training measurements spent
- spectra.png: example traces of one sample: clean, + and - perturbed
- settings.png: drive detuning vs power of the measurements (coloured by step); current vs step
- probe.png: the start-up probe sweep (RF off) and the line it found; only for a run file with a
  recorded probe sweep (/probe)
- summary.txt: status, steps, measurements, final test accuracy, duration, instruments, probe

Rows abandoned by a resume are left out, as in replay. Works on a file still being written. The
measurement columns are read a window at a time, and a per-step curve draws at most
MAX_CURVE_POINTS steps (memory flat in the run's length).
"""
from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from labpgt.runfile import KINDS, RunFileError, RunReader  # noqa: E402
from labpgt.runfile.reader import WINDOW_ROWS, EffectiveRows  # noqa: E402

MAX_SCATTER = 20000  # settings scatter: at most this many rows (evenly spaced) are kept
#: per-step curves: at most this many points drawn (every k-th step): matplotlib's memory grows
#: with the points it draws (~70 MB more for the ~156k steps of a 10M-measurement run)
MAX_CURVE_POINTS = 10000
#: rows read at a time where a column is summarised whole: a report holds a window, never a column
SCAN_ROWS = 16 * WINDOW_ROWS


def report(path, out_dir) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with RunReader(path) as r:
        steps = _effective(r, "steps", r.steps())
        evals = _effective(r, "evaluations", r.evaluations())
        try:
            probe, probe_text = r.probe(), None
        except RunFileError as e:  # a damaged /probe: said in the summary, the rest is reported
            probe, probe_text = None, f"UNREADABLE ({e})"
        if probe_text is None:
            probe_text = probe.describe() if probe is not None else "not recorded"
        files = [
            _loss_accuracy(steps, evals, out / "loss_accuracy.png"),
            _spectra(r, out / "spectra.png"),
            _settings(r, steps, out / "settings.png"),
        ]
        if probe is not None and probe.swept:
            files.append(_probe(probe, out / "probe.png"))
        files.append(_summary(r, steps, evals, out / "summary.txt", probe_text))
    return files


def _effective(r, table, data):
    rows = r.effective_rows(table)
    return {k: v[rows] for k, v in data.items()}


def _every_kth(n: int) -> tuple[slice, str]:
    """The steps a per-step curve draws, and what its label says of them."""
    k = -(-n // MAX_CURVE_POINTS) if n else 1
    return slice(None, None, k), ("" if k == 1 else f", every {k}th step")


def _loss_accuracy(steps, evals, path):
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 4))
    drawn, which = _every_kth(len(steps["step"]))
    ax_l.plot(steps["measurements"][drawn], steps["loss"][drawn], lw=0.8, alpha=0.7, label=f"train (batch{which})")
    ax_a.plot(steps["measurements"][drawn], steps["accuracy"][drawn], lw=0.8, alpha=0.7,
              label=f"train (batch{which})")
    if len(evals["step"]):
        ax_l.plot(evals["measurements"], evals["test_loss"], "o-", label="test")
        ax_a.plot(evals["measurements"], evals["test_accuracy"], "o-", label="test")
    ax_l.set(xlabel="training measurements", ylabel="loss", title="loss")
    ax_a.set(xlabel="training measurements", ylabel="accuracy", title="accuracy", ylim=(-0.02, 1.02))
    for ax in (ax_l, ax_a):
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def _spectra(r, path):
    fig, ax = plt.subplots(figsize=(8, 4.5))
    n = r.n_measurements
    if n:
        # a window of rows from the first perturbed step: clean, + and - of one sample and node
        look = min(n, 4096)
        sign = r.measurements.column("perturbation_sign", slice(0, look))
        sample = r.measurements.column("sample_index", slice(0, look))
        node = r.measurements.column("node", slice(0, look))
        picks = {}
        for s, label in ((0, "clean"), (1, "+ perturbed"), (-1, "− perturbed")):
            idx = np.flatnonzero(sign == s)
            if s and idx.size and 0 in picks:  # prefer the same sample and node as the clean trace
                same = idx[(sample[idx] == sample[picks[0]]) & (node[idx] == node[picks[0]])]
                idx = same if same.size else idx
            if idx.size:
                picks[s] = int(idx[0])
        labels = {0: "clean", 1: "+ perturbed", -1: "− perturbed"}
        for s, i in picks.items():
            m = r.measurements[i]
            freqs = np.linspace(m["trace_start_hz"], m["trace_stop_hz"], len(m["trace_dbm"]))
            if not np.all(np.isfinite(freqs)):
                freqs = np.arange(len(m["trace_dbm"]))
            ax.plot(freqs / 1e9 if np.isfinite(m["trace_start_hz"]) else freqs, m["trace_dbm"], lw=0.9,
                    label=f"{labels[s]}: step {m['step']} sample {m['sample_index']} node {m['node']} "
                          f"({m['frequency_hz'] / 1e9:.6f} GHz, {m['power_dbm']:.1f} dBm)")
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no measurements", ha="center", transform=ax.transAxes)
    ax.set(xlabel="frequency (GHz)", ylabel="power (dBm)", title="example spectra")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _settings(r, steps, path):
    fig, (ax_s, ax_c) = plt.subplots(1, 2, figsize=(11, 4))
    rows = EffectiveRows(r.effective_ranges("measurements"))
    n = len(rows)
    if n:
        freq, power, step = _evenly_spaced(r, rows, ("frequency_hz", "power_dbm", "step"), MAX_SCATTER)
        ref = np.median(freq)
        sc = ax_s.scatter((freq - ref) / 1e6, power, c=step, s=4, cmap="viridis")
        fig.colorbar(sc, ax=ax_s, label="step")
        ax_s.set(xlabel=f"detuning from {ref / 1e9:.6f} GHz (MHz)")
    ax_s.set(ylabel="drive power (dBm)", title="settings explored")
    if len(steps["step"]):
        drawn, _ = _every_kth(len(steps["step"]))
        ax_c.plot(steps["step"][drawn], steps["current_a"][drawn] * 1e3, lw=1)
    ax_c.ticklabel_format(axis="y", useOffset=False)
    ax_c.set(xlabel="step", ylabel="bias current (mA)", title="bias current")
    for ax in (ax_s, ax_c):
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _evenly_spaced(r, rows: EffectiveRows, columns, count: int) -> list[np.ndarray]:
    """``count`` evenly spaced effective rows of ``columns``, picked window by window."""
    n = len(rows)
    pick = np.unique(np.linspace(0, n - 1, min(n, count)).astype(np.int64))
    kept = {name: [] for name in columns}
    for lo, window in rows.windows(r.measurements, columns, SCAN_ROWS):
        here = pick[(pick >= lo) & (pick < lo + SCAN_ROWS)] - lo
        for name in columns:
            kept[name].append(window[name][here])
    return [np.concatenate(kept[name]) for name in columns]


def _kind_counts(r) -> dict:
    """Committed measurement rows per kind (abandoned ones included), counted window by window."""
    counts = np.zeros(len(KINDS), dtype=np.int64)
    for _, window in EffectiveRows([(0, r.n_measurements)]).windows(r.measurements, ("kind",), SCAN_ROWS):
        counts += np.bincount(window["kind"].astype(np.int64), minlength=len(KINDS))[:len(KINDS)]
    return {k: int(c) for k, c in zip(KINDS, counts)}


def _probe(probe, path):
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(probe.frequency_hz / 1e9, probe.trace_dbm, lw=0.8, label=f"probe sweep, RF off, {probe.current_a} A")
    ax.axvline(probe.line_hz / 1e9, color="C3", lw=0.8, ls="--",
               label=f"line (reference): {probe.line_hz / 1e9:.6f} GHz, {probe.line_dbm:.1f} dBm")
    ax.set(xlabel="frequency (GHz)", ylabel="power (dBm)",
           title=f"start-up probe: {probe.points} points, RBW {probe.rbw_hz / 1e3:.0f} kHz")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _summary(r, steps, evals, path, probe_text="not recorded"):
    md = r.metadata
    hist = r.status_history()
    start = hist[0]["time_s"] if hist else float("nan")
    ends = [hist[-1]["time_s"] if hist else start]
    if len(steps["time_s"]):
        ends.append(float(steps["time_s"][-1]))
    duration = max(ends) - start
    counts = _kind_counts(r)
    lines = [
        f"run file: {r.path}",
        f"status: {r.status}" + (f" ({r.status_message})" if r.status_message else ""),
        f"steps: {len(steps['step'])}",
        f"training measurements: {int(steps['measurements'][-1]) if len(steps['step']) else 0}",
        f"measurements recorded: {r.n_measurements} (" + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")",
        "final test accuracy: " + (f"{evals['test_accuracy'][-1]:.4f} (step {evals['step'][-1]})"
                                   if len(evals["step"]) else "n/a"),
        "final test loss: " + (f"{evals['test_loss'][-1]:.4f}" if len(evals["step"]) else "n/a"),
        f"duration: {duration:.1f} s",
        f"started: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(start)) if hist else 'n/a'}",
        f"package version: {md.get('package_version', '')}",
        f"seed: {md.get('seed')}",
        f"command line: {md.get('command_line', '')}",
        f"probe: {probe_text}",
        "instruments:",
    ]
    lines += [f"  {role}: {idn}" for role, idn in sorted(md.get("identities", {}).items())] or ["  (none recorded)"]
    path.write_text("\n".join(lines) + "\n")
    return path


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
