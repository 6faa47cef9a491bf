"""The classifier's accuracy on a labelled sample set (``class_accuracy``: class-conditional
samples judged under their own labels), through the library and ``sagd-evaluate``, and the
class-conditional config variants."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from sagd_jax import evaluation

# Labels of a set judged by a classifier that always predicts class 3 (``_constant_classifier``).
LABELS = np.array([3, 3, 3, 0, 1, 1, 5, 9, 3, 0, 0, 5], np.int64)
PER_CLASS = [0.0, 0.0, None, 1.0, None, 0.0, None, None, None, 0.0]  # of LABELS under it


def _constant_params(predicted: int):
    """Parameters of the classifier's network (``Recipe()``'s width) whose logits are
    ``one_hot(predicted)`` for every image: random layers, then the last layer's kernel zero
    and its bias one-hot (shapes only from ``init``: nothing compiled)."""
    import jax
    import jax.numpy as jnp

    from sagd_jax.metrics.classifier import FeatureNet, Recipe

    shapes = jax.eval_shape(lambda: FeatureNet(Recipe().width).init(
        jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"])
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: (rng.standard_normal(s.shape) / np.sqrt(
        np.prod(s.shape[:-1]) if len(s.shape) > 1 else 1)).astype(np.float32), shapes)
    params["Dense_1"] = {"kernel": np.zeros_like(params["Dense_1"]["kernel"]),
                         "bias": np.eye(10, dtype=np.float32)[predicted]}
    return params


def _constant_classifier(predicted: int = 3):
    from sagd_jax.metrics.classifier import FeatureExtractor, Recipe

    return FeatureExtractor(_constant_params(predicted), Recipe(), test_accuracy=0.1)


def _cache_constant_classifier(cache) -> None:
    """The constant classifier stored in ``cache`` as the documented recipe's weights (what
    ``--classifier=auto`` loads), so the CLI judges with it and trains nothing."""
    from flax import serialization

    from sagd_jax.metrics.classifier import Recipe

    folder = cache / "classifier"
    folder.mkdir(parents=True)
    (folder / f"{Recipe().name}.msgpack").write_bytes(serialization.to_bytes(_constant_params(3)))
    (folder / f"{Recipe().name}.json").write_text(json.dumps({"test_accuracy": 0.1}))


def _images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 28, 28, 1), dtype=np.uint8)


def test_class_accuracy_counts_the_predictions_that_match_each_label():
    extractor = _constant_classifier(3)
    images = _images(len(LABELS))
    got = evaluation.class_accuracy(extractor, images, LABELS)
    assert got == {"class_accuracy": 4 / 12, "class_accuracy_per_class": PER_CLASS}
    # float images in model units are judged alike; int32 labels too
    again = evaluation.class_accuracy(extractor, images.astype(np.float32) / 127.5 - 1,
                                      LABELS.astype(np.int32))
    assert again == got
    assert evaluation.class_accuracy(_constant_classifier(0), images, LABELS)[
        "class_accuracy"] == 3 / 12


@pytest.mark.parametrize("bad, first", [(10, 10), (-1, -1), (999, 999)])
def test_labels_outside_the_classifiers_classes_are_refused_in_one_line(bad, first):
    labels = LABELS.copy()
    labels[[4, 7]] = bad
    with pytest.raises(ValueError) as err:
        evaluation.check_labels("--samples=s.npz", labels)
    assert str(err.value) == (
        f"--samples=s.npz: arr_1 (labels) has 2 of 12 labels outside the classifier's 10 "
        f"classes [0, 10) (first: {first}): class_accuracy needs Fashion-MNIST's class labels; "
        "--classifier=off judges the set without the classifier")
    with pytest.raises(ValueError, match="outside the classifier's 10 classes"):
        evaluation.class_accuracy(_constant_classifier(), _images(12), labels)
    evaluation.check_labels("x", np.arange(10))  # 0..9 pass


def _labelled_set(folder, labels, images=None):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "samples.npz"
    np.savez(path, arr_0=_images(len(labels)) if images is None else images, arr_1=labels)
    return path


JUDGE = ["--config=configs/fashion_mnist.py:cond", "--max_reference=32", "--num_subsets=2",
         "--subset_size=8", "--inception=off"]


@pytest.mark.slow  # 3 s in a warm process, 7 to 8 s alone (imports, plots, FD)
@pytest.mark.needs_fashion_mnist
def test_sagd_evaluate_records_and_prints_the_class_accuracy(tmp_path, monkeypatch, run_cli):
    monkeypatch.setenv("SAGD_JAX_CACHE", str(tmp_path / "cache"))
    _cache_constant_classifier(tmp_path / "cache")
    path = _labelled_set(tmp_path / "set", LABELS)
    out = tmp_path / "set" / "judged.json"
    result = run_cli("sagd_jax.evaluate", f"--samples={path}", f"--out={out}", *JUDGE)
    assert result.returncode == 0, result.stderr[-3000:]
    stored = json.loads(out.read_text())
    assert stored["class_accuracy"] == 4 / 12
    assert stored["class_accuracy_per_class"] == PER_CLASS
    assert stored["labels"] == {"classes": 5} and "fd" in stored
    printed = json.loads(result.stdout)
    assert printed["class_accuracy"] == 4 / 12
    assert printed["class_accuracy_per_class"] == PER_CLASS


def test_sagd_evaluate_refuses_labels_outside_the_classes_before_any_work(
        tmp_path, monkeypatch, run_cli):
    monkeypatch.setenv("SAGD_JAX_CACHE", str(tmp_path / "cache"))
    _cache_constant_classifier(tmp_path / "cache")
    labels = LABELS.copy()
    labels[2] = 10
    path = _labelled_set(tmp_path / "set", labels)

    def no_work(*args, **kwargs):
        raise AssertionError("work started on bad input")

    with monkeypatch.context() as patch:
        patch.setattr(evaluation, "reference_images", no_work)
        for mode in ("auto", "on"):  # auto: the classifier is cached, so it judges the set
            result = run_cli("sagd_jax.evaluate", f"--samples={path}", f"--classifier={mode}",
                             *JUDGE)
            assert result.returncode == 2 and result.stdout == ""
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            assert lines == [f"error: --samples={path}: arr_1 (labels) has 1 of 12 labels "
                             "outside the classifier's 10 classes [0, 10) (first: 10): "
                             "class_accuracy needs Fashion-MNIST's class labels; "
                             "--classifier=off judges the set without the classifier"], lines
            assert sorted(os.listdir(tmp_path / "set")) == ["samples.npz"]
    if not os.path.isdir("/usr/share/datasets/fashion-mnist"):
        return  # the rest judges against Fashion-MNIST
    # without the classifier the labels are not compared: judged, no class accuracy
    result = run_cli("sagd_jax.evaluate", f"--samples={path}", "--classifier=off", *JUDGE)
    assert result.returncode == 0, result.stderr[-3000:]
    stored = json.loads((tmp_path / "set" / "samples.evaluation.json").read_text())
    assert "class_accuracy" not in stored and "fd" not in stored


@pytest.mark.slow
@pytest.mark.needs_fashion_mnist
def test_a_trained_classifier_is_accurate_under_true_labels_and_at_chance_under_shuffled(
        tmp_path, monkeypatch):
    """Real Fashion-MNIST test images as the "samples": their true labels give about the
    classifier's test accuracy, the same labels shuffled give chance (the sum over classes of
    predicted times label frequencies, about 0.1)."""
    from sagd_jax.config import default_config
    from sagd_jax.data.fashion_mnist import load_labeled_fashion_mnist
    from sagd_jax.metrics.classifier import Recipe

    monkeypatch.setenv("SAGD_JAX_CACHE", str(tmp_path / "cache"))
    images, labels = load_labeled_fashion_mnist("test")
    images, labels = images[:2000], labels[:2000]
    shuffled = np.random.default_rng(0).permutation(labels)
    recipe = Recipe(max_steps=50)  # trained once (into the cache above), then loaded
    judged = {}
    for name, these in (("true", labels), ("shuffled", shuffled)):
        path = _labelled_set(tmp_path / name, these, images)
        judged[name] = evaluation.evaluate(
            str(path), config=default_config(), max_reference=32, num_subsets=2,
            subset_size=8, classifier="on", classifier_recipe=recipe,
            inception=evaluation.InceptionRequest(mode="off"))
    true, mixed = judged["true"], judged["shuffled"]
    assert true["classifier_test_accuracy"] >= 0.7  # 0.773 after these 50 steps
    assert abs(true["class_accuracy"] - true["classifier_test_accuracy"]) < 0.05
    per_class = np.array(true["class_accuracy_per_class"], np.float64)  # no None: 10 classes
    counts = np.bincount(labels, minlength=10)
    assert np.dot(per_class, counts) / counts.sum() == pytest.approx(true["class_accuracy"])
    assert 0.04 < mixed["class_accuracy"] < 0.16  # chance: 0.1 +- 0.007 (1 s.e.)
    assert max(mixed["class_accuracy_per_class"]) < 0.3


COND_VARIANTS = [("configs/cifar10_ddpmpp.py", "full", 10),
                 ("configs/imagenet64.py", "resized", 1000),
                 ("configs/fashion_mnist.py", "sagd", 10)]  # (config, its base variant, classes)


def test_the_conditional_variants_add_only_the_class_keys(monkeypatch):
    from sagd_jax.config import flat_keys, load_config_file

    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def values(spec):
        config = load_config_file(spec)
        return {key: config[key.split(".")[0]][key.split(".", 1)[1]]
                for key in flat_keys(config) if "." in key}

    for path, base, classes in COND_VARIANTS:
        cond, plain = values(f"{path}:cond"), values(f"{path}:{base}")
        assert cond.keys() == plain.keys()
        changed = {k: v for k, v in cond.items() if plain[k] != v}
        assert changed == {"data.num_classes": classes, "model.num_classes": classes,
                           "train.label_dropout": 0.1}, path
        assert cond["data.label_key"] == "label" and cond["train.guidance"] == 1.0


@pytest.mark.parametrize("path, base, classes", COND_VARIANTS)
def test_a_conditional_variant_builds_a_class_conditional_run(path, base, classes,
                                                              monkeypatch):
    import jax
    import jax.numpy as jnp

    from sagd_jax.config import load_config_file
    from sagd_jax.run import Run

    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sizes = {}
    for variant in ("cond", base):
        run = Run.from_config(load_config_file(f"{path}:{variant}"), load_data=False,
                              device_count=1)
        assert run._source is None  # no data was opened
        x, t = jnp.zeros((1, *run.image_shape)), jnp.zeros((1,))
        labels = (jnp.zeros((1,), jnp.int32),) if variant == "cond" else ()
        assert run.num_classes == (classes if variant == "cond" else 0)
        variables = jax.eval_shape(run.model.init, jax.random.key(0), x, t, *labels)
        sizes[variant] = sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))
    assert sizes["cond"] > sizes[base]  # the class embedding's parameters
