"""Diffusion in an autoencoder's latent space (``data.autoencoder``): the cached latent
dataset (what it holds, when it is reused, when remade, resumed shard by shard), the shapes of a
latent config without its file, a latent run that trains, resumes bit for bit and whose samples
(sets and periodic grids) are decoded pixels, the exact Gaussian model on a latent grid, and
the one-line refusals. A small random autoencoder (downsample 2, 4 latent channels) written by
``save_pretrained`` and 16x16 RGB PNGs in two class folders stand in for SD's VAE and a
dataset."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from sagd_jax import rng
from sagd_jax.data import batches, clean_images, get_source
from sagd_jax.data import latent_cache as cache_module
from sagd_jax.data.latent_space import LatentDecoder, LatentSpace, to_autoencoder_units
from sagd_jax.gaussian import GaussianData
from sagd_jax.gaussian import sampler_output_spectrum as predicted_spectrum
from sagd_jax.images import image_grid, to_uint8
from sagd_jax.metrics.spectra import power_spectrum, radial_power_spectrum
from sagd_jax.models.autoencoder import Autoencoder
from sagd_jax.process import DiffusionProcess
from sagd_jax.run import Run
from sagd_jax.samplers import get_sampler
from sagd_jax.sampling import SampleRequest, generate
from sagd_jax.sharding import batch_sharding
from sagd_jax.train.loop import train_and_evaluate

SMALL = {"block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 8,
         "latent_channels": 4}
N_IMAGES, SIDE = 12, 16  # 6 per class folder; 16x16 pixels -> 8x8x4 latents


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """(autoencoder folder, another autoencoder's folder, image folder), read-only."""
    root = tmp_path_factory.mktemp("latent")
    Autoencoder.random(SMALL, seed=3).save_pretrained(str(root / "vae"))
    Autoencoder.random(SMALL, seed=4).save_pretrained(str(root / "other_vae"))
    draw = np.random.default_rng(0)
    y, x = np.mgrid[:SIDE, :SIDE]
    for i in range(N_IMAGES):  # smooth, asymmetric images: a mirror differs from its image
        folder = root / "images" / ("a" if i < N_IMAGES // 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        phase = draw.uniform(0, 2 * np.pi, 3)
        pixels = 127.5 + 100 * np.sin(x[..., None] * 0.3 + y[..., None] * 0.1 * (i + 1) + phase)
        pixels = pixels * (x[..., None] + 4) / (SIDE + 4)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:02d}.png")
    return str(root / "vae"), str(root / "other_vae"), str(root / "images")


@pytest.fixture
def latent_config(assets, tiny_config, tmp_path):
    """``latent_config(**overrides)``: a tiny latent run on the PNGs, its cache in tmp_path."""
    vae, _, images = assets

    def make(**overrides):
        return tiny_config(**{
            "data.name": "folder", "data.root": images, "data.image_size": SIDE,
            "data.channels": 3, "data.autoencoder": vae, "data.latent_channels": 4,
            "data.latent_downsample": 2, "data.latent_cache": str(tmp_path / "cache"),
            "train.batch_size": 4, **overrides})

    return make


def _expected_latents(autoencoder, pixels):
    return ((autoencoder.encode_mean(pixels) - np.float32(autoencoder.shift_factor))
            * np.float32(autoencoder.scale_factor))


def test_the_cache_holds_the_encoded_images_and_the_batches_follow_the_pixel_pipeline(
        latent_config):
    """(1) The cache: the scaled posterior means of the pipeline's images (and of their
    mirrors), exactly as a direct encode_mean gives them; step s's latent batch holds the
    latents of the pixel batch of step s, example by example, mirrored where it is."""
    config = latent_config(**{"data.random_flip": True})
    run = Run.from_config(config)
    assert (run.image_shape, run.data_shape) == ((8, 8, 4), (SIDE, SIDE, 3))
    dataset = run.latent_data
    pixels = clean_images(run.source, run.config.data, N_IMAGES)
    autoencoder = Autoencoder.from_pretrained(config.data.autoencoder)
    cached = np.stack([dataset.read(i)[0] for i in range(N_IMAGES)])
    mirrored = np.stack([dataset.read(i)[1] for i in range(N_IMAGES)])
    np.testing.assert_array_equal(cached, _expected_latents(autoencoder, pixels))
    np.testing.assert_array_equal(
        mirrored, _expected_latents(autoencoder, np.ascontiguousarray(pixels[:, :, ::-1])))
    assert cached.shape == (N_IMAGES, 8, 8, 4) and not np.array_equal(cached, mirrored)
    # Read back from the files: bit for bit what was written.
    for kind, expected in (("latents", cached), ("flipped", mirrored)):
        stored = np.load(os.path.join(dataset.folder, f"{kind}_00000.npy"))
        np.testing.assert_array_equal(stored, expected)
    key = json.load(open(os.path.join(dataset.folder, "key.json")))
    assert key["data"]["image_size"] == SIDE and key["data"]["examples"] == N_IMAGES
    # The batches: each example of the pixel batch is found among the clean images (mirrored
    # or not); the latent batch holds that example's latents, mirrored likewise.
    flips = 0
    for step in range(4):
        image_batch = to_uint8(batches(run.source, run.config.data, config.seed, 4)[step])
        latent_batch = run.load_batch(step)
        assert latent_batch.shape == (4, 8, 8, 4) and latent_batch.dtype == np.float32
        for image, latents in zip(image_batch, latent_batch, strict=True):
            plain = np.flatnonzero((pixels == image).all(axis=(1, 2, 3)))
            flipped = np.flatnonzero((pixels[:, :, ::-1] == image).all(axis=(1, 2, 3)))
            assert len(plain) + len(flipped) == 1
            if len(plain):
                np.testing.assert_array_equal(latents, cached[plain[0]])
            else:
                np.testing.assert_array_equal(latents, mirrored[flipped[0]])
                flips += 1
    assert 0 < flips < 16  # both kinds were drawn


def test_the_cache_is_reused_and_remade_when_the_weights_or_the_size_change(
        assets, latent_config, monkeypatch):
    """(1) A second run reads the cache (no encoder call); other weights or another
    data.image_size make a new cache, encoded again."""
    _, other_vae, _ = assets
    first = Run.from_config(latent_config()).latent_data
    calls = []
    original = Autoencoder.encode_mean

    def counted(self, images, batch_size=None):
        calls.append(len(images))
        return original(self, images, batch_size)

    def refuse(self, images, batch_size=None):
        raise AssertionError("the encoder ran")

    monkeypatch.setattr(Autoencoder, "encode_mean", refuse)
    again = Run.from_config(latent_config()).latent_data
    assert again.folder == first.folder
    np.testing.assert_array_equal(again.get(np.arange(N_IMAGES)), first.get(np.arange(N_IMAGES)))
    monkeypatch.setattr(Autoencoder, "encode_mean", counted)
    other = Run.from_config(latent_config(**{"data.autoencoder": other_vae})).latent_data
    assert other.folder != first.folder and sum(calls) == N_IMAGES
    assert not np.array_equal(other.get([0]), first.get([0]))
    smaller = Run.from_config(latent_config(**{"data.image_size": 8})).latent_data
    assert smaller.folder not in (first.folder, other.folder) and sum(calls) == 2 * N_IMAGES
    assert smaller.get([0]).shape == (1, 4, 4, 4)
    assert len(os.listdir(os.path.dirname(first.folder))) == 3


def test_an_interrupted_encoding_resumes_at_the_missing_shards(latent_config, monkeypatch):
    """(1) Shards are written one by one: a failure leaves the finished ones, which a rerun
    keeps (only the rest is encoded), and the result equals one uninterrupted encoding."""
    monkeypatch.setattr(cache_module, "SHARD_SIZE", 5)  # 3 shards: 5, 5, 2
    original = Autoencoder.encode_mean
    calls = []

    def fail_second(self, images, batch_size=None):
        calls.append(len(images))
        if len(calls) == 2:
            raise RuntimeError("killed")
        return original(self, images, batch_size)

    monkeypatch.setattr(Autoencoder, "encode_mean", fail_second)
    run = Run.from_config(latent_config())
    with pytest.raises(RuntimeError, match="killed"):
        run.load_batch(0)
    folder = cache_module.cache_folder(run.config.data, cache_module.cache_key(
        run.source, run.config.data, run.autoencoder))
    assert sorted(n for n in os.listdir(folder) if n.endswith(".npy")) == ["latents_00000.npy"]
    calls.clear()
    monkeypatch.setattr(Autoencoder, "encode_mean", lambda self, images, batch_size=None:
                        calls.append(len(images)) or original(self, images, batch_size))
    resumed = Run.from_config(latent_config()).latent_data
    assert calls == [5, 2]
    pixels = clean_images(run.source, run.config.data, N_IMAGES)
    np.testing.assert_allclose(resumed.get(np.arange(N_IMAGES)),
                               _expected_latents(run.autoencoder, pixels), rtol=1e-5, atol=1e-6)
    # A truncated shard is set aside (kept) and encoded again.
    path = os.path.join(folder, "latents_00001.npy")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 4)
    calls.clear()
    again = Run.from_config(latent_config()).latent_data
    assert calls == [5] and os.path.exists(path + ".damaged")
    np.testing.assert_array_equal(again.get(np.arange(N_IMAGES)),
                                  resumed.get(np.arange(N_IMAGES)))


def test_a_latent_config_builds_its_shapes_without_the_file(tiny_config, tmp_path):
    """(2) Run.from_config(load_data=False): the model, process and state of the latent grid,
    no autoencoder file (SD's grid: 256 px / 8 = 32x32x4)."""
    missing = str(tmp_path / "no_such_vae")
    config = tiny_config(**{"data.name": "folder", "data.image_size": 256, "data.channels": 3,
                            "data.autoencoder": missing, "model.attn_resolutions": (16,)})
    run = Run.from_config(config, load_data=False)
    assert run.image_shape == (32, 32, 4) and run.data_shape == (256, 256, 3)
    assert run.process.cov.weights.shape == (32, 17)  # the operator acts on the latent grid
    params = run.abstract_state().params
    out = jax.eval_shape(lambda p, x: run.model.apply({"params": p}, x, jnp.ones(2)), params,
                         jax.ShapeDtypeStruct((2, 32, 32, 4), jnp.float32))
    assert out.shape == (2, 32, 32, 4)
    assert not os.path.exists(missing)


@pytest.mark.parametrize("overrides, message", [
    ({"data.image_size": 20, "data.latent_downsample": 8},
     "data.image_size=20: must be divisible by data.latent_downsample=8"),
    ({"data.latent_downsample": 6}, "data.latent_downsample=6: must be a power of 2"),
    ({"data.crop": "random"}, "data.crop='random': not with data.autoencoder"),
    ({"data.corruption.kind": "stripes"}, "data.corruption.kind='stripes': not with"),
    ({"data.name": "grf"}, "the grf source's images are float fields"),
    ({"data.latent_channels": 0}, "data.latent_channels=0: must be an integer >= 1"),
])
def test_bad_latent_keys_are_one_line(tiny_config, overrides, message, one_line_error):
    config = tiny_config(**{"data.name": "folder", "data.image_size": 32, "data.channels": 3,
                            "data.autoencoder": "/nowhere/vae", **overrides})
    one_line_error(lambda: Run.from_config(config, load_data=False), message)


def test_an_autoencoder_unlike_the_keys_is_one_line(latent_config, one_line_error, assets):
    """(6) data.latent_channels, data.latent_downsample and data.channels are checked against
    the file when it is loaded."""
    vae = assets[0]
    one_line_error(lambda: Run.from_config(latent_config(**{"data.latent_channels": 8})),
                   f"data.latent_channels=8: the autoencoder data.autoencoder={vae} has "
                   "4-channel latents")
    one_line_error(lambda: Run.from_config(latent_config(**{"data.latent_downsample": 4})),
                   "data.latent_downsample=4: the autoencoder", "has downsample 2")
    one_line_error(lambda: Run.from_config(latent_config(**{"data.channels": 1})),
                   "data.channels=1: the autoencoder", "has 3-channel images")
    # Not loaded at all with load_data=False (the keys alone).
    assert Run.from_config(latent_config(**{"data.latent_channels": 8}),
                           load_data=False).image_shape == (8, 8, 8)


def test_a_missing_autoencoder_file_is_one_line_exit_2_and_writes_nothing(tmp_path, run_cli):
    """(6) Through the trainer's CLI: the key, what to download and where; nothing written."""
    workdir, missing = tmp_path / "never", tmp_path / "sd-vae"
    result = run_cli("sagd_jax.main", "--config=quickstart", f"--workdir={workdir}",
                     "--config.data.image_size=32", f"--config.data.autoencoder={missing}",
                     f"--config.data.latent_cache={tmp_path / 'cache'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: data.autoencoder={missing}: no such file or folder; "
                               "download stabilityai/sd-vae-ft-ema"), lines
    assert f"into {missing}" in lines[0]
    assert not workdir.exists() and not missing.exists() and not (tmp_path / "cache").exists()


# --- a tiny latent run ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(assets, tiny_config, tmp_path_factory):
    """A latent run of 4 steps straight (with a periodic grid at step 4) and one of 2 + 2
    steps; (config, straight workdir, resumed workdir, straight state, resumed state)."""
    vae, _, images = assets
    root = tmp_path_factory.mktemp("latent_runs")

    def config(steps):
        return tiny_config(**{
            "data.name": "folder", "data.root": images, "data.image_size": SIDE,
            "data.channels": 3, "data.autoencoder": vae, "data.latent_downsample": 2,
            "data.latent_cache": str(root / "cache"), "data.random_flip": True,
            "train.batch_size": 4, "train.num_steps": steps, "train.checkpoint_every": 2,
            "train.sample_every": 4})

    straight = train_and_evaluate(config(4), str(root / "a"))
    train_and_evaluate(config(2), str(root / "b"))
    resumed = train_and_evaluate(config(4), str(root / "b"))
    return config(4), str(root / "a"), str(root / "b"), straight, resumed


@pytest.mark.slow
def test_a_latent_run_trains_and_resumes_bit_for_bit(trained, params_of):
    """(3) 2 + 2 steps equal 4 straight, bit for bit; the parameters moved."""
    config, _, _, straight, resumed = trained
    assert int(straight.step) == int(resumed.step) == 4
    for a, b in zip(params_of(straight), params_of(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    probe = Run.from_config(config, load_data=False)
    initial = probe.init_state(probe.mesh())
    assert any(not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(jax.device_get(straight.params)),
                   jax.tree.leaves(jax.device_get(initial.params)), strict=True))


@pytest.mark.slow
def test_the_periodic_grid_and_spectrum_are_of_decoded_images(trained):
    """(4) samples/step_4.png tiles 16x16 RGB decoded images (the sampler's latents through
    decode_float, bit for bit on one CPU device), and its spectrum is compared with the data's
    pixel spectrum."""
    config, workdir, _, state, _ = trained
    run = Run.from_workdir(workdir)
    grid = np.asarray(Image.open(os.path.join(workdir, "samples", "step_0000004.png")))
    assert grid.shape == (2 * (SIDE + 1) + 1, 2 * (SIDE + 1) + 1, 3)  # 4 images of 16x16x3
    cfg = run.config.train
    key = jax.random.fold_in(rng.stream_key(run.config.seed, rng.SAMPLE), 4)
    latents = get_sampler(cfg.sampler)(run.process, run.eps_fn(state.ema_params), key,
                                       (cfg.num_samples, 8, 8, 4), cfg.sample_steps)
    autoencoder = Autoencoder.from_pretrained(config.data.autoencoder)
    decoded = autoencoder.decode_float(np.asarray(latents) / np.float32(autoencoder.scale_factor)
                                       + np.float32(autoencoder.shift_factor))
    np.testing.assert_array_equal(grid, image_grid(to_uint8(decoded)))
    spectrum = json.load(open(os.path.join(workdir, "samples", "spectrum_0000004.json")))
    pixels = batches(get_source(run.config.data), run.config.data, run.config.seed,
                     N_IMAGES)[0]
    np.testing.assert_array_equal(np.asarray(spectrum["data"], np.float64),
                                  radial_power_spectrum(pixels)[1])


@pytest.mark.slow
def test_a_sample_set_of_a_latent_run_holds_decoded_images(trained, tmp_path, monkeypatch):
    """(4) arr_0 holds uint8 images of the data's shape, decode() of the sampler's latents
    (those the sampler gave, recorded, which equal a direct sampler call's up to float
    round-off); with float32 the float32 member is decode_float's output and arr_0 its
    quantisation."""
    config, workdir, _, _, _ = trained
    recorded = []
    original = LatentDecoder.__call__

    def record(self, latents, *, uint8):
        recorded.append(np.array(latents))
        return original(self, latents, uint8=uint8)

    monkeypatch.setattr(LatentDecoder, "__call__", record)
    request = SampleRequest(num_samples=4, sampler="ddim", steps=3, chunk_size=4)
    path = generate(workdir, request, str(tmp_path / "set"))
    run = Run.from_workdir(workdir)
    mesh = run.mesh(fit=True)
    key = jax.random.fold_in(rng.stream_key(request.seed, rng.SAMPLE_CLI), 0)
    latents = get_sampler("ddim")(run.process, run.eps_fn(run.restore(mesh).ema_params), key,
                                  (4, 8, 8, 4), 3, sharding=batch_sharding(mesh))
    (sampled,) = recorded
    assert sampled.shape == (4, 8, 8, 4)
    scale = np.abs(sampled).max()
    np.testing.assert_allclose(sampled, np.asarray(latents), rtol=0, atol=1e-4 * scale)
    autoencoder = Autoencoder.from_pretrained(config.data.autoencoder)
    unscaled = to_autoencoder_units(sampled, autoencoder)
    with np.load(path) as samples:
        pixels = samples["arr_0"]
    assert pixels.shape == (4, SIDE, SIDE, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, autoencoder.decode(unscaled))
    assert ((pixels > 0) & (pixels < 255)).mean() > 0.5  # images, not saturated noise
    floats = generate(workdir, dataclasses.replace(request, float32=True),
                      str(tmp_path / "float32"))
    np.testing.assert_array_equal(recorded[1], sampled)  # the same latents
    with np.load(floats) as samples:
        assert samples["float32"].shape == (4, SIDE, SIDE, 3)
        np.testing.assert_array_equal(samples["float32"], autoencoder.decode_float(unscaled))
        np.testing.assert_array_equal(samples["arr_0"], to_uint8(samples["float32"]))


@pytest.mark.slow
def test_the_in_training_evaluation_judges_decoded_images(trained, monkeypatch):
    """(4) The in-training FID's samples are decoded uint8 images of the data's shape (the
    Inception network itself is tests/test_fid.py's business: left out here)."""
    import ml_collections

    from sagd_jax.train.in_training_eval import InTrainingEval

    config, workdir, _, state, _ = trained
    recorded = []
    original = LatentDecoder.__call__
    monkeypatch.setattr(LatentDecoder, "__call__", lambda self, latents, *, uint8: (
        recorded.append(np.array(latents)) or original(self, latents, uint8=uint8)))
    evaluator = InTrainingEval.__new__(InTrainingEval)  # no Inception weights needed
    run = Run.from_workdir(workdir)
    evaluator.run, evaluator.mesh = run, run.mesh(fit=True)
    evaluator.cfg = ml_collections.ConfigDict(dict(batch_size=4, num_samples=4,
                                                   sampler="ddim", steps=2))
    pixels = evaluator.local_samples(state.ema_params, 4)
    (latents,) = recorded
    autoencoder = Autoencoder.from_pretrained(config.data.autoencoder)
    assert pixels.shape == (4, SIDE, SIDE, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, autoencoder.decode(to_autoencoder_units(latents,
                                                                                  autoencoder)))


# --- the exact Gaussian model on a latent grid ---------------------------------------------------
def _check_spectrum(x, predicted, c):
    """The sampled power per bin matches the exact recursion within 5 standard errors (and
    matches c within the sampler's bias besides), as tests/test_samplers.py checks."""
    n, height, width = x.shape[0] * x.shape[-1], x.shape[1], x.shape[2]
    ky = np.isin(np.arange(height), [0, height // 2] if height % 2 == 0 else [0])[:, None]
    kx = np.isin(np.arange(width // 2 + 1),
                 [0, width // 2] if width % 2 == 0 else [0])[None, :]
    stderr = np.where(ky & kx, np.sqrt(2 / n), np.sqrt(1 / n))
    var = power_spectrum(x)
    z = (var / predicted - 1) / stderr
    assert np.abs(z).max() < 5, f"max |z| = {np.abs(z).max():.2f}"
    assert np.mean(z**2) < 2.0, f"mean z^2 = {np.mean(z**2):.2f}"
    assert np.all(np.abs(var / c - 1) <= np.abs(predicted / c - 1) + 5 * stderr)


@pytest.mark.slow
@pytest.mark.parametrize("sampler, steps", [("ddim", 100), ("ddpm", 200)])
def test_samplers_reproduce_a_known_spectrum_on_a_latent_grid(latent_config, sampler, steps):
    """(5) SAGD (gamma 1) driven by the exact Gaussian model on latent grids h x w x 4: the
    run's own 8x8x4 grid (its process, from the config alone) and a non-square 8x6x4 one."""
    config = latent_config(**{"noise.gamma": 1.0})
    run = Run.from_config(config, load_data=False)
    assert run.image_shape == (8, 8, 4)
    for process, (height, width) in ((run.process, (8, 8)),
                                     (DiffusionProcess.from_config(run.config, 8, 6), (8, 6))):
        data = GaussianData.power_law(height, width, gamma=2.0, rho0=0.2)
        shape = (512, height, width, 4)
        x = get_sampler(sampler)(process, data.eps_fn(process), jax.random.key(height + width),
                                 shape, steps)
        assert x.shape == shape
        c = np.asarray(data.spectrum, np.float64)
        _check_spectrum(np.asarray(x), predicted_spectrum(process, data, sampler, steps), c)


def test_latent_space_of_a_pixel_config_is_none(tiny_config):
    assert LatentSpace.from_config(tiny_config().data) is None
    assert Run.from_config(tiny_config(), load_data=False).image_shape == (16, 16, 1)
