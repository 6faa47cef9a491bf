"""``train.grad_accum_steps``: the global batch in microbatches inside the jitted step gives the
full batch's update and metrics (same noise levels, noise and dropout masks per example)."""

from __future__ import annotations

import functools
import textwrap

import jax
import numpy as np
import pytest

from sagd_jax import rng
from sagd_jax.run import Run
from sagd_jax.train_step import train_step

BATCH = 32


@functools.cache
def jitted_step(run: Run, accum: int) -> object:
    """``train_step`` with ``grad_accum_steps=accum``, jitted once per run."""
    return jax.jit(functools.partial(
        train_step, model=run.model, tx=run.tx, process=run.process,
        ema_decay=run.config.optim.ema_decay, grad_accum_steps=accum), donate_argnums=0)


def trained(run: Run, accum: int, steps: int = 3, poison: int | None = None
            ) -> tuple[object, list[dict[str, float]]]:
    """The state after ``steps`` steps of ``train_step`` with ``grad_accum_steps=accum`` and the
    metrics of each; example ``poison`` of the last batch is made NaN."""
    step = jitted_step(run, accum)
    key = rng.stream_key(run.config.seed, rng.TRAIN)
    mesh = run.mesh()
    state = run.init_state(mesh)
    history = []
    for s in range(steps):
        batch = run.global_batch(s, mesh)
        if poison is not None and s == steps - 1:
            batch = batch.at[poison].set(np.nan)
        state, metrics = step(state, batch, key)
        history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    return state, history


@pytest.fixture(scope="module")
def run(tiny_config):
    return Run.from_config(tiny_config(**{"train.batch_size": BATCH}))  # dropout 0.1


@pytest.fixture(scope="module")
def full(run):
    return trained(run, 1)


@pytest.mark.slow
def test_four_microbatches_give_the_full_batch_update(run, full, params_of):
    state, history = trained(run, 4)
    reference, reference_history = full
    assert int(state.step) == int(reference.step) == 3
    got, want = params_of(state), params_of(reference)  # parameters, EMA, Adam's moments
    assert len(got) == len(want)
    difference = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(got, want, strict=True)))
    assert difference <= 1e-5 * np.sqrt(sum(np.sum(b**2) for b in want))  # measured: 1.4e-8
    # Leaf by leaf too: a zero-initialised kernel after 3 Adam steps is the worst (8e-6);
    # microbatches drawing their own dropout masks would give 0.4 there.
    for a, b in zip(got, want, strict=True):
        assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(b)
    # The parameters moved by far more than the tolerance: the comparison means something.
    moved = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(jax.device_get(state.params)),
             jax.tree.leaves(jax.device_get(run.init_state(run.mesh()).params)), strict=True)]
    assert max(moved) > 1e-3
    for got, want in zip(history, reference_history, strict=True):
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert all(m["nonfinite"] == 0 for m in history)
    assert sum(history[0][f"count_{b}"] for b in range(4)) == BATCH


@pytest.mark.slow
def test_a_nonfinite_microbatch_drops_the_whole_update(run, full, params_of):
    state, history = trained(run, 4, poison=5)  # example 5: in microbatch 1 of 4
    two_steps, _ = trained(run, 4, steps=2)
    assert history[-1]["nonfinite"] == 1 and history[0]["nonfinite"] == 0
    assert int(state.step) == 3
    for a, b in zip(params_of(state), params_of(two_steps), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_batch_the_microbatches_do_not_divide_is_refused(run, tiny_config):
    with pytest.raises(ValueError) as err:
        Run.from_config(tiny_config(**{"train.batch_size": 30, "train.grad_accum_steps": 4}))
    message = str(err.value)
    assert message == ("train.batch_size=30: must be divisible by train.grad_accum_steps x the "
                       f"device count (4 x {jax.device_count()})")
    with pytest.raises(ValueError) as err:  # train_step itself, when traced
        trained(run, 3, steps=1)
    assert str(err.value).splitlines()[0] == ("train.grad_accum_steps=3: does not divide the "
                                              "batch (32)")


FOUR_DEVICES = textwrap.dedent("""
    import json, functools
    import jax
    from sagd_jax import rng
    from sagd_jax.config import normalize
    from sagd_jax.run import Run
    from sagd_jax.sharding import batch_sharding
    from sagd_jax.train_step import train_step
    assert jax.device_count() == 4
    run = Run.from_config(normalize(json.loads({config!r})))
    mesh = run.mesh()
    step = jax.jit(functools.partial(
        train_step, model=run.model, tx=run.tx, process=run.process,
        ema_decay=run.config.optim.ema_decay, grad_accum_steps=4),
        in_shardings=(run.state_sharding(mesh), batch_sharding(mesh), None))
    batch = jax.ShapeDtypeStruct((32, *run.image_shape), "float32",
                                 sharding=batch_sharding(mesh))
    key = rng.stream_key(run.config.seed, rng.TRAIN)
    print(step.lower(run.abstract_state(mesh), batch, key).compile().as_text())
""")


@pytest.mark.slow
def test_microbatches_stay_on_the_devices_of_their_examples(tiny_config, on_four_devices):
    """On 4 devices ``(data=2, fsdp=2)`` microbatch ``k`` = examples ``k::4`` takes 2 examples
    from each device's block of 8: the compiled step moves no batch data between devices (the
    contiguous split ``(4, 8, ...)`` needs all-to-alls, one microbatch per device)."""
    config = tiny_config(**{"train.batch_size": BATCH, "train.grad_accum_steps": 4,
                            "mesh.data": 2, "mesh.fsdp": 2})
    result = on_four_devices(FOUR_DEVICES.format(config=config.to_json_best_effort()))
    assert result.returncode == 0, result.stderr[-3000:]
    hlo = result.stdout
    assert " while(" in hlo and "all-reduce" in hlo  # the scan; the gradients' sum
    assert "all-to-all" not in hlo and "collective-permute" not in hlo
