"""The lmforge version, in a module of its own so that any module can record it (a run's run.json
does) without importing the package `__init__`, which is the Python API and sits above them all."""

__version__ = "0.1.0"
