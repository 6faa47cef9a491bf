"""Band-conditional generation (``samplers.Condition``, ``sagd_jax.sample --condition``).

References (docs/math.md section 5 and closed forms):
* a stationary Gaussian: frequencies are independent, so given known bins the others keep
  their marginal: the known bins come back exactly, the unknown ones with the variance the
  unconditional sampler gives them (``sampler_output_spectrum``), independent of the known
  values (mean 0);
* a two-component mixture of stationary Gaussians (closed-form score): given known bins
  ``y`` the conditional is the mixture reweighted by each component's likelihood of ``y``,
  ``p(j | y)``. For a process with no noise in the known bins it is sampled exactly: the
  posterior weight of component 1 averaged over the conditional samples is ``p(1 | y)``
  (``E[p(1 | y, U)] = p(1 | y)`` for ``U ~ p(U | y)``), and the unknown bins' variance is
  ``sum_j p(j | y) c_j``.
"""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sagd_jax.frequency_schedule import FrequencySchedule
from sagd_jax.gaussian import GaussianData, sampler_output_spectrum
from sagd_jax.metrics.spectra import power_spectrum
from sagd_jax.process import DiffusionProcess
from sagd_jax.samplers import Condition, get_sampler
from sagd_jax.schedules import VPSDE
from sagd_jax.spectral import (
    SpectralCovariance,
    apply_multiplier,
    half_plane_multiplicity,
    radial_frequency,
)

H = W = 8
RHO = radial_frequency(H, W)
KNOWN = (RHO < 0.45).astype(np.float32)  # the lowest frequencies: super-resolution
MULT = half_plane_multiplicity(H, W)


def rfft(x) -> np.ndarray:
    return np.fft.rfft2(np.asarray(x, np.float64), axes=(1, 2), norm="ortho")


@pytest.mark.slow
@pytest.mark.parametrize("name, steps, shaped", [("ddpm", 200, False), ("ode_heun", 50, False),
                                                 ("ddim", 100, True)])
def test_stationary_gaussian_keeps_known_bins_and_the_marginal_elsewhere(name, steps, shaped):
    cov = SpectralCovariance.create(H, W, gamma=1.0)
    process = DiffusionProcess(cov=cov, schedule=VPSDE())
    if shaped:
        process = process.replace(shaping=FrequencySchedule.create(
            cov, noise_exponent_start=0.0, blur_sigma_max=1.0))
    data = GaussianData.power_law(H, W, gamma=2.0)
    n, c = 2048, 2
    y = data.sample(jax.random.key(1), (1, H, W, c)) * 3.0  # far from typical: no leakage
    x = get_sampler(name)(process, data.eps_fn(process), jax.random.key(2), (n, H, W, c),
                          steps, condition=Condition.create(jnp.broadcast_to(y, (n, H, W, c)),
                                                            KNOWN))
    spec, target = rfft(x), rfft(y)
    known, unknown = KNOWN > 0, KNOWN == 0
    assert np.abs(spec[:, known] - target[:, known]).max() < 1e-5
    predicted = sampler_output_spectrum(process, data, name, steps)[unknown]
    var = power_spectrum(x)[unknown]
    stderr = np.sqrt(2 / (n * c))  # upper bound (real bins); complex bins: sqrt(1 / n)
    assert np.all(np.abs(var / predicted - 1) < 5 * stderr)
    mean = spec[:, unknown].mean(axis=0)  # E[X_U | y] = 0: no coupling to the known bins
    assert np.all(np.abs(mean) < 5 * np.sqrt(predicted[:, None] / (n * c)))


C1 = np.asarray(GaussianData.power_law(H, W, gamma=0.5).spectrum, np.float64)
C2 = np.asarray(GaussianData.power_law(H, W, gamma=2.0).spectrum, np.float64)
PI = (0.5, 0.5)


def mixture_eps(process: DiffusionProcess, x: jax.Array, t: jax.Array) -> jax.Array:
    """The exact ``E[eps | x_t]`` of the mixture: ``sum_j r_j(x_t) S_t x_t / V_j``."""
    a, s2 = process.spectral_coefficients(t)
    spec = jnp.fft.rfft2(x, axes=(1, 2), norm="ortho")
    variances = [a**2 * jnp.asarray(c, jnp.float32) + s2 for c in (C1, C2)]
    log_like = jnp.stack([
        -0.5 * jnp.sum(jnp.asarray(MULT, jnp.float32)[..., None]
                       * (jnp.abs(spec) ** 2 / v[..., None] + jnp.log(v)[..., None]),
                       axis=(1, 2, 3)) + np.log(p) for v, p in zip(variances, PI, strict=True)],
        axis=-1)
    r = jax.nn.softmax(log_like, axis=-1)
    return sum(r[:, j, None, None, None] * apply_multiplier(x, jnp.sqrt(s2) / v)
               for j, v in enumerate(variances))


def component_log_likelihoods(spec: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """``log N(X_bins; 0, c_j)`` (up to a shared constant) for each row, shape ``(N, 2)``."""
    mult = np.broadcast_to(MULT, bins.shape)[bins]
    return np.stack([-0.5 * np.sum(mult * (np.abs(spec[:, bins]) ** 2 / c[bins] + np.log(c[bins])),
                                   axis=1) + np.log(p) for c, p in zip((C1, C2), PI, strict=True)],
                    axis=1)


def posterior_one(log_like: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(log_like[:, 1] - log_like[:, 0]))


def mixture_condition(n: int) -> tuple[jax.Array, float]:
    """Known images ``y`` (one, repeated) whose known bins give ``p(1 | y)`` near 0.3."""
    y0 = GaussianData(spectrum=jnp.asarray(C1, jnp.float32), height=H, width=W).sample(
        jax.random.key(1), (1, H, W, 1))
    scales = np.geomspace(0.05, 20, 400)
    p1 = np.array([posterior_one(component_log_likelihoods(rfft(k * y0)[..., 0], KNOWN > 0))[0]
                   for k in scales])
    scale = scales[np.argmin(np.abs(p1 - 0.3))]
    return jnp.broadcast_to(scale * y0, (n, H, W, 1)), float(p1[np.argmin(np.abs(p1 - 0.3))])


@pytest.mark.slow
@pytest.mark.parametrize("name, steps", [("ddpm", 500), ("ode_heun", 100)])
def test_mixture_conditional_is_exact_without_noise_in_the_known_bins(name, steps):
    """``w = 0`` on the known bins (``noise.bands`` removing them): the conditional mixture,
    its component weights and per-bin variances, within Monte-Carlo error (plus the
    sampler's own discretisation bias on each component, from ``sampler_output_spectrum``)."""
    cov = SpectralCovariance.create(H, W, gamma=1.0, bands="highpass:0.45:")
    assert np.array_equal(np.asarray(cov.support), KNOWN == 0)
    process = DiffusionProcess(cov=cov, schedule=VPSDE())
    n = 4000
    y, p1 = mixture_condition(n)
    assert 0.25 < p1 < 0.35
    x = get_sampler(name)(process, jax.tree_util.Partial(mixture_eps, process),
                          jax.random.key(3), (n, H, W, 1), steps,
                          condition=Condition.create(y, KNOWN))
    spec = rfft(x)[..., 0]
    known, unknown = KNOWN > 0, KNOWN == 0
    assert np.abs(spec[:, known] - rfft(y[:1])[0, ..., 0][known]).max() < 1e-5
    weights = posterior_one(component_log_likelihoods(spec, np.ones_like(known)))
    stderr = weights.std() / np.sqrt(n)
    assert abs(weights.mean() - p1) < 4 * stderr, (weights.mean(), p1, stderr)
    expected = p1 * C1 + (1 - p1) * C2
    var = np.mean(np.abs(spec) ** 2, axis=0)[unknown]
    bias = max(np.abs(sampler_output_spectrum(process, GaussianData(
        spectrum=jnp.asarray(c, jnp.float32), height=H, width=W), name, steps) / c - 1
                      )[unknown].max() for c in (C1, C2))
    # A mixture's |X|^2 has relative s.d. up to sqrt(2 (1 + mixing excess)): 5 of them.
    mc = 5 * np.sqrt(2 * 2.0 / n)
    assert np.all(np.abs(var / expected[unknown] - 1) < bias + mc), (bias, mc)


def test_replacement_with_noisy_known_bins_is_biased_on_a_mixture():
    """The limit the docs state: with noise in the known bins the model sees them only
    through x_t, and the component weights stay near the prior's (0.5), far from p(1 | y)."""
    process = DiffusionProcess(cov=SpectralCovariance.create(H, W, gamma=1.0), schedule=VPSDE())
    n = 2000
    y, p1 = mixture_condition(n)
    x = get_sampler("ddpm")(process, jax.tree_util.Partial(mixture_eps, process),
                            jax.random.key(3), (n, H, W, 1), 200,
                            condition=Condition.create(y, KNOWN))
    weights = posterior_one(component_log_likelihoods(rfft(x)[..., 0], np.ones((H, W // 2 + 1),
                                                                              bool)))
    assert weights.mean() - p1 > 10 * weights.std() / np.sqrt(n)


def test_condition_input_errors():
    images = jnp.zeros((2, H, W, 1))
    with pytest.raises(ValueError, match=r"expected a \(8, 5\) mask"):
        Condition.create(images, np.ones((8, 8)))
    with pytest.raises(ValueError, match="must be 0 or 1"):
        Condition.create(images, np.full((8, 5), 0.5))
    with pytest.raises(ValueError, match=r"expected \(B, H, W, C\)"):
        Condition.create(jnp.zeros((H, W, 1)), KNOWN)
    # A frequency's two halves on the half-plane (rows i and -i of columns 0 and W/2) are
    # known together; one without the other would be kept at half its value.
    for column in (0, W // 2):
        odd = np.zeros((H, W // 2 + 1), np.float32)
        odd[1, column] = 1.0
        with pytest.raises(ValueError, match=rf"not even: bin \(1, {column}\) is 1 but its "
                                             rf"mirror \(7, {column}\) is 0"):
            Condition.create(images, odd)
    inner = np.zeros((H, W // 2 + 1), np.float32)
    inner[1, 1] = 1.0  # an inner column has no mirror on the half-plane
    Condition.create(images, inner)
    process = DiffusionProcess(cov=SpectralCovariance.create(H, W), schedule=VPSDE())
    data = GaussianData.power_law(H, W)
    with pytest.raises(ValueError, match=r"condition images \(2, 8, 8, 1\): expected"):
        get_sampler("ddim")(process, data.eps_fn(process), jax.random.key(0), (4, H, W, 1), 2,
                            condition=Condition.create(images, KNOWN))


def test_sample_cli_conditions_on_known_bands(tmp_path, tiny_config, run_cli):
    """``sagd_jax.sample --condition --known_band`` on the exact model of a grf run: the known
    bins of each sample are its condition image's (image j mod N), its own folder and
    manifest; bad input is one line, exit 2, before anything is written."""
    import os

    from sagd_jax.sampling import known_bins
    from sagd_jax.workdir import Workdir

    config = tiny_config()
    workdir = tmp_path / "grf"
    Workdir(str(workdir)).prepare(config)
    size = config.data.image_size
    images = np.random.default_rng(0).uniform(-1, 1, (3, size, size, 1)).astype(np.float32)
    np.savez(tmp_path / "low.npz", images=images)
    args = [f"--workdir={workdir}", "--model=exact", "--num_samples=8", "--sampler=ddim",
            "--steps=10", "--chunk_size=4"]
    result = run_cli("sagd_jax.sample", *args, f"--condition={tmp_path / 'low.npz'}",
                     "--known_band=lowpass::0.3", "--float32")
    assert result.returncode == 0, result.stderr[-3000:]
    path = result.stdout.strip().splitlines()[-1]
    assert "given-low-lowpass__0.3" in path
    with np.load(path) as f:
        samples = f["float32"]
    known = known_bins("lowpass::0.3", size, size) > 0
    spec, target = rfft(samples), rfft(images[np.arange(8) % 3])
    assert np.abs(spec[:, known] - target[:, known]).max() < 1e-4
    assert np.abs(spec[:, ~known]).max() > 0.1  # the rest is generated
    manifest = json.loads(open(os.path.join(os.path.dirname(path), "manifest.json")).read())
    assert manifest["known_band"] == "lowpass::0.3"

    np.savez(tmp_path / "wrong.npz", images=images[:, :4])
    for extra, message in (
            ([f"--condition={tmp_path / 'low.npz'}"], "--condition: band-conditional sampling "
             "needs both"),
            (["--known_band=lowpass::0.3", f"--condition={tmp_path / 'nope.npz'}"],
             "--condition=.*nope.npz: "),
            (["--known_band=lowpass::0.3", f"--condition={tmp_path / 'wrong.npz'}"],
             r"--condition=.*wrong.npz: images of shape \(3, 4, 16, 1\)"),
            (["--known_band=lowpass::2", f"--condition={tmp_path / 'low.npz'}"],
             "--known_band='lowpass::2': "),
            (["--known_band=highpass:0:", f"--condition={tmp_path / 'low.npz'}"],
             "--known_band='highpass:0:': the band must leave some bins")):
        out = tmp_path / "refused"
        bad = run_cli("sagd_jax.sample", *args, *extra, f"--out={out}")
        lines = bad.stderr.strip().splitlines()
        assert bad.returncode == 2 and len(lines) == 1, bad.stderr[-2000:]
        assert re.search(message, lines[0]), lines[0]
        assert not out.exists()
