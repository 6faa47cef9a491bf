"""The evaluation library: generated images judged against the data of their run
(``evaluate``: spectra, classifier FD/KID and class accuracy, Inception FID/KID/IS, band
energy, grf variance), and the negative log-likelihood of a run's held-out images
(``likelihood``). The command lines are ``python -m sagd_jax.evaluate`` and
``python -m sagd_jax.likelihood``; their help texts say what each metric and flag means.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from sagd_jax import console, files, validate
from sagd_jax.errors import one_line
from sagd_jax.images import to_float, to_uint8

REFERENCE_SPLIT_SOURCES = ("fashion_mnist",)  # sources whose reference is the "test" split


def reference_images(data_config: Any, max_images: int) -> tuple[np.ndarray, str]:
    """Clean reference images in model units (the run's resize and centre crop, no
    corruption or flips) and a name for caching (dataset, split, size)."""
    from sagd_jax.data import clean_images, get_source

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
    return (to_float(raw) if raw.dtype == np.uint8 else raw), name.replace(":", "_")


def remove_band(images: np.ndarray, band_spec: str) -> np.ndarray:
    """``images`` with the frequencies of ``band_spec`` (a ``Band``) removed (mask 1 - m)."""
    from sagd_jax.spectral import parse_bands, radial_frequency

    (band,) = parse_bands(band_spec)
    _, height, width, _ = images.shape
    keep = 1.0 - band.mask(radial_frequency(height, width))
    spec = np.fft.rfft2(images.astype(np.float64), axes=(1, 2)) * keep[None, :, :, None]
    return np.fft.irfft2(spec, s=(height, width), axes=(1, 2)).astype(np.float32)


def feature_metrics(samples: np.ndarray, reference: np.ndarray, reference_name: str,
                    num_subsets: int, subset_size: int, recipe: Any = None, *,
                    extractor: Any = None) -> dict[str, Any]:
    """FD and KID in the features of the classifier of ``recipe`` (default: the documented
    one; ``extractor``: that classifier already loaded); the reference features are cached."""
    from sagd_jax.metrics.classifier import load_or_train
    from sagd_jax.metrics.features import (
        GaussianStats,
        frechet_distance,
        kernel_distance,
        kernel_distance_blocks,
    )

    extractor = extractor if extractor is not None else load_or_train(recipe)
    path = os.path.join(files.cache_dir(), "reference",
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


CLASSIFIER_COST = "5 to 10 minutes on 2 CPU cores"  # the documented recipe, as measured
CLASSIFIER_CLASSES = 10  # the Fashion-MNIST classifier's classes: labels 0..9


def check_labels(where: str, labels: np.ndarray) -> None:
    """Refuse, in one ``ValueError`` line starting ``where``, labels outside the classifier's
    classes ``[0, 10)`` (``class_accuracy`` compares its predictions with them)."""
    labels = np.asarray(labels)
    outside = (labels < 0) | (labels >= CLASSIFIER_CLASSES)
    if outside.any():
        raise ValueError(
            f"{where}: arr_1 (labels) has {int(outside.sum())} of {len(labels)} labels outside "
            f"the classifier's {CLASSIFIER_CLASSES} classes [0, {CLASSIFIER_CLASSES}) (first: "
            f"{int(labels[outside][0])}): class_accuracy needs Fashion-MNIST's class labels; "
            "--classifier=off judges the set without the classifier")


def class_accuracy(extractor: Any, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """How often the classifier of ``extractor`` (a ``FeatureExtractor``) puts the images
    ``(N, 28, 28, 1)`` (uint8, or float in model units) in the class of their own ``labels``
    (``N`` integers in ``[0, 10)``): ``class_accuracy``, the fraction whose predicted class
    (the arg-max of the logits) is their label, and ``class_accuracy_per_class``, that
    fraction among the images of each label 0..9 (None for a label no image has)."""
    import jax

    from sagd_jax.metrics.classifier import FeatureNet, apply_in_batches

    labels = np.asarray(labels)
    if labels.shape != (len(images),):
        raise ValueError(f"labels: {labels.shape} for {len(images)} images; expected one each")
    check_labels("labels", labels)
    model = FeatureNet(extractor.recipe.width)
    # the weights as an argument, not constants folded into the program: XLA's CPU compiler
    # has been seen to miscompile (NaN) such constants when the last kernel is all zeros
    logits_fn = jax.jit(lambda params, x: model.apply({"params": params}, x)[1])
    logits = apply_in_batches(lambda x: logits_fn(extractor.params, x), np.asarray(images))
    correct = np.argmax(logits, axis=-1) == labels
    per_class = [float(correct[labels == k].mean()) if np.any(labels == k) else None
                 for k in range(CLASSIFIER_CLASSES)]
    return {"class_accuracy": float(correct.mean()), "class_accuracy_per_class": per_class}


def classifier_applies(image_shape: tuple[int, ...], data_config: Any) -> bool:
    """Whether the in-project Fashion-MNIST classifier judges these images (28x28x1 data)."""
    return tuple(image_shape) == (28, 28, 1) and (data_config is None
                                                  or data_config.name != "grf")


def _classifier_judges(mode: str, image_shape: tuple[int, ...], data_config: Any,
                       recipe: Any) -> bool:
    """Whether ``evaluate`` will use the classifier (as ``image_metrics`` decides), without
    announcing or training anything: ``on``, or ``auto`` with the classifier cached."""
    from sagd_jax.metrics.classifier import cached

    return (data_config is not None and mode != "off"
            and classifier_applies(image_shape, data_config)
            and (mode == "on" or cached(recipe) is not None))


def _classifier_ready(mode: str, recipe: Any) -> bool:
    """``auto``: whether the cache holds the trained classifier (else a note, no training);
    ``on``: True, announcing the training and its cost first when the cache lacks it."""
    from sagd_jax.metrics.classifier import Recipe, cached

    if cached(recipe):
        return True
    recipe = recipe or Recipe()
    if mode == "auto":
        console.info("classifier FD/KID: skipped (no trained classifier in %s/classifier; "
                     "--classifier=on trains it once, %s)", files.cache_dir(),
                     CLASSIFIER_COST if recipe == Recipe() else "a custom recipe")
        return False
    console.info("classifier FD/KID: training the classifier once (%s), then cached",
                 CLASSIFIER_COST if recipe == Recipe() else "a custom recipe")
    return True


def image_metrics(images: np.ndarray, reference: np.ndarray, reference_name: str,
                  data_config: Any, band: str | None = None, filter_band: str | None = None,
                  num_subsets: int = 100, subset_size: int = 1000, classifier: str = "auto",
                  classifier_recipe: Any = None, labels: np.ndarray | None = None
                  ) -> dict[str, Any]:
    """The metrics of ``evaluate`` for any images ``(N, H, W, C)`` in model units against the
    clean ``reference`` of the run's ``data_config`` (generated samples, or data itself as a
    floor): ``spectrum``, ``band_energy_ratio``, ``spectrum_off_band`` (with
    ``filter_band``), ``fd``/``kid``/``kid_blocks`` (28x28x1 data; ``classifier``: ``on``
    trains the classifier of ``classifier_recipe`` if the cache lacks it, ``auto`` uses it
    only when cached, ``off``), with ``labels`` (one per image, in ``[0, 10)``) also
    ``class_accuracy``/``class_accuracy_per_class`` (``class_accuracy``: of the images as
    given, never band-filtered), ``grf_variance`` (grf data). Writes nothing but the cache."""
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
    if classifier != "off" and classifier_applies(images.shape[1:], data_config) and (
            _classifier_ready(classifier, classifier_recipe)):
        from sagd_jax.metrics.classifier import load_or_train

        extractor = load_or_train(classifier_recipe)
        s, r, name = images, reference, reference_name
        if filter_band is not None:
            s, r = remove_band(s, filter_band), remove_band(r, filter_band)
            name = f"{name}-without-{filter_band}".replace(":", "_")
            results["filter_band"] = filter_band
        results |= feature_metrics(s, r, name, num_subsets, subset_size, classifier_recipe,
                                   extractor=extractor)
        if labels is not None:
            console.info("class accuracy: %d samples under their own labels", len(images))
            results |= class_accuracy(extractor, images, labels)
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

    def weights_for(self, data_config: Any, image_shape: tuple[int, ...]) -> str | None:
        """The weights file to use for images of ``image_shape`` judged against
        ``data_config`` (None: published statistics only), or None (skipped); a one-line
        ``ValueError`` when they are required and missing (before any work)."""
        from sagd_jax.metrics.inception import weights_path

        if self.mode not in ("auto", "on", "off"):
            raise ValueError(f"--inception={self.mode}: must be auto, on or off")
        if self.reference_stats is not None and not files.isfile(self.reference_stats):
            raise ValueError(f"--reference_stats={self.reference_stats}: no such file")
        validate.integer("--inception_reference_images", self.reference_images, 2)
        grf = data_config is not None and data_config.name == "grf"
        if self.mode == "off" or (self.mode == "auto" and grf):
            return None
        # auto on 28x28x1 data (which has the classifier's features) fetches nothing
        optional = (self.mode == "auto" and not self.weights
                    and tuple(image_shape) == (28, 28, 1) and data_config is not None)
        try:
            return weights_path(self.weights, download=not optional)
        except ValueError as err:
            if optional:
                console.info("inception: skipped (%s)", err)
                return None
            raise


def default_out(samples_path: str, has_manifest: bool) -> str:
    """Where ``evaluate`` writes by default: ``evaluation.json`` beside this project's
    ``samples.npz``, else ``<set>.evaluation.json`` beside the npz, folder or zip."""
    path = files.absolute(samples_path).rstrip("/")
    if has_manifest:
        return files.join(files.dirname(path), "evaluation.json")
    stem, extension = os.path.splitext(path)
    return (stem if extension.lower() in (".npz", ".zip") else path) + ".evaluation.json"


def evaluate(samples_path: str, out: str | None = None, band: str | None = None,
             filter_band: str | None = None, max_reference: int = 10_000,
             num_subsets: int = 100, subset_size: int = 1000, classifier: str = "auto",
             model_units: bool = False, inception: InceptionRequest | None = None, *,
             config: Any = None, overwrite: bool = False, classifier_recipe: Any = None
             ) -> dict[str, Any]:
    """Judge the sample set at ``samples_path`` (an npz, a PNG/JPEG folder or a zip:
    ``sagd_jax.sample_files``) and write the results to ``out`` (default ``default_out``);
    returns them.

    The data judged against: ``config`` (a config, e.g. ``load_config_file``'s), else the run
    named by the set's ``manifest.json``, else only ``inception.reference_stats`` (Inception
    FID and IS). When ``out`` exists and holds the results of a set of this size, they are
    returned as they are; ``overwrite`` computes them again (the old file kept as
    ``<out>.previous``). ``classifier``: the Fashion-MNIST classifier's FD/KID (and, for a
    set with labels, ``class_accuracy``) ``on`` (trained once if the cache lacks it), ``auto``
    (only when cached) or ``off``;
    ``classifier_recipe``: another recipe than the documented one (tests); ``model_units``: a
    float ``arr_0`` holds images in model units; ``inception``: the Inception metrics' options
    (default ``InceptionRequest()``). Bad input raises a one-line ``ValueError`` before any
    work, nothing written."""
    from sagd_jax import sample_files
    from sagd_jax.spectral import parse_bands
    from sagd_jax.workdir import Workdir

    validate.integer("--max_reference", max_reference, 2)
    validate.integer("--num_subsets", num_subsets, 1)
    validate.integer("--subset_size", subset_size, 2)
    validate.one_of("--classifier", classifier, ("auto", "on", "off"))
    for flag, spec in (("--band", band), ("--filter_band", filter_band)):
        if spec is not None:
            try:
                if len(parse_bands(spec)) != 1:
                    raise ValueError("give exactly one band")
            except ValueError as err:
                raise ValueError(f"{flag}={spec}: {err}") from None
    inception = inception or InceptionRequest()
    data_config = None if config is None else config.data
    channels = None if data_config is None else data_config.channels
    sample_set = sample_files.load(samples_path, model_units, channels)
    samples, manifest = sample_set.images, sample_set.manifest
    where = f"--samples={samples_path}"
    if data_config is None and "workdir" in manifest:
        data_config = Workdir(manifest["workdir"]).saved_config().data
    if data_config is None and inception.reference_stats is None:
        raise ValueError(f"{where}: no manifest.json beside it naming its run; pass "
                         "--config=configs/NAME.py (the data to judge against) or "
                         "--reference_stats=FILE.npz (published Inception statistics)")
    out = files.normalize(out) if out else default_out(samples_path, bool(manifest))
    if files.exists(out) and not overwrite:
        return _stored(out, len(samples))
    if data_config is not None:
        size, channels = data_config.image_size, data_config.channels
        if samples.shape[1:] != (size, size, channels):  # before the reference is loaded
            raise ValueError(f"{where}: images {samples.shape[1:]} but the data has "
                             f"{(size, size, channels)}")
    elif band is not None or filter_band is not None:
        raise ValueError(f"{'--band' if band else '--filter_band'}: needs reference images "
                         "(--config or a manifest), not only --reference_stats")
    if classifier == "on" and not classifier_applies(samples.shape[1:], data_config):
        raise ValueError(f"--classifier=on: the classifier judges 28x28x1 images of "
                         f"Fashion-MNIST-like data, not {samples.shape[1:]}"
                         + ("" if data_config is None else f" {data_config.name}"))
    if sample_set.labels is not None and _classifier_judges(classifier, samples.shape[1:],
                                                            data_config, classifier_recipe):
        check_labels(where, sample_set.labels)
    weights = inception.weights_for(data_config, samples.shape[1:])
    reference_stats = None
    if weights is not None and inception.reference_stats is not None:
        from sagd_jax.metrics.fid import load_reference

        reference_stats = load_reference(inception.reference_stats)
    results: dict[str, Any] = {"samples": files.absolute(samples_path),
                               "layout": sample_set.layout, "num_samples": len(samples),
                               "sampling": manifest}
    if sample_set.labels is not None:
        results["labels"] = {"classes": int(len(np.unique(sample_set.labels)))}
    if data_config is not None:
        console.info("reference: up to %d clean %s images", max_reference, data_config.name)
        reference, reference_name = reference_images(data_config, max_reference)
        if samples.shape[1:] != reference.shape[1:]:
            raise ValueError(f"{where}: images {samples.shape[1:]} but the data has "
                             f"{reference.shape[1:]}")
        results["reference"] = reference_name
        results |= image_metrics(samples, reference, reference_name, data_config, band,
                                 filter_band, num_subsets, subset_size, classifier,
                                 classifier_recipe, sample_set.labels)
    else:
        results["reference"] = files.absolute(inception.reference_stats)
    if weights is not None:
        results["inception"] = inception_results(samples, data_config, weights, inception,
                                                 reference_stats, num_subsets, subset_size)
    _plot(results, out)
    results = strict_json(results, out)
    if overwrite and files.exists(out):
        kept = files.set_aside(out, ".previous")
        console.info("%s: the earlier results kept as %s", out, os.path.basename(kept))
    files.write_new_json("--out", out, results)
    console.info("results: %s", out)
    return results


def strict_json(value: Any, where: str) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (JSON has no NaN or
    Infinity: ``null``), and one warning line naming the keys that had one."""
    keys: dict[str, None] = {}

    def clean(item: Any, key: str) -> Any:
        if isinstance(item, float) and not np.isfinite(item):
            keys[key] = None
            return None
        if isinstance(item, dict):
            return {k: clean(v, f"{key}.{k}" if key else str(k)) for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            return [clean(v, key) for v in item]
        return item

    cleaned = clean(value, "")
    if keys:
        console.warning("%s: non-finite values written as null: %s", where, ", ".join(keys))
    return cleaned


def _stored(out: str, count: int, flag: str | None = "--out", log: bool = True
            ) -> dict[str, Any]:
    """The results already in ``out`` when they are of a set of ``count`` images; a one-line
    ``ValueError`` otherwise (a set grown since, or another file), naming ``flag=out`` (or
    ``out`` alone when no flag names it)."""
    where = out if flag is None else f"{flag}={out}"
    other = "" if flag is None else " or another --out"
    try:
        stored = files.read_json(out)
    except (OSError, ValueError) as err:
        raise ValueError(f"{where}: exists and is unreadable ({one_line(err)}); pass "
                         f"{'--overwrite' if flag is None else 'another --out'}") from None
    if not isinstance(stored, dict) or stored.get("num_samples") != count:
        held = stored.get("num_samples") if isinstance(stored, dict) else None
        raise ValueError(f"{where}: holds results of {held} samples, the set has {count}; "
                         f"pass --overwrite (the old file is kept){other}")
    if log:
        console.info("results: %s (already there; --overwrite computes them again)", out)
    return stored


def _plot(results: dict[str, Any], out: str) -> None:
    """The spectrum (and grf variance) plots beside ``out``: ``<stem>_spectrum.png``."""
    from sagd_jax.metrics.spectra import plot_radial

    if "spectrum" not in results:
        return
    folder = files.dirname(files.absolute(out))
    files.makedirs(folder)
    stem = os.path.splitext(os.path.basename(out))[0]
    spectrum = results["spectrum"]
    plot_radial(files.join(folder, f"{stem}_spectrum.png"), np.asarray(spectrum["rho"]),
                {"samples": np.asarray(spectrum["samples"]),
                 "data": np.asarray(spectrum["reference"])}, ylabel="power |F x|^2",
                title=f"radial power spectrum, mean |log ratio| "
                      f"{spectrum['mean_abs_log_ratio']:.3f}")
    if "grf_variance" in results:
        err = results["grf_variance"]
        plot_radial(files.join(folder, f"{stem}_grf_variance.png"), np.asarray(err["rho"]),
                    {"samples / exact": np.asarray(err["radial_ratio"])},
                    ylabel="variance ratio", logy=False,
                    title=f"grf: mean |log var/c| {err['mean_abs_log_ratio']:.3f} "
                          f"(Monte-Carlo floor {err['monte_carlo_floor']:.3f})")


def inception_results(samples: np.ndarray, data_config: Any, weights: str,
                      request: InceptionRequest, reference_stats: Any, num_subsets: int,
                      subset_size: int) -> dict[str, Any]:
    """FID, KID and IS of ``samples`` (model units) in the Inception features."""
    from sagd_jax.metrics.fid import compute_reference, inception_metrics
    from sagd_jax.metrics.inception import InceptionFeatures

    extractor = InceptionFeatures.from_file(weights, batch_size=request.batch_size)
    if reference_stats is None:
        split = request.reference_split or data_config.split
        reference_stats, _ = compute_reference(data_config, extractor, split,
                                               request.reference_images)
    console.info("inception: %d samples", len(samples))
    return inception_metrics(to_uint8(samples), extractor, reference_stats,
                             num_subsets, subset_size)


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of ``evaluate``'s results (what the CLI prints)."""
    out = {k: v for k, v in results.items() if k in ("fd", "band_energy_ratio")}
    if "spectrum" in results:
        out["spectrum_mean_abs_log_ratio"] = results["spectrum"]["mean_abs_log_ratio"]
    def pm(stats: dict[str, Any], digits: int) -> str:  # null (non-finite) printed as nan
        return " +- ".join("nan" if stats[k] is None else f"{stats[k]:.{digits}f}"
                           for k in ("mean", "std"))

    if "kid" in results:
        out["kid"] = pm(results["kid"], 5)
    if "class_accuracy" in results:
        out["class_accuracy"] = results["class_accuracy"]
        out["class_accuracy_per_class"] = results["class_accuracy_per_class"]
    if "inception" in results:
        inc = results["inception"]
        out["inception_fid"] = inc["fid"]
        if "kid" in inc:
            out["inception_kid"] = pm(inc["kid"], 5)
        out["inception_score"] = pm(inc["inception_score"], 3)
    if "grf_variance" in results:
        out["grf_variance_mean_abs_log_ratio"] = results["grf_variance"]["mean_abs_log_ratio"]
    return out


# --- several sample sets: FID as papers report it ---------------------------------------------
SET_METRICS = (  # (name in the summary, keys into evaluate's results): the scalar headlines
    ("fd", ("fd",)), ("kid", ("kid", "mean")), ("kid_blocks", ("kid_blocks", "mean")),
    ("class_accuracy", ("class_accuracy",)),
    ("spectrum_mean_abs_log_ratio", ("spectrum", "mean_abs_log_ratio")),
    ("spectrum_off_band", ("spectrum_off_band", "mean_abs_log_ratio")),
    ("band_energy_ratio", ("band_energy_ratio",)),
    ("grf_variance_mean_abs_log_ratio", ("grf_variance", "mean_abs_log_ratio")),
    ("inception_fid", ("inception", "fid")), ("inception_kid", ("inception", "kid", "mean")),
    ("inception_score", ("inception", "inception_score", "mean")))
SAME_JUDGEMENT = (  # what the sets of one summary must have been judged alike in
    ("reference",), ("num_reference",), ("classifier",), ("band",), ("filter_band",),
    ("inception", "inception_reference"), ("inception", "inception_weights"))
STATISTICS = ("mean, std (the sample standard deviation over the sets, ddof=1; null for one "
              "set), min and max over the sets; values: set by set")


@dataclasses.dataclass(frozen=True)
class SetInfo:
    """A sample set as ``find_sets`` checked it: its path, image count and shape, and the
    ``manifest.json`` beside it (``{}``: none)."""

    path: str
    count: int
    shape: tuple[int, ...]
    manifest: dict[str, Any]


def split_sets(samples: str | Sequence[str]) -> list[str]:
    """The sets ``--samples`` names: a list as it is, a string split at its commas
    (``A,B,C``) unless the whole string names a file or folder."""
    if isinstance(samples, str):
        parts = samples.split(",") if "," in samples and not files.exists(samples) else [samples]
    else:
        parts = [str(part) for part in samples]
    if not parts or any(not part.strip() for part in parts):
        raise ValueError(f"--samples={','.join(parts)}: an empty path in the list")
    return [part.strip() for part in parts]


def find_sets(samples: str | Sequence[str], fid_sets: int | None = None,
              model_units: bool = False, channels: int | None = None) -> list[SetInfo]:
    """The sample sets to judge together, each read once and checked: those ``samples`` names
    (``split_sets``), or with ``fid_sets=K`` and one set (``sagd_jax.sample``'s, of seed s)
    that set and the K - 1 sets of seeds s+1 .. s+K-1 beside it (``sampling.sibling_set``).
    One line naming the flag or file, before any work: a missing set, sets of other image
    shapes or sizes, sets made with other settings than the first's (but the seed), with
    the same seed, or with a manifest where another has none."""
    from sagd_jax import sample_files
    from sagd_jax.sampling import sibling_set

    paths = split_sets(samples)
    flag = "--samples"
    if fid_sets is not None:
        validate.integer("--fid_sets", fid_sets, 1)
        if len(paths) > 1 and len(paths) != fid_sets:
            raise ValueError(f"--fid_sets={fid_sets}: --samples names {len(paths)} sets")
    seen: dict[str, str] = {}
    for path in paths:
        if files.absolute(path).rstrip("/") in seen:
            raise ValueError(f"--samples: {path} named twice")
        seen[files.absolute(path).rstrip("/")] = path

    def read(path: str) -> SetInfo:
        loaded = sample_files.load(path, model_units, channels)
        return SetInfo(path, len(loaded.images), tuple(loaded.images.shape[1:]),
                       loaded.manifest)

    first = read(paths[0])
    if fid_sets is not None and len(paths) == 1 and fid_sets > 1:
        flag = f"--fid_sets={fid_sets}"
        seed = first.manifest.get("seed")
        if not isinstance(seed, int):
            raise ValueError(f"{flag}: --samples={first.path} has no manifest.json of "
                             "sagd_jax.sample beside it (its seed and settings); name the sets: "
                             "--samples=A,B,C")
        for other in range(seed + 1, seed + fid_sets):
            path = sibling_set(first.path, first.manifest, other)
            if path is None:
                raise ValueError(f"{flag}: --samples={first.path} is not in a folder of "
                                 "sagd_jax.sample --sets (DIR/seed<S>, or its default name); "
                                 "name the sets: --samples=A,B,C")
            if not files.exists(path):
                raise ValueError(f"{flag}: no set of seed {other} beside --samples="
                                 f"{first.path}: {path} is missing (python -m sagd_jax.sample "
                                 f"... --seed={seed} --sets={fid_sets} makes them)")
            paths.append(path)
    sets, seeds = [first], {first.manifest.get("seed"): first.path}
    for path in paths[1:]:
        info = read(path)
        _check_alike(flag, first, info)
        seed = info.manifest.get("seed")
        if info.manifest and seed in seeds:
            raise ValueError(f"{flag}: {path} has the seed of {seeds[seed]} ({seed}): the same "
                             "images; the sets of one FID have different seeds")
        seeds[seed] = path
        sets.append(info)
    return sets


def _check_alike(flag: str, first: SetInfo, info: SetInfo) -> None:
    """One line naming ``flag`` and ``info``'s file unless its set is comparable with
    ``first``'s: the same image shape and count, made with the same settings but the seed."""
    if info.shape != first.shape:
        raise ValueError(f"{flag}: {info.path} holds images {info.shape}, {first.path} "
                         f"{first.shape}")
    if info.count != first.count:
        raise ValueError(f"{flag}: {info.path} holds {info.count} images, {first.path} "
                         f"{first.count}; FID depends on the set size: judge sets of one size")
    if bool(info.manifest) != bool(first.manifest):
        without, other = (info, first) if first.manifest else (first, info)
        raise ValueError(f"{flag}: {without.path} has no manifest.json beside it, {other.path} "
                         "has; the sets of one FID come from one sampler")
    differing = sorted(key for key in info.manifest.keys() | first.manifest.keys()
                       if key != "seed" and info.manifest.get(key) != first.manifest.get(key))
    if differing:
        raise ValueError(f"{flag}: {info.path} was made with other settings than {first.path} "
                         f"({', '.join(differing)}); the sets of one FID differ only in their "
                         "seed")


def default_sets_out(first_path: str, has_manifest: bool, count: int) -> str:
    """Where ``evaluate_sets`` writes by default: ``fid_sets_<K>.json`` beside the first set's
    ``evaluation.json`` (``default_out``)."""
    judged = default_out(first_path, has_manifest)
    return judged.removesuffix("evaluation.json") + f"fid_sets_{count}.json"


def evaluate_sets(samples: str | Sequence[str], fid_sets: int | None = None,
                  out: str | None = None, *, overwrite: bool = False, config: Any = None,
                  model_units: bool = False, **options: Any) -> dict[str, Any]:
    """Judge several sample sets of one model (``find_sets``), each as ``evaluate`` does (its
    own results file beside it, reused when there), then write their summary
    (``summarize_sets``) to ``out`` (default ``default_sets_out``) and return it.
    ``options``: the rest of ``evaluate``'s. A summary already in ``out`` of these sets is
    returned as it is; ``overwrite`` judges every set again (old files kept as
    ``.previous``). Bad input raises a one-line ``ValueError`` before any set is judged."""
    channels = None if config is None else config.data.channels
    sets = find_sets(samples, fid_sets, model_units, channels)
    first = sets[0]
    out = (files.normalize(out) if out
           else default_sets_out(first.path, bool(first.manifest), len(sets)))
    if files.exists(out) and not overwrite:
        return _stored_sets(out, sets)
    judged = [default_out(info.path, bool(info.manifest)) for info in sets]
    for info, path in zip(sets, judged, strict=True):  # results of another size: refused now
        if files.exists(path) and not overwrite:
            _stored(path, info.count, flag=None, log=False)
    results = []
    for i, info in enumerate(sets):
        console.info("set %d of %d: %s", i + 1, len(sets), info.path)
        results.append(evaluate(info.path, None, config=config, model_units=model_units,
                                overwrite=overwrite, **options))
    summary_ = strict_json(summarize_sets(results, judged), out)
    if overwrite and files.exists(out):
        kept = files.set_aside(out, ".previous")
        console.info("%s: the earlier summary kept as %s", out, os.path.basename(kept))
    files.makedirs(files.dirname(files.absolute(out)))
    files.write_new_json("--out", out, summary_)
    console.info("summary of %d sets: %s", len(sets), out)
    return summary_


def _stored_sets(out: str, sets: Sequence[SetInfo]) -> dict[str, Any]:
    """The summary already in ``out`` when it is of ``sets`` (paths and sizes); a one-line
    ``ValueError`` otherwise."""
    try:
        stored = files.read_json(out)
    except (OSError, ValueError) as err:
        raise ValueError(f"--out={out}: exists and is unreadable ({one_line(err)}); pass "
                         "another --out") from None
    wanted = [(files.absolute(info.path), info.count) for info in sets]
    held = (stored.get("sets") if isinstance(stored, dict) else None) or []
    if [(entry.get("samples") if isinstance(entry, dict) else None, stored.get("num_samples"))
            for entry in held] != wanted:
        raise ValueError(f"--out={out}: holds a summary of other sets (or sizes); pass "
                         "--overwrite (every set judged again, old files kept) or another --out")
    console.info("summary: %s (already there; --overwrite computes it again)", out)
    return stored


def _dig(results: dict[str, Any], keys: Sequence[str]) -> Any:
    """``results[k0][k1]...``, or ``KeyError`` when a level is missing."""
    for key in keys:
        if not isinstance(results, dict):
            raise KeyError(key)
        results = results[key]
    return results


def summarize_sets(results: Sequence[dict[str, Any]],
                   evaluations: Sequence[str] | None = None) -> dict[str, Any]:
    """The summary of ``evaluate``'s results of several sets (``evaluations``: their files):
    for every scalar headline (``SET_METRICS``) that each set has, the ``mean``, ``std`` (the
    sample standard deviation, ddof=1: null for one set), ``min``, ``max`` and the ``values``
    set by set (null statistics when a set's value is null, non-finite); the ``seeds``, size
    and settings of the sets. Papers report the ``min`` (EDM: of 3 sets) or the ``mean``.
    A one-line ``ValueError`` when the sets were judged unalike (``SAME_JUDGEMENT``)."""
    first = results[0]
    for keys in SAME_JUDGEMENT:
        def get(item: dict[str, Any], keys: Sequence[str] = keys) -> Any:
            try:
                return _dig(item, keys)
            except KeyError:
                return None
        for other in results[1:]:
            if get(other) != get(first):
                name = ".".join(keys)
                raise ValueError(f"{other['samples']}: judged with {name}={get(other)!r}, "
                                 f"{first['samples']} with {get(first)!r}; pass --overwrite to "
                                 "judge every set alike")
    metrics: dict[str, Any] = {}
    for name, keys in SET_METRICS:
        values = []
        for item in results:
            try:
                values.append(_dig(item, keys))
            except KeyError:
                break
        if len(values) < len(results):
            if values:
                console.warning("%s: in %d of %d sets' results only; left out of the summary "
                                "(--overwrite judges every set alike)", name, len(values),
                                len(results))
            continue
        metrics[name] = _statistics(values)
    manifest = dict(first.get("sampling") or {})
    seeds = [(item.get("sampling") or {}).get("seed") for item in results]
    manifest.pop("seed", None)
    return {"num_sets": len(results), "seeds": seeds, "num_samples": first["num_samples"],
            "statistics": STATISTICS, "std_ddof": 1, "metrics": metrics,
            "sets": [{"samples": item["samples"], "seed": seed,
                      "evaluation": None if evaluations is None else files.absolute(path)}
                     for item, seed, path in zip(results, seeds, evaluations or results,
                                                 strict=True)],
            "sampling": manifest}


def _statistics(values: Sequence[Any]) -> dict[str, Any]:
    """``mean``, ``std`` (ddof=1), ``min``, ``max`` of ``values`` (None for all when one is
    None or there is no spread to estimate) and the ``values``."""
    finite = all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
                 for v in values)
    array = np.asarray(values, np.float64) if finite else None
    return {"mean": None if array is None else float(array.mean()),
            "std": None if array is None or len(array) < 2 else float(array.std(ddof=1)),
            "min": None if array is None else float(array.min()),
            "max": None if array is None else float(array.max()),
            "values": list(values)}


def sets_headline(summary_: dict[str, Any]) -> dict[str, Any]:
    """What the CLI prints of ``evaluate_sets``' summary: seeds, size and the statistics."""
    return {"num_sets": summary_["num_sets"], "seeds": summary_["seeds"],
            "num_samples": summary_["num_samples"], "std_ddof": 1, **summary_["metrics"]}


def likelihood(workdir: str, model: str = "ema", num_images: int = 256, steps: int = 100,
               trace: str = "hutchinson", probes: int = 1, seed: int = 0,
               out: str | None = None, batch_size: int = 64, params: str = "ema"
               ) -> dict[str, Any]:
    """Negative log-likelihood of ``workdir``'s reference images (``python -m
    sagd_jax.likelihood`` says how); the results, also written to ``out`` (never overwritten).
    ``params``: the network's weights, ``ema`` or ``posthoc:STD`` (``sagd_jax.posthoc``)."""
    import jax

    from sagd_jax import log_density as lk
    from sagd_jax import posthoc, rng
    from sagd_jax.run import Run

    validate.integer("--num_images", num_images, 1)
    validate.one_of("--trace", trace, lk.TRACES)
    validate.integer("--ode_steps", steps, 1)
    validate.integer("--probes", probes, 1)
    name = posthoc.params_name(params)
    if name and model == "exact":
        raise validate.fail("--params", params, "needs the network (--model=ema)")
    run = Run.from_workdir(workdir)
    if run.latent is not None:  # its density is of latents: the pixels' needs the decoder's
        raise ValueError(f"--workdir={workdir}: a latent run (data.autoencoder="
                         f"{run.latent.path}); the likelihood of pixels is not computed for it")
    if model == "exact":
        eps_fn, step = run.exact_model().eps_fn(run.process), None
    else:
        weights, step, _ = posthoc.params(run, run.mesh(fit=True), params)
        eps_fn = run.eps_fn(weights)
    out = out or files.join(run.workdir.path, "likelihood",
                            f"{model}{name}-{steps}steps-{trace}-seed{seed}.json")
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
    results = strict_json(results, out)
    files.write_json(out, results, exclusive=True)
    return results
