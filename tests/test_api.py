"""The Python API (``sagd_jax.train``, ``sample``, ``evaluate``, ``Run``): the README's example
runs as written, output on by default and silenceable, bad input in one line, and the command
lines of the same names do not shadow the functions."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest

import sagd_jax


def _readme_example(repo: str) -> str:
    text = open(os.path.join(repo, "README.md")).read()
    section = text.split("\n## Python API\n", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_import_is_light_and_the_names_load_on_first_use(repo):
    code = ("import sys, sagd_jax; heavy = sorted({'jax', 'flax', 'tensorflow'} & "
            "set(sys.modules)); names = [sagd_jax.Run.__name__, sagd_jax.train.__name__]; "
            "print(heavy, names)")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True,
                         text=True, check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.stdout.strip() == "[] ['Run', 'train']"
    assert set(sagd_jax.__all__) >= {"Run", "train", "sample", "evaluate"}


def test_the_command_line_modules_do_not_shadow_the_functions():
    cli = importlib.import_module("sagd_jax.sample")
    also = importlib.import_module("sagd_jax.evaluate")
    assert callable(cli.main) and callable(also.main)
    from sagd_jax import evaluate, sample

    assert sagd_jax.sample is sample and sample.__module__ == "sagd_jax.api"
    assert sagd_jax.evaluate is evaluate and evaluate.__module__ == "sagd_jax.api"


@pytest.mark.parametrize("call, message", [
    (lambda: sagd_jax.load_config("quickstart", {"train.num_step": 3}),
     "--config.train.num_step: no such config key; closest: train.num_steps"),
    (lambda: sagd_jax.sample("nowhere", 4, speed=2), "sample: no option speed (options: "),
    (lambda: sagd_jax.evaluate("x.npz", bands="lowpass::0.2"),
     "evaluate: no option bands (options: band, filter_band, "),
])
def test_bad_input_is_one_line(call, message):
    with pytest.raises(ValueError) as err:
        call()
    assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)


@pytest.mark.slow
def test_the_readme_example_runs_and_prints_progress_unless_quiet(repo, tmp_path, capfd,
                                                                  monkeypatch, tiny_overrides):
    """The README's example with a tiny grf run in place of the quickstart's 450 steps."""
    monkeypatch.setenv("SAGD_JAX_CACHE", str(tmp_path / "cache"))
    code = _readme_example(repo)
    workdir = str(tmp_path / "api")
    replacements = {'"workdirs/api"': repr(workdir),
                    '{"train.num_steps": 450}': repr({**tiny_overrides,
                                                      "train.num_steps": 2}),
                    "steps=200": "steps=2"}
    for old, new in replacements.items():
        assert old in code, f"the README's example changed: {old} is gone"
        code = code.replace(old, new)
    exec(compile(code, "README.md", "exec"), {})
    out, err = capfd.readouterr()
    samples, ratio = out.split()
    assert samples.startswith(os.path.join(workdir, "generated")) and float(ratio) > 0
    assert "finished step 2/2" in err or "step 2/2" in err, err[-2000:]
    assert "sampling:" in err and f"results: {os.path.dirname(samples)}" in err, err[-2000:]
    results = json.load(open(os.path.join(os.path.dirname(samples), "evaluation.json")))
    assert results["num_samples"] == 64
    # Quiet: the same calls (the run finished, the set complete, the results stored) say
    # nothing; without quiet they say so.
    overrides = {**tiny_overrides, "train.num_steps": 2}
    sagd_jax.train("quickstart", workdir, overrides, quiet=True)
    assert sagd_jax.sample(workdir, num_samples=64, steps=2, quiet=True) == samples
    assert sagd_jax.evaluate(samples, quiet=True) == results
    assert capfd.readouterr().err == ""
    sagd_jax.train("quickstart", workdir, overrides)
    assert "is finished (step 2); nothing to do" in capfd.readouterr().err
