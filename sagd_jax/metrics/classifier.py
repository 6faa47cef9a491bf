"""A small Fashion-MNIST classifier whose penultimate layer gives the features of FD and KID.

Trained in-project by a deterministic recipe (no weights are downloaded or committed; the
command line is ``python -m sagd_jax.train_classifier``). The weights go to
``<cache>/classifier/<recipe name>.msgpack`` with a JSON sidecar holding the recipe and its test
accuracy; ``<cache>`` is ``sagd_jax.files.cache_dir()``. The recipe's name hashes every field,
so a changed recipe never reuses old weights. Both files are written atomically and never
overwritten (a concurrent trainer of the same recipe that finishes first keeps its files).
Training progress goes to stderr (``--verbosity``: the tool's common flag).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from sagd_jax import console, files
from sagd_jax.images import as_model_units
from sagd_jax.models.conv import Conv

FEATURE_DIM = 256


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything that determines the trained weights."""

    epochs: int = 5
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 0
    width: int = 16  # channels at 28x28; 2x at 14x14, 4x at 7x7
    version: int = 2  # bump when the architecture or the training code changes
    max_steps: int | None = None  # cut training short (tests); None: all epochs

    @property
    def name(self) -> str:
        fields = dataclasses.asdict(self)
        if fields["max_steps"] is None:  # the full recipe keeps the name it had before the field
            del fields["max_steps"]
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
        return f"fashion_mnist_28_{digest.hexdigest()[:12]}"


class FeatureNet(nn.Module):
    """28x28x1 in [-1, 1] -> (features ``(B, 256)`` after ReLU, logits ``(B, 10)``).

    Three 3x3 conv + ReLU layers (28x28, 14x14, 7x7; 2x2 max-pooling between), a 256-unit
    ReLU layer (the features) and a linear classifier: about 5 MFLOP per image forward.
    """

    width: int = 16

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        init = nn.initializers.he_normal()
        for i, features in enumerate((self.width, 2 * self.width, 4 * self.width)):
            if i:
                x = nn.max_pool(x, (2, 2), (2, 2))
            x = nn.relu(Conv(features, 3, kernel_init=init)(x))
        features = nn.relu(nn.Dense(FEATURE_DIM, kernel_init=init)(x.reshape(x.shape[0], -1)))
        return features, nn.Dense(10)(features)


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def apply_in_batches(fn: Callable[[jax.Array], Any], images: np.ndarray,
                     batch_size: int = 500) -> Any:
    """``fn`` over fixed-size batches (the last one padded: one compiled shape), concatenated."""
    x = as_model_units(images)
    outs = []
    for part in _batches(len(x), batch_size):
        chunk = x[part]
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
        out = jax.device_get(fn(jnp.asarray(chunk)))
        outs.append(jax.tree.map(lambda a, n=batch_size - pad: np.asarray(a)[:n], out))
    return jax.tree.map(lambda *a: np.concatenate(a), *outs)


def _step_reporter(total: int, log: Callable[[str], None] | None
                   ) -> Callable[[int, float], None]:
    """``report(done, loss)`` every 100 steps: a ``console.Progress`` line, or ``log(text)``."""
    if log is None:
        progress = console.Progress("classifier training", total, unit="step")
        return lambda done, loss: progress.update(done - progress.done, f"loss {loss:.3f}")
    start = time.perf_counter()

    def report(done: int, loss: float) -> None:
        rate = done / (time.perf_counter() - start)
        log(f"classifier: step {done}/{total} loss {loss:.3f} "
            f"ETA {console.duration((total - done) / rate)}")

    return report


def train_classifier(recipe: Recipe, train: tuple[np.ndarray, np.ndarray],
                     test: tuple[np.ndarray, np.ndarray], max_steps: int | None = None,
                     log: Callable[[str], None] | None = None) -> tuple[Any, float]:
    """Train on ``train = (uint8 images (N, 28, 28, 1), labels (N,))``; returns (params,
    accuracy on ``test``).

    Adam with a cosine-decayed learning rate, ``recipe.epochs`` passes in an order drawn from
    ``recipe.seed``, no augmentation. ``max_steps`` cuts it short (tests). Progress every 100
    steps: a ``console.Progress`` line on stderr, or ``log(text)`` when given.
    """
    model = FeatureNet(recipe.width)
    images, labels = as_model_units(train[0]), train[1]
    params = model.init(jax.random.key(recipe.seed), jnp.zeros((1, 28, 28, 1)))["params"]
    steps_per_epoch = len(images) // recipe.batch_size
    max_steps = recipe.max_steps if max_steps is None else max_steps
    total = recipe.epochs * steps_per_epoch if max_steps is None else max_steps
    tx = optax.adam(optax.cosine_decay_schedule(recipe.learning_rate, total))
    opt_state = tx.init(params)

    @jax.jit
    def step(params: Any, opt_state: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any, Any]:
        def loss_fn(p: Any) -> jax.Array:
            logits = model.apply({"params": p}, x)[1]
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(recipe.seed)
    report, done = _step_reporter(total, log), 0
    while done < total:
        order = rng.permutation(len(images))
        for i in range(min(steps_per_epoch, total - done)):
            idx = order[i * recipe.batch_size:(i + 1) * recipe.batch_size]
            params, opt_state, loss = step(params, opt_state, images[idx], labels[idx])
            done += 1
            if done % 100 == 0 or done == total:
                report(done, float(loss))
    logits = apply_in_batches(jax.jit(lambda x: model.apply({"params": params}, x)[1]), test[0])
    return params, float(np.mean(np.argmax(logits, -1) == test[1]))


class FeatureExtractor:
    """The trained classifier's 256-d penultimate features of 28x28x1 images."""

    def __init__(self, params: Any, recipe: Recipe, test_accuracy: float):
        self.params, self.recipe, self.test_accuracy = params, recipe, test_accuracy
        model = FeatureNet(recipe.width)
        self._features = jax.jit(lambda x: model.apply({"params": params}, x)[0])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """``images: (N, 28, 28, 1)`` uint8 or float in [-1, 1] -> float64 ``(N, 256)``."""
        images = np.asarray(images)
        if images.shape[1:] != (28, 28, 1):
            raise ValueError(f"features: need (N, 28, 28, 1) images, got {images.shape}")
        return apply_in_batches(self._features, images).astype(np.float64)


def _cache_files(recipe: Recipe) -> tuple[str, str]:
    """The weights and the sidecar that marks them complete, in the user cache."""
    folder = os.path.join(files.cache_dir(), "classifier")
    return (os.path.join(folder, f"{recipe.name}.msgpack"),
            os.path.join(folder, f"{recipe.name}.json"))


def cached(recipe: Recipe | None = None) -> str | None:
    """The weights file of ``recipe``'s (default: the documented one) trained classifier when
    the cache holds it complete, else None (``load_or_train`` would train it)."""
    weights, sidecar = _cache_files(recipe or Recipe())
    return weights if files.exists(weights) and files.exists(sidecar) else None


def load_or_train(recipe: Recipe | None = None, log: Callable[[str], None] | None = None
                  ) -> FeatureExtractor:
    """The cached classifier of ``recipe`` (default recipe), trained first if absent.
    Messages go to ``log`` (default ``console.info``), training progress as in
    ``train_classifier``."""
    from sagd_jax.data.fashion_mnist import load_labeled_fashion_mnist

    recipe = recipe or Recipe()
    weights, sidecar = _cache_files(recipe)
    template = FeatureNet(recipe.width).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    say = console.info if log is None else log
    if files.exists(weights) and files.exists(sidecar):
        say(f"classifier: loading {weights}")
        with open(weights, "rb") as f:
            params = serialization.from_bytes(template["params"], f.read())
        accuracy = files.read_json(sidecar)["test_accuracy"]
        return FeatureExtractor(params, recipe, accuracy)
    say(f"classifier: no cached weights at {weights}; training ({recipe})")
    params, accuracy = train_classifier(recipe, load_labeled_fashion_mnist("train"),
                                        load_labeled_fashion_mnist("test"), log=log)
    # Weights first, then the sidecar that marks them complete; a file another process of
    # the same recipe wrote first is kept.
    with contextlib.suppress(FileExistsError):
        with files.atomic_open(weights, "wb", exclusive=True) as f:
            f.write(serialization.to_bytes(params))
    with contextlib.suppress(FileExistsError):
        files.write_json(sidecar, {"recipe": dataclasses.asdict(recipe),
                                   "test_accuracy": accuracy}, exclusive=True)
    say(f"classifier: test accuracy {accuracy:.4f}; cached in {weights}")
    return FeatureExtractor(params, recipe, accuracy)
