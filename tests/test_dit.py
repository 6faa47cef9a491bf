"""The Diffusion Transformer (``model.name=dit``): the published parameter counts, the forward
of facebookresearch/DiT's ``models.py`` (PyTorch) with the same random weights, shapes, dtypes,
remat, the trainer's step on one device and on an FSDP mesh, and its config keys."""

from __future__ import annotations

import math
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sagd_jax.config import default_config
from sagd_jax.models import (
    DIT_SIZES,
    DiT,
    build_model,
    configure_dit,
    count_params,
    flops_per_image,
)
from sagd_jax.models.embeddings import sincos_2d_embedding, timestep_embedding
from sagd_jax.sharding import FSDP_MIN_SIZE, fsdp_spec

# A tiny DiT run on the conftest's 16x16 grf data: 8x8 tokens of width 32.
TINY_DIT = {"model.name": "dit", "model.patch_size": 2, "model.hidden_size": 32,
            "model.depth": 2, "model.num_heads": 2, "model.dropout": 0.0}


def _dit_config(name: str, num_classes: int = 0):
    config = default_config()
    configure_dit(config.model, name)
    config.model.num_classes = num_classes
    return config


def _shapes(model: DiT, shape: tuple[int, ...], batch: int = 1):
    """The abstract variables of ``model`` on ``(batch, *shape)`` images (nothing allocated)."""
    x = jnp.zeros((batch, *shape))
    t = jnp.zeros((batch,))
    y = jnp.zeros((batch,), jnp.int32) if model.num_classes else None
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, y))


def _random_variables(model: DiT, shape: tuple[int, ...], seed: int = 0):
    """Variables with every parameter random and nonzero (DiT's zero-initialised adaLN and
    output layers would make any comparison trivial), weights of scale 1 / sqrt(fan in)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "bias" in name:
            value = 0.1 * rng.standard_normal(leaf.shape)
        elif "embedding" in name:
            value = rng.standard_normal(leaf.shape)
        else:
            value = rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, _shapes(model, shape))


def _inputs(shape: tuple[int, ...], batch: int = 3, num_classes: int = 0, seed: int = 1):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((batch, *shape)), jnp.float32)
    t = jnp.asarray(1000.0 * rng.uniform(size=batch), jnp.float32)
    y = jnp.asarray(np.arange(batch) % (num_classes + 1), jnp.int32) if num_classes else None
    return x, t, y


# Our counts (learn_sigma off, the position embedding a constant) at 256 px images, i.e.
# 32x32x4 SD-VAE latents, 1000 classes; and DiT's own (its models.py counts the fixed
# position embedding, a frozen nn.Parameter, and learn_sigma's second C output channels).
PARAM_COUNTS = {"XL/2": (674_816_272, 675_129_632), "B/2": (130_303_504, 130_512_416)}
PAPER_MILLIONS = {"XL/2": 675, "B/2": 130}  # Peebles & Xie 2023, table 4 (truncated)


@pytest.mark.parametrize("name", ["XL/2", "B/2"])
def test_parameter_counts_equal_the_papers(name):
    config = _dit_config(name, num_classes=1000)
    model = build_model(config.model, (32, 32, 4))
    ours = count_params(_shapes(model, (32, 32, 4))["params"])
    assert ours == PARAM_COUNTS[name][0]
    assert round(ours / 1e6) == PAPER_MILLIONS[name]
    # DiT's count: plus the 16 x 16 tokens' position embedding and the variance channels.
    d, p = DIT_SIZES[name.split("/")[0]]["hidden_size"], 2
    official = ours + 16 * 16 * d + d * p * p * 4 + p * p * 4
    assert official == PARAM_COUNTS[name][1]
    # The paper truncates to the million: DiT's own B/2 has 130.51M, "130M" in table 4.
    assert int(official / 1e6) == PAPER_MILLIONS[name]


# The paper's forward Gflops (table 4; multiply-adds, as fvcore counts them) at 256 px.
PAPER_GFLOPS = {"S/2": 6.06, "B/2": 23.01}


@pytest.mark.parametrize("name", ["S/2", "B/2"])
def test_flops_per_image_are_twice_the_papers_gflops(name):
    """XLA's count (a multiply-add is 2) over 2 is the paper's within 2%: the matrix products
    are all there; the rest (norms, activations, softmax) is the difference (0.4 to 0.8%)."""
    config = _dit_config(name, num_classes=1000)
    model = build_model(config.model, (32, 32, 4))
    flops = flops_per_image(model, _shapes(model, (32, 32, 4)), (32, 32, 4))
    assert 1.0 < flops / 2e9 / PAPER_GFLOPS[name] < 1.02, flops


def test_configure_dit_sets_the_published_sizes_and_refuses_unknown_names():
    model = default_config().model
    configure_dit(model, "L/4")
    assert (model.name, model.hidden_size, model.depth, model.num_heads, model.patch_size,
            model.mlp_ratio, model.dropout) == ("dit", 1024, 24, 16, 4, 4.0, 0.0)
    for bad in ("M/2", "B", "B/0", "B/x"):
        with pytest.raises(ValueError, match="expected SIZE/PATCH"):
            configure_dit(model, bad)


def test_embeddings_are_ditis():
    """DiT's timestep embedding ([cos, sin], frequencies exp(-ln(1e4) k / half)) and the MAE
    2-D sin-cos positions (first half: the column, second half: the row)."""
    t = jnp.array([0.0, 3.0, 999.0])
    emb = np.asarray(timestep_embedding(t, 8))
    freqs = np.exp(-np.log(10_000.0) * np.arange(4) / 4)
    np.testing.assert_allclose(emb, np.concatenate([np.cos(np.outer(t, freqs)),
                                                    np.sin(np.outer(t, freqs))], 1), rtol=1e-5)
    assert timestep_embedding(t, 7).shape == (3, 7) and not np.any(timestep_embedding(t, 7)[:, 6])
    pos = sincos_2d_embedding(2, 3, 8)  # tokens (row, col): (0,0) (0,1) (0,2) (1,0) ...
    omega = 1.0 / 10_000.0 ** (np.arange(2) / 2)
    token = 5  # row 1, column 2
    np.testing.assert_allclose(pos[token], np.concatenate(
        [np.sin(2 * omega), np.cos(2 * omega), np.sin(1 * omega), np.cos(1 * omega)]),
        rtol=1e-6)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d_embedding(2, 2, 6)


# ----------------------------------------------------------------------------------------
# facebookresearch/DiT's models.py (commit ed81ce2), reimplemented in plain torch: the same
# modules, parameter names, initial layout and arithmetic, with timm's PatchEmbed, Attention
# and Mlp written out (timm's package imports torchvision, which does not load beside the CPU
# torch here). Sin-cos positions as MAE's get_2d_sincos_pos_embed, recomputed here in NumPy.


def _reference_dit(torch, *, input_size, patch_size, in_channels, hidden_size, depth,
                   num_heads, num_classes, learn_sigma=False, mlp_ratio=4.0):
    nn = torch.nn

    def modulate(x, shift, scale):
        return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)

    class PatchEmbed(nn.Module):  # timm's, flatten=True, no norm
        def __init__(self):
            super().__init__()
            self.proj = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size,
                                  bias=True)
            self.num_patches = (input_size // patch_size) ** 2

        def forward(self, x):
            return self.proj(x).flatten(2).transpose(1, 2)

    class Attention(nn.Module):  # timm's, qkv_bias=True, no qk norm, no dropout
        def __init__(self):
            super().__init__()
            self.head_dim = hidden_size // num_heads
            self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=True)
            self.proj = nn.Linear(hidden_size, hidden_size)

        def forward(self, x):
            b, n, c = x.shape
            qkv = self.qkv(x).reshape(b, n, 3, num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            attn = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)
            x = attn.softmax(dim=-1) @ v
            return self.proj(x.transpose(1, 2).reshape(b, n, c))

    class Mlp(nn.Module):  # timm's, with DiT's tanh-approximated GELU
        def __init__(self, hidden):
            super().__init__()
            self.fc1 = nn.Linear(hidden_size, hidden)
            self.act = nn.GELU(approximate="tanh")
            self.fc2 = nn.Linear(hidden, hidden_size)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    class TimestepEmbedder(nn.Module):
        def __init__(self, frequency_embedding_size=256):
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size),
                                     nn.SiLU(), nn.Linear(hidden_size, hidden_size))
            self.size = frequency_embedding_size

        def forward(self, t, max_period=10000):
            half = self.size // 2
            freqs = torch.exp(-math.log(max_period)
                              * torch.arange(0, half, dtype=torch.float32) / half)
            args = t[:, None].float() * freqs[None]
            return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
            self.attn = Attention()
            self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
            self.mlp = Mlp(int(hidden_size * mlp_ratio))
            self.adaLN_modulation = nn.Sequential(nn.SiLU(),
                                                  nn.Linear(hidden_size, 6 * hidden_size))

        def forward(self, x, c):
            sm, cm, gm, sp, cp, gp = self.adaLN_modulation(c).chunk(6, dim=1)
            x = x + gm.unsqueeze(1) * self.attn(modulate(self.norm1(x), sm, cm))
            return x + gp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), sp, cp))

    class FinalLayer(nn.Module):
        def __init__(self, out_channels):
            super().__init__()
            self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
            self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
            self.adaLN_modulation = nn.Sequential(nn.SiLU(),
                                                  nn.Linear(hidden_size, 2 * hidden_size))

        def forward(self, x, c):
            shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
            return self.linear(modulate(self.norm_final(x), shift, scale))

    def sincos_1d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
        out = np.einsum("m,d->md", pos.reshape(-1), 1.0 / 10000**omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    def sincos_2d(dim, grid_size):
        grid = np.stack(np.meshgrid(np.arange(grid_size, dtype=np.float32),
                                    np.arange(grid_size, dtype=np.float32)), axis=0)
        grid = grid.reshape(2, 1, grid_size, grid_size)
        return np.concatenate([sincos_1d(dim // 2, grid[0]), sincos_1d(dim // 2, grid[1])], 1)

    class Reference(nn.Module):
        def __init__(self):
            super().__init__()
            self.out_channels = in_channels * 2 if learn_sigma else in_channels
            self.x_embedder = PatchEmbed()
            self.t_embedder = TimestepEmbedder()
            if num_classes:
                self.y_embedder = nn.Module()
                self.y_embedder.embedding_table = nn.Embedding(num_classes + 1, hidden_size)
            num_patches = self.x_embedder.num_patches
            self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden_size),
                                          requires_grad=False)
            self.pos_embed.data.copy_(torch.from_numpy(
                sincos_2d(hidden_size, int(num_patches**0.5))).float().unsqueeze(0))
            self.blocks = nn.ModuleList([Block() for _ in range(depth)])
            self.final_layer = FinalLayer(self.out_channels)

        def forward(self, x, t, y=None):
            x = self.x_embedder(x) + self.pos_embed
            c = self.t_embedder(t)
            if y is not None:
                c = c + self.y_embedder.embedding_table(y)
            for block in self.blocks:
                x = block(x, c)
            x = self.final_layer(x, c)
            c_out, p = self.out_channels, patch_size
            h = w = int(x.shape[1] ** 0.5)
            x = torch.einsum("nhwpqc->nchpwq", x.reshape(x.shape[0], h, w, p, p, c_out))
            return x.reshape(x.shape[0], c_out, h * p, h * p)

    return Reference()


def _torch_state_dict(params, torch) -> dict:
    """Our parameters under the reference's names and layouts (Linear: kernel transposed;
    the patch conv: HWIO -> OIHW)."""
    def linear(p):
        return {"weight": np.asarray(p["kernel"]).T, "bias": np.asarray(p["bias"])}

    out = {}

    def put(prefix, entries):
        for key, value in entries.items():
            out[f"{prefix}.{key}"] = torch.from_numpy(np.array(value))

    put("x_embedder.proj", {"weight": np.asarray(params["x_embedder"]["kernel"]
                                                 ).transpose(3, 2, 0, 1),
                            "bias": np.asarray(params["x_embedder"]["bias"])})
    put("t_embedder.mlp.0", linear(params["t_embedder_fc1"]))
    put("t_embedder.mlp.2", linear(params["t_embedder_fc2"]))
    if "y_embedder" in params:
        put("y_embedder.embedding_table", {"weight": params["y_embedder"]["embedding"]})
    i = 0
    while f"blocks_{i}" in params:
        block = params[f"blocks_{i}"]
        put(f"blocks.{i}.attn.qkv", linear(block["attn"]["qkv"]))
        put(f"blocks.{i}.attn.proj", linear(block["attn"]["proj"]))
        put(f"blocks.{i}.mlp.fc1", linear(block["mlp_fc1"]))
        put(f"blocks.{i}.mlp.fc2", linear(block["mlp_fc2"]))
        put(f"blocks.{i}.adaLN_modulation.1", linear(block["adaLN_modulation"]))
        i += 1
    put("final_layer.adaLN_modulation.1", linear(params["final_adaLN_modulation"]))
    put("final_layer.linear", linear(params["final_linear"]))
    return out


@pytest.mark.parametrize("num_classes", [0, 5])
def test_forward_equals_facebookresearch_dit_with_the_same_weights(num_classes):
    torch = pytest.importorskip("torch")
    size = dict(patch_size=2, hidden_size=64, depth=2, num_heads=4)
    shape = (16, 16, 4)
    model = DiT(**size, num_classes=num_classes)
    variables = _random_variables(model, shape)
    reference = _reference_dit(torch, input_size=16, in_channels=4, num_classes=num_classes,
                               **size)
    state = _torch_state_dict(variables["params"], torch)
    missing, unexpected = reference.load_state_dict(state, strict=False)
    assert list(missing) == ["pos_embed"] and not unexpected  # the buffer is DiT's own

    x, t, y = _inputs(shape, batch=6, num_classes=num_classes)
    forward = jax.jit(model.apply)
    ours = np.asarray(forward(variables, x, t, y))
    with torch.no_grad():
        theirs = reference(torch.from_numpy(np.array(x).transpose(0, 3, 1, 2)),
                           torch.from_numpy(np.array(t)),
                           None if y is None else torch.from_numpy(np.array(y)).long())
    theirs = theirs.numpy().transpose(0, 2, 3, 1)
    scale = np.abs(theirs).max()
    assert scale > 0.1  # random weights: nothing is trivially zero
    assert np.abs(ours - theirs).max() <= 1e-4 * scale, np.abs(ours - theirs).max() / scale
    if num_classes:  # the label reaches the output, the null label included
        other = np.asarray(forward(variables, x, t, (y + 1) % (num_classes + 1)))
        assert np.abs(other - ours).max() > 1e-3 * scale


def test_the_reference_counts_what_the_paper_counts():
    """DiT-B/2's reference (on torch's meta device: nothing allocated) has the paper's count,
    ours plus its position embedding and learn_sigma's variance channels."""
    torch = pytest.importorskip("torch")
    with torch.device("meta"):
        reference = _reference_dit(torch, input_size=32, patch_size=2, in_channels=4,
                                   num_classes=1000, learn_sigma=True, **DIT_SIZES["B"])
    assert sum(p.numel() for p in reference.parameters()) == PARAM_COUNTS["B/2"][1]


def test_zero_initialised_like_dit():
    """At initialisation the adaLN modulations and the output layer are zero (the network
    outputs 0); the label table and the noise MLP are normal(0.02); the rest Xavier."""
    model = DiT(patch_size=2, hidden_size=32, depth=1, num_heads=2, num_classes=3)
    x, t, y = _inputs((8, 8, 3), num_classes=3)
    # The "rbg" generator: XLA compiles its random kernels far faster on CPU than threefry's.
    params = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x, t, y)["params"]
    for layer in (params["blocks_0"]["adaLN_modulation"], params["final_adaLN_modulation"],
                  params["final_linear"]):
        assert not np.any(layer["kernel"]) and not np.any(layer["bias"])
    assert not np.any(jax.jit(model.apply)({"params": params}, x, t, y))
    assert abs(float(np.std(params["y_embedder"]["embedding"])) - 0.02) < 0.005
    assert abs(float(np.std(params["t_embedder_fc1"]["kernel"])) - 0.02) < 0.002
    kernel = np.asarray(params["x_embedder"]["kernel"])  # (2, 2, 3, 32): fans 12 and 32
    bound = math.sqrt(6 / (12 + 32))
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound


@pytest.mark.parametrize("shape", [(16, 16, 1), (8, 12, 3)])
def test_shapes_and_float32_output(shape):
    model = DiT(patch_size=2, hidden_size=32, depth=2, num_heads=4)
    variables = _random_variables(model, shape)
    x, t, _ = _inputs(shape)
    out = jax.jit(model.apply)(variables, x, t)
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert np.all(np.isfinite(out))
    with pytest.raises(ValueError, match="class_labels must be None"):
        model.apply(variables, x, t, jnp.zeros((3,), jnp.int32))


def test_bfloat16_computes_close_to_float32_and_outputs_float32():
    shape = (16, 16, 4)
    model = DiT(patch_size=2, hidden_size=64, depth=2, num_heads=4, num_classes=3)
    variables = _random_variables(model, shape)
    x, t, y = _inputs(shape, num_classes=3)
    full = np.asarray(jax.jit(model.apply)(variables, x, t, y))
    half = jax.jit(model.clone(dtype=jnp.bfloat16).apply)(variables, x, t, y)
    assert half.dtype == jnp.float32
    error = np.abs(np.asarray(half) - full).max() / np.abs(full).max()
    assert 0 < error < 0.05, error


@pytest.mark.slow
def test_remat_gives_the_same_output_and_gradient():
    shape = (8, 8, 2)
    model = DiT(patch_size=2, hidden_size=32, depth=2, num_heads=2)
    variables = _random_variables(model, shape)
    x, t, _ = _inputs(shape)

    def loss(m):
        return jax.jit(jax.value_and_grad(lambda v: jnp.mean(m.apply(v, x, t) ** 2)))

    (a, ga), (b, gb) = loss(model)(variables), loss(model.clone(remat=True))(variables)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    for u, w in zip(jax.tree.leaves(ga), jax.tree.leaves(gb), strict=True):
        np.testing.assert_allclose(u, w, rtol=1e-5, atol=1e-7)


def test_large_kernels_are_sharded_over_fsdp():
    """Every DiT-B/2 weight matrix (and the label table) is split over fsdp=4; only vectors
    and arrays under FSDP_MIN_SIZE stay whole."""
    model = build_model(_dit_config("B/2", num_classes=1000).model, (32, 32, 4))
    shapes = _shapes(model, (32, 32, 4))["params"]
    for path, leaf in jax.tree_util.tree_leaves_with_path(shapes):
        spec = fsdp_spec(tuple(leaf.shape), 4)
        if math.prod(leaf.shape) >= FSDP_MIN_SIZE:
            assert "fsdp" in tuple(spec), (jax.tree_util.keystr(path), leaf.shape)


@pytest.mark.parametrize("key, value, needle", [
    ("name", "vit", "model.name='vit'"),
    ("patch_size", 3, "model.patch_size=3: does not divide the 16x16 images"),
    ("patch_size", 0, "model.patch_size=0: must be an integer >= 1"),
    ("num_heads", 3, "model.hidden_size=32: must be divisible by model.num_heads=3"),
    ("num_heads", 0, "model.num_heads=0: must be an integer >= 1"),
    ("depth", 0, "model.depth=0: must be an integer >= 1"),
    ("mlp_ratio", 0.0, "model.mlp_ratio=0.0: must be a finite number in (0, inf)"),
    ("dropout", 0.1, "model.dropout=0.1: DiT has no dropout (model.name=dit)"),
])
def test_bad_keys_are_one_line_errors_naming_them(key, value, needle, one_line_error):
    config = default_config()
    config.model.update({k.split(".")[1]: v for k, v in TINY_DIT.items()})
    config.model[key] = value
    one_line_error(lambda: build_model(config.model, (16, 16, 1)), needle)


def test_hidden_size_must_be_divisible_by_4(one_line_error):
    config = default_config()
    config.model.update({k.split(".")[1]: v for k, v in TINY_DIT.items()})
    config.model.update(dict(hidden_size=6, num_heads=1))
    one_line_error(lambda: build_model(config.model, (16, 16, 1)),
                   "model.hidden_size=6: must be divisible by 4")


def test_a_dit_ignores_the_unets_keys_and_a_unet_the_dits():
    config = default_config()
    config.model.update({k.split(".")[1]: v for k, v in TINY_DIT.items()})
    config.model.update(dict(ch=2, ch_mult=(1, 2, 2, 2, 2)))  # bad for a U-Net, unread here
    assert isinstance(build_model(config.model, (16, 16, 1)), DiT)
    config = default_config()
    config.model.update(dict(patch_size=5, hidden_size=7))  # unread by the U-Net
    assert not isinstance(build_model(config.model, (28, 28, 1)), DiT)


@pytest.mark.slow
def test_a_tiny_dit_run_trains_through_the_jitted_step(tiny_config):
    """The trainer's step on a tiny DiT: the loss, 1 at the zero-initialised output (eps
    prediction), drops within 30 steps."""
    from sagd_jax.run import Run

    run = Run.from_config(tiny_config(**TINY_DIT, **{"train.num_steps": 30}))
    assert isinstance(run.model, DiT)
    mesh = run.mesh()
    state, step = run.init_state(mesh), run.train_step(mesh)
    losses = []
    for s in range(30):
        state, metrics = step(state, run.global_batch(s, mesh))
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses))
    assert abs(losses[0] - 1.0) < 0.2, losses[0]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


FSDP_TWO_STEPS = textwrap.dedent("""
    import json
    import jax, numpy as np
    from sagd_jax.config import normalize
    from sagd_jax.run import Run
    assert jax.device_count() == 4

    def trained(fsdp, devices):
        config = normalize(json.loads({config!r}))
        config.mesh.data, config.mesh.fsdp = -1, fsdp
        run = Run.from_config(config, device_count=len(devices))
        mesh = run.mesh(devices)
        state, step = run.init_state(mesh), run.train_step(mesh)
        if fsdp > 1:
            specs = [x.sharding.spec for x in jax.tree.leaves(state.params)]
            assert any("fsdp" in tuple(s) for s in specs), specs
        for s in range(2):
            state, _ = step(state, run.global_batch(s, mesh))
        return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))]

    one = trained(1, jax.devices()[:1])
    for a, b in zip(one, trained(4, jax.devices()), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    print("ok")
""")


@pytest.mark.slow
@pytest.mark.needs_fashion_mnist
def test_a_dit_trains_alike_on_an_fsdp_mesh_of_4_devices(tiny_config, on_four_devices):
    """Two steps of a conditional DiT (hidden 64: its weight matrices are sharded) on a
    (1, 4) mesh of 4 CPU devices give one device's parameters."""
    config = tiny_config(**{**TINY_DIT, "model.hidden_size": 64, "model.num_heads": 4,
                            "data.name": "fashion_mnist", "data.num_classes": 10,
                            "model.num_classes": 10, "train.label_dropout": 0.2})
    result = on_four_devices(FSDP_TWO_STEPS.format(config=config.to_json_best_effort()))
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


@pytest.mark.slow
def test_a_dit_compiles_for_a_tpu_slice(run_cli, tmp_path):
    """The compile tool on a tiny DiT with FSDP in bfloat16 for v5e:2x2: memory, FLOPs and
    the parameters' all-gathers are reported, and it fits."""
    pytest.importorskip("libtpu", reason="libtpu is not installed (the [test] extra installs it)")
    import json

    out = tmp_path / "report.json"
    flags = [f"--config.{k}={v}" for k, v in {**TINY_DIT, "model.hidden_size": 128,
                                              "model.num_heads": 4}.items()]
    result = run_cli("sagd_jax.compile", "--config=configs/quickstart.py", "--topology=v5e:2x2",
                     "--config.data.name=grf", "--config.data.image_size=16",
                     "--config.mesh.fsdp=2", "--config.model.dtype=bfloat16",
                     "--config.train.batch_size=8", "--programs=train_step,network",
                     "--network_batch=8", f"--json={out}", *flags)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["config"]["model"]["name"] == "dit"
    for name in ("train_step", "network"):
        program = report["programs"][name]
        costs = program["costs"]
        assert program["fits"] and 0 < costs["hbm_bytes"] < 16 * 2**30
        assert costs["flops"] > 0 and costs["bytes_accessed"] > 0
    assert report["programs"]["train_step"]["costs"]["collectives"]["all-gather"]["count"] > 0
