"""``labpgt study STUDY.toml``: the subcommand's arguments and entry point."""
from __future__ import annotations

import logging
import os

from labpgt.argtypes import positive_int


def add_study_parser(subparsers) -> None:
    study = subparsers.add_parser(
        "study", help="many runs (grid, list or Optuna search, over seeds) on Dask workers; resumable",
        description="Run a study: a base experiment plus variants and seeds, each trial an ordinary run file "
                    "under the study folder; an index, a summary table and plot. Rerun to resume.")
    study.add_argument("study_file", metavar="STUDY.toml", help="the study file (see examples/study.toml)")
    study.add_argument("--workers", type=positive_int, help="local worker processes (default: [study] workers, "
                                                        "else the CPUs)")
    study.add_argument("--scheduler", metavar="ADDRESS",
                       help="an existing Dask scheduler (e.g. tcp://10.0.0.5:8786) instead of local workers; "
                            "the study folder must be visible to the workers at the same path")
    study.add_argument("--out", help="the study folder (default: [study] out, else studies/<file stem>)")
    study.add_argument("--summary", action="store_true", help="print the summary of the index; run nothing")
    study.set_defaults(func=cmd_study)


def cmd_study(args) -> int:
    from labpgt.study.runner import run_study
    from labpgt.study.spec import default_workers, load_study
    from labpgt.study.summary import read_index, write_summary

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Dask's INFO lines would bury the trials' (its documented config variable; workers inherit it)
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    study = load_study(args.study_file, out=args.out)
    if args.summary:
        text, files = write_summary(study.out, read_index(study.out), study.path.stem)
        print(text)
        print("\n".join(f"written: {path}" for path in files))
        return 0
    workers = args.workers or study.workers or default_workers()
    return run_study(study, workers, scheduler=args.scheduler, report=lambda line: print(line, flush=True))
