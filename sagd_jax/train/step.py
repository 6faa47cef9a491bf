"""The pure, jitted train step and the network-as-``eps_fn`` adapter used for sampling."""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from sagd_jax.process import DiffusionProcess
from sagd_jax.train.state import TrainState, ema_decay_at

# Metrics report the loss per noise-level bucket: t in [0, 1/N), ..., [(N-1)/N, 1].
NUM_LOSS_BUCKETS = 4
NOISE_LABEL_SCALE = 1000.0  # the network sees 1000 * t


def network_eps(model: nn.Module, process: DiffusionProcess, params: Any, x: jax.Array,
                t: jax.Array) -> jax.Array:
    """The network (deterministic mode) as an ``eps_fn``: ``x: (B, H, W, C)``, ``t: (B,)``."""
    out = model.apply({"params": params}, x, NOISE_LABEL_SCALE * t, train=False)
    return process.eps_from_output(out, x, t)


def make_eps_fn(model: nn.Module, process: DiffusionProcess, params: Any
                ) -> jax.tree_util.Partial:
    """A sampler-ready ``eps_fn`` whose parameters are traced (no recompile per checkpoint)."""
    return jax.tree_util.Partial(functools.partial(network_eps, model), process, params)


def train_step(
    state: TrainState,
    batch: jax.Array,
    train_key: jax.Array,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    process: DiffusionProcess,
    ema_decay: float,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update on ``batch: (B, H, W, C)`` float32.

    All randomness (noise levels, noise, dropout) comes from ``fold_in(train_key, state.step)``
    (``train_key``: the run's ``rng.TRAIN`` stream),
    so a step is a pure function of (state, batch, seed). A step whose loss or gradients are
    not finite changes nothing but ``step`` (its update is dropped; the loop decides whether to
    stop or go on). Returns the new state and metrics: ``loss``, ``grad_norm``, ``nonfinite``
    (1 for a dropped step) and per-bucket loss sums and counts (``loss_sum_b``, ``count_b``).
    """
    key = jax.random.fold_in(train_key, state.step)
    k_time, k_noise, k_dropout = jax.random.split(key, 3)
    batch_size = batch.shape[0]
    t = process.sample_time(k_time, batch_size)
    batch = process.training_data(batch)
    x_t, eps = process.marginal_sample(k_noise, batch, t)

    def loss_fn(params: Any) -> tuple[jax.Array, jax.Array]:
        out = model.apply({"params": params}, x_t, NOISE_LABEL_SCALE * t, train=True,
                          rngs={"dropout": k_dropout})
        per_example = process.loss(out, batch, eps, t)
        return per_example.mean(), per_example

    (loss, per_example), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = ema_decay_at(state.step, ema_decay)
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def unless_nonfinite(new: Any, old: Any) -> Any:
        return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

    new_state = state.replace(
        step=state.step + 1,
        params=unless_nonfinite(params, state.params),
        ema_params=unless_nonfinite(ema, state.ema_params),
        opt_state=unless_nonfinite(opt_state, state.opt_state),
    )

    bucket = jnp.clip((t * NUM_LOSS_BUCKETS).astype(jnp.int32), 0, NUM_LOSS_BUCKETS - 1)
    onehot = jax.nn.one_hot(bucket, NUM_LOSS_BUCKETS)
    metrics = {"loss": loss, "grad_norm": grad_norm,
               "nonfinite": jnp.logical_not(finite).astype(jnp.int32)}
    sums, counts = per_example @ onehot, onehot.sum(axis=0)
    for b in range(NUM_LOSS_BUCKETS):
        metrics[f"loss_sum_{b}"] = sums[b]
        metrics[f"count_{b}"] = counts[b]
    return new_state, metrics


def reduce_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    """Host-side mean of step metrics over the finite steps; per-bucket sums become
    ``loss_t<lo>-<hi>`` means; ``skipped_steps`` counts the dropped (non-finite) ones."""
    if not history:
        return {}
    everything = jax.device_get(history)
    fetched = [m for m in everything if not int(m["nonfinite"])]
    out = {"skipped_steps": float(len(everything) - len(fetched))}
    if not fetched:
        return out | {"loss": math.nan, "grad_norm": math.nan}
    out |= {"loss": float(sum(m["loss"] for m in fetched) / len(fetched)),
            "grad_norm": float(sum(m["grad_norm"] for m in fetched) / len(fetched))}
    for b in range(NUM_LOSS_BUCKETS):
        count = sum(float(m[f"count_{b}"]) for m in fetched)
        if count:
            lo, hi = b / NUM_LOSS_BUCKETS, (b + 1) / NUM_LOSS_BUCKETS
            out[f"loss_t{lo:.2f}-{hi:.2f}"] = sum(float(m[f"loss_sum_{b}"])
                                                  for m in fetched) / count
    return out
