"""Post-hoc EMA in a run: the profiles the train state keeps, their snapshots in the workdir
(resumed bit for bit, restored onto another mesh, a damaged one set aside), the
reconstruction of a std from them, and the command line's one-line refusals.

The maths (profiles, the solve, its exactness on a synthetic trajectory) is
tests/test_ema_profiles.py's."""

from __future__ import annotations

import json
import os
import textwrap

import jax
import numpy as np
import pytest

from sagd_jax import checkpoint, ema_profiles, posthoc
from sagd_jax.run import Run
from sagd_jax.train.loop import train_and_evaluate
from sagd_jax.train_state import PosthocTrainState, TrainState

pytestmark = pytest.mark.slow  # every test trains a tiny run (5-30 s on 2 CPU cores)

STDS = (0.05, 0.1)


def _host(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _bitwise_equal(a, b) -> bool:
    return all(x.dtype == y.dtype and x.tobytes() == y.tobytes()
               for x, y in zip(_host(a), _host(b), strict=True))


@pytest.fixture(scope="module")
def snapshot_run(tiny_config, tmp_path_factory):
    """12 steps of a tiny run keeping profiles of 0.05 and 0.1, snapshots every 4 steps: its
    workdir and final state."""
    workdir = str(tmp_path_factory.mktemp("posthoc") / "run")
    config = tiny_config(**{"train.num_steps": 12, "ema.snapshot_every": 4,
                            "ema.posthoc_stds": STDS})
    return workdir, train_and_evaluate(config, workdir), config


@pytest.fixture(scope="module")
def plain_run(tiny_config, tmp_path_factory):
    """3 steps of a tiny run without snapshots (the default): its workdir and final state."""
    workdir = str(tmp_path_factory.mktemp("plain") / "run")
    return workdir, train_and_evaluate(tiny_config(**{"train.num_steps": 3}), workdir)


def test_the_profiles_follow_the_power_update_and_the_snapshots_hold_them(snapshot_run):
    workdir, state, _ = snapshot_run
    assert isinstance(state, PosthocTrainState) and len(state.posthoc) == len(STDS)
    run = Run.from_workdir(workdir, load_data=False)
    assert run.workdir.snapshot_steps() == [4, 8, 12]
    snapshots = run.workdir.snapshotter()
    try:
        last = snapshots.restore(run.abstract_state(run.mesh()).snapshot(), 12)
    finally:
        snapshots.close()
    assert int(last.step) == 12 and _bitwise_equal(last.profiles, state.posthoc)
    # The narrower profile weighs the latest parameters more: it is nearer to them.
    params = _host(state.params)
    distance = [sum(float(np.sum((p - e) ** 2))
                    for p, e in zip(params, _host(profile), strict=True))
                for profile in state.posthoc]
    assert 0 < distance[0] < distance[1]


def test_a_plain_run_keeps_the_plain_train_state(plain_run):
    """ema.snapshot_every=0 (the default): no profiles, today's state and checkpoints."""
    workdir, state = plain_run
    assert type(state) is TrainState
    assert not os.path.exists(os.path.join(workdir, checkpoint.EMA_SNAPSHOTS))


def test_the_reconstruction_of_a_kept_std_is_the_kept_profile(snapshot_run):
    """At a snapshot's step and kept std the solve puts weight 1 on that profile (within
    1e-9) and the others' ~1e-12 weights change no float32 bit beyond round-off."""
    workdir, state, _ = snapshot_run
    run = Run.from_workdir(workdir, load_data=False)
    mesh = run.mesh()
    for i, std in enumerate(STDS):
        params, recipe = posthoc.reconstruct(run, mesh, std)
        weights = dict(zip(recipe.profiles, recipe.coefficients, strict=True))
        assert abs(weights[(12, std)] - 1) < 1e-9
        for got, kept in zip(_host(params), _host(state.posthoc[i]), strict=True):
            np.testing.assert_allclose(got, kept, rtol=1e-6, atol=1e-7)


def test_a_std_between_the_kept_ones_is_their_solved_combination(snapshot_run):
    workdir, _, _ = snapshot_run
    run = Run.from_workdir(workdir, load_data=False)
    mesh = run.mesh()
    params, recipe = posthoc.load(run, mesh, 0.07)
    assert recipe.step == 12 and {s for s, _ in recipe.profiles} == {4, 8, 12}
    snapshots = run.workdir.snapshotter()
    abstract = run.abstract_state(mesh).snapshot()
    try:
        profiles = {(s, std): profile for s in (4, 8, 12) for std, profile
                    in zip(STDS, snapshots.restore(abstract, s).profiles, strict=True)}
    finally:
        snapshots.close()
    expected = ema_profiles.reconstruct(recipe.coefficients,
                                        [profiles[key] for key in recipe.profiles])
    for got, want in zip(_host(params), _host(expected), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # kept, verified, and read back the second time
    assert checkpoint.saved_steps(workdir, os.path.join(posthoc.POSTHOC_DIR, "std0.07")) == [12]
    again, _ = posthoc.load(run, mesh, 0.07)
    assert _bitwise_equal(again, params)


def test_a_resumed_run_keeps_the_same_profiles_and_snapshots_bit_for_bit(tiny_config,
                                                                         snapshot_run, tmp_path):
    """6 steps (its last step takes a snapshot too), then on to 12: the profiles and the
    snapshots of steps 4, 8 and 12 equal those of the run that went straight through."""
    workdir, straight, config = snapshot_run
    resumed_dir = str(tmp_path / "resumed")
    config = tiny_config(**{"train.num_steps": 6, "ema.snapshot_every": 4,
                            "ema.posthoc_stds": STDS, "train.checkpoint_every": 6})
    train_and_evaluate(config, resumed_dir)
    config.train.num_steps = 12
    resumed = train_and_evaluate(config, resumed_dir)
    assert _bitwise_equal(resumed.posthoc, straight.posthoc)
    run_a, run_b = (Run.from_workdir(d, load_data=False) for d in (workdir, resumed_dir))
    assert run_b.workdir.snapshot_steps() == [4, 6, 8, 12]
    _assert_same_snapshots(run_a, run_b, (4, 8, 12))


def _assert_same_snapshots(run_a, run_b, steps) -> None:
    for step in steps:
        got = []
        for run in (run_a, run_b):
            snapshots = run.workdir.snapshotter()
            try:
                got.append(snapshots.restore(run.abstract_state(run.mesh()).snapshot(), step))
            finally:
                snapshots.close()
        assert _bitwise_equal(got[0], got[1]), step


def test_snapshots_after_the_resumed_checkpoint_are_set_aside_and_taken_again(snapshot_run,
                                                                              tmp_path):
    """A run killed after the snapshots of steps 8 and 12 but whose last checkpoint is step 6
    (checkpoints 9 and 12 lost): the resume sets those snapshots aside (``<step>.redone``)
    and takes them again, bit for bit."""
    import shutil

    workdir, straight, config = snapshot_run
    copy = str(tmp_path / "copy")
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns(posthoc.POSTHOC_DIR))
    for step in (9, 12):
        shutil.rmtree(os.path.join(copy, checkpoint.CHECKPOINTS, str(step)))
    resumed = train_and_evaluate(config, copy)
    assert _bitwise_equal(resumed.posthoc, straight.posthoc)
    snapshots = os.path.join(copy, checkpoint.EMA_SNAPSHOTS)
    assert {"8.redone", "12.redone"} <= set(os.listdir(snapshots))
    run_a, run_b = (Run.from_workdir(d, load_data=False) for d in (workdir, copy))
    assert run_b.workdir.snapshot_steps() == [4, 8, 12]
    _assert_same_snapshots(run_a, run_b, (4, 8, 12))


def test_a_damaged_snapshot_is_set_aside_and_the_others_reconstruct(snapshot_run, tmp_path,
                                                                    damage_an_array):
    import shutil

    workdir, _, _ = snapshot_run
    copy = str(tmp_path / "copy")
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns(posthoc.POSTHOC_DIR))
    folder = os.path.join(copy, checkpoint.EMA_SNAPSHOTS, "8")
    damage_an_array(os.path.join(folder, "state"))
    run = Run.from_workdir(copy, load_data=False)
    _, recipe = posthoc.reconstruct(run, run.mesh(), 0.1)  # 0.07 needs snapshot 8 (0.056)
    assert {s for s, _ in recipe.profiles} == {4, 12}
    assert os.path.isdir(folder + checkpoint.DAMAGED)
    assert run.workdir.snapshot_steps() == [4, 12]


def test_bad_requests_are_one_line_and_write_nothing(snapshot_run, plain_run, run_cli):
    workdir, _, _ = snapshot_run
    before = sorted(os.listdir(workdir))
    kept = set(os.listdir(os.path.join(workdir, posthoc.POSTHOC_DIR))) if os.path.isdir(
        os.path.join(workdir, posthoc.POSTHOC_DIR)) else set()
    for args, message in ((["--std=0.25"], "reconstruct its profile"),
                          (["--std=0.4"], "must be in (0,"),
                          (["--std=0.07", "--step=13"], "beyond the last EMA snapshot"),
                          (["--std=0.07", "--step=3"], "before the first EMA snapshot"),
                          (["--std=abc"], "not a number")):
        result = run_cli("sagd_jax.posthoc_ema", f"--workdir={workdir}", *args)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error:") and message in last, (args, last)
    assert sorted(os.listdir(workdir)) == before
    now = set(os.listdir(os.path.join(workdir, posthoc.POSTHOC_DIR))) if os.path.isdir(
        os.path.join(workdir, posthoc.POSTHOC_DIR)) else set()
    assert now == kept
    result = run_cli("sagd_jax.posthoc_ema", f"--workdir={plain_run[0]}", "--std=0.07")
    assert result.returncode == 2
    assert "keeps no post-hoc EMA profiles" in result.stderr.strip().splitlines()[-1]


def test_turning_snapshots_on_in_a_resumed_run_is_refused(plain_run, tiny_config):
    workdir, _ = plain_run
    before = sorted(os.listdir(workdir))
    config = tiny_config(**{"train.num_steps": 6, "ema.snapshot_every": 3})
    with pytest.raises(ValueError, match="no post-hoc EMA.*ema.snapshot_every"):
        train_and_evaluate(config, workdir)
    assert sorted(os.listdir(workdir)) == before


def test_the_command_line_reconstructs_and_prints_each_std(snapshot_run, run_cli):
    workdir, _, _ = snapshot_run
    result = run_cli("sagd_jax.posthoc_ema", f"--workdir={workdir}", "--std=0.06,0.09")
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [r["std"] for r in records] == [0.06, 0.09]
    for record in records:
        assert record["step"] == 12 and record["snapshots"] == [4, 8, 12]
        assert record["profile_error"] < ema_profiles.MAX_PROFILE_ERROR
        assert os.path.isdir(record["path"])


ANOTHER_MESH = textwrap.dedent("""
    import jax, numpy as np
    from sagd_jax import posthoc
    from sagd_jax.run import Run
    assert jax.device_count() == 4
    run = Run.from_workdir({workdir!r}, load_data=False)
    run.config.mesh.data, run.config.mesh.fsdp = 2, 2
    mesh = run.mesh()
    assert dict(mesh.shape) == {{"data": 2, "fsdp": 2}}, mesh.shape
    params, _ = posthoc.reconstruct(run, mesh, 0.07)
    np.savez({out!r}, *[np.asarray(x) for x in jax.tree.leaves(jax.device_get(params))])
    print("ok")
""")


def test_snapshots_restore_onto_another_mesh(snapshot_run, on_four_devices, tmp_path):
    """Snapshots taken on one device reconstruct on a (2, 2) FSDP mesh of 4 CPU devices to
    the one-device result (float32 sums in another order: within round-off)."""
    workdir, _, _ = snapshot_run
    out = str(tmp_path / "four.npz")
    result = on_four_devices(ANOTHER_MESH.format(workdir=workdir, out=out))
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
    run = Run.from_workdir(workdir, load_data=False)
    one, _ = posthoc.reconstruct(run, run.mesh(), 0.07)
    with np.load(out) as four:
        for i, leaf in enumerate(_host(one)):
            np.testing.assert_allclose(four[f"arr_{i}"], leaf, rtol=1e-6, atol=1e-7)


def test_the_sampler_takes_a_posthoc_ema_and_a_sweep_judges_each_std(snapshot_run, run_cli):
    """``sample --params=posthoc:STD`` samples with the kept reconstruction (its set named and
    its manifest saying so); the sweep samples and judges each std and tabulates them."""
    workdir, _, _ = snapshot_run
    common = ["--num_samples=8", "--steps=3", "--chunk_size=8"]
    result = run_cli("sagd_jax.sample", f"--workdir={workdir}", "--params=posthoc:0.07",
                     *common)
    assert result.returncode == 0, result.stderr[-2000:]
    path = result.stdout.strip().splitlines()[-1]
    assert os.path.basename(os.path.dirname(path)).endswith("-step12-posthoc0.07"), path
    with open(os.path.join(os.path.dirname(path), "manifest.json")) as f:
        assert json.load(f)["params"] == "posthoc:0.07"
    plain = run_cli("sagd_jax.sample", f"--workdir={workdir}", *common)
    assert plain.returncode == 0, plain.stderr[-2000:]
    with np.load(path) as a, np.load(plain.stdout.strip().splitlines()[-1]) as b:
        assert a["arr_0"].shape == b["arr_0"].shape and not np.array_equal(a["arr_0"],
                                                                           b["arr_0"])
    result = run_cli("sagd_jax.posthoc_ema", f"--workdir={workdir}", "--std=0.05,0.07",
                     "--num_samples=8", "--steps=3", "--chunk_size=8", "--classifier=off",
                     "--inception=off")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("| std |") and "spectrum err" in lines[0]
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["0.05", "0.07"]
    sweeps = [n for n in os.listdir(os.path.join(workdir, posthoc.POSTHOC_DIR))
              if n.startswith("sweep-")]
    assert sweeps == ["sweep-ddpm-3steps-seed0-n8-step12.json"]
    with open(os.path.join(workdir, posthoc.POSTHOC_DIR, sweeps[0])) as f:
        table = json.load(f)
    for row in table["rows"]:
        with open(os.path.join(os.path.dirname(row["set"]), "evaluation.json")) as f:
            judged = json.load(f)
        assert row["spectrum_mean_abs_log_ratio"] == judged["spectrum"]["mean_abs_log_ratio"]


def test_the_likelihood_takes_a_posthoc_ema(snapshot_run, run_cli, tmp_path):
    """``likelihood --params=posthoc:STD``: its own results file, and another number than the
    EMA's (the weights differ)."""
    workdir, _, _ = snapshot_run
    common = ["--num_images=4", "--ode_steps=2", "--trace=hutchinson"]
    results = []
    for params in ("ema", "posthoc:0.1"):
        result = run_cli("sagd_jax.likelihood", f"--workdir={workdir}", f"--params={params}",
                         *common)
        assert result.returncode == 0, result.stderr[-2000:]
        results.append(json.loads(result.stdout)["nats_per_dim"]["mean"])
    assert sorted(os.listdir(os.path.join(workdir, "likelihood"))) == [
        "ema-2steps-hutchinson-seed0.json", "ema-posthoc0.1-2steps-hutchinson-seed0.json"]
    assert results[0] != results[1]
