# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # labpgt from a notebook
#
# Train a small network through the embedded simulated ring, open its run file and plot it
# with xarray and pandas. Needs `pip install 'labpgt[notebook]'`. Open it in Jupyter with
# jupytext (`jupytext --to notebook examples/notebook.py`), or run it as a script:
# `python examples/notebook.py` (figures go to `LABPGT_NOTEBOOK_OUT`, default `notebook-out/`).

# %%
import os
from pathlib import Path

import matplotlib

if "ipykernel" not in matplotlib.get_backend().lower() and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")  # a script: figures to files, no window
import matplotlib.pyplot as plt

import labpgt

out_dir = Path(os.environ.get("LABPGT_NOTEBOOK_OUT", "notebook-out"))
out_dir.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## One spectrum
#
# A station opened as a context manager: on leaving the block the rig is made safe (RF off,
# the magnet ramped to zero) and read back, whatever happened inside.

# %%
with labpgt.open_station(seed=0) as rig:
    spectrum = rig.measure(frequency_hz=2.07e9, power_dbm=-10.0, current_a=1.8)
print(rig.safe_report)
for peak in spectrum.peaks(3):
    print(f"line at {peak.frequency_hz / 1e9:.6f} GHz, {peak.power_dbm:.1f} dBm")

fig, ax = plt.subplots()
ax.plot(spectrum.frequency_hz / 1e9, spectrum.trace_dbm)
ax.set(xlabel="frequency (GHz)", ylabel="power (dBm)", title="the ring driven at 2.07 GHz, -10 dBm")
fig.savefig(out_dir / "spectrum.png")

# %% [markdown]
# ## A small training run
#
# The experiment is a dict (or a TOML file, or keyword options) with the names of
# `labpgt train`'s flags; the progress callback sees every step and evaluation.

# %%
experiment = {"dataset": "iris", "estimator": "node", "budget": 1280, "seed": 1, "eval_every": 5,
              "checkpoint_every": 5, "out": str(out_dir / "runs")}
evaluations = []


def progress(record):
    if record["kind"] == "eval":
        evaluations.append(record)
        print(f"step {record['step']:3d}: test accuracy {record['test_accuracy']:.2f}")


outcome = labpgt.train(experiment, progress=progress)
print(outcome.status, outcome.run_path)

# %% [markdown]
# ## The run file
#
# `open_run` holds only the effective rows (a resumed run's abandoned rows and a live
# writer's in-flight rows are left out), as arrays, xarray Datasets or pandas DataFrames.

# %%
with labpgt.open_run(outcome.run_path) as run:
    print(run)
    measurements = run.to_xarray("measurements")
    steps = run.to_dataframe("steps")
    evals = run.to_dataframe("evaluations")
    probe = run.to_xarray("probe")
print(measurements)

# %%
fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
loss_ax.plot(steps["measurements"], steps["loss"], label="training batch")
loss_ax.plot(evals["measurements"], evals["test_loss"], "o-", label="test split")
loss_ax.set(xlabel="training measurements", ylabel="loss")
loss_ax.legend()
acc_ax.plot(evals["step"], evals["test_accuracy"], "o-")
acc_ax.set(xlabel="step", ylabel="test accuracy")
fig.savefig(out_dir / "learning-curve.png")

# %% [markdown]
# Every trace keeps its frequency axis as a coordinate, so the mean training trace plots
# against frequency with no bookkeeping; the probe sweep that found the ring's line is there too.

# %%
train_traces = measurements.trace_dbm.where(measurements.kind == "train", drop=True)
fig, ax = plt.subplots()
train_traces.mean("measurement").plot(ax=ax, x="trace_frequency_hz", label="mean training trace")
probe.trace_dbm.sel(frequency_hz=slice(float(measurements.trace_frequency_hz[0]),
                                       float(measurements.trace_frequency_hz[-1]))).plot(
    ax=ax, label="probe sweep (RF off)")
ax.set(ylabel="power (dBm)", title="")
ax.legend()
fig.savefig(out_dir / "traces.png")

# %% [markdown]
# The drive settings the network chose, per step (pandas):

# %%
with labpgt.open_run(outcome.run_path) as run:
    frame = run.to_dataframe("measurements")
per_step = frame[frame["kind"] == "train"].groupby("step")[["frequency_hz", "power_dbm", "current_a"]].mean()
print(per_step.tail())
ax = per_step["frequency_hz"].div(1e9).plot(title="mean drive frequency per step")
ax.set(ylabel="GHz")
ax.figure.savefig(out_dir / "drive.png")
print("figures in", out_dir)
