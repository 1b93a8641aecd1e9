"""Figures of scripts/bench_phyll.py results: test accuracy against training measurements per data
set (median over seeds), and the adaptation test around the ring's step change.

    python scripts/plot_bench_phyll.py scripts/results/bench_phyll_iris_wine.json \
        scripts/results/bench_phyll_digits.json --out docs/phyll
writes docs/phyll_curves.png and (when the results hold an adaptation test) docs/phyll_adaptation.png.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STYLE = {"phyll": "C0", "node": "C1", "twin": "C2", "pgt": "C3", "node-k2": "C4", "phyll-noring": "C0",
         "node-k2-noring": "C4", "phyll-k1": "C5", "phyll-k3": "C6"}


def accuracy_at(curve, marks):
    """The last evaluation at or below each mark (NaN before the first)."""
    out = []
    for mark in marks:
        below = [a for m, a in curve if m <= mark]
        out.append(below[-1] if below else np.nan)
    return np.array(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/phyll"), help="prefix of the PNG files")
    args = ap.parse_args(argv)
    runs = [r for path in args.results for r in json.loads(path.read_text())["runs"]]
    curves = [r for r in runs if r["kind"] == "curve"]
    datasets = [d for d in ("iris", "wine", "digits") if any(r["dataset"] == d for r in curves)]
    if datasets:
        fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
        for ax, dataset in zip(axes[0], datasets):
            mine = [r for r in curves if r["dataset"] == dataset]
            top = max(r["budget"] for r in mine)
            marks = np.unique(np.round(np.logspace(2, np.log10(top), 60)))
            for method in dict.fromkeys(r["method"] for r in mine):
                rs = [r for r in mine if r["method"] == method]
                acc = np.nanmedian([accuracy_at(r["curve"], marks) for r in rs], axis=0)
                ax.plot(marks, acc, color=STYLE.get(method), ls="--" if "noring" in method else "-",
                        label=f"{method} ({len(rs)} seeds)")
            ax.set_xscale("log")
            ax.set_xlabel("training measurements")
            ax.set_ylabel("test accuracy (median of seeds)")
            ax.set_title(dataset)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(f"{args.out}_curves.png", dpi=110)
        print(f"wrote {args.out}_curves.png")
    adapt = [r for r in runs if r["kind"] == "adaptation"]
    if adapt:
        fig, ax = plt.subplots(figsize=(7, 4))
        for method in dict.fromkeys(r["method"] for r in adapt):
            rs = [r for r in adapt if r["method"] == method]
            # align the seeds on the step: measurements since the step change
            grid = np.array(sorted({m - r["step_at"] for r in rs for m, _ in r["curve"][1:]}))
            acc = np.nanmedian([accuracy_at([(m - r["step_at"], a) for m, a in r["curve"]], grid) for r in rs], axis=0)
            ax.plot(grid, acc, color=STYLE.get(method), label=f"{method} ({len(rs)} seeds)")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlabel("training measurements since the ring's step change")
        ax.set_ylabel("test accuracy (median of seeds)")
        ax.set_title(f"{adapt[0]['dataset']}: +{adapt[0]['step_kelvin']} K step change of the ring")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(f"{args.out}_adaptation.png", dpi=110)
        print(f"wrote {args.out}_adaptation.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
