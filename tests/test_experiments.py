"""Each experiment's command end to end on tiny settings, so the commands keep working."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

DRIVER = "experiments.run"
# The committed reports: experiments/results/<experiment>[-clipC]/ with a results.json.
RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "experiments", "results")
REPORTS = sorted(name for name in os.listdir(RESULTS)
                 if os.path.exists(os.path.join(RESULTS, name, "results.json")))


@pytest.fixture
def run_experiment(run_cli, tmp_path, monkeypatch):
    """``run_experiment(name, *extra, folder=None)``: the driver's ``main`` in this process on
    ``--tiny`` settings under ``tmp_path`` (the arms train in subprocesses); returns its
    ``CliResult``, ``results.json`` and report folder."""
    monkeypatch.setenv("SAGD_JAX_CACHE", str(tmp_path / "cache"))  # keep ~/.cache clean

    def call(name, *extra, folder=None):
        result = run_cli(DRIVER, f"--experiment={name}", "--tiny", f"--root={tmp_path / 'runs'}",
                         f"--out={tmp_path / 'docs'}", *extra)
        assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
        out = tmp_path / "docs" / (folder or name)
        return result, json.loads((out / "results.json").read_text()), out

    return call


@pytest.mark.heavy
def test_t0_grf_experiment_end_to_end(run_experiment, run_cli, tmp_path):
    refused = run_cli(DRIVER, "--experiment=t0_grf", "--tiny", "--arms=masked-band,nope",
                      f"--root={tmp_path / 'runs'}", f"--out={tmp_path / 'docs'}")
    assert refused.returncode == 2 and "--arms: experiment t0_grf has no arm nope" in \
        refused.stderr and not (tmp_path / "runs").exists()
    # --arms trains only the named arm, and the report covers the arms that have finished.
    only, results, _ = run_experiment("t0_grf", "--arms=masked-band")
    assert "training masked-band" in only.stderr and "full-support" not in only.stderr
    assert [r["arm"] for r in results["rows"]] == ["masked-band"]
    first, results, out = run_experiment("t0_grf")
    assert "training full-support" in first.stderr and "training masked-band" not in first.stderr
    assert [r["arm"] for r in results["rows"]] == ["full-support", "masked-band"]
    assert "| full-support | 2 |" in first.stdout
    for arm in ("full-support", "masked-band"):
        curve = results[f"score_error/{arm}"]
        assert len(curve["t"]) == len(curve["relative_score_error"]) == 6
        assert all(e > 0 for e in curve["relative_score_error"])
        assert results[f"exact_sampler_floor/{arm}"]["monte_carlo_floor"] > 0
    for figure in ("score_error.png", "spectra.png", "spectra_ratio.png", "samples.png",
                   "table.md"):
        assert (out / figure).exists()
    # A second call trains nothing and regenerates the same table.
    table = (out / "table.md").read_text()
    assert table in first.stdout
    again, _, _ = run_experiment("t0_grf")
    assert "training" not in again.stdout + again.stderr
    assert (out / "table.md").read_text() == table
    # --report_only: the same table from results.json alone (left as it was), grids redrawn.
    saved = (out / "results.json").read_bytes()
    (out / "samples.png").unlink()
    only = run_cli(DRIVER, "--experiment=t0_grf", "--report_only", f"--out={tmp_path / 'docs'}")
    assert only.returncode == 0, only.stderr[-3000:]
    assert table in only.stdout and "training" not in only.stdout + only.stderr
    assert (out / "table.md").read_text() == table and (out / "results.json").read_bytes() == saved
    assert (out / "samples.png").exists() and (out / "score_error.png").exists()
    refused = run_cli(DRIVER, "--experiment=t0_grf", "--tiny", "--clip_x0=1",
                      f"--root={tmp_path / 'runs'}", f"--out={tmp_path / 'docs'}")
    assert refused.returncode == 2 and "only the ddpm and ddim samplers clip" in refused.stderr
    assert not (tmp_path / "docs" / "t0_grf-clip1").exists()

    # The ODE check on the same tiny run: the three ODE solves share their prior draw.
    check = tmp_path / "ode_check"
    result = run_cli("experiments.ode_check", "--num_samples=8", "--steps=4",
                     f"--workdir={tmp_path / 'runs' / 't0_grf' / 'full-support'}",
                     f"--out={check}")
    assert result.returncode == 0, result.stderr[-3000:]
    stats = json.loads((check / "ode_check.json").read_text())
    assert stats["ode_heun8"]["rms_to_reference"] == 0.0
    for name in ("ode_heun2", "ddim4"):  # another solve of the same ODE: finite, not identical
        assert 0 < stats[name]["rms_to_reference"] < float("inf")
    assert "rms_to_reference" not in stats["ddpm4"]
    assert stats["data"]["pixel_std"] > 0 and (check / "ode_check.png").exists()

    # The drift check on the same run: the exact Gaussian model stays on the forward marginal
    # as the exact recursion for a Gaussian of the measured spectrum says (both ~1).
    workdir = tmp_path / "runs" / "t0_grf" / "full-support"
    for model in ("exact", "ema"):
        result = run_cli("experiments.drift_check", f"--workdir={workdir}",
                         f"--out={tmp_path / f'drift_{model}'}", f"--model={model}",
                         "--samplers=ddpm,ode_heun", "--steps=20", "--num_samples=256",
                         "--every=5")
        assert result.returncode == 0, result.stderr[-3000:]
        drift = json.loads((tmp_path / f"drift_{model}" / "drift_check.json").read_text())
        assert drift["times"] == sorted(drift["times"], reverse=True) and len(
            drift["times"]) == 4
        for row in drift["samplers"].values():
            measured, gaussian = (np.array(row[k], float) for k in ("ratio", "gaussian_ratio"))
            assert measured.shape == gaussian.shape == (4, 16)
            ok = np.isfinite(gaussian)
            assert ok.sum() > 20 and np.all(measured[ok] > 0)
            if model == "exact":
                assert np.abs(np.log(measured[ok] / gaussian[ok])).max() < 0.25
    # The Gaussian floor column: a Gaussian of the run's measured spectrum, sampled exactly,
    # gives the floor's spectrum error up to Monte Carlo; more steps lower it.
    import jax
    import jax.numpy as jnp

    from experiments.columns import gaussian_floor
    from sagd_jax.gaussian import GaussianData
    from sagd_jax.metrics.spectra import power_spectrum, radial_average, spectrum_log_error
    from sagd_jax.run import Run
    from sagd_jax.samplers import get_sampler

    run = Run.from_workdir(str(workdir))
    floor = gaussian_floor(run, "ddpm", 10)["gaussian_floor"]
    assert gaussian_floor(run, "ddpm", 200)["gaussian_floor"] < floor
    c = np.asarray(run.power_spectrum(), np.float64)
    h, w, ch = run.image_shape
    gaussian = GaussianData(spectrum=jnp.asarray(c, jnp.float32), height=h, width=w)
    x = get_sampler("ddpm")(run.process, gaussian.eps_fn(run.process), jax.random.key(0),
                            (4096, h, w, ch), 10)
    measured = spectrum_log_error(radial_average(power_spectrum(np.asarray(x)), w)[1],
                                  radial_average(c, w)[1])
    assert floor > 0.05 and abs(measured - floor) < 0.1 * floor, (measured, floor)
    # --gaussian_floors: the same number from the arm's config alone (t0_grf samples with Heun)
    floors = run_cli(DRIVER, "--experiment=t0_grf", "--tiny", "--gaussian_floors")
    heun = gaussian_floor(run, "ode_heun", 2)["gaussian_floor"]
    assert f"full-support: gaussian_floor {heun:.4g} (ode_heun 2)" in floors.stdout
    report = tmp_path / "drift_exact" / "drift_check.json"
    before = report.read_bytes()
    again = run_cli("experiments.drift_check", f"--workdir={workdir}",
                    f"--out={tmp_path / 'drift_exact'}", "--model=exact", "--steps=4")
    assert again.returncode == 2 and "exists; results are never overwritten" in again.stderr
    assert report.read_bytes() == before
    refused = run_cli("experiments.drift_check", f"--workdir={workdir}",
                      f"--out={tmp_path / 'drift_bad'}", "--samplers=ddpm,nope")
    assert refused.returncode == 2 and "nope" in refused.stderr
    assert not (tmp_path / "drift_bad").exists()


@pytest.mark.slow
@pytest.mark.needs_fashion_mnist
@pytest.mark.parametrize("name", ["sagd_vs_iso_fashion", "sagd_vs_iso_patches", "omission",
                                  "t0_grf", "fitted_patches", "fitted_fashion",
                                  "ode_params_fashion", "ode_params_patches",
                                  "guidance_fashion", "posthoc_fashion", "dit_fashion"])
def test_every_arm_of_every_cpu_experiment_has_a_valid_config(run_cli, name):
    # (the FID experiments need their TFDS data: tests/test_experiments_fid.py checks them)
    result = run_cli(DRIVER, "--check", f"--experiment={name}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == f"{name}: ok\n"


@pytest.mark.heavy
def test_parameterization_experiment_samples_each_arm_with_every_sampler(run_experiment):
    _, results, _ = run_experiment("ode_params_patches", "--max_arms=1")
    names = [r["arm"] for r in results["rows"]]
    assert names[:3] == ["eps", "eps (ddim 100)", "eps (ode_heun 50)"]
    for row in results["rows"][:3]:
        assert row["spectrum_err"] >= 0 and 0 <= row["outside_range"] <= 1
        assert row["gaussian_floor"] > 0  # each sampler's own floor (2 steps: far from 0)
    assert len({row["gaussian_floor"] for row in results["rows"][:3]}) == 3


@pytest.mark.heavy
@pytest.mark.needs_fashion_mnist
@pytest.mark.parametrize("name", ["sagd_vs_iso_fashion", "sagd_vs_iso_patches", "omission"])
def test_other_experiments_run_their_first_arm_end_to_end(run_experiment, tmp_path, name):
    _, results, out = run_experiment(name, "--max_arms=1")
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
        _, results, _ = run_experiment(name, "--max_arms=2", "--skip_training")
        assert [r["arm"] for r in results["rows"]] == [row["arm"], data["arm"]]
        assert not (tmp_path / "runs" / name / "gamma0.5").exists()
        # The same arm sampled again with x0_hat clipped: its own samples and report folder.
        _, clipped, clip_out = run_experiment(name, "--max_arms=1", "--skip_training",
                                              "--clip_x0=0.5", folder=f"{name}-clip0.5")
        assert (clip_out / "table.md").exists() and (clip_out / "samples.png").exists()
        assert clipped["rows"][0]["arm"] == row["arm"]
        assert clipped["clip_x0"] == 0.5 and "clip_x0" not in results
        generated = tmp_path / "runs" / name / row["arm"] / "generated"
        assert sorted(os.listdir(generated)) == ["ddpm-2steps-seed0-step2",
                                                 "ddpm-clip0.5-2steps-seed0-step2"]
        with np.load(generated / "ddpm-clip0.5-2steps-seed0-step2" / "samples.npz") as f:
            assert np.abs(f["float32"]).max() <= 0.5 + 1e-6  # gamma 0: no projection


@pytest.mark.heavy
@pytest.mark.needs_fashion_mnist
def test_guidance_experiment_samples_each_arm_again_per_guidance_setting(
        run_experiment, monkeypatch, tmp_path):
    """guidance_fashion's first arm with one of its guidance rows (the band-shaped one; the
    whole experiment samples 28 sets, minutes even on tiny settings): the unguided row and
    the guided one, each from its own sample folder, with the classifier's accuracy on the
    samples under their own labels, and the data's under theirs."""
    import dataclasses

    from experiments import catalog

    exp = catalog.EXPERIMENTS["guidance_fashion"]
    band = exp.guidance[4]
    assert band == ("W=3, rho<=0.25", {"guidance": 3.0, "guidance_band": "lowpass::0.25"})
    monkeypatch.setitem(catalog.EXPERIMENTS, "guidance_fashion",
                        dataclasses.replace(exp, arms=exp.arms[1:2], guidance=(band,)))
    result, results, out = run_experiment("guidance_fashion")
    own, guided, data = results["rows"]
    assert [own["arm"], guided["arm"], data["arm"]] == [
        "gamma1-seed0", "gamma1-seed0 (W=3, rho<=0.25)", "data: fashion_mnist_cond (train)"]
    assert (own["guidance"], guided["guidance"], guided["guided_of"]) == (
        "W=1", "W=3, rho<=0.25", "gamma1-seed0")
    for row in (own, guided, data):
        assert 0 <= row["class_accuracy"] <= 1 and row["fd"] >= 0 and row["spectrum_err"] >= 0
    assert guided["steps"] == 2 and 0 <= guided["outside_range"] <= 1
    generated = tmp_path / "runs" / "guidance_fashion" / "gamma1-seed0" / "generated"
    assert sorted(os.listdir(generated)) == ["ddpm-2steps-seed0-step2",
                                             "ddpm-2steps-seed0-step2-w3-band-lowpass__0.25"]
    with np.load(generated / "ddpm-2steps-seed0-step2-w3-band-lowpass__0.25" /
                 "samples.npz") as f:
        assert list(f["arr_1"]) == [j % 10 for j in range(16)]  # balanced labels
    header = (out / "table.md").read_text().splitlines()[0]
    assert header.endswith("| fd | kid | class_accuracy |") and header in result.stdout
    for figure in ("samples.png", "samples_guidance.png", "spectra_guidance.png"):
        assert (out / figure).exists()


def test_guidance_experiment_is_data():
    """guidance_fashion: two seeds of gamma 0 and 1, class-conditional on section 1's recipe,
    each arm also sampled with W = 1.5, 2, 3, 5 in every frequency bin, then W = 3 on the low
    band only and on the complementary high band only, each setting into its own folder."""
    from experiments.catalog import EXPERIMENTS, load_arm_config
    from sagd_jax.guidance import band_weight
    from sagd_jax.sampling import SampleRequest

    exp = EXPERIMENTS["guidance_fashion"]
    assert [a.name for a in exp.arms] == ["gamma0-seed0", "gamma1-seed0", "gamma0-seed1",
                                          "gamma1-seed1"]
    assert (exp.num_samples, exp.sampler, exp.steps, exp.time_grid, exp.data_rows) == (
        500, "ddpm", 50, "uniform", True)
    config = load_arm_config(exp.arms[3], [])
    assert (config.data.num_classes, config.model.num_classes, config.train.label_dropout,
            config.train.guidance, config.noise.gamma, config.seed) == (10, 10, 0.1, 1.0, 1, 1)
    plain = load_arm_config(EXPERIMENTS["sagd_vs_iso_fashion"].arms[0], [])
    for key in ("train.num_steps", "train.batch_size", "model.ch", "optim.learning_rate"):
        section, name = key.split(".")
        assert config[section][name] == plain[section][name]  # section 1's recipe
    assert [label for label, _ in exp.guidance] == [
        "W=1.5", "W=2", "W=3", "W=5", "W=3, rho<=0.25"]
    requests = [SampleRequest(num_samples=exp.num_samples, sampler=exp.sampler,
                              steps=exp.steps, **options) for _, options in exp.guidance]
    for request in requests:
        request.validate(device_count=1)
    unguided = SampleRequest(num_samples=exp.num_samples, sampler=exp.sampler, steps=exp.steps)
    assert len({r.default_dirname(900) for r in [unguided, *requests]}) == 6
    # The band row: W = 3 inside rho <= 0.25, 1 outside.
    low = band_weight(exp.guidance[4][1]["guidance_band"], 3.0, 28, 28)
    assert set(np.unique(low)) == {1.0, 3.0}


def test_posthoc_experiment_is_data():
    """posthoc_fashion: gamma 0 and 1, each with today's loss and min-SNR weighting, two seeds,
    on section 1's recipe with snapshots every 50 steps; a row per post-hoc std, each a set
    of its own."""
    from experiments.catalog import EXPERIMENTS, load_arm_config
    from sagd_jax.sampling import SampleRequest

    exp = EXPERIMENTS["posthoc_fashion"]
    assert [a.name for a in exp.arms] == [
        f"gamma{g}-{w}-seed{s}" for s in (0, 1) for w in ("none", "min_snr") for g in (0, 1)]
    assert exp.posthoc == (0.03, 0.05, 0.07, 0.1, 0.15, 0.2) and len(exp.posthoc) >= 5
    config = load_arm_config(exp.arms[7], [])
    assert (config.noise.gamma, config.diffusion.loss_weighting, config.ema.snapshot_every,
            config.seed) == (1, "min_snr", 50, 1)
    plain = load_arm_config(EXPERIMENTS["sagd_vs_iso_fashion"].arms[0], [])
    for key in ("train.num_steps", "train.batch_size", "model.ch", "optim.learning_rate",
                "optim.ema_decay"):
        section, name = key.split(".")
        assert config[section][name] == plain[section][name]  # section 1's recipe
    requests = [SampleRequest(num_samples=500, sampler=exp.sampler, steps=exp.steps,
                              params=f"posthoc:{std:g}") for std in exp.posthoc]
    names = {r.default_dirname(900) for r in requests}
    assert len(names) == len(exp.posthoc) and all("-posthoc0." in n for n in names)


def test_dit_experiment_is_data():
    """dit_fashion: section 1's recipe, budget and sampling with a DiT in place of the U-Net,
    gamma 0 and 1, seed 0 each (so its rows compare with section 1a's seed-0 arms)."""
    from experiments.catalog import EXPERIMENTS, load_arm_config

    exp, plain_exp = EXPERIMENTS["dit_fashion"], EXPERIMENTS["sagd_vs_iso_fashion"]
    assert [a.name for a in exp.arms] == ["gamma0", "gamma1"]
    assert (exp.num_samples, exp.sampler, exp.steps) == (
        plain_exp.num_samples, plain_exp.sampler, plain_exp.steps)
    plain = load_arm_config(plain_exp.arms[0], [])
    for arm, gamma in zip(exp.arms, (0, 1), strict=True):
        config = load_arm_config(arm, [])
        assert (config.model.name, config.model.patch_size, config.noise.gamma,
                config.seed) == ("dit", 2, gamma, 0)
        for key in ("train.num_steps", "train.batch_size", "optim.learning_rate",
                    "optim.ema_decay", "noise.rho0"):
            section, name = key.split(".")
            assert config[section][name] == plain[section][name]  # section 1's recipe


@pytest.mark.heavy
@pytest.mark.needs_fashion_mnist
def test_posthoc_experiment_samples_each_arm_again_per_std(run_experiment, monkeypatch,
                                                            tmp_path):
    """posthoc_fashion's first arm with one std (tiny: 8 steps, 4 snapshots): the arm's own
    row (optim.ema_decay's EMA) and the post-hoc row, each from its own samples."""
    import dataclasses

    from experiments import catalog

    exp = catalog.EXPERIMENTS["posthoc_fashion"]
    monkeypatch.setitem(catalog.EXPERIMENTS, "posthoc_fashion",
                        dataclasses.replace(exp, arms=exp.arms[:1], posthoc=(0.07,)))
    _, results, _ = run_experiment("posthoc_fashion")
    own, posthoc_row, _ = results["rows"]
    assert [own["arm"], posthoc_row["arm"]] == ["gamma0-none-seed0",
                                                "gamma0-none-seed0 (EMA std 0.07)"]
    assert (posthoc_row["posthoc_std"], posthoc_row["posthoc_of"]) == (0.07, own["arm"])
    for row in (own, posthoc_row):
        assert row["steps"] == 8 and row["fd"] >= 0 and row["spectrum_err"] >= 0
    generated = tmp_path / "runs" / "posthoc_fashion" / "gamma0-none-seed0" / "generated"
    assert sorted(os.listdir(generated)) == ["ddpm-2steps-seed0-step8",
                                             "ddpm-2steps-seed0-step8-posthoc0.07"]


def test_guided_rows_in_the_report(tmp_path):
    """Guided rows (``Experiment.guidance``) in the report: ``class_accuracy`` in the table
    and the seed summary (``<arm>-seed<k> (<setting>)`` rows summarised per setting), the
    guided grids beside each arm's own, and guided over unguided power per radial bin."""
    from PIL import Image

    from experiments.catalog import EXPERIMENTS
    from experiments.columns import summary_row
    from experiments.report import guidance_ratios, report

    def evaluation(power, accuracy):
        return {"spectrum": {"rho": [0.1, 0.5, 1.0], "samples": power,
                             "reference": [1.0, 1.0, 1.0], "mean_abs_log_ratio": 0.1},
                "fd": 10.0, "kid_blocks": {"mean": 1.0, "sem": 0.1},
                "class_accuracy": accuracy}

    rows = []
    for seed, power, accuracy in ((0, 2.0, 0.5), (1, 8.0, 0.6)):
        arm = f"gamma1-seed{seed}"
        grid = str(tmp_path / f"{arm}.png")
        Image.new("L", (20, 20), 128).save(grid)
        rows += [summary_row(arm, evaluation([1.0, 1.0, 1.0], accuracy))
                 | {"guidance": "W=1", "grid": grid},
                 summary_row(f"{arm} (W=3)", evaluation([power, 1.0, 1.0], accuracy + 0.25))
                 | {"guidance": "W=3", "guided_of": arm, "guided_grid": grid}]
    rows.append(summary_row("data: fashion_mnist_cond (train)",
                            evaluation([1.0, 1.0, 1.0], 0.875)))
    out = tmp_path / "out"
    table = report("guidance_fashion", EXPERIMENTS["guidance_fashion"], rows, str(out), {})
    lines = table.splitlines()
    assert lines[0] == "| arm | spectrum_err | low_freq_power_ratio | fd | kid | class_accuracy |"
    assert lines[3] == "| gamma1-seed0 (W=3) | 0.1 | 2 | 10 | 1 +- 0.1 | 0.75 |"
    assert lines[6] == "| data: fashion_mnist_cond (train) | 0.1 | 1 | 10 | 1 +- 0.1 | 0.875 |"
    assert "| gamma1 (W=3) | 2 | 0.1 +- 0 | 10 +- 0 | 1 +- 0 | 0.8 +- 0.05 |" in lines
    ratios = guidance_ratios(rows)  # geometric mean over the seeds: sqrt(2 * 8) = 4
    assert list(ratios) == ["gamma1 (W=3)"]
    np.testing.assert_allclose(ratios["gamma1 (W=3)"], [4.0, 1.0, 1.0])
    with Image.open(out / "samples_guidance.png") as figure:  # a line per arm: own, guided
        assert figure.size == (20 + 8 + 20, 2 * (14 + 20) + 8)
    assert (out / "samples.png").exists() and (out / "spectra_guidance.png").exists()


def test_fitted_arms_report_what_their_fit_chose(tmp_path, tiny_config):
    """The fitted experiments' arms (noise.fit against hand-set gamma) and their table column:
    the fitted gamma and rho0 of a power-law fit, the fit's summary otherwise, nothing for a
    hand-set arm."""
    from experiments.catalog import EXPERIMENTS
    from experiments.columns import fitted_column
    from sagd_jax.workdir import Workdir

    arms = {a.name: dict(a.overrides) for a in EXPERIMENTS["fitted_patches"].arms}
    assert sorted(arms) == ["fit-powerlaw-seed0", "fit-powerlaw-seed1", "fit-spectrum1-seed0",
                            "gamma0-seed0", "gamma1-seed0", "gamma2-seed0", "gamma2-seed1"]
    assert arms["fit-spectrum1-seed0"]["noise.fit_exponent"] == "1"
    assert [a.variant for a in EXPERIMENTS["fitted_fashion"].arms] == ["fashion_mnist"] * 7
    for name, noise, expected in (
            ("hand", {}, {}),
            ("power", {"noise.fit": "powerlaw", "noise.gamma": 3.2187, "noise.rho0": 0.07166,
                       "noise.fit_result": "powerlaw gamma=3.219 rho0=0.07166 on 1000 images"},
             {"fitted": "gamma 3.22, rho0 0.0717"}),
            ("profile", {"noise.fit": "spectrum", "noise.fit_result":
                         "spectrum^1 on 1000 images (23 knots, w from 0.02 to 75)"},
             {"fitted": "spectrum^1"})):
        Workdir(str(tmp_path / name)).prepare(tiny_config(**noise))
        assert fitted_column(str(tmp_path / name)) == expected


def test_experiments_are_data():
    """What sets the experiments apart is in their ``Experiment`` fields, not in their names."""
    from experiments.catalog import BAND, EXPERIMENTS

    assert EXPERIMENTS["omission"].band == BAND
    assert [n for n, e in EXPERIMENTS.items() if e.band] == ["omission"]
    grf = EXPERIMENTS["t0_grf"]
    assert grf.score_error_curve and grf.exact_floor and not grf.data_rows
    others = [e for n, e in EXPERIMENTS.items() if n != "t0_grf"]
    assert all(e.data_rows and not e.score_error_curve and not e.exact_floor for e in others)
    # A seed-1 arm is its seed-0 arm with the seed overridden, nothing else.
    arms = {a.name: a for a in EXPERIMENTS["ode_params_fashion"].arms}
    assert sorted(arms) == ["edm", "eps", "eps-seed1", "v", "v-seed1"]
    for name in ("eps", "v"):
        seeded = arms[f"{name}-seed1"]
        assert seeded.overrides == (*arms[name].overrides, ("seed", "1"))
        assert (seeded.variant, seeded.config) == (arms[name].variant, arms[name].config)


def test_seed_summary_means_and_half_ranges():
    from experiments.report import seed_summary
    from sagd_jax.console import table

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
    # The driver's table.md: console.table in Markdown, 3 significant digits.
    markdown = table(summary, ("arm", "seeds", "fd", "kid_mean", "grf_var_err"), digits=3,
                     markdown=True)
    assert markdown.splitlines()[0] == "| arm | seeds | fd | kid_mean |"
    assert markdown.splitlines()[3] == "| gamma1 | 2 | 32 +- 2 | - |"
    numbers = table([{"arm": "a", "fd": 12.3456, "wall_s": float("nan")}],
                    ("arm", "fd", "wall_s"), digits=3, markdown=True)
    assert numbers.splitlines()[2] == "| a | 12.3 | - |"


@pytest.mark.slow
@pytest.mark.parametrize("folder", REPORTS)
def test_report_only_regenerates_each_committed_table_byte_for_byte(run_cli, tmp_path, folder):
    """``--report_only`` on a copy of a committed ``results.json``: the committed ``table.md``
    again, byte for byte (the report is a function of results.json alone)."""
    name, _, clip = folder.partition("-clip")
    committed = os.path.join(RESULTS, folder)
    copy = tmp_path / folder
    copy.mkdir()
    shutil.copy(os.path.join(committed, "results.json"), copy)
    result = run_cli(DRIVER, f"--experiment={name}", "--report_only", f"--out={tmp_path}",
                     *([f"--clip_x0={clip}"] if clip else []))
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(committed, "table.md"), "rb") as f:
        assert (copy / "table.md").read_bytes() == f.read()
    with open(os.path.join(committed, "results.json"), "rb") as f:
        assert (copy / "results.json").read_bytes() == f.read()
    assert (copy / "spectra.png").exists()


@pytest.mark.parametrize("content, message", [
    ('{"rows": [', "not JSON (JSONDecodeError: Expecting value: line 1 column 11 (char 10))"),
    ('{"rows": [{"arm": 1}]}', "not a report of this driver"),
    ('[1, 2]', "not a report of this driver"),
], ids=["torn", "arm-not-a-name", "not-an-object"])
def test_report_only_refuses_a_damaged_results_json_in_one_line(run_cli, tmp_path, content,
                                                                  message):
    (tmp_path / "omission").mkdir()
    path = tmp_path / "omission" / "results.json"
    path.write_text(content)
    result = run_cli(DRIVER, "--experiment=omission", "--report_only", f"--out={tmp_path}")
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: --report_only: {path}: {message}"), line
    assert os.listdir(tmp_path / "omission") == ["results.json"]
    assert path.read_text() == content


def test_report_only_needs_results_json_and_skips_missing_grids(run_cli, tmp_path):
    refused = run_cli(DRIVER, "--experiment=omission", "--report_only", f"--out={tmp_path}")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip() == (f"error: --report_only: {tmp_path}/omission/results.json: "
                                      "no such file (run the experiment first)")
    assert os.listdir(tmp_path) == []
    with open(os.path.join(RESULTS, "omission", "results.json")) as f:
        saved = json.load(f)
    for row in saved["rows"]:
        if row.get("grid"):
            row["grid"] = str(tmp_path / "gone" / row["arm"] / "grid.png")
    (tmp_path / "omission").mkdir()
    (tmp_path / "omission" / "results.json").write_text(json.dumps(saved))
    result = run_cli(DRIVER, "--experiment=omission", "--report_only", f"--out={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "omission")) == [
        "results.json", "spectra.png", "spectra_ratio.png", "table.md"]  # no samples.png
