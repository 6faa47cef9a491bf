"""The config: every key and its one default (``default_config``), normalisation of a
user's config onto it (unknown keys refused, naming the closest known ones), config files
and ``KEY=VALUE`` overrides, and the checks of ``seed``, ``train.*``, ``optim.*`` and
``noise.fit*``.

Each check raises a one-line ``ValueError`` naming the key, e.g.
``train.batch_size=0: must be an integer >= 1``. Sections with their own builders validate
themselves: ``data`` (``sagd_jax.data``), ``noise`` and ``diffusion`` (``DiffusionProcess``),
``model`` (``sagd_jax.models.build_model``); ``sagd_jax.run.Run`` runs them all, once.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import difflib
import importlib.machinery
import importlib.util
import inspect
import math
import os
import pathlib
import re
import time
import traceback
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections

from sagd_jax import noise_fit, validate
from sagd_jax.data import default_data_config
from sagd_jax.ema_profiles import std_to_exponent
from sagd_jax.samplers import SAMPLERS
from sagd_jax.time_grids import GRIDS

NONFINITE_POLICIES = ("stop", "skip")
FREE_FORM = "diffusion.schedule_kwargs"  # keyword arguments of the schedule: any keys

# The resume-identity rule (``Workdir.prepare``; docs/training.md, "Changing the config of a
# run"): keys (and sections) a resume may change silently, because no step computes anything
# else with them. The structural keys (``sagd_jax.workdir.STRUCTURAL_KEYS``) never change;
# every other key is the run's identity: a change needs ``--allow_config_change``.
RESUME_MAY_CHANGE = (
    "train.num_steps",  # how long: the steps that run are the same
    # what is observed and kept: logs, checkpoints, sample grids, profiles, evaluations
    "train.log_every", "train.checkpoint_every", "train.keep_checkpoints", "train.sample_every",
    "train.num_samples", "train.sampler", "train.sample_steps", "train.time_grid",
    "train.profile_steps", "train.eval_every", "train.guidance", "eval",
    "train.nonfinite",  # what follows a non-finite step (dropped under both policies)
    "ema.snapshot_every",  # how often the profiles are kept (whether they exist: posthoc_profiles)
    # where and how fast: the same global batch laid out over devices and microbatches
    "mesh", "train.grad_accum_steps", "train.compilation_cache_dir", "data.num_workers",
    "data.prefetch", "data.download",
    "data.latent_cache",  # where a latent run's encoded data lives: the same latents
)
# Whether ``Workdir.prepare`` may resume with changed identity keys (``allowing_config_change``).
ALLOW_CONFIG_CHANGE: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "sagd_allow_config_change", default=False)


def default_config() -> ml_collections.ConfigDict:
    """Every key the trainer reads, with defaults; ``configs/*.py`` start from this.

    seed: the run's seed (data order, init, noise, dropout, samples).
    data: see ``sagd_jax.data.default_data_config``.
    noise: the SAGD covariance (``gamma``, ``rho0``, ``bands``, ``normalize``) and
      ``project_data`` (train on the data projected onto its support). ``fit``: "" (off),
      "powerlaw" or "spectrum": before a new run trains, ``w`` is fitted to the power spectrum
      of ``fit_images`` training images (``sagd_jax.noise_fit``): "powerlaw" sets ``gamma``
      and ``rho0``, "spectrum" sets ``profile`` on the radial knots ``profile_rho`` (it
      replaces the power law; the bands still multiply) from the smoothed spectrum to the
      power ``fit_exponent`` (1: noise shaped like the data, 0: white); ``fit_result`` says
      what was fitted. The fitted values are saved in ``config.json``; a resume reuses them.
    diffusion: ``schedule`` (vp_sde | ddpm_linear | cosine | ve), ``schedule_kwargs``,
      ``prediction`` (eps | x0 | v), ``parameterization`` (none | edm: Karras et al.'s
      preconditioning of an x0 prediction, with ``sigma_data``); a per-frequency schedule
      (``sagd_jax.frequency_schedule``, off by default): ``noise_exponent_start`` (the noise
      shape ``w^s(t)``, ``s(t) = start + (1 - start) t^noise_exponent_power``; 1 = constant
      ``Sigma``, 0 = white near the data) and ``blur_sigma_max`` (pixels of Gaussian blur of
      the signal at t = 1, blurring diffusion; 0 = off) with its floor ``blur_min``; the loss
      (``sagd_jax.loss_weighting``, docs/math.md section 13): ``loss_weighting`` (none | snr |
      min_snr | sigmoid | edm: a weight on each frequency bin's eps error from its own
      signal-to-noise ratio; none = the plain loss) with ``min_snr_gamma`` and
      ``sigmoid_bias``, and ``frequency_loss_weights`` ("" = off, or a per-bin weight: bands
      in the ``noise.bands`` syntax or ``powerlaw:GAMMA[:RHO0]``).
    model: the network (``sagd_jax.models.build_model``): ``name`` ``unet`` (the DDPM++
      U-Net: ``ch``, ``ch_mult``, ``num_res_blocks``, ``attn_resolutions``, ``num_groups``) or
      ``dit`` (the Diffusion Transformer: ``patch_size``, ``hidden_size``, ``depth``,
      ``num_heads``, ``mlp_ratio``; the defaults are DiT-S/2's); both: ``dropout`` (0 for a
      DiT), ``dtype``, ``remat``, ``num_classes``.
    optim: AdamW (``learning_rate``, ``warmup_steps``, ``b1``, ``b2``, ``eps``,
      ``weight_decay``), ``grad_clip`` (global norm, 0 = off), ``ema_decay``.
    ema: post-hoc EMA (Karras et al. 2024; ``sagd_jax.ema_profiles``): ``snapshot_every``
      (steps between snapshots of the profiles in ``WORKDIR/ema_snapshots``; 0 = off, no
      profiles kept) and ``posthoc_stds`` (the relative stds of the power-function EMA
      profiles the train state keeps beside ``optim.ema_decay``'s EMA).
    train: ``num_steps``, ``batch_size`` (global), ``log_every``, ``checkpoint_every``,
      ``keep_checkpoints``, ``sample_every``, ``num_samples``, ``sampler``, ``sample_steps``,
      ``time_grid`` (``auto | uniform | edm | snr | logsnr``: ``sagd_jax.time_grids``; auto:
      logsnr for ddim and dpmpp_2m, else uniform),
      ``nonfinite`` (stop | skip: what a step with a non-finite loss or gradient does),
      ``grad_accum_steps`` (the global batch in this many microbatches, summed in the step),
      ``compilation_cache_dir`` (JAX's persistent compilation cache: "auto" = the user cache
      folder, "" = off, else a folder), ``profile_steps`` (``(first, last)``: a profiler
      trace of those steps in the workdir; ``()`` = none), ``eval_every`` (steps between
      in-training FID/KID evaluations, 0 = off); for a class-conditional model
      (``model.num_classes > 0``): ``label_dropout`` (the probability that a training
      example's label is replaced by the null label, which trains the unconditional
      prediction of classifier-free guidance) and ``guidance`` (the guidance weight of the
      in-training samples and evaluation, which use balanced labels: 1 = none).
    eval: the in-training evaluation (``sagd_jax.train.in_training_eval``): ``num_samples`` from the
      EMA weights in batches of ``batch_size`` through ``sampler`` with ``steps`` ("" / 0:
      ``train.sampler`` / ``train.sample_steps``), FID and KID against the Inception reference
      of ``reference_split`` ("" = ``data.split``; at most ``reference_images`` images);
      ``inception_weights`` ("" = ``$SAGD_JAX_INCEPTION``, the cache, or a download).
    mesh: the device mesh ``(data, fsdp)``: batches split over both axes, parameters,
      optimizer state and EMA sharded over ``fsdp``; -1 = all the devices the other leaves.
    """
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = default_data_config()
    c.noise = ml_collections.ConfigDict(dict(gamma=1.0, rho0=0.1, bands="", normalize=True,
                                             project_data=False, fit="", fit_images=1000,
                                             fit_exponent=1.0, profile=(), profile_rho=(),
                                             fit_result=""))
    c.diffusion = ml_collections.ConfigDict(
        dict(schedule="vp_sde", prediction="eps", schedule_kwargs=ml_collections.ConfigDict(),
             noise_exponent_start=1.0, noise_exponent_power=1.0, blur_sigma_max=0.0,
             blur_min=0.001, parameterization="none", sigma_data=0.5, loss_weighting="none",
             min_snr_gamma=5.0, sigmoid_bias=0.0, frequency_loss_weights="")
    )
    c.model = ml_collections.ConfigDict(dict(
        name="unet", ch=64, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(7,),
        dropout=0.1, num_groups=32, dtype="float32", remat=False, num_classes=0,
        patch_size=2, hidden_size=384, depth=12, num_heads=6, mlp_ratio=4.0,
    ))
    c.optim = ml_collections.ConfigDict(dict(
        learning_rate=2e-4, warmup_steps=500, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
        grad_clip=1.0, ema_decay=0.999,
    ))
    c.ema = ml_collections.ConfigDict(dict(snapshot_every=0, posthoc_stds=(0.05, 0.1)))
    c.train = ml_collections.ConfigDict(dict(
        num_steps=10_000, batch_size=128, log_every=100, checkpoint_every=1000,
        keep_checkpoints=3, sample_every=2000, num_samples=64, sampler="ddpm", sample_steps=250,
        time_grid="auto",
        nonfinite="stop", grad_accum_steps=1, compilation_cache_dir="auto", profile_steps=(),
        eval_every=0, label_dropout=0.0, guidance=1.0,
    ))
    c.eval = ml_collections.ConfigDict(dict(
        num_samples=10_000, batch_size=500, sampler="", steps=0, reference_split="",
        reference_images=50_000, inception_weights="",
    ))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    return c


def flat_keys(config: Any, prefix: str = "") -> list[str]:
    """Every dotted leaf key of a config (``train.batch_size``, ...), sections expanded."""
    keys = []
    for key, value in config.items():
        if isinstance(value, (dict, ml_collections.ConfigDict)) and len(value):
            keys += flat_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def unknown_key_error(key: str, known: list[str], flag: str = "--config.") -> ValueError:
    """``--config.train.nosuchkey: no such config key; closest: train.num_steps, ...``."""
    closest = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
    if not closest:  # a typo in the section: offer the keys of the closest section
        section, _, leaf = key.partition(".")
        sections = sorted({k.split(".")[0] for k in known})
        near = difflib.get_close_matches(section, sections, n=1, cutoff=0.5)
        if near:
            closest = difflib.get_close_matches(f"{near[0]}.{leaf}", known, n=3, cutoff=0.0)
    hint = f"; closest: {', '.join(closest)}" if closest else ""
    return ValueError(f"{flag}{key}: no such config key{hint}")


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """Every dotted leaf of a JSON-like dict (empty dicts are leaves)."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out |= _leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _under(key: str, prefixes: Any) -> bool:
    """Whether ``key`` is one of ``prefixes`` or inside one of those sections."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def identity_changes(saved: dict[str, Any], current: dict[str, Any], skip: Any = ()
                     ) -> dict[str, tuple[Any, Any]]:
    """``{key: (old, new)}`` for each dotted leaf where the JSON configs ``saved`` and
    ``current`` differ, outside ``RESUME_MAY_CHANGE`` and the sections in ``skip``."""
    old, new = _leaves(saved), _leaves(current)
    return {key: (old.get(key), new.get(key)) for key in sorted(old.keys() | new.keys())
            if old.get(key) != new.get(key) and not _under(key, (*RESUME_MAY_CHANGE, *skip))}


def change_record(step: int | None, changes: dict[str, tuple[Any, Any]]) -> dict[str, Any]:
    """The line of ``config_changes.jsonl`` for ``changes`` allowed at ``step`` (UTC time)."""
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "step": step,
            "changes": {key: {"old": old, "new": new} for key, (old, new) in changes.items()}}


@contextlib.contextmanager
def allowing_config_change(allowed: bool) -> Iterator[None]:
    """Within the block, ``Workdir.prepare`` resumes a run whose identity keys changed (and
    records the change) instead of refusing it: the trainer's ``--allow_config_change``."""
    token = ALLOW_CONFIG_CHANGE.set(bool(allowed))
    try:
        yield
    finally:
        ALLOW_CONFIG_CHANGE.reset(token)


def check_keys(keys: Any, config: Any, flag: str = "--config.") -> None:
    """Raise ``unknown_key_error`` for the first of ``keys`` (dotted) that ``config`` lacks
    (a section counts as a key too: ``--config.model=...`` is known)."""
    known = flat_keys(config)
    sections = {".".join(k.split(".")[:i]) for k in known for i in range(1, k.count(".") + 1)}
    for key in keys:
        if key not in known and key not in sections:
            raise unknown_key_error(key, known, flag)


def normalize(config: Any) -> ml_collections.ConfigDict:
    """``config`` (a ConfigDict or a dict) on top of ``default_config()``: every key the code
    reads is present with one default; a key the defaults lack is an error naming the closest
    known keys. JSON lists become tuples. Returns a new, unlocked ConfigDict."""
    values = config if isinstance(config, dict) else config.to_dict()
    merged = default_config()
    known = flat_keys(merged)

    def merge(node: ml_collections.ConfigDict, items: dict[str, Any], prefix: str) -> None:
        for key, value in items.items():
            path = f"{prefix}{key}"
            if key not in node and path != FREE_FORM and not path.startswith(FREE_FORM + "."):
                raise unknown_key_error(f"{prefix}{key}", known, flag="")
            current = node.get(key)
            if isinstance(value, dict) and (isinstance(current, ml_collections.ConfigDict)
                                            or key not in node):
                if key not in node:
                    node[key] = ml_collections.ConfigDict()
                merge(node[key], value, f"{prefix}{key}.")
                continue
            with node.ignore_type():
                node[key] = tuple(value) if isinstance(value, list) else value

    merge(merged, values, "")
    return merged


def validate_config(config: Any, device_count: int | None = None) -> None:
    """Check ``seed``, ``train.*``, ``optim.*`` and the ``noise.fit*`` keys; raise a one-line
    ``ValueError``."""
    device_count = jax.device_count() if device_count is None else device_count
    validate.integer(*validate.entry(config, "seed"), 0)
    noise_fit.check_options(validate.lookup(config, "noise"))
    validate.integer(*validate.entry(config, "train.num_steps"), 1)
    batch = validate.integer(*validate.entry(config, "train.batch_size"), 1)
    mesh_axes(config)
    accum = validate.integer(*validate.entry(config, "train.grad_accum_steps"), 1)
    if batch % (accum * device_count):
        raise validate.fail("train.batch_size", batch,
                            f"must be divisible by train.grad_accum_steps x the device count "
                            f"({accum} x {device_count})")
    validate.text(*validate.entry(config, "train.compilation_cache_dir"), empty=True)
    profile = validate.lookup(config, "train.profile_steps")
    if profile != () and not (isinstance(profile, (tuple, list)) and len(profile) == 2
                              and all(validate.is_int(v) for v in profile)
                              and 0 <= profile[0] <= profile[1]):
        raise validate.fail("train.profile_steps", profile,
                            "must be () or (first, last) with 0 <= first <= last")
    for key in ("checkpoint_every", "log_every", "sample_every", "num_samples", "sample_steps",
                "keep_checkpoints"):
        validate.integer(*validate.entry(config, f"train.{key}"), 1)
    validate.one_of(*validate.entry(config, "train.sampler"), SAMPLERS)
    validate.one_of(*validate.entry(config, "train.time_grid"), ("auto", *GRIDS))
    validate.integer(*validate.entry(config, "train.eval_every"), 0)
    for key in ("num_samples", "batch_size", "reference_images"):
        validate.integer(*validate.entry(config, f"eval.{key}"), 2)
    validate.integer(*validate.entry(config, "eval.steps"), 0)
    validate.one_of(*validate.entry(config, "eval.sampler"), ("", *SAMPLERS))
    for key in ("reference_split", "inception_weights"):
        validate.text(*validate.entry(config, f"eval.{key}"), empty=True)
    if config.train.eval_every and config.eval.batch_size % device_count:
        raise validate.fail("eval.batch_size", config.eval.batch_size,
                            f"must be divisible by the device count ({device_count})")
    validate.one_of(*validate.entry(config, "train.nonfinite"), NONFINITE_POLICIES)
    check_classes(config)
    optim = validate.lookup(config, "optim")
    validate.number("optim.learning_rate", optim["learning_rate"], 0.0, 1.0, open_lo=True)
    validate.integer("optim.warmup_steps", optim["warmup_steps"], 0)
    validate.number("optim.b1", optim["b1"], 0.0, 1.0, open_hi=True)
    validate.number("optim.b2", optim["b2"], 0.0, 1.0, open_hi=True)
    validate.number("optim.eps", optim["eps"], 0.0, 1.0, open_lo=True)
    validate.number("optim.weight_decay", optim["weight_decay"], 0.0, 1.0)
    validate.number("optim.grad_clip", optim["grad_clip"], 0.0, math.inf, open_hi=True)
    validate.number("optim.ema_decay", optim["ema_decay"], 0.0, 1.0, open_hi=True)
    posthoc_profiles(config)


def posthoc_profiles(config: Any) -> tuple[float, ...]:
    """The relative stds of the post-hoc EMA profiles the run keeps, checked: ``ema.posthoc_stds``
    (distinct, each a power-function profile's std) with ``ema.snapshot_every > 0``, else ``()``
    (no profiles: the plain train state)."""
    every = validate.integer(*validate.entry(config, "ema.snapshot_every"), 0)
    key, stds = validate.entry(config, "ema.posthoc_stds")
    if not isinstance(stds, (tuple, list)) or not stds:
        raise validate.fail(key, stds, "must be a non-empty tuple of relative stds")
    stds = tuple(validate.number(key, std) for std in stds)
    for std in stds:
        try:
            std_to_exponent(std)
        except ValueError as err:
            raise validate.fail(key, stds, str(err)) from None
    if len(set(stds)) != len(stds):
        raise validate.fail(key, stds, "must be distinct")
    return stds if every > 0 else ()


def check_classes(config: Any) -> int:
    """``model.num_classes`` checked against ``data.num_classes`` (a conditional model needs
    the data's labels, of as many classes) and the keys that need labels
    (``train.label_dropout``, ``train.guidance``); returns ``model.num_classes``."""
    classes = validate.integer(*validate.entry(config, "model.num_classes"), 0)
    data_classes = validate.integer(*validate.entry(config, "data.num_classes"), 0)
    dropout = validate.number(*validate.entry(config, "train.label_dropout"), 0.0, 1.0,
                              open_hi=True)
    guidance = validate.number(*validate.entry(config, "train.guidance"), 0.0)
    if classes and classes != data_classes:
        raise validate.fail("model.num_classes", classes,
                            f"needs the data's labels of as many classes: set "
                            f"data.num_classes={classes} (it is {data_classes})")
    if not classes and dropout:
        raise validate.fail("train.label_dropout", dropout,
                            "needs a class-conditional model (model.num_classes > 0)")
    if not classes and guidance != 1.0:
        raise validate.fail("train.guidance", guidance,
                            "needs a class-conditional model (model.num_classes > 0)")
    return classes


def mesh_axes(config: Any) -> dict[str, int]:
    """``{"data": d, "fsdp": f}`` of ``mesh.*``, each -1 (the rest) or >= 1, checked."""
    sizes = {}
    for axis in ("data", "fsdp"):
        key, value = validate.entry(config, f"mesh.{axis}")
        if not validate.is_int(value) or (value != -1 and value < 1):
            raise validate.fail(key, value, "must be -1 (the rest) or an integer >= 1")
        sizes[axis] = int(value)
    if sizes["data"] == sizes["fsdp"] == -1:
        raise validate.fail("mesh.data", -1, "only one of mesh.data and mesh.fsdp may be -1")
    return sizes


def mesh_shape(config: Any, device_count: int | None = None) -> tuple[int, int]:
    """``(data, fsdp)`` of ``mesh.*`` for ``device_count`` devices (a -1 takes the rest);
    a one-line ``ValueError`` when they do not multiply to the device count."""
    device_count = jax.device_count() if device_count is None else device_count
    sizes = mesh_axes(config)
    for axis, other in (("data", "fsdp"), ("fsdp", "data")):
        if sizes[axis] == -1:
            if device_count % sizes[other]:
                raise validate.fail(f"mesh.{other}", sizes[other], f"does not divide the device "
                                    f"count ({device_count})")
            sizes[axis] = device_count // sizes[other]
    if sizes["data"] * sizes["fsdp"] != device_count:
        raise validate.fail("mesh.fsdp", sizes["fsdp"], f"mesh.data x mesh.fsdp = "
                            f"{sizes['data'] * sizes['fsdp']}, not the device count "
                            f"({device_count})")
    return sizes["data"], sizes["fsdp"]


# The built-in configs: the repository's top-level configs/ folder, installed as this
# subpackage (pyproject.toml's package-dir maps sagd_jax.configs to configs/).
BUILTIN_CONFIGS = "sagd_jax.configs"
_BARE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def builtin_config_dir() -> pathlib.Path | None:
    """The folder of the built-in configs: that of the package ``sagd_jax.configs`` (a wheel
    install), else ``configs/`` beside the ``sagd_jax`` folder of a checkout (an editable
    install, whose finder cannot map a subpackage without ``__init__.py``; a checkout on
    ``PYTHONPATH``); None if neither."""
    spec = importlib.util.find_spec(BUILTIN_CONFIGS)
    folders = [pathlib.Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    checkout = pathlib.Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file():
        folders.append(checkout / "configs")
    return next((folder for folder in folders if folder.is_dir()), None)


def builtin_configs() -> list[str]:
    """The names of the built-in configs (``quickstart``, ``cifar10_ddpmpp``, ...), sorted."""
    folder = builtin_config_dir()
    if folder is None:
        return []
    return sorted(p.stem for p in folder.glob("*.py")
                  if _BARE_NAME.fullmatch(p.stem) and not p.stem.startswith("_"))


def resolve_config_spec(spec: str) -> str:
    """``--config``'s ``PATH[:VARIANT]`` with a built-in config's name replaced by its file.

    ``PATH`` names a file when such a file exists (relative to the working directory), as
    given; otherwise a bare name (letters, digits and underscores: no ``/``, no ``.py``)
    names the built-in config ``configs/NAME.py`` shipped with the package (``quickstart``,
    ``quickstart:VARIANT``), whatever the working directory (a folder of that name there, a
    workdir say, does not hide it). An unknown bare name raises a one-line ``ValueError``
    listing the built-in names; any other spec is returned unchanged (``load_config_file``
    reports a missing file or a directory)."""
    path, colon, variant = spec.partition(":")
    if os.path.isfile(path) or not _BARE_NAME.fullmatch(path):
        return spec
    names = builtin_configs()
    if path not in names and os.path.isdir(path):  # "is a directory" (load_config_file)
        return spec
    if path not in names:
        closest = difflib.get_close_matches(path, names, n=1)
        hint = f" (closest: {closest[0]})" if closest else ""
        raise ValueError(f"--config={spec}: no such file or built-in config {path!r}{hint}; "
                         f"built-in: {', '.join(names) or 'none (sagd_jax.configs missing)'}")
    return f"{builtin_config_dir() / (path + '.py')}{colon}{variant}"


def check_variant(variant: str, known: Any) -> None:
    """A config file's ``get_config(variant)`` guard: an unknown ``variant`` is a one-line
    ``ValueError`` listing ``known`` (its names, in order)."""
    if variant not in known:
        raise ValueError(f"config variant {variant!r}: known: {', '.join(known)}")


def load_config_file(spec: str, overrides: Any = ()) -> ml_collections.ConfigDict:
    """``configs/NAME.py[:VARIANT]``, or a built-in config's name ``NAME[:VARIANT]``
    (``resolve_config_spec``) -> its ``get_config([VARIANT])``, as ``--config`` loads it,
    then each ``(key, text)`` of ``overrides`` applied with ``override``. A file that is
    missing, does not load or whose ``get_config`` fails, and an unknown variant, raise a
    one-line ``ValueError`` naming the file (and the line, or the known variants)."""
    flag = f"--config={spec}"
    path, has_variant, variant = resolve_config_spec(spec).partition(":")
    if os.path.isdir(path):
        raise ValueError(f"{flag}: {path} is a directory, not a config file")
    if not os.path.isfile(path):
        stem = os.path.basename(path).removesuffix(".py")
        hint = (f" (the built-in config: --config={stem}{':' if has_variant else ''}{variant})"
                if path.endswith(".py") and stem in builtin_configs() else "")
        raise ValueError(f"{flag}: no such file {path}{hint}")
    module = _load_module(flag, path)
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ValueError(f"{flag}: no get_config() in the file")
    args = (variant,) if has_variant else ()  # as ``config_flags`` calls it
    _check_variant(flag, module, get_config, args)
    try:
        config = get_config(*args)
    except SystemExit as err:  # not a way out of the tool: bad input like any other
        raise ValueError(f"{flag}: get_config() called sys.exit({err.code!r})") from None
    except Exception as err:  # noqa: BLE001 - the user's code: any error is bad input
        if isinstance(err, ValueError):  # the config's own refusal reads as it is
            raise ValueError(f"{flag}: {_first_line(err)}") from None
        raise ValueError(f"{flag}: get_config() raised {type(err).__name__}: "
                         f"{_first_line(err)}{_where(err, path)}") from None
    if not isinstance(config, (ml_collections.ConfigDict, dict)):
        raise ValueError(f"{flag}: get_config() returned {type(config).__name__}, not a "
                         "ConfigDict")
    for key, text in overrides:
        override(config, key, text)
    return config


def _load_module(flag: str, path: str) -> Any:
    """The config file ``path`` executed as a module (any extension, as ``config_flags``)."""
    loader = importlib.machinery.SourceFileLoader("sagd_config_file", path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    try:
        loader.exec_module(module)
    except SyntaxError as err:  # IndentationError too
        line = f":{err.lineno}" if err.lineno else ""
        raise ValueError(f"{flag}: syntax error at {err.filename or path}{line}: {err.msg}"
                         ) from None
    except SystemExit as err:  # not a way out of the tool: bad input like any other
        raise ValueError(f"{flag}: loading the file called sys.exit({err.code!r})"
                         f"{_where(err, path)}") from None
    except Exception as err:  # noqa: BLE001 - the user's code: any error is bad input
        raise ValueError(f"{flag}: loading the file raised {type(err).__name__}: "
                         f"{_first_line(err)}{_where(err, path)}") from None
    return module


def _check_variant(flag: str, module: Any, get_config: Any, args: tuple) -> None:
    """Refuse a variant the config cannot take: ``get_config`` takes no argument, or the
    module's ``VARIANTS`` (a dict or a sequence of names) lacks it."""
    if not args:
        return
    try:
        params = inspect.signature(get_config).parameters.values()
    except (TypeError, ValueError):  # not introspectable: let get_config decide
        return
    if not any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
               for p in params):
        raise ValueError(f"{flag}: no variant {args[0]!r}: this config has none (its "
                         "get_config() takes no argument)")
    known = getattr(module, "VARIANTS", None)
    if isinstance(known, (dict, list, tuple)) and all(isinstance(k, str) for k in known):
        if args[0] not in known:
            closest = difflib.get_close_matches(args[0], list(known), n=1, cutoff=0.5)
            hint = f" (closest: {closest[0]})" if closest else ""
            raise ValueError(f"{flag}: no such variant {args[0]!r}{hint}; known: "
                             f"{', '.join(known)}")


def _first_line(err: BaseException) -> str:
    """An exception's message on one line (its first non-empty line, else its type)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _where(err: BaseException, path: str) -> str:
    """`` (at FILE:LINE)``: the last line of the config file ``path`` in ``err``'s traceback."""
    target = os.path.abspath(path)
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if os.path.abspath(f.filename) == target]
    return f" (at {path}:{frames[-1].lineno})" if frames else ""


def parse_value(key: str, text: str, current: Any) -> Any:
    """A command-line string as the type of the config's current value at ``key``."""
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, str):
            return text
        if isinstance(current, (tuple, list)):
            value = ast.literal_eval(text)
            return tuple(value) if isinstance(value, (tuple, list)) else (value,)
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValueError(f"{key}={text}: not a {type(current).__name__}") from None


def parent_of(config: ml_collections.ConfigDict, key: str) -> tuple[Any, str]:
    """``(section, leaf)`` of a dotted ``key`` (``"train.num_steps"`` -> ``(config.train,
    "num_steps")``), so that ``section[leaf]`` is the value; the key is assumed known."""
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    return node, leaf


def override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Set ``config[key]`` (dotted) from a command-line string; an unknown key is an error
    naming the closest known keys."""
    check_keys([key], config, flag="")
    node, leaf = parent_of(config, key)
    if isinstance(node[leaf], ml_collections.ConfigDict):
        raise ValueError(f"{key}: is a config section, not a value")
    with node.ignore_type():
        node[leaf] = parse_value(key, text, node[leaf])
