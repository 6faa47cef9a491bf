"""Fixtures shared by the tests: the repository, tiny configs, in-process CLI runs, and dense
float64 references of the spectral operators. Tests never import one another: what they
share lives here, as fixtures."""

from __future__ import annotations

import dataclasses
import importlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

# NumPy's OpenBLAS on one thread (set before NumPy loads it; subprocesses inherit it). With its
# default of a thread a core, the eigendecompositions of FID's 2048-feature covariances took 6
# to 12 times as long on the 2-core VM whenever anything ran beside them (the other xdist
# worker, XLA's threads): its threads wait for each other on cores in use.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# XLA's CPU backend without LLVM's optimisations (set before JAX starts; subprocesses inherit
# it, and the tests' 4-device scripts add to it): the tests' programs are tiny and run a few
# steps, so compiling is most of their time. The tiny train step's first step took 16.7 s
# instead of 37.0 s, its next 10 steps 0.54 s instead of 0.29 s, the same loss (2026-12-07,
# 2-core Xeon VM). Runs compared bit for bit within a test all compile with the same flags.
# (XLA's fusion emitters off, --xla_cpu_use_fusion_emitters=false, compiled the tiny step in
# 5.5 s instead of 8.1 s, but two programs the tests require to agree bit for bit, such as a
# sampler with and without its trajectory recorded, then differed in the last bit.)
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# One persistent XLA compilation cache for the whole test session (subprocesses started by the
# tests inherit it through the environment): the trainer tests compile the same tiny programs
# many times, and on a 2-core CPU compiling costs far more than running them.
_CACHE = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "sagd-jax-test-xla-cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))

# CPU only: where libtpu is installed (the test extra, for the deviceless TPU compiles of
# test_compile) JAX would otherwise try, and fail, to start a TPU backend in every process.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
jax.config.update("jax_platforms", os.environ["JAX_PLATFORMS"])  # jax read the variable at import

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

# A U-Net of a few thousand parameters on 16x16 grf data, one level (with its attention): a
# few seconds to compile and train. (Two levels took twice as long to build at level 0: 20.9 s
# instead of 10.5 s from init to a compiled train step, 2026-12-07, 2-core Xeon VM with an
# experiment niced beside it. test_models checks the deeper networks.)
TINY_OVERRIDES = {
    "data.name": "grf", "data.image_size": 16, "data.channels": 1, "data.num_examples": 256,
    "model.ch": 8, "model.ch_mult": (1,), "model.num_res_blocks": 1,
    "model.attn_resolutions": (16,), "model.num_groups": 2, "model.dropout": 0.1,
    "optim.warmup_steps": 2, "optim.learning_rate": 1e-3,
    "train.batch_size": 8, "train.log_every": 2, "train.checkpoint_every": 3,
    "train.sample_every": 100, "train.num_samples": 4, "train.sample_steps": 3,
}



@pytest.hookimpl(tryfirst=True)  # before pytest's own hook selects tests by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A ``heavy`` test is ``slow`` too (so ``-m "not slow"`` never runs one); tests marked
    ``needs_fashion_mnist`` are skipped where Debian's files are missing."""
    skip = pytest.mark.skip(reason="Debian's dataset-fashion-mnist is not installed "
                                   "(.ci/run installs it)")
    for item in items:
        if "heavy" in item.keywords and "slow" not in item.keywords:
            item.add_marker(pytest.mark.slow)
        if "needs_fashion_mnist" in item.keywords and not os.path.isdir(FASHION_MNIST):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def repo() -> str:
    """The repository root."""
    return REPO


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., Any]:
    """``tiny_config(**{"train.num_steps": 3})``: ``default_config()`` with ``TINY_OVERRIDES``
    and the given dotted overrides."""
    from sagd_jax.config import default_config

    def make(**overrides: Any) -> Any:
        config = default_config()
        for key, value in {**TINY_OVERRIDES, **overrides}.items():
            node = config
            *parents, leaf = key.split(".")
            for part in parents:
                node = node[part]
            node[leaf] = value
        return config

    return make


@pytest.fixture(scope="session")
def tiny_overrides() -> dict[str, Any]:
    """``TINY_OVERRIDES``: dotted keys and values of a tiny grf run (a copy)."""
    return dict(TINY_OVERRIDES)


@pytest.fixture(scope="session")
def tiny_cli_overrides() -> list[str]:
    """``TINY_OVERRIDES`` without the data keys as ``--config.KEY=VALUE`` flags (the
    quickstart config's own data: real Fashion-MNIST)."""
    out = []
    for key, value in TINY_OVERRIDES.items():
        if key.startswith("data."):
            continue
        if isinstance(value, tuple):
            value = "(" + ",".join(map(str, value)) + ",)"
        out.append(f"--config.{key}={value}")
    return out


@pytest.fixture(scope="session")
def one_line_error() -> Callable[..., str]:
    """``one_line_error(call, *needles)``: ``call()`` raises a ``ValueError`` of one line
    holding every needle; returns its message."""
    def check(call: Callable[[], Any], *needles: str) -> str:
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message, message
        for needle in needles:
            assert needle in message, message
        return message

    return check


@pytest.fixture(scope="session")
def on_four_devices(repo: str) -> Callable[..., subprocess.CompletedProcess]:
    """``on_four_devices(script, timeout=600)``: run the Python ``script`` in the repository on
    4 CPU devices (``--xla_force_host_platform_device_count=4`` added to the inherited XLA
    flags), its output captured as text. JAX fixes its device count when it starts: a test
    of a mesh needs its own process."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()}

    def call(script: str, timeout: int = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", script], env=env, cwd=repo,
                              capture_output=True, text=True, timeout=timeout)

    return call


@pytest.fixture(scope="session")
def damage_an_array() -> Callable[..., None]:
    """``damage_an_array(item)``: flip one bit of the largest array chunk an Orbax item folder
    (``.../checkpoints/6/state``) keeps out of line, near its middle, where the array still
    reads back without complaint (checked with TensorStore) but with other values: damage only
    a fingerprint can see. The chunk is found through OCDBT's own b-tree: a data file also
    holds the per-process b-tree, which no restore reads."""
    import tensorstore as ts

    def read(item: str, name: str) -> np.ndarray:
        spec = {"driver": "zarr", "kvstore": {"driver": "ocdbt", "base": f"file://{item}/",
                                              "path": f"{name}/"}}
        return ts.open(spec, open=True).result().read().result()

    def damage(item: str | os.PathLike) -> None:
        item = os.path.abspath(item)
        base = ts.KvStore.open(f"file://{item}/").result()
        root = ts.ocdbt.dump(base).result()["versions"][-1]["root"]["location"]
        node = ts.ocdbt.dump(base, root).result()
        assert node["height"] == 0, "a tiny run's item fits one b-tree leaf"
        entry = max((e for e in node["entries"] if "indirect_value" in e),
                    key=lambda e: int(e["indirect_value"].rsplit(":", 1)[1]))
        where, offset, length = entry["indirect_value"].rsplit(":", 2)
        path = os.path.join(item, *where.removeprefix("value:").split(":"))
        name = entry["key"].decode().rsplit("/", 1)[0]
        before, data = read(item, name), bytearray(open(path, "rb").read())
        for i in range(int(offset) + int(length) // 2, int(offset) + int(length)):
            data[i] ^= 0x10
            open(path, "wb").write(data)
            try:
                if not np.array_equal(read(item, name), before):
                    return
            except ValueError:  # the codec refuses it: not silent, try the next byte
                pass
            data[i] ^= 0x10
        open(path, "wb").write(data)
        raise AssertionError(f"{path}: no byte of {name}'s chunk flips silently")

    return damage


@pytest.fixture(scope="session")
def params_of() -> Callable[[Any], list[np.ndarray]]:
    """The host arrays of a state's parameters, EMA and optimizer state, in leaf order."""
    def leaves(state: Any) -> list[np.ndarray]:
        return jax.tree.leaves(jax.device_get((state.params, state.ema_params, state.opt_state)))

    return leaves


@dataclasses.dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
            ) -> Callable[..., CliResult]:
    """``run_cli("sagd_jax.sample", "--workdir=...", ...)``: the tool's ``main(argv)`` run in
    this process from the repository root, with its exit status and captured output."""
    monkeypatch.chdir(REPO)

    def call(module: str, *args: str) -> CliResult:
        main = importlib.import_module(module).main
        capfd.readouterr()
        code = main([module, *args])
        out = capfd.readouterr()
        return CliResult(code, out.out, out.err)

    return call


@pytest.fixture(scope="session")
def run_subprocess() -> Callable[..., subprocess.CompletedProcess]:
    """``run_subprocess("sagd_jax.main", *args, env=None, timeout=600)``: ``python -m`` in a
    new process from the repository root (for signals, devices and processes)."""
    def call(module: str, *args: str, env: dict[str, str] | None = None,
             timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=timeout)

    return call


# --- dense references of the spectral operators ---------------------------------------------
def unitary_dft_matrix(height: int, width: int) -> np.ndarray:
    """The unitary 2-D DFT on row-major flattened (H, W) images, complex128 (H*W, H*W)."""

    def dft(n: int) -> np.ndarray:
        k = np.arange(n)
        return np.exp(-2j * np.pi * np.outer(k, k) / n) / np.sqrt(n)

    return np.kron(dft(height), dft(width))


def _dense_multiplier(full_multiplier: np.ndarray) -> np.ndarray:
    height, width = full_multiplier.shape
    f = unitary_dft_matrix(height, width)
    dense = f.conj().T @ np.diag(full_multiplier.reshape(-1).astype(np.complex128)) @ f
    assert np.abs(dense.imag).max() < 1e-10 * max(1.0, np.abs(dense.real).max())
    return dense.real


def _dense_operator(op: Callable[[np.ndarray], Any], height: int, width: int) -> np.ndarray:
    basis = np.eye(height * width, dtype=np.float32).reshape(height * width, height, width, 1)
    columns = np.asarray(op(basis), np.float64).reshape(height * width, height * width)
    return columns.T


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="session")
def dense_multiplier() -> Callable[[np.ndarray], np.ndarray]:
    """``F^H diag(m) F`` for a multiplier on the full (H, W) grid, float64 (real part)."""
    return _dense_multiplier


@pytest.fixture(scope="session")
def dense_operator() -> Callable[..., np.ndarray]:
    """The matrix of a linear image operator, from its action on the identity basis."""
    return _dense_operator


@pytest.fixture(scope="session")
def rel_err() -> Callable[[np.ndarray, np.ndarray], float]:
    """``|a - b| / |b|`` (Frobenius)."""
    return _rel_err


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
