"""Write examples/data/wine.csv and examples/data/breast_cancer.csv from the copies bundled with
scikit-learn (no download): a header of the feature names, then ``class`` (the class name) last.

    python scripts/export_example_datasets.py      # needs scikit-learn (the bench extra)

Values are written with ``repr`` (the shortest text that reads back as the same float64).
Sources and licences: examples/data/README.md.
"""
from __future__ import annotations

import csv
from pathlib import Path

from sklearn.datasets import load_breast_cancer, load_wine

OUT = Path(__file__).resolve().parents[1] / "examples" / "data"


def export(bunch, path: Path) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow([name.replace(" ", "_") for name in bunch.feature_names] + ["class"])
        for row, target in zip(bunch.data, bunch.target):
            writer.writerow([repr(float(v)) for v in row] + [str(bunch.target_names[target])])


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    export(load_wine(), OUT / "wine.csv")
    export(load_breast_cancer(), OUT / "breast_cancer.csv")


if __name__ == "__main__":
    main()
