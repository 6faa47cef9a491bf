"""Every data.* value is checked, with a one-line ValueError naming the key."""

import math

import ml_collections
import numpy as np
import pytest

from sagd_jax.data import (
    ArraySource,
    Corruption,
    Preprocess,
    batch_options,
    default_data_config,
    get_source,
    load_batch,
)


def test_default_config_holds_every_key():
    cfg = default_data_config()
    assert isinstance(cfg, ml_collections.ConfigDict)
    assert set(cfg.keys()) == {
        "name",
        "split",
        "image_size",
        "channels",
        "root",
        "num_examples",
        "seed",
        "image_key",
        "num_classes",
        "label_key",
        "download",
        "random_flip",
        "crop",
        "resize",
        "center_crop_fraction",
        "num_workers",
        "prefetch",
        "grf",
        "corruption",
        "autoencoder",
        "latent_channels",
        "latent_downsample",
        "latent_cache",
    }
    assert (cfg.autoencoder, cfg.latent_channels, cfg.latent_downsample) == ("", 4, 8)
    assert set(cfg.grf.keys()) == {"gamma", "rho0", "std"}
    assert set(cfg.corruption.keys()) == {"kind", "lo", "hi", "amplitude", "seed"}
    assert (cfg.name, cfg.split, cfg.image_size, cfg.channels) == ("fashion_mnist", "train", 28, 1)
    assert cfg.random_flip is False and cfg.corruption.kind == "none"


def _without(cfg: ml_collections.ConfigDict, key: str) -> ml_collections.ConfigDict:
    """A copy of the data section ``cfg`` less the dotted ``key``."""
    values = cfg.to_dict()
    *parents, leaf = key.split(".")
    node = values
    for part in parents:
        node = node[part]
    del node[leaf]
    return ml_collections.ConfigDict(values)


@pytest.mark.parametrize("key", ["random_flip", "corruption.kind", "corruption.seed"])
def test_load_batch_names_a_missing_key_instead_of_defaulting(key):
    """``default_data_config()`` holds the one default of every key (``sagd_jax.config.normalize``
    fills them in); a section without one is refused, naming the key."""
    source = ArraySource("tiny", np.zeros((4, 3, 3, 1), dtype=np.uint8))
    cfg = default_data_config()
    cfg.image_size = 3
    np.testing.assert_array_equal(load_batch(source, cfg, 0, 0, 2),
                                  -np.ones((2, 3, 3, 1), dtype=np.float32))
    with pytest.raises(ValueError, match=rf"^data\.{key.replace('.', '[.]')}: missing from the "
                                         r"config$"):
        load_batch(source, _without(cfg, key), 0, 0, 2)


@pytest.mark.parametrize("key", ["name", "image_size", "grf.gamma", "num_examples"])
def test_get_source_names_a_missing_key_instead_of_defaulting(key):
    cfg = default_data_config()
    cfg.name, cfg.image_size = "grf", 8
    assert len(get_source(cfg)) == cfg.num_examples
    with pytest.raises(ValueError, match=rf"^data\.{key.replace('.', '[.]')}: missing from the "
                                         r"config$"):
        get_source(_without(cfg, key))


SOURCE_ERRORS = [
    ({"image_size": 0}, "data.image_size=0"),
    ({"image_size": 32, "resize": False}, "data.image_size=32"),  # fashion_mnist is 28x28
    ({"image_size": 28.0}, "data.image_size=28.0"),
    ({"channels": 2}, "data.channels=2"),
    ({"channels": 3}, "data.channels=3"),  # fashion_mnist is grayscale
    ({"split": "valid"}, "data.split='valid'"),
    ({"root": "/definitely/not/here"}, "data.root='/definitely/not/here'"),
    ({"root": 5}, "data.root=5"),
    ({"name": "folder"}, "data.root=''"),
    ({"name": "natural_patches", "num_examples": 0}, "data.num_examples=0"),
    ({"name": "natural_patches", "seed": -1}, "data.seed=-1"),
    ({"name": "natural_patches", "channels": True}, "data.channels=True"),
    ({"name": "tfds:mnist", "split": ""}, "data.split=''"),
    ({"name": "xyz"}, "data.name='xyz': unknown source; known: "),
]


@pytest.mark.parametrize("overrides,prefix", SOURCE_ERRORS)
def test_source_config_errors(overrides, prefix):
    cfg = default_data_config().to_dict()
    cfg.update(overrides)
    cfg = ml_collections.ConfigDict(cfg)
    with pytest.raises(ValueError) as err:  # the source, then what the pipeline makes of it
        source = get_source(cfg)
        batch_options(cfg, source.image_shape, source.name)
    assert str(err.value).startswith(prefix), str(err.value)
    assert "\n" not in str(err.value)


CORRUPTION_ERRORS = [
    ({"kind": "blur"}, "data.corruption.kind='blur'"),
    ({"lo": -0.1}, "data.corruption.lo=-0.1"),
    ({"hi": 1.5}, "data.corruption.hi=1.5"),
    ({"hi": math.nan}, "data.corruption.hi=nan"),
    ({"lo": 0.8, "hi": 0.7}, "data.corruption.lo=0.8: must be <= data.corruption.hi"),
    ({"amplitude": -1.0}, "data.corruption.amplitude=-1.0"),
    ({"seed": -3}, "data.corruption.seed=-3"),
    ({"kind": "stripes", "lo": 0.55, "hi": 0.6}, "data.corruption.lo=0.55"),  # no bin at 4x4
]


@pytest.mark.parametrize("overrides,prefix", CORRUPTION_ERRORS)
def test_corruption_config_errors(overrides, prefix):
    source = ArraySource("tiny", np.zeros((4, 4, 4, 1), dtype=np.uint8))
    cfg = default_data_config()
    cfg.image_size = 4
    cfg.corruption.update(overrides)
    with pytest.raises(ValueError) as err:
        load_batch(source, cfg, 0, 0, 2)
    assert str(err.value).startswith(prefix), str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError) as early:  # the same check, before any data is loaded
        batch_options(cfg, source.image_shape)
    assert str(early.value) == str(err.value)


def test_batch_options_of_the_default_section():
    options = batch_options(default_data_config(), (28, 28, 1))
    assert options.corruption == Corruption(kind="none", lo=0.5, hi=0.6, amplitude=0.1, seed=0)
    assert options.random_flip is False and (options.num_workers, options.prefetch) == (2, 2)
    assert options.preprocess == Preprocess(28, 1, "center", True, 1.0)


def test_random_flip_must_be_boolean():
    source = ArraySource("tiny", np.zeros((4, 4, 4, 1), dtype=np.uint8))
    cfg = default_data_config()
    with cfg.ignore_type():
        cfg.random_flip = "yes"
    with pytest.raises(ValueError, match=r"^data\.random_flip='yes'"):
        load_batch(source, cfg, 0, 0, 2)
    with pytest.raises(ValueError, match=r"^data\.random_flip='yes': must be True or False$"):
        batch_options(cfg, source.image_shape)
