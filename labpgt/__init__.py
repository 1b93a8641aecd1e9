"""labpgt: training neural networks through a magnonic ring reservoir, every measurement recorded.

The Python API (docs/api.md): :func:`open_run`, :func:`open_station`, :func:`experiment_config`,
:func:`train`, :func:`resume`, :func:`export_run`. The command line is ``labpgt`` (labpgt/cli.py).
"""
__version__ = "0.1.0"

from labpgt.api import experiment_config, export_run, open_run, open_station, resume, train  # noqa: E402

__all__ = ["__version__", "experiment_config", "export_run", "open_run", "open_station", "resume", "train"]
