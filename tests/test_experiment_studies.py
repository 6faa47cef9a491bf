"""The exact sampler studies of experiments/ (``sampler_bias.py``, ``time_grids.py``) against
their committed results, and every experiments/ script started as a file or as a module."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

SCRIPTS = ["run", "ode_check", "drift_check", "sampler_bias", "time_grids"]


def committed(repo: str, name: str) -> dict:
    with open(os.path.join(repo, "experiments", "results", name)) as f:
        return json.load(f)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["file", "module"])
@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_run_as_files_from_anywhere_and_as_modules(script, how, repo, tmp_path):
    """``python experiments/NAME.py`` from another folder finds the repository's packages;
    ``python -m experiments.NAME`` from the repository works too (fresh interpreters)."""
    if how == "file":
        command = [sys.executable, os.path.join(repo, "experiments", f"{script}.py"), "--help"]
    else:
        command = [sys.executable, "-m", f"experiments.{script}", "--help"]
    done = subprocess.run(command, cwd=tmp_path if how == "file" else repo,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "flags:" in done.stdout


@pytest.mark.slow
def test_sampler_bias_reproduces_its_committed_results(run_cli, repo, tmp_path):
    out = tmp_path / "bias.json"
    result = run_cli("experiments.sampler_bias", "--noise_exponent_start=0", f"--json={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    new, old = json.loads(out.read_text()), committed(repo, "sampler_bias_exponent0.json")
    assert new["command"] == f"python experiments/sampler_bias.py --noise_exponent_start=0 " \
                             f"--json={out}"
    assert (new["size"], new["noise_exponent_start"]) == (old["size"], old["noise_exponent_start"])
    assert new["worst_rel_var_err"].keys() == old["worst_rel_var_err"].keys()
    for case, row in old["worst_rel_var_err"].items():
        assert new["worst_rel_var_err"][case].keys() == row.keys()
        for gamma, value in row.items():  # as printed (4 decimals), and closer
            assert new["worst_rel_var_err"][case][gamma] == pytest.approx(value, rel=1e-3), (
                case, gamma)


def test_time_grids_committed_rows_cover_the_study_and_one_recomputes(repo):
    """The committed table has one row per (noise, sampler, grid) of the script; one row
    computed again (DDIM on the uniform and snr grids at gamma 1) matches it."""
    from experiments import time_grids as study
    from sagd_jax.demo import demo_data
    from sagd_jax.gaussian import sampler_output_spectrum
    from sagd_jax.process import DiffusionProcess
    from sagd_jax.schedules import VPSDE
    from sagd_jax.spectral import SpectralCovariance
    from sagd_jax.time_grids import GRIDS, make_grid

    old = committed(repo, "time_grids.json")
    assert old["nfe"] == list(study.NFES) and old["command"].startswith("python ")
    keys = [(r["noise"], r["sampler"], r["grid"]) for r in old["rows"]]
    assert keys == [(label, sampler, grid) for label, _, _ in study.NOISES
                    for sampler in study.SAMPLERS for grid in GRIDS]
    size = old["size"]
    data = demo_data(size)
    c = np.asarray(data.spectrum, np.float64)
    process = DiffusionProcess(cov=SpectralCovariance.create(size, size, gamma=1.0),
                               schedule=VPSDE())
    rows = {(r["noise"], r["sampler"], r["grid"]): r for r in old["rows"]}
    for grid in ("uniform", "snr"):
        steps = study.steps_for("ddim", 20)
        var = sampler_output_spectrum(process, data, "ddim", steps,
                                      times=make_grid(process, steps, grid, c))
        assert float(np.abs(var / c - 1).max()) == pytest.approx(
            rows[("gamma 1", "ddim", grid)]["nfe20"], rel=1e-3)
