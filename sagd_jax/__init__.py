"""sagd-jax: spectrally anisotropic Gaussian diffusion in JAX/Flax.

The notebook's names (``sagd_jax.api``), imported on first use so that ``import sagd_jax``
stays light:

    import sagd_jax

    sagd_jax.train("quickstart", "workdirs/quickstart")        # or a ConfigDict, a file
    samples = sagd_jax.sample("workdirs/quickstart", num_samples=64, steps=100)
    results = sagd_jax.evaluate(samples)                        # any npz, PNG folder or zip
    run = sagd_jax.Run.from_workdir("workdirs/quickstart")      # model, process, state, ...

``sagd_jax.sample`` and ``sagd_jax.evaluate`` are these functions; the command lines of the
same names are the modules ``python -m sagd_jax.sample`` / ``python -m sagd_jax.evaluate``
(``importlib.import_module`` or ``from sagd_jax.sample import main`` reach them).

The layers and where each idea lives: docs/architecture.md; the maths: docs/math.md.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

_API = {"Run": "sagd_jax.run", "train": "sagd_jax.api", "sample": "sagd_jax.api",
        "evaluate": "sagd_jax.api", "load_config": "sagd_jax.api"}
__all__ = ["Run", "evaluate", "load_config", "sample", "train", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sagd_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))


class _Package(types.ModuleType):
    """Keeps ``sagd_jax.sample`` and ``sagd_jax.evaluate`` the API's functions when their
    command-line modules are imported (the import system sets a loaded submodule as an
    attribute of its package)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return  # the module stays in sys.modules; the function comes from __getattr__
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
