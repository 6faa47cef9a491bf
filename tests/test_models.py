"""Tests for the DDPM++ U-Net, its config builder and the size/cost helpers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sagd_jax.config import default_config
from sagd_jax.models import UNet, build_model, count_params, flops_per_image
from sagd_jax.models.embeddings import positional_embedding

SMALL = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1)

# Parameter counts of EDM's SongUNet (NVlabs/edm, training/networks.py at HEAD), measured with
# torch 2.13 CPU as sum(p.numel() for p in net.parameters()) for
# SongUNet(img_resolution=R, in_channels=C, out_channels=C, model_channels=ch,
#          channel_mult=mult, num_blocks=n, attn_resolutions=attn,
#          embedding_type='positional', channel_mult_noise=1, encoder_type='standard',
#          decoder_type='standard', resample_filter=[1, 1]).
EDM_PARAM_COUNTS = [
    # (R, C, ch, mult, n, attn, count)
    (32, 3, 128, (2, 2, 2), 4, (16,), 55_732_739),  # CIFAR-10 DDPM++ (EDM: "55.7M")
    (32, 3, 64, (2, 2, 2), 4, (16,), 13_956_355),
    (28, 1, 16, (1, 2), 1, (14,), 188_769),
]


def _inputs(shape: tuple[int, int, int], batch: int = 2, seed: int = 0):
    kx, kt = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (batch, *shape))
    t = 1000.0 * jax.random.uniform(kt, (batch,))
    return x, t


def _key(seed: int) -> jax.Array:
    """PRNG key of the "rbg" generator, which XLA compiles far faster on CPU than threefry."""
    return jax.random.key(seed, impl="rbg")


def _forward(model: UNet):
    """Jitted ``model.apply`` (one compilation is much faster than op-by-op dispatch on CPU)."""
    return jax.jit(model.apply, static_argnames="train")


def _init(model: UNet, x: jax.Array, t: jax.Array, seed: int = 1):
    """Random variables with every weight of order one, drawn with NumPy.

    ``model.init`` compiles one random kernel per parameter shape, which is slow on CPU, and its
    near-zero residual-branch init hides the effect of labels and dropout on the output.
    """
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            value = 1.0 + 0.1 * rng.standard_normal(leaf.shape)
        elif "bias" in name:
            value = 0.1 * rng.standard_normal(leaf.shape)
        else:
            value = rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.mark.slow
@pytest.mark.parametrize(
    "shape, attn, dtype",
    [
        ((28, 28, 1), (14,), jnp.float32),
        ((32, 32, 3), (16,), jnp.float32),
        ((28, 28, 1), (14,), jnp.bfloat16),
        ((32, 32, 3), (16,), jnp.bfloat16),
    ],
)
def test_output_shape_and_float32_dtype(shape, attn, dtype):
    model = UNet(**SMALL, attn_resolutions=attn, dtype=dtype)
    x, t = _inputs(shape)
    variables = _init(model, x, t)
    y = _forward(model)(variables, x, t, train=True, rngs={"dropout": _key(2)})
    assert y.shape == x.shape
    assert y.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(y)))
    # Parameters stay float32 whatever the compute dtype.
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}


def test_init_is_float32_and_output_starts_near_zero():
    # Residual branches and the output conv start at 1e-5 of their Glorot scale (as in EDM),
    # so a freshly initialised network outputs almost exactly zero.
    model = UNet(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,), dtype=jnp.bfloat16)
    x, t = _inputs((8, 8, 3))
    variables = jax.jit(model.init)(_key(0), x, t)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    y = _forward(model)(variables, x, t)
    assert y.dtype == jnp.float32
    assert 0 < float(jnp.max(jnp.abs(y))) < 1e-3


def test_out_channels_override():
    model = UNet(**SMALL, attn_resolutions=(), out_channels=2)
    x, t = _inputs((16, 16, 3))
    y = _forward(model)(_init(model, x, t), x, t)
    assert y.shape == (2, 16, 16, 2)


def test_bfloat16_close_to_float32():
    x, t = _inputs((16, 16, 3))
    model32 = UNet(**SMALL, attn_resolutions=(8,))
    variables = _init(model32, x, t)
    y32 = _forward(model32)(variables, x, t)
    y16 = _forward(UNet(**SMALL, attn_resolutions=(8,), dtype=jnp.bfloat16))(variables, x, t)
    scale = float(jnp.max(jnp.abs(y32)))
    assert scale > 0
    assert float(jnp.max(jnp.abs(y16 - y32))) < 0.05 * scale


@pytest.mark.parametrize("res, channels, ch, mult, blocks, attn, reference", EDM_PARAM_COUNTS)
def test_param_count_matches_edm_song_unet(res, channels, ch, mult, blocks, attn, reference):
    # Stricter than the 2% budget: the architecture is meant to be exactly EDM's.
    model = UNet(ch=ch, ch_mult=mult, num_res_blocks=blocks, attn_resolutions=attn)
    x = jnp.zeros((1, res, res, channels))
    t = jnp.zeros((1,))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t))
    assert count_params(variables["params"]) == reference


def test_dropout_only_in_training():
    model = UNet(**SMALL, attn_resolutions=(), dropout=0.5)
    x, t = _inputs((16, 16, 3))
    variables = _init(model, x, t)

    forward = _forward(model)

    def run(train, key):
        return forward(variables, x, t, train=train, rngs={"dropout": _key(key)})

    np.testing.assert_array_equal(run(False, 0), run(False, 1))
    np.testing.assert_array_equal(run(True, 3), run(True, 3))
    a, b = run(True, 3), run(True, 4)
    assert float(jnp.max(jnp.abs(a - b))) > 1e-3 * float(jnp.max(jnp.abs(a)))


def test_zero_dropout_training_matches_eval_without_rng():
    model = UNet(**SMALL, attn_resolutions=(), dropout=0.0)
    x, t = _inputs((16, 16, 3))
    variables = _init(model, x, t)
    forward = _forward(model)
    np.testing.assert_allclose(
        forward(variables, x, t, train=True),
        forward(variables, x, t, train=False),
        rtol=1e-5,
        atol=1e-6,
    )


def test_noise_label_changes_output():
    model = UNet(**SMALL, attn_resolutions=())
    x, _ = _inputs((16, 16, 3))
    t = jnp.array([10.0, 10.0])
    variables = _init(model, x, t)
    forward = _forward(model)
    y_a = forward(variables, x, t)
    y_b = forward(variables, x, t + 500.0)
    assert float(jnp.max(jnp.abs(y_a - y_b))) > 1e-3 * float(jnp.max(jnp.abs(y_a)))


def test_param_gradients_finite_and_reach_embedding():
    # One resolution keeps the XLA compile of the backward pass short on CPU.
    model = UNet(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,))
    x, t = _inputs((8, 8, 3))
    variables = _init(model, x, t)

    def loss(params):
        y = model.apply({"params": params}, x, t, train=True, rngs={"dropout": _key(5)})
        return jnp.mean((y - x) ** 2)

    grads = jax.jit(jax.grad(loss))(variables["params"])
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert float(jnp.max(jnp.abs(grads["map_layer0"]["kernel"]))) > 0


def test_positional_embedding_frequency_range():
    labels = jnp.array([0.0, 1.0, 2500.0])
    emb = positional_embedding(labels, 8)
    assert emb.shape == (3, 8)
    # Channels: sin at frequencies 1 ... 1e-4 (endpoints included), then cos at the same.
    freqs = np.array([1.0, 10_000 ** (-1 / 3), 10_000 ** (-2 / 3), 1e-4])
    angles = np.asarray(labels)[:, None] * freqs
    expected = np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)
    np.testing.assert_allclose(np.asarray(emb), expected, rtol=1e-5, atol=1e-5)


def test_indivisible_image_size_names_size_and_ch_mult():
    model = UNet(ch=16, ch_mult=(1, 2, 2, 2), num_res_blocks=1, attn_resolutions=())
    x, t = _inputs((28, 28, 1), batch=1)
    with pytest.raises(ValueError, match=r"28x28.*model\.ch_mult"):
        _init(model, x, t)


def _config(**overrides) -> ml_collections.ConfigDict:
    """The full ``model`` section of ``default_config()`` with a small network's values."""
    cfg = default_config().model
    cfg.update(dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(14,),
                    dropout=0.1, num_groups=32, dtype="bfloat16"))
    cfg.update(overrides)
    return cfg


def test_build_model_of_the_default_model_section_is_the_default_unet():
    """``default_config().model`` is the one default: every field of the UNet comes from it
    (not from defaults of ``UNet`` or ``build_model``)."""
    section = default_config().model
    model = build_model(section, (28, 28, 1))
    assert (model.ch, model.ch_mult, model.num_res_blocks, model.attn_resolutions) == (
        section.ch, tuple(section.ch_mult), section.num_res_blocks,
        tuple(section.attn_resolutions))
    assert (model.dropout, model.num_groups, model.remat, model.num_classes) == (
        section.dropout, section.num_groups, section.remat, section.num_classes)
    assert model.dtype == jnp.float32 and section.dtype == "float32"
    assert isinstance(model, UNet) and section.name == "unet"
    assert set(section.keys()) == {"name", "ch", "ch_mult", "num_res_blocks",
                                   "attn_resolutions", "dropout", "num_groups", "dtype",
                                   "remat", "num_classes",
                                   # the DiT's (tests/test_dit.py), unread by the U-Net
                                   "patch_size", "hidden_size", "depth", "num_heads",
                                   "mlp_ratio"}


@pytest.mark.parametrize("key", ["ch", "ch_mult", "attn_resolutions", "dropout", "remat"])
def test_build_model_names_a_missing_key_instead_of_defaulting(key):
    values = _config().to_dict()
    del values[key]
    with pytest.raises(ValueError, match=rf"^model\.{key}: missing from the config$"):
        build_model(ml_collections.ConfigDict(values), (28, 28, 1))


def test_build_model_reads_config():
    model = build_model(_config(), (28, 28, 1))
    assert isinstance(model, UNet)
    assert (model.ch, model.ch_mult, model.num_res_blocks) == (16, (1, 2), 1)
    assert model.attn_resolutions == (14,) and model.dropout == 0.1
    assert model.dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "key, value",
    [
        ("ch", 0),
        ("ch", 2),
        ("ch", 2.5),
        ("ch_mult", ()),
        ("ch_mult", (1, 0)),
        ("num_res_blocks", -1),
        ("attn_resolutions", (16, -2)),
        ("dropout", 1.0),
        ("dropout", -0.1),
        ("num_groups", 0),
        ("dtype", "float16"),
        ("remat", 1),
    ],
)
def test_build_model_rejects_bad_values_naming_key(key, value):
    cfg = _config()
    # ConfigDict fields are typed; bypass the type lock to inject wrongly typed values.
    with cfg.ignore_type():
        cfg[key] = value
    with pytest.raises(ValueError, match=rf"^model\.{key}=") as info:
        build_model(cfg, (28, 28, 1))
    assert "\n" not in str(info.value)


def test_build_model_rejects_indivisible_image():
    with pytest.raises(ValueError, match=r"28x28.*model\.ch_mult"):
        build_model(_config(ch_mult=(1, 2, 2, 2)), (28, 28, 1))


def test_flops_per_image_positive_and_scales_with_width():
    shape = (16, 16, 3)
    flops = []
    for ch in (8, 16):
        model = UNet(ch=ch, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=())
        x, t = _inputs(shape, batch=1)
        variables = jax.eval_shape(lambda m=model, x=x, t=t: m.init(jax.random.key(0), x, t))
        flops.append(flops_per_image(model, variables, shape))
    # The 3x3 convolutions alone cost 2 * 9 * ch * ch * 16 * 16 flops for the first block.
    assert flops[0] > 2 * 9 * 8 * 8 * 16 * 16
    # Convolution cost is quadratic in width, so doubling ch costs roughly 4x (not 2x).
    assert 3.0 < flops[1] / flops[0] < 4.5


@pytest.mark.slow
def test_remat_keeps_parameters_and_gradients():
    """``model.remat=True`` recomputes blocks in the backward pass: same parameter tree, same
    gradients (to float32 round-off), with dropout active."""
    shape = (16, 16, 1)
    cfg = _config(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.2,
                  num_groups=2, dtype="float32")
    plain = build_model(cfg, shape)
    cfg.remat = True
    remat = build_model(cfg, shape)
    assert remat.remat and not plain.remat
    x = jax.random.normal(jax.random.key(0), (3, *shape))
    labels = jnp.array([10.0, 500.0, 900.0])
    params = jax.jit(plain.init)(jax.random.key(1), x, labels)["params"]
    assert jax.tree.structure(jax.eval_shape(remat.init, jax.random.key(1), x, labels)) == \
        jax.tree.structure({"params": params})
    # Away from the near-zero init of the output layers, so every layer's gradient matters.
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(4), len(leaves))
    params = treedef.unflatten([p + 0.1 * jax.random.normal(k, p.shape)
                                for p, k in zip(leaves, keys, strict=True)])
    target = jax.random.normal(jax.random.key(3), x.shape)

    def grads(model):
        def loss(p):
            out = model.apply({"params": p}, x, labels, train=True,
                              rngs={"dropout": jax.random.key(2)})
            return jnp.mean((out - target) ** 2)
        return jax.jit(jax.grad(loss))(params)

    for a, b in zip(jax.tree.leaves(grads(plain)), jax.tree.leaves(grads(remat)), strict=True):
        assert float(jnp.linalg.norm(a - b)) <= 1e-4 * float(jnp.linalg.norm(a))
