"""Model size and cost: parameter counts and XLA-estimated FLOPs per image."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sagd_jax.models.unet import placeholder_labels


def count_params(params: Any) -> int:
    """Total number of scalars in a pytree of arrays (or of jax.ShapeDtypeStruct)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def _flops_from_cost(cost: Any) -> float:
    """Read 'flops' from ``Compiled.cost_analysis()``, which is a dict or a list of dicts."""
    if isinstance(cost, dict):
        cost = [cost]
    if not cost or any(c is None or "flops" not in c for c in cost):
        raise RuntimeError(f"XLA cost analysis reported no 'flops' on this backend: {cost!r}")
    return float(sum(c["flops"] for c in cost))


def flops_per_image(model: nn.Module, variables: Any, image_shape: tuple[int, ...]) -> float:
    """XLA's estimate of floating-point operations for one inference forward pass of one image.

    ``image_shape`` is (H, W, C). The jitted ``model.apply(variables, x, labels, train=False)``
    is compiled for a batch of one with abstract inputs (``variables`` may come from
    ``jax.eval_shape``), so nothing model-sized is allocated. The count is whatever XLA's cost
    analysis reports for the current backend (a multiply-add counts as 2).
    """
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables)
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    labels = jax.ShapeDtypeStruct((1,), jnp.float32)

    def forward(v: Any, images: jax.Array, noise_labels: jax.Array) -> jax.Array:
        return model.apply(v, images, noise_labels, placeholder_labels(model, 1), train=False)

    compiled = jax.jit(forward).lower(abstract, x, labels).compile()
    return _flops_from_cost(compiled.cost_analysis())
