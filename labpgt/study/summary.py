"""The study's index (trial -> options, run file, status, final figures) and its summary: a
table per method (medians and spread over seeds) and a plot of test accuracy against training
measurements.

A "method" is what the trials differ in besides the seed: the grid/list variant, or the search
point. The index is JSON, rewritten atomically after every finished trial, so an interrupted
study always leaves a readable one.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np

INDEX_FILE = "index.json"
SUMMARY_TEXT = "summary.md"
SUMMARY_PLOT = "summary.png"
INDEX_VERSION = 1


def read_index(folder: Path) -> dict:
    path = folder / INDEX_FILE
    if not path.exists():
        return {"version": INDEX_VERSION, "trials": {}, "search_points": {}}
    try:
        index = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable study index ({exc}); move it aside to rebuild it from the "
                         f"run files") from None
    if not isinstance(index, dict) or index.get("version") != INDEX_VERSION:
        raise ValueError(f"{path}: study index version {index.get('version') if isinstance(index, dict) else '?'} "
                         f"is not allowed; allowed: {INDEX_VERSION}")
    index.setdefault("search_points", {})
    return index


def write_index(folder: Path, index: dict) -> None:
    index["updated_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = folder / INDEX_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(index, indent=1, sort_keys=True, default=float))
    os.replace(tmp, path)  # readers never see half an index


def method_label(entry: dict) -> str:
    """What a trial is, seed left out: its variant's options, or its search point and parameters."""
    options = {k: v for k, v in entry["options"].items() if k != "seed"}
    text = " ".join(f"{k}={_short(v)}" for k, v in options.items()) or "base"
    if entry.get("search_point") is not None:
        text = f"point {entry['search_point']}: {text}"
    return text


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summarise(index: dict) -> list[dict]:
    """One row per method, in the order of first appearance in the index."""
    groups: dict[str, list[dict]] = {}
    for entry in current_trials(index).values():
        groups.setdefault(method_label(entry), []).append(entry)
    rows = []
    for label, entries in groups.items():
        done = [e for e in entries if e["status"] == "completed" and e.get("final_test_accuracy") is not None]
        accuracy = np.array([e["final_test_accuracy"] for e in done])
        measurements = np.array([e["final_measurements"] for e in done])
        wall = np.array([e.get("wall_s", math.nan) for e in done if e.get("action") != "skipped"])
        rows.append({
            "method": label, "trials": len(entries), "completed": len(done),
            "failed": sum(e["status"] == "failed" for e in entries),
            "unfinished": sum(e["status"] not in ("completed", "failed") for e in entries),
            "final_test_accuracy_median": float(np.median(accuracy)) if len(done) else None,
            "final_test_accuracy_min": float(accuracy.min()) if len(done) else None,
            "final_test_accuracy_max": float(accuracy.max()) if len(done) else None,
            "final_test_accuracy_iqr": float(np.subtract(*np.percentile(accuracy, [75, 25]))) if len(done) else None,
            "measurements_median": float(np.median(measurements)) if len(done) else None,
            "wall_s_median": float(np.median(wall)) if len(wall) else None,
            "seeds": sorted(e["options"]["seed"] for e in entries),
        })
    return rows


def table_markdown(rows: list[dict]) -> str:
    def number(value, fmt):
        return "-" if value is None else format(value, fmt)

    lines = ["| method | trials | completed | failed | final test acc (median) | min-max | IQR | "
             "measurements (median) | wall s (median) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        spread = ("-" if row["final_test_accuracy_min"] is None else
                  f"{row['final_test_accuracy_min']:.3f}-{row['final_test_accuracy_max']:.3f}")
        lines.append(f"| {row['method']} | {row['trials']} | {row['completed']} | {row['failed']} | "
                     f"{number(row['final_test_accuracy_median'], '.3f')} | {spread} | "
                     f"{number(row['final_test_accuracy_iqr'], '.3f')} | {number(row['measurements_median'], '.0f')} | "
                     f"{number(row['wall_s_median'], '.1f')} |")
    return "\n".join(lines)


def current_trials(index: dict) -> dict:
    """The trials of the study file as it is now (not those of an earlier version of it)."""
    return {name: entry for name, entry in index["trials"].items() if entry.get("in_study", True)}


def failures(index: dict) -> list[str]:
    return [f"{name}: {entry.get('error', entry['status'])}" for name, entry in current_trials(index).items()
            if entry["status"] == "failed"]


def accuracy_curves(index: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per method: a common grid of training measurements and each seed's test accuracy on it
    (the last evaluation at or before each mark; NaN before a run's first evaluation)."""
    groups: dict[str, list[list]] = {}
    for entry in current_trials(index).values():
        if entry.get("evaluations"):
            groups.setdefault(method_label(entry), []).append(entry["evaluations"])
    out = {}
    for label, curves in groups.items():
        grid = np.unique(np.concatenate([[row[0] for row in curve] for curve in curves]))
        table = np.full((len(curves), len(grid)), np.nan)
        for i, curve in enumerate(curves):
            marks = np.array([row[0] for row in curve])
            accuracy = np.array([row[1] for row in curve])
            where = np.searchsorted(marks, grid, side="right") - 1
            table[i] = np.where(where >= 0, accuracy[np.clip(where, 0, None)], np.nan)
            table[i, grid > marks[-1]] = np.nan  # an unfinished run says nothing past its last evaluation
        out[label] = (grid, table)
    return out


def plot_summary(index: dict, path: Path, title: str) -> Path | None:
    curves = accuracy_curves(index)
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for label, (grid, table) in curves.items():
        counts = np.sum(np.isfinite(table), axis=0)
        ok = counts > 0
        with np.errstate(all="ignore"):
            median = np.nanmedian(table[:, ok], axis=0)
            low, high = np.nanmin(table[:, ok], axis=0), np.nanmax(table[:, ok], axis=0)
        x = np.maximum(grid[ok], 1)
        line, = ax.step(x, median, where="post", label=f"{label} (n={table.shape[0]})")
        ax.fill_between(x, low, high, step="post", alpha=0.2, color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("training measurements")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{title}: median over seeds, band = min-max")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_summary(folder: Path, index: dict, title: str) -> tuple[str, list[Path]]:
    """summary.md (the table, the failures) and summary.png; returns the text and the files."""
    rows = summarise(index)
    text = table_markdown(rows)
    errors = failures(index)
    if errors:
        text += "\n\nFailed trials:\n" + "\n".join(f"- {line}" for line in errors)
    if index.get("search_best"):
        best = index["search_best"]
        text += (f"\n\nSearch: best point {best['point']} ({best['objective']} = {best['value']:.4f}): "
                 + ", ".join(f"{k}={_short(v)}" for k, v in best["params"].items()))
    (folder / SUMMARY_TEXT).write_text(f"# Study {title}\n\n{text}\n")
    files = [folder / SUMMARY_TEXT]
    png = plot_summary(index, folder / SUMMARY_PLOT, title)
    if png is not None:
        files.append(png)
    return text, files
