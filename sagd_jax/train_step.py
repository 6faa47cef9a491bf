"""The pure, jitted train step and the network-as-``eps_fn`` adapter used for sampling."""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from sagd_jax.ema_profiles import power_ema_update
from sagd_jax.process import DiffusionProcess
from sagd_jax.train_state import TrainState, ema_decay_at

# Metrics report the loss per noise-level bucket: t in [0, 1/N), ..., [(N-1)/N, 1].
NUM_LOSS_BUCKETS = 4
# The label-dropout draw: a stream of its own, folded into the step's key, so the noise
# levels, noise and dropout of a conditional step are those of an unconditional one.
_LABEL_DROPOUT_STREAM = 0x6C61626C


def network_eps(model: nn.Module, process: DiffusionProcess, params: Any, x: jax.Array,
                t: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    """The network (deterministic mode) as an ``eps_fn``: ``x: (B, H, W, C)``, ``t: (B,)``;
    ``labels``: int32 ``(B,)`` class labels of a conditional network (its ``num_classes`` is
    the null label), None for an unconditional one."""
    image, noise_labels = process.network_input(x, t)
    out = model.apply({"params": params}, image, noise_labels, labels, train=False)
    return process.eps_from_output(out, x, t)


@functools.lru_cache(maxsize=64)
def _network(model: nn.Module) -> functools.partial:
    """``network_eps`` bound to ``model``: one object per model (models compare by value), so
    every ``eps_fn`` of that model has the same static part and reuses compiled samplers."""
    return functools.partial(network_eps, model)


def make_eps_fn(model: nn.Module, process: DiffusionProcess, params: Any
                ) -> jax.tree_util.Partial:
    """The network as a sampler-ready ``eps_fn(x, t)`` (unconditional), or as the
    ``cond_fn(x, t, labels)`` of ``sagd_jax.guidance`` (conditional), its parameters traced:
    a new checkpoint, new labels or a new chunk reuse what compiled."""
    return jax.tree_util.Partial(_network(model), process, params)


def drop_labels(key: jax.Array, labels: jax.Array, rate: float, null_label: int) -> jax.Array:
    """``labels`` (int ``(B,)``) with each replaced by ``null_label`` independently with
    probability ``rate`` (classifier-free guidance's label dropout)."""
    drop = jax.random.bernoulli(key, rate, labels.shape)
    return jnp.where(drop, jnp.asarray(null_label, labels.dtype), labels)


def _microbatch(x: jax.Array, index: jax.Array, count: int) -> jax.Array:
    """Examples ``index::count`` of ``x`` along its leading (batch) axis.

    Strided, not contiguous: the batch is split over the devices in contiguous blocks, so
    every microbatch ``k::count`` takes the same number of examples from each device's block
    (the reshape ``(B, ...) -> (B / count, count, ...)`` keeps axis 0 split like the batch)
    and each microbatch stays spread over all devices, with no data moved between them.
    """
    return lax.dynamic_index_in_dim(x.reshape(x.shape[0] // count, count, *x.shape[1:]),
                                    index, axis=1, keepdims=False)


def _sliced_dropout(full_batch: int, index: jax.Array, count: int) -> Any:
    """A ``nn.intercept_methods`` interceptor making ``nn.Dropout`` on microbatch ``index``
    apply the slice ``index::count`` of the mask the full batch would draw (same key, same
    full-batch shape), so accumulated steps use the full step's masks example by example.

    The full draw does not depend on ``index``: XLA hoists it out of the microbatch loop and
    draws it once, keeping the full batch's boolean masks (1 byte an element of each dropout
    input) through the loop."""

    def interceptor(next_fun: Any, args: Any, kwargs: Any, context: Any) -> Any:
        module = context.module
        if not isinstance(module, nn.Dropout) or context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        bound = inspect.signature(nn.Dropout.__call__).bind(module, *args, **kwargs)
        inputs, deterministic, rng = (bound.arguments.get(name) for name in
                                      ("inputs", "deterministic", "rng"))
        deterministic = nn.merge_param("deterministic", module.deterministic, deterministic)
        if module.rate == 0.0 or deterministic or module.rate == 1.0:
            return next_fun(*args, **kwargs)
        # flax's Dropout.__call__, with this microbatch's rows of the full batch's mask.
        keep_prob = 1.0 - module.rate
        if rng is None:
            rng = module.make_rng(module.rng_collection)
        shape = list(inputs.shape)
        for dim in module.broadcast_dims:
            shape[dim] = 1
        if shape[0] == 1:  # one mask for every example
            mask = jax.random.bernoulli(rng, p=keep_prob, shape=shape)
        elif shape[0] * count == full_batch:
            mask = jax.random.bernoulli(rng, p=keep_prob, shape=(full_batch, *shape[1:]))
            mask = _microbatch(mask, index, count)
        else:
            raise ValueError(f"nn.Dropout on an input of leading size {shape[0]}, not the "
                             f"microbatch ({full_batch // count}): cannot accumulate")
        mask = jnp.broadcast_to(mask, inputs.shape)
        return lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))

    return interceptor


def train_step(
    state: TrainState,
    batch: jax.Array,
    train_key: jax.Array,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    process: DiffusionProcess,
    ema_decay: float,
    grad_accum_steps: int = 1,
    labels: jax.Array | None = None,
    label_dropout: float = 0.0,
    posthoc_stds: tuple[float, ...] = (),
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update on ``batch: (B, H, W, C)`` float32.

    ``labels``: int32 ``(B,)`` class labels for a conditional ``model`` (None: unconditional);
    each is replaced by the null label ``model.num_classes`` with probability
    ``label_dropout``, drawn from a stream of its own (the rest of the step's randomness is
    that of an unconditional step).

    All randomness (noise levels, noise, dropout) comes from ``fold_in(train_key, state.step)``
    (``train_key``: the run's ``rng.TRAIN`` stream),
    so a step is a pure function of (state, batch, seed). A step whose loss or gradients are
    not finite changes nothing but ``step`` (its update is dropped; the loop decides whether to
    stop or go on). Returns the new state and metrics: ``loss``, ``grad_norm``, ``nonfinite``
    (1 for a dropped step) and per-bucket loss sums and counts (``loss_sum_b``, ``count_b``).

    ``grad_accum_steps > 1`` (static; must divide ``B``) runs forward and backward on the
    microbatches ``k::grad_accum_steps`` one after another (``lax.scan``) and averages their
    gradients: the same update and metrics as the full batch up to float rounding, each example
    seeing the full batch's noise level, noise and dropout mask; ``1`` is the plain step.

    ``posthoc_stds`` (static; a ``PosthocTrainState``'s ``ema.posthoc_stds``): each profile
    ``state.posthoc[i]`` moves to the new parameters by the power-function EMA of relative std
    ``posthoc_stds[i]`` at update ``step + 1`` (``ema_profiles.power_ema_update``).
    """
    key = jax.random.fold_in(train_key, state.step)
    k_time, k_noise, k_dropout = jax.random.split(key, 3)
    batch_size = batch.shape[0]
    t = process.sample_time(k_time, batch_size)
    batch = process.training_data(batch)
    x_t, eps = process.marginal_sample(k_noise, batch, t)
    if labels is not None and label_dropout > 0:
        labels = drop_labels(jax.random.fold_in(key, _LABEL_DROPOUT_STREAM), labels,
                             label_dropout, model.num_classes)

    def loss_fn(params: Any, x_t: jax.Array, t: jax.Array, x0: jax.Array, eps: jax.Array,
                labels: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        image, noise_labels = process.network_input(x_t, t)
        out = model.apply({"params": params}, image, noise_labels, labels, train=True,
                          rngs={"dropout": k_dropout})
        per_example = process.loss(out, x0, eps, t)
        return per_example.mean(), per_example

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if grad_accum_steps == 1:
        (loss, per_example), grads = grad_fn(state.params, x_t, t, batch, eps, labels)
    else:
        count = grad_accum_steps
        if batch_size % count:
            raise ValueError(f"train.grad_accum_steps={count}: does not divide the batch "
                             f"({batch_size})")

        def accumulate(total: Any, index: jax.Array) -> tuple[Any, jax.Array]:
            parts = [None if x is None else _microbatch(x, index, count)
                     for x in (x_t, t, batch, eps, labels)]
            with nn.intercept_methods(_sliced_dropout(batch_size, index, count)):
                (_, part), grads = grad_fn(state.params, *parts)
            return jax.tree.map(jnp.add, total, grads), part

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        grads, parts = lax.scan(accumulate, zeros, jnp.arange(count))
        grads = jax.tree.map(lambda g: g / count, grads)
        per_example = parts.T.reshape(batch_size)  # back to the batch's order
        loss = per_example.mean()
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
    if posthoc_stds:
        if len(posthoc_stds) != len(state.posthoc):
            raise ValueError(f"{len(posthoc_stds)} post-hoc EMA stds for the state's "
                             f"{len(state.posthoc)} profiles")
        profiles = tuple(power_ema_update(profile, params, state.step + 1, std)
                         for profile, std in zip(state.posthoc, posthoc_stds, strict=True))
        new_state = new_state.replace(posthoc=unless_nonfinite(profiles, state.posthoc))

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
