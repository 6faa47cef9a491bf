"""``sagd_jax.models.autoencoder``: Stable Diffusion's VAE in Flax. With the same random weights
it equals diffusers' ``AutoencoderKL`` (where torch and diffusers are installed), reading the
files diffusers' ``save_pretrained`` writes (and the older and LDM names); its own files load in
diffusers; shapes, dtypes and chunking; every bad file is one line naming the file and key."""

from __future__ import annotations

import json
import os
import re
import shutil

import jax
import numpy as np
import pytest
import safetensors.numpy

from sagd_jax.models import autoencoder as ae
from sagd_jax.models.autoencoder import Autoencoder, AutoencoderConfig

# Two levels (downsample 2), 8 groups: seconds to build and compile on a CPU.
SMALL = {"block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 8,
         "latent_channels": 4, "down_block_types": ["DownEncoderBlock2D"] * 2,
         "up_block_types": ["UpDecoderBlock2D"] * 2}
WEIGHTS = "diffusion_pytorch_model.safetensors"
# The largest |ours - diffusers'| over the largest |diffusers'|, float32 on both sides.
TOLERANCE = 1e-4


def _images(n: int, side: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def _relative(ours: np.ndarray, ref: np.ndarray) -> float:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def random_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small autoencoder of random weights saved by ``save_pretrained`` (read-only)."""
    folder = str(tmp_path_factory.mktemp("random") / "vae")
    Autoencoder.random(SMALL, seed=3).save_pretrained(folder)
    return folder


def _copy(folder: str, tmp_path: os.PathLike[str]) -> str:
    return shutil.copytree(folder, os.path.join(tmp_path, "vae"))


# --- without torch ----------------------------------------------------------------------------
def test_shapes_dtypes_and_chunks(random_folder):
    model = Autoencoder.from_pretrained(random_folder, batch_size=2)
    assert (model.scale_factor, model.shift_factor) == (0.18215, 0.0)
    assert (model.latent_channels, model.downsample) == (4, 2)
    images = _images(5)
    latents = model.encode_mean(images)
    assert latents.shape == (5, 8, 8, 4) and latents.dtype == np.float32
    assert np.isfinite(latents).all() and latents.std() > 0
    # Chunks of 2 (the last padded) give what one chunk of 5 gives, image by image.
    np.testing.assert_allclose(latents, model.encode_mean(images, batch_size=5),
                               rtol=1e-5, atol=1e-6)
    decoded = model.decode(latents)
    assert decoded.shape == images.shape and decoded.dtype == np.uint8
    floats = model.decode_float(latents)
    assert floats.shape == images.shape and floats.dtype == np.float32
    np.testing.assert_array_equal(
        decoded, np.round(np.clip(floats / 2 + 0.5, 0, 1) * 255).astype(np.uint8))
    empty = model.encode_mean(images[:0])
    assert empty.shape == (0, 8, 8, 4) and model.decode(empty).shape == (0, 16, 16, 3)


def test_save_and_load_round_trip(random_folder, tmp_path):
    model = Autoencoder.from_pretrained(random_folder)
    again = Autoencoder.from_pretrained(random_folder)
    state = model.state_dict()
    assert state.keys() == again.state_dict().keys()
    for key, value in state.items():
        np.testing.assert_array_equal(value, again.state_dict()[key], err_msg=key)
    assert state["encoder.conv_in.weight"].shape == (32, 3, 3, 3)  # OIHW
    assert state["encoder.mid_block.attentions.0.to_out.0.weight"].shape == (64, 64)
    config = json.loads(open(os.path.join(random_folder, "config.json")).read())
    assert config["_class_name"] == "AutoencoderKL" and config["block_out_channels"] == [32, 64]
    # A pipeline folder holding the autoencoder in vae/, as a file:// URL; float32 matmuls
    # throughout (the CPU's default anyway).
    shutil.copytree(random_folder, tmp_path / "pipeline" / "vae")
    piped = Autoencoder.from_pretrained("file://" + str(tmp_path / "pipeline"),
                                        precision="highest")
    images = _images(2)
    np.testing.assert_allclose(piped.encode_mean(images), model.encode_mean(images),
                               rtol=1e-5, atol=1e-6)
    # The path of config.json itself.
    by_config = Autoencoder.from_pretrained(os.path.join(random_folder, "config.json"))
    np.testing.assert_array_equal(by_config.encode_mean(images), model.encode_mean(images))
    # config.json's scaling and shift factors.
    folder = _copy(random_folder, tmp_path)
    config.update(scaling_factor=1.5, shift_factor=0.25)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    scaled = Autoencoder.from_pretrained(folder)
    assert (scaled.scale_factor, scaled.shift_factor) == (1.5, 0.25)


def test_half_precision_and_old_attention_names(random_folder, tmp_path):
    """Weights stored as float16 or bfloat16, and under diffusers' older attention names
    (query, key, value, proj_attn), load."""
    model = Autoencoder.from_pretrained(random_folder)
    folder = _copy(random_folder, tmp_path)
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = {re.sub(r"attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.",
                    lambda m: f"attentions.0.{old[m.group(1)]}.", k): v.astype(np.float16)
             for k, v in model.state_dict().items()}
    assert "decoder.mid_block.attentions.0.proj_attn.weight" in state
    safetensors.numpy.save_file(state, os.path.join(folder, WEIGHTS))
    loaded = Autoencoder.from_pretrained(folder)
    for key, value in loaded.state_dict().items():
        np.testing.assert_allclose(value, model.state_dict()[key], rtol=1e-3, atol=1e-4,
                                   err_msg=key)
    import ml_dtypes

    bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in model.state_dict().items()}
    # NumPy's writer knows no bfloat16: written as uint16, then the header's dtypes changed.
    data = safetensors.numpy.save({k: v.view(np.uint16) for k, v in bf16.items()})
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    for key, entry in header.items():
        if key != "__metadata__":
            entry["dtype"] = "BF16"
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(os.path.join(folder, WEIGHTS), "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + data[8 + size:])
    loaded = Autoencoder.from_pretrained(folder)
    for key, value in loaded.state_dict().items():
        np.testing.assert_array_equal(value, bf16[key].astype(np.float32), err_msg=key)


def test_lone_file_has_sd_architecture(random_folder, tmp_path, monkeypatch, one_line_error):
    """A weights file alone is SD's VAE; the small one is refused for SD's shapes, and loads
    once the default architecture is the small one."""
    lone = os.path.join(random_folder, WEIGHTS)
    one_line_error(lambda: Autoencoder.from_pretrained(lone), lone,
                   "decoder.conv_in.bias has shape (64,), SD's VAE architecture needs (512,)")
    monkeypatch.setattr(ae, "SD_CONFIG", AutoencoderConfig.from_json(SMALL))
    loaded = Autoencoder.from_pretrained(lone)
    assert loaded.scale_factor == 0.18215
    images = _images(2)
    np.testing.assert_array_equal(loaded.encode_mean(images),
                                  Autoencoder.from_pretrained(random_folder).encode_mean(images))


def test_sd_architecture_shapes():
    """SD's VAE: 83.65M parameters (34.16M encoder, 49.49M decoder), latents 4 x H/8 x W/8."""
    params = ae._abstract_params(AutoencoderConfig())
    sizes = {k: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v))
             for k, v in params.items()}
    assert sum(sizes.values()) == 83_653_863, sizes
    module = ae.AutoencoderKL(AutoencoderConfig())
    latents = jax.eval_shape(
        lambda p, x: module.apply({"params": p}, x, method=ae.AutoencoderKL.encode_mean),
        params, jax.ShapeDtypeStruct((1, 64, 48, 3), np.uint8))
    assert latents.shape == (1, 8, 6, 4) and latents.dtype == np.float32


def _write_config(folder: str, **changes: object) -> str:
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        config = json.load(f)
    config.update(changes)
    with open(path, "w") as f:
        json.dump(config, f)
    return path


def test_missing_files_are_one_line(random_folder, tmp_path, one_line_error):
    missing = str(tmp_path / "nowhere")
    one_line_error(lambda: Autoencoder.from_pretrained(missing, key="data.autoencoder"),
                   f"data.autoencoder={missing}: no such file or folder",
                   "stabilityai/sd-vae-ft-ema", "diffusion_pytorch_model.safetensors",
                   "config.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(lambda: Autoencoder.from_pretrained(str(empty)), str(empty),
                   "without config.json", "stabilityai/sd-vae-ft-ema")
    folder = _copy(random_folder, tmp_path)
    os.rename(os.path.join(folder, WEIGHTS), os.path.join(folder, "diffusion_pytorch_model.bin"))
    one_line_error(lambda: Autoencoder.from_pretrained(folder), folder,
                   f"no {WEIGHTS}", "diffusion_pytorch_model.bin", "stabilityai/sd-vae-ft-ema")


@pytest.mark.parametrize("damage", ["truncated", "not_safetensors", "empty", "integer_dtype"])
def test_damaged_weights_are_one_line(random_folder, tmp_path, one_line_error, damage):
    folder = _copy(random_folder, tmp_path)
    weights = os.path.join(folder, WEIGHTS)
    data = open(weights, "rb").read()
    needle = "not a safetensors file, or truncated"
    if damage == "truncated":
        data = data[:len(data) // 2]
    elif damage == "not_safetensors":
        data = json.dumps({"hello": "world"}).encode() * 10
    elif damage == "empty":
        data = b""
    else:
        state = Autoencoder.from_pretrained(random_folder).state_dict()
        state["encoder.conv_in.bias"] = state["encoder.conv_in.bias"].astype(np.int32)
        data, needle = safetensors.numpy.save(state), "encoder.conv_in.bias has dtype I32"
    with open(weights, "wb") as f:
        f.write(data)
    one_line_error(lambda: Autoencoder.from_pretrained(folder), weights, needle)


def test_wrong_contents_are_one_line(random_folder, tmp_path, one_line_error):
    folder = _copy(random_folder, tmp_path)
    weights = os.path.join(folder, WEIGHTS)
    state = Autoencoder.from_pretrained(random_folder).state_dict()

    def write(tensors: dict[str, np.ndarray]) -> None:
        safetensors.numpy.save_file(tensors, weights)

    missing = dict(state)
    del missing["decoder.up_blocks.1.resnets.0.conv2.weight"]
    write(missing)
    one_line_error(lambda: Autoencoder.from_pretrained(folder), weights,
                   "no decoder.up_blocks.1.resnets.0.conv2.weight", "one of 1 parameters")
    write({**state, "encoder.down_blocks.0.resnets.1.conv1.weight": np.zeros((32, 32, 3, 3),
                                                                                np.float32)})
    one_line_error(lambda: Autoencoder.from_pretrained(folder), weights,
                   "unexpected encoder.down_blocks.0.resnets.1.conv1.weight", "config.json")
    write({**state, "encoder.conv_out.weight": state["encoder.conv_out.weight"][:, :, :1]})
    one_line_error(lambda: Autoencoder.from_pretrained(folder), weights,
                   "encoder.conv_out.weight has shape (8, 64, 1, 3)", "needs (8, 64, 3, 3)")
    nan = dict(state)
    nan["post_quant_conv.bias"] = np.full(4, np.nan, np.float32)
    write(nan)
    one_line_error(lambda: Autoencoder.from_pretrained(folder), weights,
                   "post_quant_conv.bias holds non-finite values")
    write(state)
    Autoencoder.from_pretrained(folder)  # the intact file loads
    # A config of other sizes than the weights: the first parameter that differs.
    config = _write_config(folder, block_out_channels=[32, 128], norm_num_groups=8)
    one_line_error(lambda: Autoencoder.from_pretrained(folder), weights,
                   "decoder.conv_in.bias has shape (64,)", "needs (128,)", config)
    _write_config(folder, block_out_channels=[32, 64], layers_per_block=2)
    one_line_error(lambda: Autoencoder.from_pretrained(folder), weights,
                   "no decoder.up_blocks.0.resnets.2.conv1.bias", "one of 32")


@pytest.mark.parametrize("change, needle", [
    ({"_class_name": "AutoencoderTiny"}, "_class_name='AutoencoderTiny': another architecture"),
    ({"down_block_types": ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"]},
     "down_block_types=['DownEncoderBlock2D', 'AttnDownEncoderBlock2D']: must be"),
    ({"up_block_types": ["UpDecoderBlock2D"]}, "up_block_types=['UpDecoderBlock2D']: must be"),
    ({"act_fn": "gelu"}, "act_fn='gelu': only silu"),
    ({"latents_mean": [0.0] * 4}, "latents_mean=[0.0, 0.0, 0.0, 0.0]: per-channel"),
    ({"norm_num_groups": 12}, "norm_num_groups=12: must divide"),
    ({"layers_per_block": 0}, "layers_per_block=0: must be an integer >= 1"),
    ({"scaling_factor": -1}, "scaling_factor=-1: must be a number > 0"),
    ({"block_out_channels": []}, "block_out_channels=[]: must be a non-empty list"),
])
def test_other_architectures_are_one_line(random_folder, tmp_path, one_line_error, change,
                                          needle):
    folder = _copy(random_folder, tmp_path)
    config = _write_config(folder, **change)
    one_line_error(lambda: Autoencoder.from_pretrained(folder), config, needle)


def test_bad_config_json_and_inputs(random_folder, tmp_path, one_line_error):
    folder = _copy(random_folder, tmp_path)
    config = os.path.join(folder, "config.json")
    with open(config, "w") as f:
        f.write('{"block_out_channels": [32, ')
    one_line_error(lambda: Autoencoder.from_pretrained(folder), config, "not JSON")
    model = Autoencoder.from_pretrained(random_folder)
    one_line_error(lambda: model.encode_mean(_images(1).astype(np.float32)), "images",
                   "expected uint8")
    one_line_error(lambda: model.encode_mean(_images(1)[0]), "images", "expected (N, H, W, C)")
    one_line_error(lambda: model.encode_mean(_images(1, side=15)), "divisible by 2")
    one_line_error(lambda: model.encode_mean(_images(1)[..., :1]), "1 channels")
    one_line_error(lambda: model.decode(np.zeros((1, 4, 4, 3), np.float32)), "3 channels")
    one_line_error(lambda: model.decode(np.zeros((1, 4, 4, 4), np.uint8)), "a float dtype")
    one_line_error(lambda: model.decode(np.zeros((1, 4, 4, 4)), batch_size=0),
                   "batch_size=0")
    one_line_error(lambda: Autoencoder.from_pretrained(random_folder, precision="fast"),
                   "precision='fast'")


# --- against diffusers ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, str]:
    """diffusers' ``AutoencoderKL`` of the small config, its random weights perturbed so that no
    norm is the identity and no bias zero, and the folder its ``save_pretrained`` wrote."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKL(**SMALL).eval()
    with torch.no_grad():
        for param in ref.parameters():
            param.add_(0.05 * torch.randn_like(param))
    folder = str(tmp_path_factory.mktemp("diffusers") / "vae")
    ref.save_pretrained(folder)
    assert sorted(os.listdir(folder)) == ["config.json", WEIGHTS]
    return ref, folder


def _torch_encode(ref: object, images: np.ndarray) -> np.ndarray:
    """diffusers' posterior mean of uint8 NHWC images, mapped to [-1, 1] by its image
    processor (as its pipelines do)."""
    import torch
    from diffusers.image_processor import VaeImageProcessor

    x = VaeImageProcessor(do_resize=False).preprocess(images.astype(np.float32) / 255)
    with torch.no_grad():
        return ref.encode(x).latent_dist.mean.permute(0, 2, 3, 1).numpy()


def _torch_decode(ref: object, latents: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = ref.decode(torch.from_numpy(latents).permute(0, 3, 1, 2)).sample
    return out.permute(0, 2, 3, 1).numpy()


@pytest.mark.slow
def test_matches_diffusers(diffusers_folder):
    """Weights written by diffusers' save_pretrained load; encode and decode equal diffusers'
    within 1e-4 of the largest value (1.2e-6 and 1.6e-6 measured; SD's architecture at 64 px:
    3.3e-6, 3.8e-6); uint8 images equal its image processor's."""
    import torch
    from diffusers.image_processor import VaeImageProcessor

    ref, folder = diffusers_folder
    model = Autoencoder.from_pretrained(folder, batch_size=2)
    for key, value in ref.state_dict().items():  # no parameter is trivially 0 or 1
        assert np.abs(value.numpy()).min() > 0 and not np.allclose(value.numpy(), 1), key
    images = _images(3)
    latents = model.encode_mean(images)
    want = _torch_encode(ref, images)
    assert _relative(latents, want) < TOLERANCE
    z = np.random.default_rng(1).standard_normal(want.shape).astype(np.float32) * 2
    decoded = _torch_decode(ref, z)
    assert _relative(model.decode_float(z), decoded) < TOLERANCE
    assert np.abs(decoded).max() > 1  # the clipping is exercised
    pixels = VaeImageProcessor().postprocess(torch.from_numpy(decoded).permute(0, 3, 1, 2),
                                             output_type="pil")
    # Equal but where the float outputs' 1e-6 differences cross a rounding boundary.
    diff = model.decode(z).astype(int) - np.stack([np.asarray(p) for p in pixels])
    assert np.abs(diff).max() <= 1 and np.mean(diff != 0) < 1e-3, np.mean(diff != 0)
    # Through a round trip: the encoder's output decoded.
    assert _relative(model.decode_float(latents), _torch_decode(ref, want)) < TOLERANCE


@pytest.mark.slow
def test_ldm_names_load(diffusers_folder, tmp_path, monkeypatch):
    """A single file under the original LDM names, as in a whole SD checkpoint
    (``first_stage_model.`` prefixed, 1x1-conv attention), loads to diffusers' weights; the
    renaming below is checked against diffusers' own converter first."""
    import torch
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    ref, folder = diffusers_folder
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    rules = [(r"^encoder\.down_blocks\.(\d)\.resnets\.", r"encoder.down.\1.block."),
             (r"^encoder\.down_blocks\.(\d)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
             (r"^decoder\.up_blocks\.(\d)\.resnets\.",
              lambda m: f"decoder.up.{1 - int(m.group(1))}.block."),
             (r"^decoder\.up_blocks\.(\d)\.upsamplers\.0\.",
              lambda m: f"decoder.up.{1 - int(m.group(1))}.upsample."),
             (r"\.mid_block\.resnets\.(\d)\.", lambda m: f".mid.block_{int(m.group(1)) + 1}."),
             (r"\.mid_block\.attentions\.0\.group_norm\.", ".mid.attn_1.norm."),
             (r"\.mid_block\.attentions\.0\.to_(q|k|v)\.", r".mid.attn_1.\1."),
             (r"\.mid_block\.attentions\.0\.to_out\.0\.", ".mid.attn_1.proj_out."),
             (r"\.conv_shortcut\.", ".nin_shortcut."), (r"\.conv_norm_out\.", ".norm_out.")]
    ldm = {}
    for key, value in state.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        if ".attn_1." in key and key.endswith(".weight") and ".norm." not in key:
            value = value[:, :, None, None]
        ldm["first_stage_model." + key] = value
    back = convert_ldm_vae_checkpoint({k: torch.from_numpy(v) for k, v in ldm.items()},
                                      json.load(open(os.path.join(folder, "config.json"))))
    assert back.keys() == state.keys()
    for key, value in back.items():
        np.testing.assert_array_equal(value.numpy(), state[key], err_msg=key)
    lone = str(tmp_path / "sd-checkpoint.safetensors")
    unet = {"model.diffusion_model.input_blocks.0.0.weight": np.ones((2, 2), np.float32)}
    safetensors.numpy.save_file({**ldm, **unet}, lone)
    monkeypatch.setattr(ae, "SD_CONFIG", AutoencoderConfig.from_json(SMALL))
    loaded = Autoencoder.from_pretrained(lone)
    for key, value in loaded.state_dict().items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)


@pytest.mark.slow
def test_diffusers_loads_ours(tmp_path):
    """Our save_pretrained writes a folder diffusers loads, and its model equals ours."""
    pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    ours = Autoencoder.random(SMALL, seed=5)
    ours.save_pretrained(str(tmp_path / "vae"))
    ref = diffusers.AutoencoderKL.from_pretrained(str(tmp_path / "vae")).eval()
    images = _images(2, seed=2)
    latents = ours.encode_mean(images)
    assert _relative(latents, _torch_encode(ref, images)) < TOLERANCE
    assert _relative(ours.decode_float(latents), _torch_decode(ref, latents)) < TOLERANCE
