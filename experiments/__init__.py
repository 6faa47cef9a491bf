"""The paper's experiments (``run.py``, docs/EXPERIMENTS.md) and the ODE check
(``ode_check.py``): run as scripts, imported as ``benchmarks.experiments.NAME``."""
