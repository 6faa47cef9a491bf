"""Class-conditional networks: the label embedding, label dropout in the train step, and the
null label a trained model learns (the unconditional prediction of classifier-free
guidance)."""

from __future__ import annotations

import functools
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sagd_jax import rng
from sagd_jax.config import check_classes, default_config
from sagd_jax.models import build_model
from sagd_jax.process import DiffusionProcess
from sagd_jax.train_state import create_train_state, init_params, make_optimizer
from sagd_jax.train_step import drop_labels, network_eps, train_step

SHAPE = (8, 8, 1)
CLASSES = 3


def model_section(**overrides):
    cfg = default_config().model
    cfg.update(dict(ch=16, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(),
                    dropout=0.0, num_groups=4))  # one level: seconds to compile
    cfg.update(overrides)
    return cfg


def process_for(gamma: float = 1.0) -> DiffusionProcess:
    config = default_config()
    config.noise.gamma = gamma
    return DiffusionProcess.from_config(config, SHAPE[0], SHAPE[1])


def test_an_unconditional_network_has_no_label_parameters_and_refuses_labels():
    model = build_model(model_section(), SHAPE)
    params = init_params(model, jax.random.key(0), SHAPE)
    assert "map_label" not in params
    x, t = jnp.zeros((2, *SHAPE)), jnp.ones((2,))
    with pytest.raises(ValueError, match="class_labels must be None"):
        model.apply({"params": params}, x, t, jnp.zeros((2,), jnp.int32))


@pytest.mark.slow
def test_a_conditional_network_embeds_every_class_and_the_null_label():
    model = build_model(model_section(num_classes=CLASSES), SHAPE)
    params = init_params(model, jax.random.key(0), SHAPE)
    assert params["map_label"]["embedding"].shape == (CLASSES + 1, 16)
    # Residual branches and the output layer start near zero: perturb every parameter so
    # that the labels' effect reaches the output.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(tree, [p + 0.2 * jax.random.normal(k, p.shape)
                                       for p, k in zip(leaves, keys, strict=True)])
    x = jax.random.normal(jax.random.key(2), (CLASSES + 1, *SHAPE))
    x = jnp.broadcast_to(x[:1], x.shape)  # one image, once per label
    outs = jax.jit(model.apply)({"params": params}, x, jnp.full((CLASSES + 1,), 500.0),
                                jnp.arange(CLASSES + 1, dtype=jnp.int32))
    for i in range(CLASSES + 1):
        for j in range(i):
            assert float(jnp.abs(outs[i] - outs[j]).max()) > 1e-3, (i, j)
    with pytest.raises(ValueError, match="class_labels must be given"):
        jax.eval_shape(model.apply, {"params": params}, x, jnp.full((CLASSES + 1,), 500.0))


def test_label_dropout_replaces_labels_with_the_null_label_at_its_rate():
    labels = jnp.arange(200_000, dtype=jnp.int32) % CLASSES
    dropped = np.asarray(drop_labels(jax.random.key(0), labels, 0.1, CLASSES))
    null = dropped == CLASSES
    # 200,000 Bernoulli(0.1) draws: the rate's standard error is 6.7e-4; 5 of them allowed.
    assert abs(null.mean() - 0.1) < 5 * (0.1 * 0.9 / labels.size) ** 0.5
    np.testing.assert_array_equal(dropped[~null], np.asarray(labels)[~null])
    for c in range(CLASSES):  # independent of the class
        share = null[np.asarray(labels) == c].mean()
        assert abs(share - 0.1) < 5 * (0.1 * 0.9 / (labels.size / CLASSES)) ** 0.5


@pytest.mark.parametrize("key,value,message", [
    ("model.num_classes", 10, "set data.num_classes=10 (it is 0)"),
    ("train.label_dropout", 0.1, "needs a class-conditional model"),
    ("train.guidance", 2.0, "needs a class-conditional model"),
    ("train.label_dropout", 1.0, "train.label_dropout=1.0"),
])
def test_class_keys_are_checked_in_one_line(key, value, message):
    config = default_config()
    section, leaf = key.split(".")
    config[section][leaf] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_classes(config)


# Class k's images are 0.9 on its own 2x2 patch (rows, columns), 0 elsewhere, plus noise.
PATCHES = ((slice(1, 3), slice(1, 3)), (slice(1, 3), slice(5, 7)), (slice(5, 7), slice(3, 5)))


def toy_batch(key: jax.Array, batch: int) -> tuple[jax.Array, jax.Array]:
    """Three classes of 8x8 images, each bright (0.9) on a 2x2 patch of its own, with white
    pixel noise of std 0.1 everywhere; uniformly drawn labels."""
    k_label, k_noise = jax.random.split(key)
    labels = jax.random.randint(k_label, (batch,), 0, CLASSES)
    images = 0.1 * jax.random.normal(k_noise, (batch, *SHAPE))
    for k, (rows, cols) in enumerate(PATCHES):
        images = images.at[:, rows, cols, :].add(0.9 * (labels == k)[:, None, None, None])
    return images, labels


@pytest.mark.slow
def test_label_dropout_leaves_the_steps_noise_levels_and_noise_unchanged():
    """With and without label dropout a step sees the same noise levels and noise: the
    per-bucket example counts (from t) agree and, for a network that ignores its labels,
    the updates are identical."""
    model = build_model(model_section(num_classes=CLASSES), SHAPE)
    process = process_for()
    tx = make_optimizer(default_config().optim)
    state = create_train_state(model, tx, jax.random.key(0), SHAPE)
    # Zero the label table: the network then ignores the labels (null or not).
    params = dict(state.params)
    params["map_label"] = {"embedding": jnp.zeros_like(params["map_label"]["embedding"])}
    state = state.replace(params=params, ema_params=params)
    images, labels = toy_batch(jax.random.key(1), 16)
    step = jax.jit(functools.partial(train_step, model=model, tx=tx, process=process,
                                     ema_decay=0.999), static_argnames="label_dropout")
    key = rng.stream_key(0, rng.TRAIN)
    a, metrics_a = step(state, images, key, labels=labels, label_dropout=0.0)
    b, metrics_b = step(state, images, key, labels=labels, label_dropout=0.5)
    for name in metrics_a:
        np.testing.assert_array_equal(metrics_a[name], metrics_b[name], err_msg=name)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_label_dropout_trains_the_null_label_toward_the_average_of_the_classes():
    """A tiny conditional model trained with label dropout 0.3: at a noise level where the
    classes are hard to tell apart from x_t (the exact posterior nearly uniform), its
    unconditional prediction differs from every conditional one and lies near their mean,
    on the patches where the classes differ. (200 steps at a learning rate of 5e-3 reach the
    distances of 400 at 2e-3: 0.088 from each class, 0.031 from the mean.)"""
    model = build_model(model_section(num_classes=CLASSES), SHAPE)
    process = process_for(gamma=0.0)
    optim = default_config().optim
    optim.update(dict(learning_rate=5e-3, warmup_steps=20))
    tx = make_optimizer(optim)
    state = create_train_state(model, tx, jax.random.key(0), SHAPE)
    key = rng.stream_key(0, rng.TRAIN)

    @jax.jit
    def step(state, data_key):
        images, labels = toy_batch(data_key, 128)
        return train_step(state, images, key, model=model, tx=tx, process=process,
                          ema_decay=0.99, labels=labels, label_dropout=0.3)

    for s in range(200):
        state, _ = step(state, jax.random.fold_in(jax.random.key(7), s))

    # The time where alpha / sigma = 0.3: two classes' images differ by 0.9 * 0.3 = 0.27
    # noise units on 8 pixels.
    grid = jnp.linspace(0.05, 1.0, 2000)
    alpha, sigma = process.coefficients(grid)
    t = float(grid[jnp.argmin(jnp.abs(alpha / sigma - 0.3))])
    images, _ = toy_batch(jax.random.key(99), 256)
    times = jnp.full((256,), t)
    x_t, _ = process.marginal_sample(jax.random.key(5), images, times)
    predict = jax.jit(lambda p, y: network_eps(model, process, p, x_t, times,
                                               jnp.full((256,), y, jnp.int32)))
    patches = lambda e: np.concatenate(  # noqa: E731
        [e[:, rows, cols].reshape(len(e), -1) for rows, cols in PATCHES], axis=1)
    eps = [patches(np.asarray(predict(state.ema_params, y))) for y in range(CLASSES + 1)]
    conditional, unconditional = np.stack(eps[:CLASSES]), eps[CLASSES]
    rms = lambda a: float(np.sqrt(np.mean(a**2)))  # noqa: E731
    to_mean = rms(unconditional - conditional.mean(axis=0))
    to_each = [rms(unconditional - c) for c in conditional]
    # The exact model's unconditional prediction is the posterior-weighted mean of the
    # conditional ones: at this noise level it lies 0.133 (rms, noise units) from each
    # class's and 0.039 from their plain mean (a ratio of 0.29; Monte Carlo of the exact
    # per-pixel model).
    assert min(to_each) > 0.06, (to_each, to_mean)
    assert to_mean < 0.6 * min(to_each), (to_each, to_mean)


FSDP_AND_ACCUMULATION = textwrap.dedent("""
    import json
    import jax, numpy as np
    from sagd_jax.config import normalize
    from sagd_jax.run import Run
    from sagd_jax.sharding import make_mesh
    assert jax.device_count() == 4

    def trained(mesh_fsdp, accum, devices):
        config = normalize(json.loads({config!r}))
        config.mesh.data, config.mesh.fsdp = -1, mesh_fsdp
        config.train.grad_accum_steps = accum
        run = Run.from_config(config, device_count=len(devices))
        mesh = run.mesh(devices)
        state, step = run.init_state(mesh), run.train_step(mesh)
        for s in range(2):
            state, _ = step(state, run.global_batch(s, mesh))
        return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))]

    one = trained(1, 1, jax.devices()[:1])
    for name, other in (("fsdp", trained(2, 1, jax.devices())),
                        ("accumulation", trained(1, 2, jax.devices()[:1]))):
        for a, b in zip(one, other, strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6, err_msg=name)
    print("ok")
""")


@pytest.mark.slow
@pytest.mark.needs_fashion_mnist
def test_a_conditional_run_trains_alike_on_an_fsdp_mesh_and_in_microbatches(tiny_config,
                                                                          on_four_devices):
    """Two steps of a conditional run (labels and label dropout through the step) on a
    (2, 2) mesh of 4 CPU devices and in 2 microbatches give one device's parameters."""
    config = tiny_config(**{"data.name": "fashion_mnist", "data.num_classes": 10,
                            "model.num_classes": 10, "train.label_dropout": 0.3,
                            "model.ch": 32, "model.num_groups": 4})
    result = on_four_devices(FSDP_AND_ACCUMULATION.format(config=config.to_json_best_effort()))
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
