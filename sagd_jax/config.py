"""Validation of the trainer's config values, before anything is compiled or written.

Each check raises a one-line ``ValueError`` naming the key, e.g.
``train.batch_size=0: must be an integer >= 1``. Sections with their own builders validate
themselves: ``data`` (``sagd_jax.data``), ``noise`` and ``diffusion`` (``DiffusionProcess``),
``model`` (``sagd_jax.models.build_model``).
"""

from __future__ import annotations

import ast
import importlib.util
import math
import os
from typing import Any

import jax
import ml_collections

from sagd_jax.data import default_data_config
from sagd_jax.samplers import SAMPLERS

NONFINITE_POLICIES = ("stop", "skip")


def default_config() -> ml_collections.ConfigDict:
    """Every key the trainer reads, with defaults; ``configs/*.py`` start from this.

    seed: the run's seed (data order, init, noise, dropout, samples).
    data: see ``sagd_jax.data.default_data_config``.
    noise: the SAGD covariance (``gamma``, ``rho0``, ``bands``, ``normalize``) and
      ``project_data`` (train on the data projected onto its support).
    diffusion: ``schedule`` (vp_sde | ddpm_linear | cosine | ve), ``schedule_kwargs``,
      ``prediction`` (eps | x0 | v).
    model: the DDPM++ U-Net (``sagd_jax.models.build_model``).
    optim: AdamW (``learning_rate``, ``warmup_steps``, ``b1``, ``b2``, ``eps``,
      ``weight_decay``), ``grad_clip`` (global norm, 0 = off), ``ema_decay``.
    train: ``num_steps``, ``batch_size`` (global), ``log_every``, ``checkpoint_every``,
      ``keep_checkpoints``, ``sample_every``, ``num_samples``, ``sampler``, ``sample_steps``,
      ``nonfinite`` (stop | skip: what a step with a non-finite loss or gradient does).
    """
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = default_data_config()
    c.noise = ml_collections.ConfigDict(dict(gamma=1.0, rho0=0.1, bands="", normalize=True,
                                             project_data=False))
    c.diffusion = ml_collections.ConfigDict(
        dict(schedule="vp_sde", prediction="eps", schedule_kwargs=ml_collections.ConfigDict())
    )
    c.model = ml_collections.ConfigDict(dict(
        ch=64, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(7,), dropout=0.1,
        num_groups=32, dtype="float32", remat=False,
    ))
    c.optim = ml_collections.ConfigDict(dict(
        learning_rate=2e-4, warmup_steps=500, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
        grad_clip=1.0, ema_decay=0.999,
    ))
    c.train = ml_collections.ConfigDict(dict(
        num_steps=10_000, batch_size=128, log_every=100, checkpoint_every=1000,
        keep_checkpoints=3, sample_every=2000, num_samples=64, sampler="ddpm", sample_steps=250,
        nonfinite="stop",
    ))
    return c


def _get(config: Any, key: str) -> Any:
    node = config
    for part in key.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError):
            raise ValueError(f"{key}: missing from the config") from None
    return node


def _integer(config: Any, key: str, minimum: int) -> int:
    value = _get(config, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key}={value!r}: must be an integer >= {minimum}")
    return value


def _number(config: Any, key: str, lo: float, hi: float, *, open_lo: bool = False,
            open_hi: bool = False) -> float:
    value = _get(config, key)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    above = value > lo if open_lo else value >= lo
    below = value < hi if open_hi else value <= hi
    ok = ok and above and below
    if not ok:
        interval = f"{'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"
        raise ValueError(f"{key}={value!r}: must be a finite number in {interval}")
    return float(value)


def validate_config(config: Any, device_count: int | None = None) -> None:
    """Check ``seed``, ``train.*`` and ``optim.*``; raise a one-line ``ValueError``."""
    device_count = jax.device_count() if device_count is None else device_count
    _integer(config, "seed", 0)
    _integer(config, "train.num_steps", 1)
    batch = _integer(config, "train.batch_size", 1)
    if batch % device_count:
        raise ValueError(
            f"train.batch_size={batch}: must be divisible by the device count ({device_count})"
        )
    for key in ("checkpoint_every", "log_every", "sample_every", "num_samples", "sample_steps",
                "keep_checkpoints"):
        _integer(config, f"train.{key}", 1)
    sampler = _get(config, "train.sampler")
    if sampler not in SAMPLERS:
        raise ValueError(f"train.sampler={sampler!r}: must be one of {', '.join(SAMPLERS)}")
    nonfinite = _get(config, "train.nonfinite")
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"train.nonfinite={nonfinite!r}: must be one of "
                         f"{', '.join(NONFINITE_POLICIES)}")
    _number(config, "optim.learning_rate", 0.0, 1.0, open_lo=True)
    _integer(config, "optim.warmup_steps", 0)
    _number(config, "optim.b1", 0.0, 1.0, open_hi=True)
    _number(config, "optim.b2", 0.0, 1.0, open_hi=True)
    _number(config, "optim.eps", 0.0, 1.0, open_lo=True)
    _number(config, "optim.weight_decay", 0.0, 1.0)
    _number(config, "optim.grad_clip", 0.0, math.inf, open_hi=True)
    _number(config, "optim.ema_decay", 0.0, 1.0, open_hi=True)


def load_config_file(spec: str, overrides: Any = ()) -> ml_collections.ConfigDict:
    """``configs/NAME.py[:VARIANT]`` -> its ``get_config([VARIANT])``, as ``--config`` loads it,
    then each ``(key, text)`` of ``overrides`` applied with ``override``."""
    path, _, variant = spec.partition(":")
    if not os.path.isfile(path):
        raise ValueError(f"--config={spec}: no such file {path}")
    module_spec = importlib.util.spec_from_file_location("sagd_config_file", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(variant) if variant else module.get_config()
    for key, text in overrides:
        override(config, key, text)
    return config


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


def override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Set ``config[key]`` (dotted) from a command-line string; unknown keys are an error."""
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise ValueError(f"{key}: no such config key")
        node = node[part]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise ValueError(f"{key}: no such config key")
    if isinstance(node[leaf], ml_collections.ConfigDict):
        raise ValueError(f"{key}: is a config section, not a value")
    with node.ignore_type():
        node[leaf] = parse_value(key, text, node[leaf])
