"""Sampler time grids (``sagd_jax.time_grids``): closed forms, invariances, and every sampler on
a non-uniform grid against the exact model's prediction for that grid."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from sagd_jax.demo import demo_data
from sagd_jax.frequency_schedule import FrequencySchedule
from sagd_jax.gaussian import sampler_output_spectrum
from sagd_jax.metrics.spectra import power_spectrum
from sagd_jax.process import DiffusionProcess
from sagd_jax.samplers import get_sampler
from sagd_jax.schedules import VE, VPSDE, Cosine, DDPMLinear, time_grid
from sagd_jax.spectral import SpectralCovariance
from sagd_jax.time_grids import check_times, make_grid

H = W = 8


def process_of(gamma=1.0, bands="", schedule=None, **shaping) -> DiffusionProcess:
    cov = SpectralCovariance.create(H, W, gamma=gamma, bands=bands)
    process = DiffusionProcess(cov=cov, schedule=schedule or VPSDE())
    if shaping:
        process = process.replace(shaping=FrequencySchedule.create(cov, **shaping))
    return process


def karras(r_max: float, r_min: float, steps: int, rho: float = 7.0) -> np.ndarray:
    u = np.linspace(0, 1, steps)
    return (r_max ** (1 / rho) + u * (r_min ** (1 / rho) - r_max ** (1 / rho))) ** rho


@pytest.mark.parametrize("schedule", [VPSDE(), VE(sigma_max=80.0, sigma_min=0.002)],
                         ids=lambda s: s.name)
def test_edm_grid_has_karras_noise_levels(schedule):
    process = process_of(schedule=schedule)
    times = make_grid(process, 18, "edm")
    alpha, sigma = (np.asarray(v, np.float64) for v in schedule.alpha_sigma(times))
    ratio = sigma / alpha
    np.testing.assert_allclose(ratio, karras(ratio[0], ratio[-1], 18), rtol=2e-3)
    assert times[0] == 1.0 and times[-1] == schedule.t_min and np.all(np.diff(times) < 0)
    np.testing.assert_array_equal(make_grid(process, 18, "uniform"), time_grid(schedule, 18))


@pytest.mark.parametrize("gamma, bands", [(0.0, ""), (2.0, ""), (1.0, "bandstop:0.3:0.6")])
def test_snr_grid_is_edm_for_a_constant_sigma_and_differs_per_frequency(gamma, bands):
    """With a constant Sigma every bin's SNR is ``(alpha/sigma)^2 c_k / w_k``: the per-bin EDM
    coordinates coincide and the snr grid is EDM's, whatever the data spectrum; a
    per-frequency schedule moves the bins apart."""
    c = np.asarray(demo_data(H).spectrum, np.float64)
    process = process_of(gamma, bands)
    np.testing.assert_allclose(make_grid(process, 25, "snr", c), make_grid(process, 25, "edm"),
                               atol=1e-6)
    shaped = process_of(gamma, bands, noise_exponent_start=0.0, blur_sigma_max=1.0)
    grid = make_grid(shaped, 25, "snr", c)
    assert np.abs(grid - make_grid(shaped, 25, "edm")).max() > 0.01
    assert grid[0] == 1.0 and grid[-1] == shaped.schedule.t_min and np.all(np.diff(grid) < 0)


@pytest.mark.parametrize("schedule", [DDPMLinear(), Cosine()], ids=lambda s: s.name)
@pytest.mark.parametrize("grid", ["edm", "snr", "logsnr"])
def test_discrete_schedules_get_distinct_integer_times(schedule, grid):
    c = np.asarray(demo_data(H).spectrum, np.float64)
    for steps in (2, 10, 200, 1000):
        times = make_grid(process_of(schedule=schedule), steps, grid, c)
        index = times * schedule.num_timesteps
        np.testing.assert_allclose(index, np.round(index), atol=1e-9)
        assert times[0] == 1.0 and times[-1] == schedule.t_min and np.all(np.diff(times) < 0)


@pytest.mark.slow
@pytest.mark.parametrize("grid", ["edm", "snr", "logsnr"])
@pytest.mark.parametrize("name, steps", [("ddpm", 100), ("ode_heun", 25), ("sde", 100),
                                         ("dpmpp_2m", 20)])
def test_samplers_on_a_grid_match_its_prediction(name, steps, grid):
    """Monte Carlo against ``sampler_output_spectrum`` on the same times (5 standard errors),
    on a per-frequency schedule where the snr grid is not EDM's."""
    process = process_of(2.0, noise_exponent_start=0.5)
    data = demo_data(H)
    c = np.asarray(data.spectrum, np.float64)
    times = make_grid(process, steps, grid, c)
    n, ch = 2048, 2
    x = get_sampler(name)(process, data.eps_fn(process), jax.random.key(4), (n, H, W, ch), steps,
                          times=times)
    predicted = sampler_output_spectrum(process, data, name, steps, times=times)
    z = (power_spectrum(x) / predicted - 1) / np.sqrt(2 / (n * ch))  # real-bin bound
    assert np.abs(z).max() < 5
    uniform = sampler_output_spectrum(process, data, name, steps)
    assert np.abs(predicted / c - 1).max() != np.abs(uniform / c - 1).max()


@pytest.mark.parametrize("schedule", [VPSDE(), VE(sigma_max=80.0, sigma_min=0.002)],
                         ids=lambda s: s.name)
def test_logsnr_grid_is_uniform_in_log_snr(schedule):
    times = make_grid(process_of(schedule=schedule), 12, "logsnr")
    alpha, sigma = (np.asarray(v, np.float64) for v in schedule.alpha_sigma(times))
    steps = np.diff(np.log(alpha / sigma))
    np.testing.assert_allclose(steps, steps.mean(), rtol=2e-3)
    if schedule.name == "ve":  # log sigma is linear in t: the uniform grid
        np.testing.assert_allclose(times, time_grid(schedule, 12), atol=1e-6)


def test_auto_grid_per_sampler():
    from sagd_jax.time_grids import AUTO, resolve

    assert resolve("auto", "ddim") == resolve("auto", "dpmpp_2m") == "logsnr"
    assert resolve("auto", "ddpm") == "uniform" and resolve("edm", "ddim") == "edm"
    assert set(AUTO) <= set(["ddim", "dpmpp_2m"])


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0])
def test_multistep_solver_against_heun_at_twenty_evaluations(gamma):
    """README's claim, from the exact prediction: DPM-Solver++(2M) on the log-SNR grid with 20
    evaluations against Heun with 10 steps (19 evaluations) on its best grid: better at
    gamma 1 and 2, within 2% of it at gamma 0 (a tie: 0.0288 against 0.0284)."""
    process = process_of(gamma)
    data = demo_data(H)
    c = np.asarray(data.spectrum, np.float64)

    def error(name, steps, grid):
        times = make_grid(process, steps, grid, c)
        return np.abs(sampler_output_spectrum(process, data, name, steps, times=times) / c
                      - 1).max()

    ours = error("dpmpp_2m", 20, "logsnr")
    heun = min(error("ode_heun", 10, grid) for grid in ("uniform", "edm", "logsnr"))
    assert ours < heun if gamma > 0 else ours < 1.02 * heun


def test_explicit_uniform_times_are_the_default_bit_for_bit():
    process = process_of(1.0, "bandstop:0.3:0.6")
    data = demo_data(H)
    args = (process, data.eps_fn(process), jax.random.key(0), (4, H, W, 1), 20)
    np.testing.assert_array_equal(get_sampler("ddpm")(*args),
                                  get_sampler("ddpm")(*args, times=time_grid(VPSDE(), 20)))


def test_bad_grids_are_refused_in_one_line():
    schedule = VPSDE()
    for bad in ([1.0, 0.5], [0.9, 0.5, 0.001], [1.0, 0.5, 0.6], [1.0, 0.5, 1e-5],
                [1.0, np.nan, 0.001]):
        with pytest.raises(ValueError, match=r"^times: expected 3 strictly decreasing") as err:
            check_times(np.asarray(bad), schedule, 3)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"^time_grid='karras': must be one of"):
        make_grid(process_of(), 5, "karras")
    with pytest.raises(ValueError, match=r"needs the data's reference spectrum"):
        make_grid(process_of(), 5, "snr")
    with pytest.raises(ValueError, match=r"reference spectrum of shape \(8, 8\)"):
        make_grid(process_of(), 5, "snr", np.ones((8, 8)))


@pytest.mark.slow
def test_sample_cli_and_trainer_take_a_time_grid(tmp_path, tiny_config, run_cli,
                                                 tiny_cli_overrides):
    from sagd_jax.workdir import Workdir

    workdir = tmp_path / "grf"
    Workdir(str(workdir)).prepare(tiny_config())
    result = run_cli("sagd_jax.sample", f"--workdir={workdir}", "--model=exact",
                     "--num_samples=4", "--sampler=ode_heun", "--steps=5", "--time_grid=snr",
                     "--chunk_size=4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ode_heun-snr-5steps-seed0-exact" in result.stdout
    bad = run_cli("sagd_jax.sample", f"--workdir={workdir}", "--model=exact",
                  "--num_samples=4", "--time_grid=karras")
    assert bad.returncode != 0 and "time_grid" in bad.stderr
    trained = run_cli("sagd_jax.main", "--config=configs/quickstart.py",
                      "--config.data.name=grf", "--config.data.image_size=16",
                      *tiny_cli_overrides, f"--workdir={tmp_path / 'run'}",
                      "--config.train.num_steps=2", "--config.train.sample_every=2",
                      "--config.train.time_grid=snr")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (tmp_path / "run" / "samples").exists()
