"""The train state (step, parameters, EMA parameters, optimizer state, and the post-hoc EMA
profiles of a run that keeps them) and the optimizer."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from sagd_jax.models import placeholder_labels


@struct.dataclass
class TrainState:
    """Everything a run carries from step to step; nothing else is state.

    step: int32 scalar, the number of optimizer updates applied.
    params: model parameters (float32 pytree). ema_params: their exponential moving average,
    which sampling uses. opt_state: the optax state.
    """

    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any


@struct.dataclass
class PosthocTrainState(TrainState):
    """The train state of a run keeping post-hoc EMA profiles (``ema.snapshot_every > 0``).

    posthoc: one parameter tree per ``ema.posthoc_stds`` entry, in that order: the
    power-function EMA of that relative std (``sagd_jax.ema_profiles``), sharded like
    ``params``. A run without profiles keeps the plain ``TrainState``, so its checkpoints are
    those of a run from before post-hoc EMA existed.
    """

    posthoc: tuple[Any, ...] = ()

    def snapshot(self) -> EmaSnapshot:
        """What an EMA snapshot saves: the step and the profiles."""
        return EmaSnapshot(step=self.step, profiles=self.posthoc)


@struct.dataclass
class EmaSnapshot:
    """An EMA snapshot (``WORKDIR/ema_snapshots/<step>/``): ``step`` (int32 scalar) and
    ``profiles``, the power-function EMAs of the run's ``ema.posthoc_stds`` at that step."""

    step: jax.Array
    profiles: tuple[Any, ...]


def make_optimizer(optim: Any) -> optax.GradientTransformation:
    """AdamW with linear warmup to ``optim.learning_rate`` and global-norm gradient clipping.

    Keys: ``learning_rate``, ``warmup_steps``, ``b1``, ``b2``, ``eps``, ``weight_decay``,
    ``grad_clip`` (0 disables clipping).
    """
    warmup = int(optim.warmup_steps)
    lr = float(optim.learning_rate)
    schedule = optax.linear_schedule(0.0, lr, warmup) if warmup > 0 else lr
    parts = []
    if float(optim.grad_clip) > 0:
        parts.append(optax.clip_by_global_norm(float(optim.grad_clip)))
    parts.append(optax.adamw(schedule, b1=float(optim.b1), b2=float(optim.b2),
                             eps=float(optim.eps), weight_decay=float(optim.weight_decay)))
    return optax.chain(*parts)


def init_params(model: nn.Module, key: jax.Array, image_shape: tuple[int, int, int]) -> Any:
    """Model parameters for ``(H, W, C)`` images, initialised from ``key`` (jit-compiled)."""
    x = jnp.zeros((1, *image_shape), jnp.float32)
    labels = jnp.zeros((1,), jnp.float32)
    classes = placeholder_labels(model, 1)
    return jax.jit(lambda k: model.init(k, x, labels, classes, train=False)["params"])(key)


def create_train_state(
    model: nn.Module, tx: optax.GradientTransformation, key: jax.Array,
    image_shape: tuple[int, int, int], posthoc_profiles: int = 0,
) -> TrainState:
    """Step 0: fresh parameters, EMA equal to them, fresh optimizer state; with
    ``posthoc_profiles > 0`` a ``PosthocTrainState`` whose profiles equal the parameters too."""
    params = init_params(model, key, image_shape)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params))
    if posthoc_profiles <= 0:
        return state
    profiles = tuple(jax.tree.map(jnp.copy, params) for _ in range(posthoc_profiles))
    return PosthocTrainState(**vars(state), posthoc=profiles)


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
    """EMA decay with a warmup, ``min(decay, (1 + step) / (10 + step))``: early averages do not
    drag the initial weights along for thousands of steps."""
    step = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))
