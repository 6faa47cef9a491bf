"""Compiling for a TPU slice without a TPU (libtpu's deviceless compiler): the counts are read
right (FLOPs of a matmul, bytes of a collective, arguments of a sharded state), a program too
large for the chip is refused in one line and fits with more ``mesh.fsdp``, and the program
compiled for the slice is the program the trainer runs."""

from __future__ import annotations

import json
import os
import shutil
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from sagd_jax import program_costs
from sagd_jax.aot import compile_run
from sagd_jax.chips import CHIPS, parse_topology, topology_devices
from sagd_jax.config import default_config
from sagd_jax.run import Run
from sagd_jax.sharding import batch_sharding, make_mesh, per_device_bytes

libtpu = pytest.importorskip("libtpu", reason="libtpu is not installed (the [test] extra "
                             "installs it)")

# A network of a few large arrays whose sizes tile the TPU's (8, 128) layout without padding,
# so the compiler's argument bytes are the arrays' own: about 40 MB of parameters, 160 MB of
# state. Its 2x2 images keep the compiles short (a third of the time of 16x16 images); the
# arguments are the state's either way (the batch: 6 KB a device on 16x16 images).
WIDE = {"data.name": "grf", "data.image_size": 2, "data.channels": 3, "data.num_examples": 64,
        "model.ch": 256, "model.ch_mult": (1,), "model.num_res_blocks": 1,
        "model.attn_resolutions": (), "model.dropout": 0.0, "train.batch_size": 8}


def _config(overrides: dict) -> object:
    config = default_config()
    for key, value in overrides.items():
        section, leaf = key.split(".")
        config[section][leaf] = value
    return config


def _devices(name: str) -> list[jax.Device]:
    return topology_devices(parse_topology(name))


def test_topology_names_are_parsed_or_refused_in_one_line(run_cli):
    topology = parse_topology("v5e:4x4")
    assert (topology.num_chips, topology.chip is CHIPS["v5e"]) == (16, True)
    assert parse_topology("v4:2x2x2").accelerator_type == "v4-16"  # two cores a chip
    for bad, words in (("v5e-16", "expected CHIP:AxB"), ("v9z:2x2", "unknown chip 'v9z'"),
                       ("v5e:2x2x2", "2 positive dimensions")):
        result = run_cli("sagd_jax.compile", "--config=configs/quickstart.py",
                         f"--topology={bad}")
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0] and "--topology" in lines[0], lines
    result = run_cli("sagd_jax.compile", "--config=configs/quickstart.py", "--topology=v5e:2x2",
                     "--network_batch=0")
    assert result.returncode == 2 and result.stderr.startswith("error: --network_batch=0")


def test_flops_of_a_matmul_are_two_m_n_k():
    m, n, k = 512, 384, 256
    matmul = jax.jit(lambda a, b: a @ b)
    one = make_mesh(_devices("v5e:1x1"))
    replicated = NamedSharding(one, PartitionSpec())
    compiled = matmul.lower(jax.ShapeDtypeStruct((m, k), jnp.float32, sharding=replicated),
                            jax.ShapeDtypeStruct((k, n), jnp.float32, sharding=replicated)
                            ).compile()
    assert program_costs.measure(compiled, 1).flops == 2 * m * n * k
    # Rows split over 4 chips: each device does a quarter, and no collective is needed.
    four = make_mesh(_devices("v5e:2x2"))
    rows = NamedSharding(four, PartitionSpec(("data", "fsdp")))
    compiled = matmul.lower(jax.ShapeDtypeStruct((m, k), jnp.float32, sharding=rows),
                            jax.ShapeDtypeStruct((k, n), jnp.float32,
                                                 sharding=NamedSharding(four, PartitionSpec()))
                            ).compile()
    costs = program_costs.measure(compiled, 4)
    assert costs.flops == 2 * m * n * k / 4
    assert costs.collective_traffic_bytes == 0


def test_an_all_gather_is_counted_with_its_bytes():
    four = make_mesh(_devices("v5e:2x2"))
    rows = NamedSharding(four, PartitionSpec(("data", "fsdp")))
    gather = jax.jit(lambda x: x * 2.0, out_shardings=NamedSharding(four, PartitionSpec()))
    compiled = gather.lower(jax.ShapeDtypeStruct((1024, 256), jnp.float32, sharding=rows)
                            ).compile()
    stats = program_costs.measure(compiled, 4).collectives["all-gather"]
    assert stats["count"] == 1 and stats["bytes"] == 1024 * 256 * 4
    assert stats["traffic_bytes"] == 1024 * 256 * 4 * 3 / 4  # a ring: the other 3 shards


@pytest.mark.parametrize("line, group", [
    ("%a = f32[8,128]{1,0} all-reduce(%x), replica_groups={{0,1},{2,3}}, to_apply=%add", 2),
    ("%a = f32[8,128]{1,0} all-reduce(%x), replica_groups=[1,4]<=[4], to_apply=%add", 4),
    ("%a = bf16[3,3,64,32]{3,2,1,0} all-gather(%p), replica_groups=mesh['axis_0'=2,"
     "'axis_1'=2], device_ids=([2,2]T(1,0)) {'axis_1'}, dimensions={2}", 2),
    # XLA combines a data-parallel step's gradients into one all-reduce of a long tuple.
    ("%a = (f32[16]{0}, f32[3,3,48,16]{3,2,1,0}, /*index=2*/f32[4,4]{1,0}) all-reduce(%x, %y, "
     "%z), replica_groups={{0,1,2,3}}, to_apply=%add", 4),
])
def test_replica_group_formats(line, group):
    stats = program_costs.collectives(line, device_count=4)
    op = "all-gather" if "all-gather" in line else "all-reduce"
    size = program_costs.shape_bytes(line.split("=", 1)[1].split(op)[0])
    assert stats[op]["bytes"] == size > 0
    expected = {"all-gather": size * (group - 1) / group,
                "all-reduce": 2 * size * (group - 1) / group}[op]
    assert stats[op]["count"] == 1 and stats[op]["traffic_bytes"] == expected


@pytest.mark.heavy
def test_state_arguments_match_their_shardings_and_fsdp_cuts_them():
    """Per-device argument bytes of the compiled train step = the state's arrays (and the
    batch) divided by their shard counts, within 5%; more fsdp, fewer bytes."""
    devices = _devices("v5e:2x2")
    arguments = {}
    for fsdp in (1, 2, 4):
        run = Run.from_config(_config(WIDE | {"mesh.fsdp": fsdp}), load_data=False,
                              device_count=4)
        program = compile_run(run, devices, CHIPS["v5e"], names=("train_step",))["train_step"]
        mesh = run.mesh(devices)
        size = WIDE["data.image_size"]
        batch = jax.ShapeDtypeStruct((WIDE["train.batch_size"], size, size, 3), jnp.float32,
                                     sharding=batch_sharding(mesh))
        predicted = per_device_bytes(run.abstract_state(mesh)) + per_device_bytes(batch)
        arguments[fsdp] = program.costs.argument_bytes
        if fsdp == 2:
            assert abs(arguments[2] / predicted - 1) < 0.05, (arguments[2], predicted)
    assert arguments[4] < arguments[2] < arguments[1]
    assert arguments[4] < 0.3 * arguments[1]


# Far too large for one v5e chip (the compiler's out-of-memory error asks for 19 GiB of its
# 16), fine over 4: a billion parameters, whose state (parameters, EMA, Adam's two moments,
# gradients) is what does not fit. On 2x2 images, two a device, the activations are a few
# MB, and the step that fits compiles in an eighth of the time it took on 8x8 images, 8 a
# device (libtpu's compile time grows with the images of the convolutions, not with the
# state).
HUGE = ["--config.data.name=grf", "--config.data.image_size=2", "--config.train.batch_size=8",
        "--config.model.ch=2560", "--config.model.ch_mult=(1,)",
        "--config.model.attn_resolutions=()", "--programs=train_step"]


@pytest.mark.heavy
def test_too_large_is_refused_in_one_line_and_fits_with_fsdp(run_cli, tmp_path):
    out = tmp_path / "refused.json"
    result = run_cli("sagd_jax.compile", "--config=configs/quickstart.py", "--topology=v5e:2x2",
                     *HUGE, f"--json={out}")
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr
    line = errors[0]
    needed = float(line.split("needs ")[1].split(" GiB")[0])
    assert needed > 16 and "a v5e chip has 16.00 GiB" in line and "mesh.fsdp=2" in line, line
    assert not out.exists()  # nothing written
    result = run_cli("sagd_jax.compile", "--config=configs/quickstart.py", "--topology=v5e:2x2",
                     *HUGE, "--config.mesh.fsdp=4", f"--json={out}")
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    program = report["programs"]["train_step"]
    assert program["fits"] and program["costs"]["hbm_bytes"] < CHIPS["v5e"].hbm_bytes
    assert report["mesh"] == {"data": 1, "fsdp": 4}


# The README's v5e slice (8 chips, a device each) and a v4 slice of 4 chips with a device per
# TensorCore (8 devices, half a chip each). On v5e:2x4 each device's share of the batch is 4
# images, and the step compiles in 60% of the time it takes on v5e:2x2 (8 a device), for
# which the tests above compile.
@pytest.mark.heavy
@pytest.mark.parametrize("topology, devices, per_chip", [("v5e:2x4", 8, 1), ("v4:2x2x1", 8, 2)])
def test_quickstart_compiles_for_a_slice(run_cli, tmp_path, topology, devices, per_chip):
    out = tmp_path / "report.json"
    result = run_cli("sagd_jax.compile", "--config=configs/quickstart.py",
                     f"--topology={topology}", "--config.mesh.fsdp=2", "--programs=train_step",
                     f"--json={out}")
    assert result.returncode == 0, result.stderr
    assert "train_step" in result.stdout and "fits" in result.stdout
    report = json.loads(out.read_text())
    assert report["devices"] == devices
    assert report["mesh"] == {"data": devices // 2, "fsdp": 2}
    costs = report["programs"]["train_step"]["costs"]
    assert costs["flops"] > 0 and costs["bytes_accessed"] > 0
    gathers = costs["collectives"]["all-gather"]["count"]
    assert gathers > 0  # fsdp: the parameters are gathered
    roofline = report["programs"]["train_step"]["roofline"]
    chip = CHIPS[topology.split(":")[0]].share(per_chip)
    assert report["device"]["hbm_bytes"] == chip.hbm_bytes
    assert roofline["compute_s"] == pytest.approx(costs["flops"] / chip.f32_flops)
    assert roofline["images_per_s"] == pytest.approx(32 / roofline["bound_s"])


# The trainer's step, as a TPU host traces it (its convolutions chosen for the TPU), against
# the tool's program for the slice: the same StableHLO once private function names are
# numbered in order of appearance (JAX numbers them per process). Traced on 4 CPU devices
# without the TPU's choice, the step differs (the CPU's kernel gradient), as does another
# sharding: the check tells programs apart.
SAME_PROGRAM = textwrap.dedent("""
    import re
    import contextlib
    import jax, jax.numpy as jnp
    from sagd_jax.aot import lower_programs
    from sagd_jax.chips import parse_topology, topology_devices
    from sagd_jax.config import load_config_file
    from sagd_jax.models.conv import traced_for
    from sagd_jax.run import Run
    from sagd_jax.sharding import batch_sharding

    def canonical(text):
        names = {}
        return re.sub(r"@[A-Za-z_][\\w.$]*",
                      lambda m: names.setdefault(m.group(0), f"@f{len(names)}"), text)

    def run_of(fsdp):
        config = load_config_file("configs/quickstart.py")
        config.mesh.fsdp = fsdp
        return Run.from_config(config, load_data=False, device_count=4)

    def trainer(fsdp, platform):  # Run.train_step on this process's 4 CPU devices
        run = run_of(fsdp)
        mesh = run.mesh(jax.devices())
        batch = jax.ShapeDtypeStruct((32, 28, 28, 1), jnp.float32,
                                     sharding=batch_sharding(mesh))
        with traced_for(platform) if platform else contextlib.nullcontext():
            traced = run.train_step(mesh).trace(run.abstract_state(mesh), batch)
        return canonical(traced.lower(lowering_platforms=("tpu",)).as_text())

    run = run_of(2)
    devices = topology_devices(parse_topology("v5e:2x2"))
    _, lower = lower_programs(run, run.mesh(devices), 256)["train_step"]
    with traced_for("tpu"):
        tool = canonical(lower().as_text())
    print("tpu", "same" if trainer(2, "tpu") == tool else "differ", len(tool.splitlines()))
    print("cpu", "same" if trainer(2, None) == tool else "differ")
    print("fsdp1", "same" if trainer(1, "tpu") == tool else "differ")
""")


@pytest.mark.slow
def test_the_slice_compiles_the_trainers_program(on_four_devices):
    result = on_four_devices(SAME_PROGRAM)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()[-3:]
    assert lines[0].startswith("tpu same ") and int(lines[0].split()[2]) > 1000, result.stdout
    assert lines[1:] == ["cpu differ", "fsdp1 differ"], result.stdout


def test_roofline_is_the_largest_of_its_three_bounds():
    costs = program_costs.ProgramCosts(
        argument_bytes=0, output_bytes=0, alias_bytes=0, temp_bytes=0, code_bytes=0,
        flops=4e12, transcendentals=0.0, bytes_accessed=1e9,
        collectives={"all-reduce": {"count": 1, "bytes": 1e9, "traffic_bytes": 8e9}})
    bound = program_costs.roofline(costs, flops_per_s=2e14, hbm_bandwidth=1e12,
                                   ici_bandwidth=4e11, images=64)
    assert bound["compute_s"] == pytest.approx(0.02)
    assert bound["memory_s"] == pytest.approx(1e-3)
    assert bound["ici_s"] == pytest.approx(0.02)
    assert bound["bound_s"] == pytest.approx(0.02)
    assert bound["images_per_s"] == pytest.approx(64 / 0.02)
    assert np.isclose(costs.collective_traffic_bytes, 8e9)


# The CUDA plugin without NVIDIA's libraries, installed beside the environment for the heavy
# tier (pip --target, the README's heavy-tier command): only the processes given it on their
# path load it (its start-up lines would otherwise reach every tool's console).
CUDA_PLUGIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           ".venv", "cuda-plugin")


@pytest.mark.heavy
@pytest.mark.skipif(not os.path.isdir(CUDA_PLUGIN) or shutil.which("ptxas") is None
                    and not os.path.exists("/usr/local/cuda/bin/ptxas"),
                    reason="the CUDA plugin (.venv/cuda-plugin) or the CUDA toolkit's ptxas "
                    "is missing")
def test_quickstart_compiles_for_eight_h100s(run_subprocess, tmp_path):
    out = tmp_path / "h100.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [CUDA_PLUGIN, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    result = run_subprocess("sagd_jax.compile", "--config=configs/quickstart.py",
                            "--topology=h100:8", "--config.mesh.fsdp=2", f"--json={out}",
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["devices"] == 8 and report["mesh"] == {"data": 4, "fsdp": 2}
    train = report["programs"]["train_step"]
    assert train["fits"] and train["costs"]["cost_source"] == "unpartitioned"
    assert train["costs"]["argument_bytes"] > 0 and train["costs"]["flops"] > 0
    assert report["programs"]["network"]["images"] == 256


def test_the_refusal_names_what_is_left_to_try(repo):
    from sagd_jax.aot import advice
    from sagd_jax.config import load_config_file

    quickstart = os.path.join(repo, "configs", "quickstart.py")
    config = load_config_file(quickstart)  # batch 32
    run = Run.from_config(config, load_data=False, device_count=8)
    assert advice(run, 8) == ("try mesh.fsdp=2, train.grad_accum_steps=2, model.remat=True, "
                              "model.dtype=bfloat16")
    config = load_config_file(quickstart)
    config.mesh.fsdp, config.train.grad_accum_steps = 8, 4
    config.model.remat, config.model.dtype = True, "bfloat16"
    run = Run.from_config(config, load_data=False, device_count=8)
    assert advice(run, 8) == "nothing left to try on this slice"


def test_in_training_evaluation_programs_lower_for_a_slice(repo):
    """With ``train.eval_every`` the evaluation's sampler loop and Inception features join the
    programs, at ``eval.batch_size`` over the slice's devices (lowered here; compiling the
    Inception network for TPU takes minutes)."""
    from sagd_jax.aot import lower_programs
    from sagd_jax.config import load_config_file
    from sagd_jax.models.conv import traced_for

    config = load_config_file(os.path.join(repo, "configs", "quickstart.py"))
    config.train.eval_every, config.eval.batch_size, config.eval.steps = 100, 8, 5
    devices = _devices("v5e:2x2")
    run = Run.from_config(config, load_data=False, device_count=4)
    programs = lower_programs(run, run.mesh(devices), 256)
    assert list(programs) == ["train_step", "network", "eval_sampler", "eval_features"]
    assert programs["eval_sampler"][0] == programs["eval_features"][0] == 8
    with traced_for("tpu"):
        sampler = programs["eval_sampler"][1]().as_text()
        features = programs["eval_features"][1]().as_text()
    assert "stablehlo.while" in sampler and "tensor<8x28x28x1xf32>" in sampler
    assert "tensor<8x299x299x3xf32>" in features and "mhlo.num_partitions = 4" in features
