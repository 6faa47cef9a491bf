"""TFDS sources (mocked, offline) of fixed and varying image sizes, the benchmark configs, and
training through them; a dataset that is not prepared is one line naming ``tfds build``."""

from __future__ import annotations

import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sagd_jax.config import load_config_file
from sagd_jax.data import default_data_config, get_source, load_batch, tfds_source
from sagd_jax.data import fashion_mnist as fm
from sagd_jax.models import placeholder_labels
from sagd_jax.run import Run

tfds = pytest.importorskip("tensorflow_datasets")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mock(n: int = 6):
    return tfds.testing.mock_data(num_examples=n, policy=tfds.testing.MockPolicy.USE_CODE)


def _tfds_config(name: str, image_size: int, channels: int = 3, **overrides):
    cfg = default_data_config()
    cfg.name, cfg.image_size, cfg.channels = f"tfds:{name}", image_size, channels
    cfg.update(overrides)
    return cfg


def _check_batch(batch: np.ndarray, size: int, count: int = 4) -> None:
    assert batch.shape == (count, size, size, 3) and batch.dtype == np.float32
    assert -1.0 <= batch.min() < batch.max() <= 1.0


# ---------------------------------------------------------------- sources


def test_fixed_size_dataset_cifar10():
    cfg = _tfds_config("cifar10", 16)
    with _mock(6):
        source = get_source(cfg)
        assert source.name == "tfds:cifar10/train" and len(source) == 6
        assert source.image_shape == (32, 32, 3)
        images = source.get(np.array([5, 1, 1]))
        assert images.dtype == np.uint8 and images.shape == (3, 32, 32, 3)
        np.testing.assert_array_equal(images[1], images[2])
        np.testing.assert_array_equal(images[0], source.read(5))  # one record = get's row
        np.testing.assert_array_equal(images, get_source(cfg).get(np.array([5, 1, 1])))
        with pytest.raises(ValueError, match="indices must lie in"):
            source.get(np.array([6]))
        with pytest.raises(ValueError, match="indices must lie in"):
            source.read(6)
        _check_batch(load_batch(source, cfg, seed=0, step=0, global_batch_size=4), 16)


def test_grayscale_dataset_fashion_mnist():
    cfg = _tfds_config("fashion_mnist", 28, channels=1)
    with _mock(6):
        source = get_source(cfg)
        assert source.name == "tfds:fashion_mnist/train"
        assert len(source) == 6 and source.image_shape == (28, 28, 1)
        assert source.read(2).shape == (28, 28, 1) and source.read(2).dtype == np.uint8


def test_non_square_dataset_celeb_a_is_cropped_and_resized():
    cfg = _tfds_config("celeb_a", 32, center_crop_fraction=140 / 178)
    with _mock(6):
        source = get_source(cfg)
        assert source.image_shape == (218, 178, 3)  # fixed by the dataset info, not square
        assert source.read(3).shape == (218, 178, 3)
        batch = load_batch(source, cfg, seed=0, step=0, global_batch_size=4)
    _check_batch(batch, 32)


def test_variable_size_dataset_lsun():
    cfg = _tfds_config("lsun/church_outdoor", 16)
    with _mock(8):
        source = get_source(cfg)
        assert source.image_shape is None and source.channels == 3  # (None, None, 3)
        shapes = {source.read(i).shape for i in range(len(source))}
        assert len(shapes) > 1 and all(s[2] == 3 for s in shapes), shapes  # sizes really vary
        assert any(min(s[:2]) < 16 for s in shapes) and any(min(s[:2]) > 16 for s in shapes)
        with pytest.raises(ValueError, match="images vary in size; read them one at a time"):
            source.get(np.array([0, 1]))
        batch = load_batch(source, cfg, seed=0, step=1, global_batch_size=4)
    _check_batch(batch, 16)


def test_fashion_mnist_falls_back_to_tfds(monkeypatch, tmp_path):
    monkeypatch.setattr(fm, "DEBIAN_ROOT", str(tmp_path / "absent"))
    with _mock(3):
        source = get_source(default_data_config())
    assert source.name == "tfds:fashion_mnist/train" and len(source) == 3


# ---------------------------------------------------------------- without random access


def _no_random_access(monkeypatch):
    """``tfds.data_source`` fails as on a dataset prepared as TFRecord, which is there."""
    def no_random_access(*args, **kwargs):
        raise NotImplementedError("Random access data source for file format tfrecord\nmore")

    monkeypatch.setattr(tfds, "data_source", no_random_access)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)


def test_tfrecord_fixed_size_dataset_is_held_in_memory(monkeypatch):
    _no_random_access(monkeypatch)
    cfg = _tfds_config("fashion_mnist", 28, channels=1)
    with _mock(4):
        source = get_source(cfg)
    assert source._images is not None and source._images.shape == (4, 28, 28, 1)
    assert source.image_shape == (28, 28, 1)
    assert source.get(np.array([3, 0])).shape == (2, 28, 28, 1)
    np.testing.assert_array_equal(source.read(3), source._images[3])


def test_tfrecord_variable_size_or_large_dataset_is_refused(monkeypatch):
    _no_random_access(monkeypatch)
    with _mock(4), pytest.raises(ValueError) as err:
        get_source(_tfds_config("lsun/church_outdoor", 32, root="/data/tfds"))
    assert str(err.value) == (
        "data.name='tfds:lsun/church_outdoor': prepared as tfrecord (no random access) and its "
        "images vary in size, so it cannot be held in memory; rebuild it with `tfds build "
        "lsun/church_outdoor --file_format=array_record --data_dir=/data/tfds`")
    monkeypatch.setattr(tfds_source, "_num_examples", lambda builder, split: 200_000)
    monkeypatch.setattr(tfds_source, "IN_MEMORY_LIMIT", 2**28)
    with _mock(4), pytest.raises(ValueError) as err:
        get_source(_tfds_config("cifar10", 32))
    assert str(err.value) == (
        "data.name='tfds:cifar10': prepared as tfrecord (no random access); split 'train' would "
        "take 0.57 GiB in memory (limit 0.25 GiB); rebuild it with `tfds build cifar10 "
        "--file_format=array_record`")


def test_errors_are_one_line(monkeypatch, tmp_path):
    with _mock(2), pytest.raises(ValueError) as err:
        get_source(_tfds_config("fashion_mnist", 28, channels=1, image_key="picture"))
    assert str(err.value) == ("data.image_key='picture': tfds:fashion_mnist/train has no such "
                              "feature; features: image, label")
    with _mock(2), pytest.raises(ValueError) as err:
        get_source(_tfds_config("cifar10", 32, image_key="label"))
    assert str(err.value) == ("data.image_key='label': tfds:cifar10/train feature is int64 (), "
                              "not a uint8 image (H, W[, C])")
    with _mock(2), pytest.raises(ValueError) as err:
        get_source(_tfds_config("cifar10", 32, channels=1))
    assert str(err.value) == "data.channels=1: tfds:cifar10/train has 3-channel images"
    with pytest.raises(ValueError) as err:
        get_source(_tfds_config("no_such_dataset", 32, root=str(tmp_path)))
    assert str(err.value) == ("data.name='tfds:no_such_dataset': DatasetNotFoundError: "
                              "Dataset no_such_dataset not found.")

    def broken(*args, **kwargs):
        raise RuntimeError("cannot read\nmore text")

    _no_random_access(monkeypatch)
    monkeypatch.setattr(tfds, "load", broken)
    with _mock(2), pytest.raises(ValueError) as err:
        get_source(_tfds_config("fashion_mnist", 28, channels=1))
    assert str(err.value).startswith("data.name='tfds:fashion_mnist': cannot open split 'train' "
                                     "(tfds.data_source: NotImplementedError: Random access")
    assert "tfds.load: RuntimeError: cannot read)" in str(err.value)
    assert "\n" not in str(err.value)


def test_not_prepared_names_the_build_command(tmp_path):
    root = tmp_path / "tfds"
    with pytest.raises(ValueError) as err:
        get_source(_tfds_config("celeb_a", 64, root=str(root)))
    assert str(err.value) == (
        f"data.name='tfds:celeb_a': not prepared (nothing at {root}/celeb_a/2.1.0); run "
        f"`tfds build celeb_a --file_format=array_record --data_dir={root}` or set "
        "data.download=True")
    assert not root.exists()


# ---------------------------------------------------------------- configs


def _config_specs() -> list[str]:
    """Every ``configs/*.py[:VARIANT]``: each name of its ``VARIANTS``, else its default."""
    specs = []
    for path in sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))):
        loader_spec = importlib.util.spec_from_file_location("config_under_test", path)
        module = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(module)
        rel = os.path.relpath(path, REPO)
        # cifar10_ddpmpp.py names its variants in its refusal, not in VARIANTS.
        known = getattr(module, "VARIANTS", ("full", "cpu", "cond")
                        if rel.endswith("cifar10_ddpmpp.py") else None)
        specs += [f"{rel}:{v}" for v in known] if known else [rel]
    return specs


@pytest.mark.slow
@pytest.mark.parametrize("spec", _config_specs())
def test_every_config_and_variant_builds_a_run(spec, monkeypatch):
    monkeypatch.chdir(REPO)
    run = Run.from_config(load_config_file(spec), load_data=False, device_count=1)
    assert run._source is None  # no data was opened
    data = run.config.data
    size, channels = data.image_size, data.channels
    assert run.data_shape == (size, size, channels)
    latent = (size // data.latent_downsample, size // data.latent_downsample,
              data.latent_channels)  # a latent config's model sees the autoencoder's grid
    assert run.image_shape == (latent if data.autoencoder else (size, size, channels))
    # model.num_groups must divide every group norm's channels (checked only when the network
    # is traced, by group_count): trace its init, shapes only.
    x, labels = jnp.zeros((1, *run.image_shape)), jnp.zeros((1,))
    classes = placeholder_labels(run.model, 1)
    variables = jax.eval_shape(lambda: run.model.init(jax.random.key(0), x, labels, classes))
    assert jax.tree.leaves(variables["params"])


# ---------------------------------------------------------------- training through them

# The same tiny program for both configs (their optimizer settings agree once the warm-up is
# overridden), so the second run reuses the first one's compilations.
TINY = ["--config.data.image_size=16", "--config.model.ch=8", "--config.model.ch_mult=(1,)",
        "--config.model.num_res_blocks=1", "--config.model.attn_resolutions=()",
        "--config.model.num_groups=2", "--config.model.dropout=0.0",
        "--config.optim.warmup_steps=1", "--config.train.batch_size=8",
        "--config.train.num_steps=2", "--config.train.checkpoint_every=2",
        "--config.train.log_every=1", "--config.train.sample_every=100000",
        "--config.train.num_samples=4", "--config.train.sample_steps=3"]


@pytest.mark.slow
@pytest.mark.parametrize("config,extra", [
    pytest.param("configs/celeba64.py:cpu", [], id="celeb_a"),  # 218x178: crop 140, resize
    pytest.param("configs/cifar10_ddpmpp.py:cpu", [], id="cifar10"),  # 32x32: resized
    pytest.param("configs/celeba64.py:cpu", ["--config.data.name=tfds:lsun/church_outdoor"],
                 id="lsun"),  # sizes vary
])
def test_trains_through_the_config(config, extra, tmp_path, run_cli):
    workdir = tmp_path / "run"
    with _mock(16):
        result = run_cli("sagd_jax.main", f"--config={config}", f"--workdir={workdir}", *TINY,
                         *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.listdir(workdir / "checkpoints") == ["2"]
    assert "step 2/2  loss" in result.stderr, result.stderr[-2000:]


def test_not_prepared_through_the_trainer_is_one_line(tmp_path, run_cli):
    root, workdir = tmp_path / "tfds", tmp_path / "run"
    result = run_cli("sagd_jax.main", "--config=configs/celeba64.py:cpu",
                     f"--workdir={workdir}", f"--config.data.root={root}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: data.name='tfds:celeb_a': not prepared (nothing at {root}/celeb_a/2.1.0); run "
        f"`tfds build celeb_a --file_format=array_record --data_dir={root}` or set "
        "data.download=True"]
    assert not workdir.exists() and not root.exists()
