"""The package's layers (docs/architecture.md): no module imports from a layer above its own.

The table in docs/architecture.md is the one statement of the layers; this test parses it and
every import of every module under ``sagd_jax/`` (module level and inside functions), so the
document and the code cannot drift apart.
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "sagd_jax"
OUTSIDE = ("benchmarks", "experiments", "launch", "configs", "tests")


def layers() -> dict[str, tuple[int, str]]:
    """Top-level module or package name -> (layer number, layer name), from the doc's table."""
    table = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        match = re.match(r"\|\s*(\d+)\s+(\w+)\s*\|([^|]*)\|", line)
        if not match:
            continue
        number, name = int(match.group(1)), match.group(2)
        for module in re.findall(r"`([\w]+)/?`", match.group(3)):
            assert module not in table, f"{module} is placed twice in docs/architecture.md"
            table[module] = (number, name)
    return table


def top_name(path: pathlib.Path) -> str:
    """``sagd_jax/data/pipeline.py`` -> ``data``; ``sagd_jax/run.py`` -> ``run``."""
    parts = path.relative_to(ROOT / PACKAGE).parts
    return parts[0] if len(parts) > 1 else path.stem


def imported(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in ``path``; ``from sagd_jax import x`` is the
    module ``sagd_jax.x`` when it is one, else the package itself."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                as_module = ROOT.joinpath(*candidate.split("."))
                is_module = as_module.with_suffix(".py").exists() or as_module.is_dir()
                found.append((node.lineno, candidate if is_module else base))
    return list(dict.fromkeys(found))  # ``from m import a, b``: m once


def target_name(module: str) -> str | None:
    """The layer key of an imported module of the package (``__init__`` for the package
    itself), ``None`` for anything else."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def modules() -> list[pathlib.Path]:
    return sorted((ROOT / PACKAGE).rglob("*.py"))


def test_the_table_places_every_module_and_names_only_modules():
    table = layers()
    assert len({number for number, _ in table.values()}) >= 5, "no layer table found"
    present = {top_name(p) for p in modules()}
    assert not present - table.keys(), (f"modules with no layer in docs/architecture.md: "
                                        f"{sorted(present - table.keys())}")
    assert not table.keys() - present, (f"docs/architecture.md names what is not a module: "
                                        f"{sorted(table.keys() - present)}")


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_from_a_layer_above_its_own(path):
    table = layers()
    own, own_name = table[top_name(path)]
    upward = []
    for line, module in imported(path):
        if module.split(".")[0] in OUTSIDE:
            upward.append(f"line {line}: {module} (outside the package)")
            continue
        name = target_name(module)
        if name is None:
            continue
        assert name in table, f"{path}:{line} imports {module}, which has no layer"
        layer, layer_name = table[name]
        if layer > own:
            upward.append(f"line {line}: {module} (layer {layer} {layer_name})")
    assert not upward, (f"{path.relative_to(ROOT)} (layer {own} {own_name}) imports from above: "
                        + "; ".join(upward))


def test_the_parser_sees_imports_inside_functions_and_relative_ones(tmp_path, monkeypatch):
    """The checker itself: an import inside a function and a relative import are both found
    (so a lazy upward import cannot hide)."""
    source = ("from sagd_jax import files\n"
              "def f():\n    from sagd_jax.run import Run\n"
              "from . import rng\n")
    path = ROOT / PACKAGE / "_layers_probe.py"
    monkeypatch.setattr(pathlib.Path, "read_text", lambda self: source)
    found = {module for _, module in imported(path)}
    assert found == {"sagd_jax.files", "sagd_jax.run", "sagd_jax.rng"}
