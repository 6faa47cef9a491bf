"""Judge generated images against the data of their run; writes one JSON file (and plots).

    python -m sagd_jax.evaluate --samples=DIR/generated/NAME/samples.npz \\
        [--band=bandpass:0.45:0.6] [--filter_band=bandstop:0.45:0.6] [--out=FILE.json] \\
        [--max_reference=10000] [--num_subsets=100] [--subset_size=1000] [--model_units] \\
        [--inception=auto|on|off] [--inception_weights=PATH] [--reference_stats=FILE.npz] \\
        [--reference_split=SPLIT] [--inception_reference_images=50000]
    python -m sagd_jax.evaluate --likelihood --workdir=DIR [--model=ema|exact] \
        [--num_images=256] [--ode_steps=100] [--trace=hutchinson|exact] [--probes=1] [--seed=0]

The run (its data config) is found from the samples' ``manifest.json``. Reference images: the
``test`` split for Fashion-MNIST and TFDS data, the run's own source otherwise, always without
the run's training corruption (clean data); at most ``--max_reference`` images.

Metrics (those that apply):
* ``spectrum``: radially averaged power spectra of samples and reference, the per-bin
  ``|log ratio|`` and its mean (``spectrum.png``);
* ``fd``, ``kid`` (``mean``, ``std``, ``sem``): Frechet and kernel distances in the features of
  the in-project Fashion-MNIST classifier, for 28x28x1 data (trained on first use, cached);
  ``kid_blocks`` (``mean``, ``sem``): KID over 10 disjoint sample/reference blocks, whose
  ``sem`` includes the sampling noise of the generated set;
  ``--filter_band`` removes a band from both sets before the features, and adds
  ``spectrum_off_band``: the spectrum error over the frequencies outside that band;
* ``fid``/``kid``/``inception_score`` under ``inception``: FID, KID and IS in the FID
  Inception-v3's features (``sagd_jax.metrics.inception``), any RGB or grayscale images,
  against the Inception reference of the run's data (``--reference_split``, default the
  training split as in the literature; computed once and cached, ``sagd_jax.metrics.fid``) or
  published statistics (``--reference_stats``: pytorch-fid's or EDM's ``.npz``; FID only).
  ``--inception=on`` needs the weights (``--inception_weights``, ``$SAGD_JAX_INCEPTION``, the
  cache or a download); ``auto`` (default) is ``on`` for RGB and 32x32+ images and skips them
  with a note where they are missing for 28x28x1 data (whose classifier features remain);
  ``off`` skips them; never for grf data;
* ``band_energy_ratio``: energy of samples inside ``--band`` relative to the reference's;
* ``grf_variance``: for ``grf`` data, per-frequency variance of the samples against the exact
  spectrum (``mean_abs_log_ratio`` and the Monte-Carlo floor; ``grf_variance.png``).

``--likelihood``: the negative log-likelihood of the run's reference images (the clean test
split, as above; at most ``--num_images``) through the probability-flow ODE
(``sagd_jax.likelihood``: RK4 on the logsnr grid, exact trace or Hutchinson probes), under the
EMA weights of the latest checkpoint or, for grf data, the exact model (``--model=exact``).
8-bit data is uniformly dequantised (key from ``--seed``) and reported in bits per dimension of
its levels; grf data (continuous) in bits per dimension of its density (``nats / ln 2``); every
result has its standard error over images. With masked bands the images are projected
onto the support of ``Sigma`` and the density (and the dimension count) is the support's.
Written to ``--out`` (default ``DIR/likelihood/<model>-<steps>steps-<trace>-seed<K>.json``,
never overwritten).

Images: the ``float32`` member (model units) of ``sagd_jax.sample``'s ``samples.npz``, else
``arr_0``, which must be uint8 pixels (the FID tools' layout), or float images in model units
([-1, 1]) with ``--model_units``.

Prints the headline numbers as JSON; progress goes to stderr. Bad input (a missing, damaged or
empty file, float ``arr_0`` without ``--model_units``, a bad band, an existing ``--out``) stops
with a one-line error naming the file or flag and exit status 2, before any work, nothing
written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import flags

from sagd_jax import cli, console, files, validate
from sagd_jax.errors import one_line

REFERENCE_SPLIT_SOURCES = ("fashion_mnist",)  # sources whose reference is the "test" split


def load_samples(path: str, model_units: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """float32 ``(N, H, W, C)`` samples in model units and the manifest beside them.

    The images: the ``float32`` member of ``sagd_jax.sample``'s files, else ``arr_0``: uint8
    pixels rescaled, or, with ``model_units``, float images already in model units ([-1, 1]).
    Every array is read in full (checking its CRC-32). Raises a one-line ``ValueError`` starting
    ``--samples=PATH:`` for anything else: unreadable, not 4-D, empty, non-finite, float
    ``arr_0`` without ``model_units``.
    """
    from sagd_jax.metrics.classifier import to_unit_range

    where = f"--samples={path}"
    if not files.isfile(path):
        raise ValueError(f"{where}: no such file")
    try:
        with files.open_file(path, "rb") as f:
            magic = f.read(6)
        if not magic.startswith(b"PK\x03\x04"):  # np.load would take it for a pickle
            raise ValueError(f"{where}: " + ("an .npy file, not an .npz archive"
                                             if magic == b"\x93NUMPY" else
                                             "not an .npz archive (no zip header)"))
        with np.load(files.loadable(path), allow_pickle=False) as data:
            if "arr_0" not in data.files:
                raise ValueError(f"{where}: no arr_0 array (has: {', '.join(data.files)})")
            arr_0 = data["arr_0"]
            images = data["float32"] if "float32" in data.files else None
    except Exception as err:  # a damaged zip raises many kinds: BadZipFile, EOFError,
        # OSError, KeyError, ValueError and tokenize errors from the .npy header, ...
        if isinstance(err, ValueError) and str(err).startswith(where):
            raise
        raise ValueError(f"{where}: unreadable ({one_line(err)})") from None
    floating = np.issubdtype(arr_0.dtype, np.floating)
    if model_units and not floating:
        raise ValueError(f"{where}: --model_units, but arr_0 is {arr_0.dtype}, not float "
                         "images; leave --model_units out")
    if images is None:
        if arr_0.dtype != np.uint8 and not (model_units and floating):
            raise ValueError(
                f"{where}: arr_0 is {arr_0.dtype}, not uint8 pixels"
                + ("; if it holds images in model units ([-1, 1]), pass --model_units"
                   if floating else ""))
        images = to_unit_range(arr_0) if arr_0.dtype == np.uint8 else arr_0.astype(np.float32)
    if images.ndim != 4:
        raise ValueError(f"{where}: expected (N, H, W, C) images, got shape {images.shape}")
    if images.size == 0:
        raise ValueError(f"{where}: holds no images (shape {images.shape})")
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"{where}: float32 is {images.dtype}, not float images")
    bad = int(np.size(images) - np.count_nonzero(np.isfinite(images)))
    if bad:
        raise ValueError(f"{where}: {bad} non-finite values in the images")
    manifest_path = files.join(files.dirname(path), "manifest.json")
    manifest: Any = {}
    if files.exists(manifest_path):
        try:
            manifest = files.read_json(manifest_path)
        except (OSError, ValueError) as err:
            raise ValueError(f"{where}: unreadable {manifest_path} ({one_line(err)})") from None
        if not isinstance(manifest, dict):
            raise ValueError(f"{where}: {manifest_path} is not a JSON object")
    return images.astype(np.float32, copy=False), manifest


def reference_images(data_config: Any, max_images: int) -> tuple[np.ndarray, str]:
    """Clean reference images in model units (the run's resize and centre crop, no
    corruption or flips) and a name for caching (dataset, split, size)."""
    from sagd_jax.data import clean_images, get_source
    from sagd_jax.metrics.classifier import to_unit_range

    cfg = data_config.copy_and_resolve_references()
    with cfg.ignore_type():
        if cfg.name in REFERENCE_SPLIT_SOURCES or str(cfg.name).startswith("tfds:"):
            cfg.split = "test"
        cfg.corruption.kind = "none"
    source = get_source(cfg)
    count = min(len(source), max_images)
    raw = clean_images(source, cfg, count)
    height, width, channels = raw.shape[1:]
    name = f"{cfg.name}-{cfg.split}-{height}x{width}x{channels}-{count}"
    return (to_unit_range(raw) if raw.dtype == np.uint8 else raw), name.replace(":", "_")


def remove_band(images: np.ndarray, band_spec: str) -> np.ndarray:
    """``images`` with the frequencies of ``band_spec`` (a ``Band``) removed (mask 1 - m)."""
    from sagd_jax.spectral import parse_bands, radial_frequency

    (band,) = parse_bands(band_spec)
    _, height, width, _ = images.shape
    keep = 1.0 - band.mask(radial_frequency(height, width))
    spec = np.fft.rfft2(images.astype(np.float64), axes=(1, 2)) * keep[None, :, :, None]
    return np.fft.irfft2(spec, s=(height, width), axes=(1, 2)).astype(np.float32)


def feature_metrics(samples: np.ndarray, reference: np.ndarray, reference_name: str,
                    num_subsets: int, subset_size: int, recipe: Any = None) -> dict[str, Any]:
    """FD and KID in the features of the classifier of ``recipe`` (default: the documented
    one); the reference features are cached."""
    from sagd_jax.metrics.classifier import cache_dir, load_or_train
    from sagd_jax.metrics.features import (
        GaussianStats,
        frechet_distance,
        kernel_distance,
        kernel_distance_blocks,
    )

    extractor = load_or_train(recipe)
    path = os.path.join(cache_dir(), "reference",
                        f"{reference_name}-{extractor.recipe.name}.npz")
    if files.exists(path):
        console.info("features: %d reference images, from %s", len(reference), path)
        ref_features = np.load(path)["features"]
    else:
        console.info("features: %d reference images, to cache in %s", len(reference), path)
        ref_features = extractor(reference).astype(np.float32)
        with contextlib.suppress(FileExistsError):  # another process cached the same first
            files.write_npz(path, exclusive=True, features=ref_features)
    console.info("features: %d samples", len(samples))
    features = extractor(samples)
    kid = kernel_distance(features, ref_features, num_subsets, subset_size)
    blocks = kernel_distance_blocks(features, ref_features, num_blocks=min(10, len(features) // 2))
    return {"fd": frechet_distance(GaussianStats.of(features), GaussianStats.of(ref_features)),
            "kid": dataclasses.asdict(kid),
            "kid_blocks": dataclasses.asdict(blocks),
            "classifier": extractor.recipe.name,
            "classifier_test_accuracy": extractor.test_accuracy,
            "num_reference": len(ref_features)}


def image_metrics(images: np.ndarray, reference: np.ndarray, reference_name: str,
                  data_config: Any, band: str | None = None, filter_band: str | None = None,
                  num_subsets: int = 100, subset_size: int = 1000, classifier: Any = None
                  ) -> dict[str, Any]:
    """The metrics of ``evaluate`` for any images ``(N, H, W, C)`` in model units against the
    clean ``reference`` of the run's ``data_config`` (generated samples, or data itself as a
    floor): ``spectrum``, ``band_energy_ratio``, ``spectrum_off_band`` (with
    ``filter_band``), ``fd``/``kid``/``kid_blocks`` (28x28x1), ``grf_variance`` (grf data).
    Writes nothing."""
    from sagd_jax.data.grf import grf_spectrum
    from sagd_jax.metrics.spectra import (
        band_energy_ratio,
        radial_average,
        radial_power_spectrum,
        radial_spectrum_error_off_band,
        variance_error,
    )
    from sagd_jax.spectral import parse_bands

    results: dict[str, Any] = {}
    centers, power = radial_power_spectrum(images)
    _, ref_power = radial_power_spectrum(reference)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_bin = np.abs(np.log(power / ref_power))
    results["spectrum"] = {"rho": centers.tolist(), "samples": power.tolist(),
                           "reference": ref_power.tolist(), "abs_log_ratio": per_bin.tolist(),
                           "mean_abs_log_ratio": float(np.nanmean(per_bin))}
    if band is not None:
        (b,) = parse_bands(band)
        results["band"] = band
        results["band_energy_ratio"] = band_energy_ratio(images, reference, b)
    if filter_band is not None:
        (b,) = parse_bands(filter_band)
        results["spectrum_off_band"] = radial_spectrum_error_off_band(images, reference, b)
    if images.shape[1:] == (28, 28, 1) and data_config.name != "grf":
        s, r, name = images, reference, reference_name
        if filter_band is not None:
            s, r = remove_band(s, filter_band), remove_band(r, filter_band)
            name = f"{name}-without-{filter_band}".replace(":", "_")
            results["filter_band"] = filter_band
        results |= feature_metrics(s, r, name, num_subsets, subset_size, classifier)
    if data_config.name == "grf":
        err = variance_error(images, grf_spectrum(data_config))
        ratio = err.pop("ratio")
        rho, radial_ratio = radial_average(ratio, images.shape[2])
        results["grf_variance"] = err | {"rho": rho.tolist(),
                                         "radial_ratio": radial_ratio.tolist()}
    return results


@dataclasses.dataclass(frozen=True)
class InceptionRequest:
    """What ``evaluate`` computes in the Inception features (see the module docstring)."""

    mode: str = "auto"  # auto | on | off
    weights: str | None = None
    reference_stats: str | None = None
    reference_split: str | None = None  # None: the run's training split
    reference_images: int = 50_000
    batch_size: int = 100

    def weights_for(self, data_config: Any) -> str | None:
        """The weights file to use for the run's data, or None (skipped); a one-line
        ``ValueError`` when they are required and missing (before any work)."""
        from sagd_jax.metrics.inception import weights_path

        if self.mode not in ("auto", "on", "off"):
            raise ValueError(f"--inception={self.mode}: must be auto, on or off")
        if self.reference_stats is not None and not os.path.isfile(self.reference_stats):
            raise ValueError(f"--reference_stats={self.reference_stats}: no such file")
        validate.integer("--inception_reference_images", self.reference_images, 2)
        if self.mode == "off" or (self.mode == "auto" and data_config.name == "grf"):
            return None
        # auto on 28x28x1 data (which has the classifier's features) fetches nothing
        optional = (self.mode == "auto" and not self.weights
                    and (data_config.image_size, data_config.channels) == (28, 1))
        try:
            return weights_path(self.weights, download=not optional)
        except ValueError as err:
            if optional:
                console.info("inception: skipped (%s)", err)
                return None
            raise


def evaluate(samples_path: str, out: str | None = None, band: str | None = None,
             filter_band: str | None = None, max_reference: int = 10_000,
             num_subsets: int = 100, subset_size: int = 1000, classifier: Any = None,
             model_units: bool = False, inception: InceptionRequest | None = None
             ) -> dict[str, Any]:
    """Compute the metrics that apply and write them to ``out`` (default: ``evaluation.json``
    beside the samples; an existing file is never overwritten). Returns the results.
    ``classifier``: a ``metrics.classifier.Recipe`` other than the documented one (tests);
    ``model_units``: a float ``arr_0`` holds images in model units (``load_samples``);
    ``inception``: the Inception metrics' options (default: ``InceptionRequest()``)."""
    from sagd_jax.metrics.spectra import plot_radial
    from sagd_jax.spectral import parse_bands
    from sagd_jax.workdir import Workdir

    out = out or files.join(files.dirname(files.absolute(samples_path)), "evaluation.json")
    cli.refuse_existing("--out", out)
    validate.integer("--max_reference", max_reference, 2)
    validate.integer("--num_subsets", num_subsets, 1)
    validate.integer("--subset_size", subset_size, 2)
    for flag, spec in (("--band", band), ("--filter_band", filter_band)):
        if spec is not None:
            try:
                if len(parse_bands(spec)) != 1:
                    raise ValueError("give exactly one band")
            except ValueError as err:
                raise ValueError(f"{flag}={spec}: {err}") from None
    samples, manifest = load_samples(samples_path, model_units)
    if "workdir" not in manifest:
        raise ValueError(f"--samples={samples_path}: no manifest.json with the run's workdir "
                         "beside it (made by python -m sagd_jax.sample)")
    config = Workdir(manifest["workdir"]).saved_config()
    size, channels = config.data.image_size, config.data.channels
    if samples.shape[1:] != (size, size, channels):  # before the reference is loaded
        raise ValueError(f"--samples={samples_path}: images {samples.shape[1:]} but the data "
                         f"has {(size, size, channels)}")
    inception = inception or InceptionRequest()
    weights = inception.weights_for(config.data)
    reference_stats = None
    if weights is not None and inception.reference_stats is not None:
        from sagd_jax.metrics.fid import load_reference

        reference_stats = load_reference(inception.reference_stats)
    console.info("reference: up to %d clean %s images", max_reference, config.data.name)
    reference, reference_name = reference_images(config.data, max_reference)
    if samples.shape[1:] != reference.shape[1:]:
        raise ValueError(f"--samples={samples_path}: images {samples.shape[1:]} but the data "
                         f"has {reference.shape[1:]}")
    plot_dir = files.dirname(files.absolute(out))
    files.makedirs(plot_dir)
    stem = os.path.splitext(os.path.basename(out))[0]
    results: dict[str, Any] = {"samples": files.absolute(samples_path),
                               "num_samples": len(samples), "reference": reference_name,
                               "sampling": manifest}
    results |= image_metrics(samples, reference, reference_name, config.data, band,
                             filter_band, num_subsets, subset_size, classifier)
    if weights is not None:
        results["inception"] = inception_results(samples, config.data, weights, inception,
                                                 reference_stats, num_subsets, subset_size)
    spectrum = results["spectrum"]
    plot_radial(files.join(plot_dir, f"{stem}_spectrum.png"), np.asarray(spectrum["rho"]),
                {"samples": np.asarray(spectrum["samples"]),
                 "data": np.asarray(spectrum["reference"])}, ylabel="power |F x|^2",
                title=f"radial power spectrum, mean |log ratio| "
                      f"{spectrum['mean_abs_log_ratio']:.3f}")
    if "grf_variance" in results:
        err = results["grf_variance"]
        plot_radial(files.join(plot_dir, f"{stem}_grf_variance.png"), np.asarray(err["rho"]),
                    {"samples / exact": np.asarray(err["radial_ratio"])},
                    ylabel="variance ratio", logy=False,
                    title=f"grf: mean |log var/c| {err['mean_abs_log_ratio']:.3f} "
                          f"(Monte-Carlo floor {err['monte_carlo_floor']:.3f})")
    cli.write_new_json("--out", out, results)
    return results


def inception_results(samples: np.ndarray, data_config: Any, weights: str,
                      request: InceptionRequest, reference_stats: Any, num_subsets: int,
                      subset_size: int) -> dict[str, Any]:
    """FID, KID and IS of ``samples`` (model units) in the Inception features."""
    from sagd_jax.metrics.fid import compute_reference, inception_metrics
    from sagd_jax.metrics.inception import InceptionFeatures
    from sagd_jax.train.images import to_uint8

    extractor = InceptionFeatures.from_file(weights, batch_size=request.batch_size)
    if reference_stats is None:
        split = request.reference_split or data_config.split
        reference_stats, _ = compute_reference(data_config, extractor, split,
                                               request.reference_images)
    console.info("inception: %d samples", len(samples))
    return inception_metrics(to_uint8(samples), extractor, reference_stats,
                             num_subsets, subset_size)


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("samples", None, "samples.npz of python -m sagd_jax.sample.",
                        flag_values=fv)
    flags.DEFINE_boolean("likelihood", False, "Negative log-likelihood (bits/dim) of the "
                         "run's test images through the probability-flow ODE.", flag_values=fv)
    flags.DEFINE_string("workdir", None, "--likelihood: the run.", flag_values=fv)
    flags.DEFINE_enum("model", "ema", ["ema", "exact"], "--likelihood: EMA network, or the "
                      "exact Gaussian model of grf data.", flag_values=fv)
    flags.DEFINE_integer("num_images", 256, "--likelihood: at most this many images.",
                         flag_values=fv)
    flags.DEFINE_integer("ode_steps", 100, "--likelihood: RK4 steps (4 evaluations each).",
                         flag_values=fv)
    flags.DEFINE_enum("trace", "hutchinson", ["hutchinson", "exact"], "--likelihood: "
                      "divergence estimator (exact: one JVP per pixel dimension).",
                      flag_values=fv)
    flags.DEFINE_integer("probes", 1, "--likelihood: Hutchinson probes per image.",
                         flag_values=fv)
    flags.DEFINE_integer("seed", 0, "--likelihood: dequantisation and probe seed.",
                         flag_values=fv)
    flags.DEFINE_string("out", None, "JSON file (default evaluation.json beside the samples; "
                        "never overwritten).", flag_values=fv)
    flags.DEFINE_string("band", None, "A band (kind:lo:hi[:edge]) whose energy to compare.",
                        flag_values=fv)
    flags.DEFINE_string("filter_band", None, "Remove this band from samples and reference "
                        "before FD/KID.", flag_values=fv)
    flags.DEFINE_integer("max_reference", 10_000, "At most this many reference images.",
                         flag_values=fv)
    flags.DEFINE_integer("num_subsets", 100, "KID subsets.", flag_values=fv)
    flags.DEFINE_integer("subset_size", 1000, "KID subset size.", flag_values=fv)
    flags.DEFINE_enum("inception", "auto", ["auto", "on", "off"], "FID/KID/IS in the FID "
                      "Inception-v3's features: on, off, or auto (on; skipped for grf data and, "
                      "when the weights are missing, for 28x28x1 data).", flag_values=fv)
    flags.DEFINE_string("inception_weights", None, "pt_inception-2015-12-05-6726825d.pth "
                        "(default: $SAGD_JAX_INCEPTION, else the cache, else a download).",
                        flag_values=fv)
    flags.DEFINE_string("reference_stats", None, "Published Inception statistics (.npz with "
                        "mu, sigma: pytorch-fid's or EDM's) instead of the run's data.",
                        flag_values=fv)
    flags.DEFINE_string("reference_split", None, "Data split of the Inception reference "
                        "(default: the run's training split).", flag_values=fv)
    flags.DEFINE_integer("inception_reference_images", 50_000, "At most this many reference "
                         "images for the Inception statistics.", flag_values=fv)
    flags.DEFINE_boolean("model_units", False, "arr_0 holds float images in model units, "
                         "[-1, 1] (default: arr_0 must be uint8 pixels).", flag_values=fv)


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of ``evaluate``'s results (what the CLI prints)."""
    out = {k: v for k, v in results.items() if k in ("fd", "band_energy_ratio")}
    out["spectrum_mean_abs_log_ratio"] = results["spectrum"]["mean_abs_log_ratio"]
    if "kid" in results:
        out["kid"] = f"{results['kid']['mean']:.5f} +- {results['kid']['std']:.5f}"
    if "inception" in results:
        inc = results["inception"]
        out["inception_fid"] = inc["fid"]
        if "kid" in inc:
            out["inception_kid"] = f"{inc['kid']['mean']:.5f} +- {inc['kid']['std']:.5f}"
        out["inception_score"] = (f"{inc['inception_score']['mean']:.3f} +- "
                                  f"{inc['inception_score']['std']:.3f}")
    if "grf_variance" in results:
        out["grf_variance_mean_abs_log_ratio"] = results["grf_variance"]["mean_abs_log_ratio"]
    return out


def likelihood(workdir: str, model: str = "ema", num_images: int = 256, steps: int = 100,
               trace: str = "hutchinson", probes: int = 1, seed: int = 0,
               out: str | None = None, batch_size: int = 64) -> dict[str, Any]:
    """``--likelihood`` (module docstring): the results, also written to ``out``."""
    import jax

    from sagd_jax import likelihood as lk
    from sagd_jax import rng
    from sagd_jax.run import Run

    validate.integer("--num_images", num_images, 1)
    validate.one_of("--trace", trace, lk.TRACES)
    validate.integer("--ode_steps", steps, 1)
    validate.integer("--probes", probes, 1)
    run = Run.from_workdir(workdir)
    if model == "exact":
        eps_fn, step = run.exact_model().eps_fn(run.process), None
    else:
        state = run.restore(run.mesh(fit=True))
        eps_fn, step = run.eps_fn(state.ema_params), int(jax.device_get(state.step))
    out = out or files.join(run.workdir.path, "likelihood",
                            f"{model}-{steps}steps-{trace}-seed{seed}.json")
    if files.exists(out):
        raise ValueError(f"--out={out}: exists; results are never overwritten")
    images, name = reference_images(run.config.data, num_images)
    key = rng.stream_key(seed, rng.EVAL)
    quantised = run.config.data.name != "grf"
    if quantised:  # uniform dequantisation of the 8-bit levels
        images = images + np.asarray(jax.random.uniform(
            jax.random.fold_in(key, 0), images.shape), np.float32) * lk.BIN_WIDTH
    images = np.asarray(run.process.cov.project(images), np.float32)
    log_px = []
    progress = console.Progress("likelihood", total=len(images), unit="image")
    for start in range(0, len(images), batch_size):
        part = images[start:start + batch_size]
        log_px.append(np.asarray(lk.log_likelihood(
            run.process, eps_fn, part, jax.random.fold_in(key, 1 + start), steps=steps,
            trace=trace, probes=probes)))
        progress.update(len(part))
    log_px = np.concatenate(log_px).astype(np.float64)
    dims = lk.supported_dimensions(run.process, images.shape[-1])
    nats = -log_px / dims

    def mean_sem(values: np.ndarray) -> dict[str, float]:
        return {"mean": float(values.mean()),
                "sem": float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1
                else float("nan")}

    results = {"workdir": run.workdir.path, "model": model, "checkpoint_step": step,
               "images": name, "num_images": len(images), "dimensions": dims,
               "support_fraction": float(run.process.cov.support_fraction),
               "ode": {"solver": "rk4", "grid": "logsnr", "steps": steps,
                       "network_evaluations_per_image": 4 * steps},
               "trace": trace, "probes": probes if trace == "hutchinson" else None,
               "nats_per_dim": mean_sem(nats)}
    # 8-bit data: bits per dimension of the dequantised levels; continuous (grf) data: the
    # density itself in bits per dimension.
    results["bits_per_dim"] = mean_sem(lk.bits_per_dim(log_px, dims,
                                                       lk.BIN_WIDTH if quantised else 1.0))
    files.makedirs(files.dirname(out))
    files.write_json(out, results, exclusive=True)
    return results


def evaluate_cli(fv: flags.FlagValues) -> None:
    if fv.likelihood:
        if fv.workdir is None:
            raise ValueError("--likelihood: needs --workdir")
        results = likelihood(fv.workdir, fv.model, fv.num_images, fv.ode_steps, fv.trace,
                             fv.probes, fv.seed, fv.out)
        print(json.dumps({k: results[k] for k in ("nats_per_dim", "bits_per_dim")
                          if k in results}, indent=2))
        return
    if fv.samples is None:
        raise ValueError("--samples: required (or --likelihood --workdir=DIR)")
    inception = InceptionRequest(fv.inception, fv.inception_weights, fv.reference_stats,
                                 fv.reference_split, fv.inception_reference_images)
    results = evaluate(fv.samples, fv.out, fv.band, fv.filter_band, fv.max_reference,
                       fv.num_subsets, fv.subset_size, model_units=fv.model_units,
                       inception=inception)
    print(json.dumps(summary(results), indent=2))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluation CLI on ``argv`` (default ``sys.argv``); returns the exit status."""
    return cli.run(__doc__, define_flags, evaluate_cli, argv)


def run() -> None:
    """Console-script entry point (``sagd-evaluate``)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
