"""Class-conditional runs end to end: a tiny model trained on Fashion-MNIST's labels, its
sample sets with their labels (``arr_1``), classifier-free guidance, guidance in a band and
an interval, autoguidance, and bad input refused in one line before anything is written."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from sagd_jax.sampling import SampleRequest, generate
from sagd_jax.train.loop import train_and_evaluate
from sagd_jax.workdir import Workdir

pytestmark = [pytest.mark.slow, pytest.mark.needs_fashion_mnist]

CLASSES = 10


def conditional(tiny_config, **overrides):
    """The tiny config on Fashion-MNIST resized to 16 px, with its 10 classes."""
    return tiny_config(**{"data.name": "fashion_mnist", "data.num_classes": CLASSES,
                          "model.num_classes": CLASSES, "train.label_dropout": 0.2,
                          "train.num_steps": 2, "train.checkpoint_every": 2,
                          "train.guidance": 2.0, **overrides})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_config):
    workdir = str(tmp_path_factory.mktemp("conditional"))
    train_and_evaluate(conditional(tiny_config), workdir)
    return workdir


def _request(**options):
    return SampleRequest(**{"num_samples": 12, "sampler": "ddim", "steps": 3, "chunk_size": 8,
                            "float32": True, **options})


def test_samples_carry_balanced_labels_and_grow_consistently(trained, tmp_path):
    path = generate(trained, _request(), str(tmp_path / "set"))
    with np.load(path) as f:
        np.testing.assert_array_equal(f["arr_1"], np.arange(12) % CLASSES)
        assert f["arr_1"].dtype == np.int64 and f["arr_0"].shape == (12, 16, 16, 1)
        first = f["float32"]
    manifest = json.loads((tmp_path / "set" / "manifest.json").read_text())
    assert manifest["labels"] == "balanced" and "guidance" not in manifest
    grown = generate(trained, _request(num_samples=20), str(tmp_path / "set"))
    fresh = generate(trained, _request(num_samples=20), str(tmp_path / "fresh"))
    with np.load(grown) as g, np.load(fresh) as h:
        np.testing.assert_array_equal(g["arr_1"], h["arr_1"])
        np.testing.assert_array_equal(g["arr_1"], np.arange(20) % CLASSES)
        np.testing.assert_array_equal(g["float32"][:12], first)
        np.testing.assert_array_equal(g["float32"], h["float32"])


def test_random_and_listed_labels(trained, tmp_path):
    with np.load(generate(trained, _request(labels="3,7"), str(tmp_path / "list"))) as f:
        np.testing.assert_array_equal(f["arr_1"], np.array([3, 7] * 6))
    with np.load(generate(trained, _request(labels="random"), str(tmp_path / "r"))) as f:
        labels = f["arr_1"]
    assert labels.min() >= 0 and labels.max() < CLASSES and len(set(labels)) > 3
    with np.load(generate(trained, _request(labels="random", num_samples=20),
                          str(tmp_path / "r2"))) as f:
        np.testing.assert_array_equal(f["arr_1"][:12], labels)  # a pure function of (seed, j)


def test_guidance_changes_the_samples_and_an_excluding_interval_does_not(trained, tmp_path):
    def samples(name, **options):
        with np.load(generate(trained, _request(**options), str(tmp_path / name))) as f:
            return f["float32"]

    plain = samples("w1")
    guided = samples("w3", guidance=3.0)
    assert np.abs(guided - plain).max() > 1e-3
    # An interval of noise levels no grid time reaches: weight 1 at every step, bit for bit.
    np.testing.assert_array_equal(samples("out", guidance=3.0, guidance_interval="1e6:1e7"),
                                  plain)
    # A band of every bin is plain guidance, bit for bit; a low band changes less than all.
    np.testing.assert_array_equal(samples("all", guidance=3.0, guidance_band="highpass:0:"),
                                  guided)
    low = samples("low", guidance=3.0, guidance_band="lowpass::0.25")
    assert 0 < np.abs(low - plain).max() and not np.array_equal(low, guided)


def test_autoguidance_by_the_same_model_is_the_conditional_model(trained, tmp_path):
    """With the run itself as its guide, ``eps_g + W (eps - eps_g) = eps``: the samples are
    the unguided ones (up to float rounding)."""
    with np.load(generate(trained, _request(), str(tmp_path / "plain"))) as f:
        plain = f["float32"]
    path = generate(trained, _request(guidance=2.5, guide_workdir=trained),
                    str(tmp_path / "auto"))
    with np.load(path) as f:
        np.testing.assert_allclose(f["float32"], plain, atol=1e-5)
    manifest = json.loads((tmp_path / "auto" / "manifest.json").read_text())
    assert manifest["guide_workdir"] == os.path.abspath(trained) and manifest["guide_step"] == 2


def test_in_training_samples_use_balanced_labels_and_the_configs_guidance(trained):
    from sagd_jax.run import Run

    run = Run.from_workdir(trained)
    assert run.conditional and run.config.train.guidance == 2.0
    mesh = run.mesh()
    state = run.restore(mesh)
    images = run.periodic_samples(state.ema_params, 2)
    assert images.shape == (4, 16, 16, 1) and np.isfinite(images).all()
    eps_fn = run.sample_eps_fn(state.ema_params, 4, start=8)
    np.testing.assert_array_equal(np.asarray(eps_fn.args[1]), [8, 9, 0, 1])


def _refused(run_cli, *args):
    result = run_cli("sagd_jax.sample", *args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), \
        result.stderr[-3000:]
    return lines[0]


def test_bad_input_is_one_line_and_writes_nothing(trained, tmp_path, tiny_config, run_cli):
    unconditional = tmp_path / "unconditional"
    Workdir(str(unconditional)).prepare(tiny_config())  # a grf run: exact model, no labels
    other_process = tmp_path / "other_process"
    Workdir(str(other_process)).prepare(conditional(tiny_config, **{"noise.gamma": 0.0}))
    other_shape = tmp_path / "other_shape"
    Workdir(str(other_shape)).prepare(conditional(tiny_config, **{"data.image_size": 8,
                                                           "model.attn_resolutions": (8,)}))
    untrained = tmp_path / "untrained"
    Workdir(str(untrained)).prepare(conditional(tiny_config))
    out = tmp_path / "refused"
    base = ["--num_samples=4", "--steps=2", "--chunk_size=4", f"--out={out}"]
    cases = [
        ([f"--workdir={trained}", "--labels=3,12"], "label 12 is out of range"),
        ([f"--workdir={trained}", "--labels=cats"], "--labels='cats': expected balanced, random"),
        ([f"--workdir={unconditional}", "--model=exact", "--guidance=2"],
         "is unconditional (model.num_classes=0)"),
        ([f"--workdir={unconditional}", "--model=exact", "--labels=balanced"],
         "is unconditional"),
        ([f"--workdir={trained}", "--guidance=2", f"--guide_workdir={other_shape}"],
         "its images are (8, 8, 1), the run's (16, 16, 1)"),
        ([f"--workdir={trained}", "--guidance=2", f"--guide_workdir={other_process}"],
         "another process (noise.gamma=0.0, the run's 1.0)"),
        ([f"--workdir={trained}", "--guidance=2", f"--guide_workdir={tmp_path / 'nosuch'}"],
         f"--guide_workdir={tmp_path / 'nosuch'}: no config.json"),
        ([f"--workdir={trained}", "--guidance=2", f"--guide_workdir={untrained}"],
         f"--guide_workdir={untrained}: no checkpoint"),
        ([f"--workdir={trained}", "--guidance_band=lowpass::0.3"], "needs a guidance weight"),
        ([f"--workdir={trained}", "--guidance=2", "--guidance_interval=5:1"],
         "--guidance_interval"),
        ([f"--workdir={trained}", "--guidance=2", "--guidance_band=nonsense:1"],
         "--guidance_band"),
    ]
    for args, message in cases:
        line = _refused(run_cli, *base, *args)
        assert message in line, (args, line)
        assert not out.exists(), args


def test_an_unconditional_run_is_autoguided_and_refuses_plain_guidance(tiny_config):
    """Autoguidance needs no labels: an unconditional network guided by itself is itself;
    classifier-free guidance of it is refused."""
    import jax

    from sagd_jax.run import Run

    run = Run.from_config(tiny_config(), load_data=False, device_count=1)
    params = run.init_state(run.mesh()).params
    x = jax.random.normal(jax.random.key(0), (2, *run.image_shape))
    t = jax.numpy.full((2,), 0.5)
    plain = run.eps_fn(params)(x, t)
    guided = run.eps_fn(params, guidance=3.0, guide=(run, params))(x, t)
    np.testing.assert_allclose(np.asarray(guided), np.asarray(plain), atol=1e-6)
    with pytest.raises(ValueError, match="guidance needs a class-conditional model"):
        run.eps_fn(params, guidance=3.0)
