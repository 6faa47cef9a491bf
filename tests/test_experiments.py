"""Each experiment's command end to end on tiny settings, so the commands keep working."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_train import REPO

HAS_FASHION = os.path.isdir("/usr/share/datasets/fashion-mnist")


def run_experiment(tmp_path, name, *extra, folder=None):
    command = [sys.executable, "benchmarks/experiments/run.py", f"--experiment={name}", "--tiny",
               f"--root={tmp_path / 'runs'}", f"--out={tmp_path / 'docs'}", *extra]
    env = {**os.environ, "SAGD_JAX_CACHE": str(tmp_path / "cache")}  # keep ~/.cache clean
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
    out = tmp_path / "docs" / (folder or name)
    return result.stdout, json.load(open(out / "results.json")), out


def test_t0_grf_experiment_end_to_end(tmp_path):
    table, results, out = run_experiment(tmp_path, "t0_grf")
    assert [r["arm"] for r in results["rows"]] == ["full-support", "masked-band"]
    assert "| full-support | 2 |" in table
    for arm in ("full-support", "masked-band"):
        curve = results[f"score_error/{arm}"]
        assert len(curve["t"]) == len(curve["relative_score_error"]) == 6
        assert all(e > 0 for e in curve["relative_score_error"])
        assert results[f"exact_sampler_floor/{arm}"]["monte_carlo_floor"] > 0
    for figure in ("score_error.png", "spectra.png", "spectra_ratio.png", "samples.png",
                   "table.md"):
        assert (out / figure).exists()
    # A second call trains nothing and regenerates the same table.
    first = (out / "table.md").read_text()
    again, _, _ = run_experiment(tmp_path, "t0_grf")
    assert "training" not in again and (out / "table.md").read_text() == first
    refused = subprocess.run([sys.executable, "benchmarks/experiments/run.py",
                              "--experiment=t0_grf", "--tiny", "--clip_x0=1",
                              f"--root={tmp_path / 'runs'}", f"--out={tmp_path / 'docs'}"],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and "only the ddpm and ddim samplers clip" in refused.stderr
    assert not (tmp_path / "docs" / "t0_grf-clip1").exists()

    # The ODE check on the same tiny run: the three ODE solves share their prior draw.
    check = tmp_path / "ode_check"
    result = subprocess.run(
        [sys.executable, "benchmarks/experiments/ode_check.py", "--num_samples=8", "--steps=4",
         f"--workdir={tmp_path / 'runs' / 't0_grf' / 'full-support'}", f"--out={check}"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    stats = json.load(open(check / "ode_check.json"))
    assert stats["ode_heun8"]["rms_to_reference"] == 0.0
    for name in ("ode_heun2", "ddim4"):  # another solve of the same ODE: finite, not identical
        assert 0 < stats[name]["rms_to_reference"] < float("inf")
    assert "rms_to_reference" not in stats["ddpm4"]
    assert stats["data"]["pixel_std"] > 0 and (check / "ode_check.png").exists()


@pytest.mark.skipif(not HAS_FASHION, reason="Debian's dataset-fashion-mnist is not installed")
def test_every_arm_of_every_experiment_has_a_valid_config():
    result = subprocess.run([sys.executable, "benchmarks/experiments/run.py", "--check"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(": ok") == 4


@pytest.mark.skipif(not HAS_FASHION, reason="Debian's dataset-fashion-mnist is not installed")
@pytest.mark.parametrize("name", ["sagd_vs_iso_fashion", "sagd_vs_iso_patches", "omission"])
def test_other_experiments_run_their_first_arm_end_to_end(tmp_path, name):
    _, results, out = run_experiment(tmp_path, name, "--max_arms=1")
    row, data = results["rows"]  # the first arm, then its training data judged alike
    assert row["steps"] == 2 and row["spectrum_err"] >= 0
    assert 0 <= row["outside_range"] <= 1 and row["low_freq_power_ratio"] > 0
    if name != "omission":  # clean images: nothing outside [-1, 1]; their own power ratio ~1
        assert data["outside_range"] == 0 and 0.5 < data["low_freq_power_ratio"] < 2
    assert data["arm"].startswith("data: ") and "steps" not in data
    if name != "sagd_vs_iso_patches":
        assert row["fd"] > 0 and "+-" in row["kid"] and data["fd"] >= 0
    if name == "omission":  # the corrupted training data carries extra energy in the band
        assert row["band_energy_ratio"] > 0 and data["band_energy_ratio"] > 1.5
        assert row["spectrum_err_off_band"] >= 0 and data["spectrum_err_off_band"] >= 0
    else:  # every arm and the data judged again without the band-stop arm's band
        assert row["spectrum_err_off_band"] >= 0 and data["spectrum_err_off_band"] >= 0
        assert (name == "sagd_vs_iso_fashion") == ("kid_off_band" in row and "fd_off_band" in data)
    assert (out / "samples.png").exists()
    if name == "sagd_vs_iso_patches":  # an untrained arm is left out, not sampled
        table, results, _ = run_experiment(tmp_path, name, "--max_arms=2", "--skip_training")
        assert [r["arm"] for r in results["rows"]] == [row["arm"], data["arm"]]
        assert not (tmp_path / "runs" / name / "gamma0.5").exists()
        # The same arm sampled again with x0_hat clipped: its own samples and report folder.
        _, clipped, clip_out = run_experiment(tmp_path, name, "--max_arms=1", "--skip_training",
                                              "--clip_x0=0.5", folder=f"{name}-clip0.5")
        assert (clip_out / "table.md").exists() and (clip_out / "samples.png").exists()
        assert clipped["rows"][0]["arm"] == row["arm"]
        assert clipped["clip_x0"] == 0.5 and "clip_x0" not in results
        generated = tmp_path / "runs" / name / row["arm"] / "generated"
        assert sorted(os.listdir(generated)) == ["ddpm-2steps-seed0-step2",
                                                 "ddpm-clip0.5-2steps-seed0-step2"]
        with np.load(generated / "ddpm-clip0.5-2steps-seed0-step2" / "samples.npz") as f:
            assert np.abs(f["float32"]).max() <= 0.5 + 1e-6  # gamma 0: no projection


def test_seed_summary_means_and_half_ranges():
    sys.path.insert(0, os.path.join(REPO, "benchmarks", "experiments"))
    from run import markdown_table, seed_summary

    rows = [{"arm": "gamma0-seed0", "fd": 40.0, "kid_mean": 3.0, "loss": 0.05},
            {"arm": "gamma0-seed1", "fd": 50.0, "kid_mean": 2.0, "loss": 0.04},
            {"arm": "gamma0.5-seed0", "fd": 45.0, "kid_mean": 2.5, "loss": 0.04},
            {"arm": "gamma1-seed0", "fd": 30.0, "loss": 0.03},
            {"arm": "gamma1-seed1", "fd": 34.0, "kid_mean": 1.0, "loss": 0.03},
            {"arm": "data: fashion_mnist (train)", "fd": 2.0}]
    summary = seed_summary(rows)
    assert summary == [
        {"arm": "gamma0", "seeds": 2, "loss": "0.045 +- 0.005", "fd": "45 +- 5",
         "kid_mean": "2.5 +- 0.5"},
        {"arm": "gamma1", "seeds": 2, "loss": "0.03 +- 0", "fd": "32 +- 2"}]  # one KID missing
    table = markdown_table(summary, ("arm", "seeds", "fd", "kid_mean", "grf_var_err"))
    assert table.splitlines()[0] == "| arm | seeds | fd | kid_mean |"
    assert table.splitlines()[3] == "| gamma1 | 2 | 32 +- 2 | - |"
