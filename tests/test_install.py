"""The installed package: every third-party module the code imports is a declared dependency,
the package list covers every folder, the built-in configs ship with it (``sagd_jax.configs``,
the repository's ``configs/``), and a wheel installed in a fresh environment trains the
built-in quickstart from outside the checkout."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parent.parent
SOURCES = sorted([*(REPO / "sagd_jax").rglob("*.py"), *(REPO / "configs").glob("*.py")])

# Modules the code uses only where an optional feature asks for them, never at import time:
# each is looked up inside a function, and its absence is a one-line error of that feature.
OPTIONAL = {
    # sagd_jax.chips: importlib.util.find_spec("libtpu") inside _tpu_devices, for the deviceless
    # TPU compiles of sagd-compile --topology=v5e:..., the [tpu] extra (jax[tpu]).
    "libtpu",
    # sagd_jax.chips: find_spec("jax_plugins.xla_cuda12") inside _gpu_devices, for the
    # deviceless GPU compiles of sagd-compile, the [gpu] extra (jax[cuda12-local]).
    "jax_plugins",
}
# Calls whose first argument, a string constant, names a module that is imported (or probed).
IMPORT_CALLS = {"import_module", "import_quietly", "find_spec"}


def _normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(top-level module, line, inside a function)`` of every absolute import in ``path``
    (``import x.y``, ``from x import y``, anywhere in the file) and every
    ``import_module("x")`` / ``import_quietly("x")`` / ``find_spec("x")``."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = node.args[0]
            if (called in IMPORT_CALLS and isinstance(arg, ast.Constant)
                    and isinstance(arg.value, str)):
                names = [arg.value]
        found.extend((name.split(".")[0], node.lineno, in_function) for name in names)
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                 ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


def _third_party_imports() -> dict[str, list[tuple[str, int, bool]]]:
    """Module -> where it is imported, for every module outside the standard library and this
    project."""
    out: dict[str, list[tuple[str, int, bool]]] = {}
    for path in SOURCES:
        for module, line, in_function in _imports(path):
            if module in sys.stdlib_module_names or module in ("sagd_jax", "configs"):
                continue
            out.setdefault(module, []).append((str(path.relative_to(REPO)), line, in_function))
    return out


def test_every_imported_third_party_module_is_a_declared_dependency():
    declared = {_normalize(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group())
                for requirement in _pyproject()["project"]["dependencies"]}
    distributions = importlib.metadata.packages_distributions()
    imports = _third_party_imports()
    assert {"jax", "absl", "etils", "ml_dtypes"} <= set(imports)  # the walk sees imports
    assert OPTIONAL <= set(imports), f"no longer used, drop: {OPTIONAL - set(imports)}"
    problems = []
    for module, places in sorted(imports.items()):
        where = ", ".join(f"{path}:{line}" for path, line, _ in places[:3])
        if module in OPTIONAL:
            problems += [f"{module} (optional) at module level in {path}:{line}"
                         for path, line, in_function in places if not in_function]
            continue
        dists = distributions.get(module)
        if not dists:
            problems.append(f"{module} ({where}): no installed distribution provides it")
        elif not any(_normalize(d) in declared for d in dists):
            problems.append(f"{module} ({where}): its distribution {'/'.join(dists)} is not in "
                            "[project] dependencies")
    assert not problems, "\n".join(problems)


def test_the_package_list_has_every_folder_and_maps_the_configs():
    setuptools = _pyproject()["tool"]["setuptools"]
    folders = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "sagd_jax").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert sorted(setuptools["packages"]) == sorted(folders | {"sagd_jax.configs"})
    assert setuptools["package-dir"] == {"sagd_jax.configs": "configs"}


def test_the_configs_import_nothing_but_sagd_jax():
    """Installed as ``sagd_jax.configs``, a config cannot import a sibling (``configs.x``,
    ``import quickstart``) or itself relatively: each imports the standard library and
    ``sagd_jax`` only, and none has the ``__init__.py`` that would list it as a config."""
    paths = sorted((REPO / "configs").glob("*.py"))
    assert {p.stem for p in paths} >= {"quickstart", "cifar10_ddpmpp", "fashion_mnist"}
    for path in paths:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path.name}:{node.lineno}: a relative import"
        for module, line, _ in _imports(path):
            assert module == "sagd_jax" or module in sys.stdlib_module_names, \
                f"{path.name}:{line}: imports {module}"


# --- a wheel in a fresh environment -------------------------------------------------------------


def _run(*args: str | os.PathLike[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stdout}\n" \
                                   f"{result.stderr}"
    return result


@pytest.mark.heavy
def test_the_wheel_trains_the_builtin_quickstart_outside_the_checkout(tmp_path,
                                                                      tiny_cli_overrides):
    """``pip install`` of the wheel (not editable) into a fresh venv whose dependencies are the
    test environment's (a ``.pth`` naming its site-packages: a plain path line, which does not
    run that folder's own ``.pth`` files, so its editable ``sagd_jax`` stays out), then
    ``sagd-train --config=quickstart`` from a folder outside the checkout."""
    pytest.importorskip("setuptools")  # the wheel is built without build isolation
    assert REPO not in tmp_path.resolve().parents
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(JAX_PLATFORMS="cpu", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")

    # A copy of what the wheel is built from: the build leaves nothing in the checkout.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.cfg", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, source / name)
    for name in ("sagd_jax", "configs"):
        shutil.copytree(REPO / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", tmp_path / "wheels", source, env=env, cwd=tmp_path)
    (wheel,) = (tmp_path / "wheels").glob("sagd_jax-*.whl")

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, env=env)
    python = venv / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
         "-q", wheel, env=env)
    # After the install: pip must not see the test environment's sagd-jax (nor remove it).
    site = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                env=env).stdout.strip()
    shared = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    Path(site, "test_environment.pth").write_text("".join(f"{p}\n" for p in shared))

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = ("import sagd_jax, sagd_jax.config as c; print(sagd_jax.__file__); "
             "print(c.builtin_config_dir()); print(','.join(c.builtin_configs()))")
    lines = _run(python, "-c", probe, env=env, cwd=elsewhere).stdout.splitlines()[-3:]
    package, config_dir, names = lines
    assert Path(package).is_relative_to(venv) and not Path(package).is_relative_to(REPO), lines
    assert Path(config_dir) == Path(package).parent / "configs", lines
    assert names.split(",") == sorted(p.stem for p in (REPO / "configs").glob("*.py"))

    workdir = tmp_path / "workdir"
    result = _run(venv / "bin" / "sagd-train", "--config=quickstart", f"--workdir={workdir}",
                  *tiny_cli_overrides, "--config.data.name=grf", "--config.data.num_examples=64",
                  "--config.train.num_steps=2", env=env, cwd=elsewhere, timeout=600)
    assert "finished step 2/2" in result.stdout + result.stderr, result.stderr
    assert (workdir / "checkpoints" / "2").is_dir()
    config = json.loads((workdir / "config.json").read_text())
    assert config["optim"]["ema_decay"] == 0.99  # the quickstart's (the default is 0.999)
    assert config["model"]["ch"] == 8 and config["data"]["name"] == "grf"  # the overrides
