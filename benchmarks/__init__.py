"""The benchmark scripts (one per figure of ``benchmarks/RESULTS.md``) and their shared
``common`` module: run as ``python benchmarks/NAME.py``, imported as ``benchmarks.NAME``."""
