"""The 2-D mesh ``(data, fsdp)`` on 4 fake CPU devices: sharded train state, the same
parameters as 1 device, per-device bytes cut by the fsdp factor, and checkpoints restored onto
other mesh shapes and device counts."""

from __future__ import annotations

import json
import re
import textwrap

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from sagd_jax.config import mesh_shape
from sagd_jax.run import Run
from sagd_jax.sharding import FSDP_MIN_SIZE, fsdp_spec, make_mesh
from sagd_jax.train.loop import train_and_evaluate

# Wide enough that the big convolution kernels (>= FSDP_MIN_SIZE elements) are sharded.
WIDE = {"model.ch": 32, "model.ch_mult": (1, 2), "model.attn_resolutions": (8,),
        "model.num_groups": 4, "train.num_steps": 3,
        "train.checkpoint_every": 3, "train.keep_checkpoints": 10}

FOUR_DEVICES = textwrap.dedent("""
    import os, json
    import jax, numpy as np
    from sagd_jax.config import normalize
    from sagd_jax.run import Run
    from sagd_jax.sharding import per_device_bytes
    from sagd_jax.train.loop import train_and_evaluate
    assert jax.device_count() == 4
    leaves = lambda s: jax.tree.leaves(jax.device_get((s.params, s.ema_params, s.opt_state)))
    out = {{}}
    for data, fsdp in ((4, 1), (2, 2), (1, 4)):
        config = normalize(json.loads({config!r}))
        config.mesh.data, config.mesh.fsdp = data, fsdp
        workdir = os.path.join({root!r}, f"mesh{{data}}x{{fsdp}}")
        state = train_and_evaluate(config, workdir)
        specs = [x.sharding.spec for x in jax.tree.leaves(state.params)]
        if fsdp == 1:  # data parallel: every array whole on each device, restored so
            again = Run.from_workdir(workdir)
            restored = again.restore(again.mesh())
            leaf = jax.tree.leaves(restored.params)[0]
            assert leaf.sharding.mesh.devices.size == 4 and leaf.sharding.is_fully_replicated
            for a, b in zip(leaves(state), leaves(restored), strict=True):
                np.testing.assert_array_equal(a, b)
        else:
            assert any("fsdp" in tuple(s) for s in specs), specs
        out[f"bytes_{{data}}x{{fsdp}}"] = per_device_bytes(state)  # the trained arrays
        np.savez(os.path.join({root!r}, f"leaves{{data}}x{{fsdp}}.npz"), *leaves(state))
        if (data, fsdp) == (2, 2):  # the (2, 2) checkpoint onto (1, 4), two more steps
            config.mesh.data, config.mesh.fsdp = 1, 4
            config.train.num_steps = 5
            other = Run.from_config(config, workdir)
            restored = other.restore(other.mesh())
            for a, b in zip(leaves(state), leaves(restored), strict=True):
                np.testing.assert_array_equal(a, b)  # restored exactly, onto another mesh
            assert restored.params and other.mesh().shape["fsdp"] == 4
            # What training on (1, 4) from those values does without a checkpoint between:
            mesh = other.mesh()
            uninterrupted = jax.device_put(jax.device_get(state), other.state_sharding(mesh))
            step_fn = other.train_step(mesh)
            for step in (3, 4):
                uninterrupted, _ = step_fn(uninterrupted, other.global_batch(step, mesh))
            state = train_and_evaluate(config, workdir)
            for a, b in zip(leaves(uninterrupted), leaves(state), strict=True):
                np.testing.assert_array_equal(a, b)  # the restored run continues bitwise
            np.savez(os.path.join({root!r}, "continued1x4.npz"), *leaves(state))
    json.dump(out, open(os.path.join({root!r}, "bytes.json"), "w"))
""")


def test_the_fsdp_rule_shards_the_largest_divisible_axis():
    assert fsdp_spec((3, 3, 64, 128), 4) == PartitionSpec(None, None, None, "fsdp")
    assert fsdp_spec((3, 3, 128, 128), 4) == PartitionSpec(None, None, None, "fsdp")
    assert fsdp_spec((4096, 6), 4) == PartitionSpec("fsdp", None)
    assert fsdp_spec((5, 7, 1001), 4) == PartitionSpec()  # no axis divides
    assert fsdp_spec((128,), 4) == PartitionSpec()  # small: replicated
    assert fsdp_spec((FSDP_MIN_SIZE,), 4) == PartitionSpec("fsdp")
    assert fsdp_spec((3, 3, 64, 128), 1) == PartitionSpec()


@pytest.mark.parametrize("data, fsdp, devices, message", [
    (2, 2, 4, None), (-1, 2, 4, None), (1, -1, 4, None),
    (2, 3, 4, "mesh.fsdp=3: mesh.data x mesh.fsdp = 6"), (-1, 3, 4, "mesh.fsdp=3: does not"),
    (-1, -1, 4, "only one of"),
    (3, 1, 4, "mesh.data x mesh.fsdp = 3, not the device count (4)"),
    (0, 1, 4, "mesh.data=0: must be -1"),
])
def test_mesh_shapes_are_checked_in_one_line(tiny_config, data, fsdp, devices, message):
    config = tiny_config(**{"mesh.data": data, "mesh.fsdp": fsdp})
    if message is None:
        shape = mesh_shape(config, devices)
        assert shape[0] * shape[1] == devices
    else:
        with pytest.raises(ValueError, match=re.escape(message)):
            mesh_shape(config, devices)


@pytest.mark.heavy
def test_data_and_fsdp_meshes_match_one_device_shrink_the_state_and_restore_across_meshes(
        tmp_path, tiny_config, params_of, on_four_devices):
    config = tiny_config(**WIDE)
    result = on_four_devices(FOUR_DEVICES.format(config=config.to_json_best_effort(),
                                                 root=str(tmp_path)))
    assert result.returncode == 0, result.stderr[-3000:]

    one = train_and_evaluate(config, str(tmp_path / "one"))
    expected = params_of(one)
    for name in ("leaves4x1", "leaves2x2", "leaves1x4"):
        four = np.load(tmp_path / f"{name}.npz")
        assert len(four.files) == len(expected)
        for i, leaf in enumerate(expected):
            np.testing.assert_allclose(four[f"arr_{i}"], leaf, rtol=2e-5, atol=2e-6)

    # Per-device bytes of the trained state, from its arrays' shardings: the big arrays cut
    # by the fsdp factor, the small ones whole.
    sizes = json.load(open(tmp_path / "bytes.json"))
    shapes = jax.tree.leaves(Run.from_config(config).abstract_state())
    whole = sum(x.size * x.dtype.itemsize for x in shapes)
    for fsdp, key in ((2, "bytes_2x2"), (4, "bytes_1x4")):
        split = [fsdp_spec(x.shape, fsdp) != PartitionSpec() for x in shapes]
        expected = sum(x.size * x.dtype.itemsize // (fsdp if s else 1)
                       for x, s in zip(shapes, split, strict=True))
        assert sizes[key] == expected < whole
    assert whole / sizes["bytes_1x4"] > 2.0  # most bytes are in the big kernels

    # The (2, 2) checkpoint of step 3 onto 1 device: the same values; two more steps there
    # equal, bit for bit, two steps from those values without a checkpoint between, and agree
    # with the two steps the (1, 4) mesh took from the same checkpoint.
    config5 = tiny_config(**{**WIDE, "train.num_steps": 5})
    run = Run.from_config(config5, str(tmp_path / "mesh2x2"))
    one_device = make_mesh(jax.devices()[:1])
    restored = run.restore(one_device, step=3)
    for a, b in zip(params_of(restored), np.load(tmp_path / "leaves2x2.npz").values(),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    step_fn = run.train_step(one_device)
    uninterrupted = restored
    for step in (3, 4):
        uninterrupted, _ = step_fn(uninterrupted, run.global_batch(step, one_device))
    continued = np.load(tmp_path / "continued1x4.npz")
    copy = tmp_path / "onto_one"
    import shutil

    shutil.copytree(tmp_path / "mesh2x2", copy, ignore=shutil.ignore_patterns("5", "lock"))
    state = train_and_evaluate(config5, str(copy))
    assert int(state.step) == 5
    for a, b in zip(params_of(uninterrupted), params_of(state), strict=True):
        np.testing.assert_array_equal(a, b)
    for i, leaf in enumerate(params_of(state)):
        np.testing.assert_allclose(continued[f"arr_{i}"], leaf, rtol=2e-5, atol=2e-6)
