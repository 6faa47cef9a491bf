"""SAGD's claims measured (experiments/README.md): the driver ``run.py`` over the catalog of
experiments (``catalog.py``, ``columns.py``, ``report.py``), their configs (``configs/``), the
ODE and drift checks (``ode_check.py``, ``drift_check.py``), the exact-accuracy studies of the
samplers (``sampler_bias.py``, ``time_grids.py``) and every committed result (``results/``).
Run as scripts (``python experiments/NAME.py``) or imported as ``experiments.NAME``."""
