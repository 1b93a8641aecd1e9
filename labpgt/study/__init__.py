"""Studies: many ordinary runs (a grid or list of variants, or an Optuna search, over seeds) on
Dask workers, each trial a ``labpgt train`` run file in the study's folder; an index, a
summary table and plot. See :mod:`labpgt.study.spec` for the file, :mod:`labpgt.study.runner`
for how trials are scheduled, resumed and stopped.
"""
from labpgt.study.spec import Study, StudyError, Trial, load_study

__all__ = ["Study", "StudyError", "Trial", "load_study"]
