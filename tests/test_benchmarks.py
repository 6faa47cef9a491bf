"""Each benchmark script end to end on tiny settings: its JSON keys, its ratios, its refusals."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

TINY = ["--config=configs/quickstart.py", "--config.model.ch=8", "--config.model.num_groups=2",
        "--config.model.attn_resolutions=()", "--config.data.num_examples=64"]
SCRIPTS = ["conv_grad", "model_cost", "peer_edm", "profile_step", "remat_memory",
           "sample_throughput", "sampler_bias", "scaling", "spectral_cost", "train_throughput",
           "experiments/run", "experiments/ode_check"]


@pytest.fixture
def bench(run_cli, tmp_path):
    """``bench("spectral_cost", *args)``: the script's ``main`` in this process on the tiny
    config, its ``--json`` record read back."""
    def call(name, *args):
        out = tmp_path / f"{name}.json"
        result = run_cli(f"benchmarks.{name}", *TINY, *args, f"--json={out}")
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(out.read_text())

    return call


def positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.needs_fashion_mnist  # the loop reads Debian's dataset-fashion-mnist
def test_train_throughput(bench, repo):
    from sagd_jax.config import load_config_file
    from sagd_jax.models import build_model, flops_per_image

    result = bench("train_throughput", "--batch_size", "4", "--steps", "1", "--blocks", "2",
                   "--loop_log_every", "2", "--loop_checkpoint_every", "2", "--loop_steps", "4")
    for key in ("img_per_s", "flops_per_image", "utilization_vs_matmul", "utilization_vs_conv",
                "sagd_over_iso_step_time", "loop_over_bare_img_per_s", "compile_s",
                "peak_memory_bytes", "matmul_gflops", "conv_gflops", "checkpoint_save_s",
                "checkpoint_blocking_s", "checkpoint_cpu_s", "sagd_process_part_s",
                "iso_process_part_s", "sagd_over_iso_from_parts"):
        assert positive(result[key]), key
    assert result["checkpoint_blocking_s"] <= result["checkpoint_save_s"]
    assert (result["loop_log_every"], result["loop_checkpoint_every"], result["loop_steps"]) == (
        2, 2, 4)
    assert result["command"].startswith("python benchmarks/train_throughput.py")
    assert result["machine"]["platform"] == "cpu"
    assert result["config"] == "configs/quickstart.py"
    assert result["overrides"] == [arg.split(".", 1)[1] for arg in TINY[1:]]
    # A train step costs about 3 forward passes (forward, input and weight gradients).
    config = load_config_file(os.path.join(repo, "configs/quickstart.py"),
                              [("model.ch", "8"), ("model.num_groups", "2"),
                               ("model.attn_resolutions", "()")])
    model = build_model(config.model, (28, 28, 1))
    import jax
    import jax.numpy as jnp

    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)),
                                                  jnp.zeros((1,))))
    forward = flops_per_image(model, variables, (28, 28, 1))
    assert 2.5 < result["flops_per_image"] / forward < 4.0
    # The saved state holds f32 params, EMA params and Adam's two moments: 16 bytes a parameter.
    params = sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))
    assert 16 * params <= result["state_bytes"] < 16 * params + 4096
    # The 3x3 convolutions found in the network account for most, never more, of its FLOPs.
    assert 0.5 < result["conv_flops_per_step"] / (4 * result["flops_per_image"]) < 1.0


def test_sample_throughput(bench):
    result = bench("sample_throughput", "--batch_size", "4", "--steps", "3", "--repeats", "1")
    assert positive(result["forward_img_per_s"])
    rows = {r["sampler"]: r for r in result["samplers"]}
    assert rows["ddim"]["nfe"] == 3 and rows["ode_heun"]["nfe"] == 5
    for row in rows.values():
        assert positive(row["img_per_s"]) and positive(row["ratio"])
        assert row["bound_img_per_s"] == pytest.approx(result["forward_img_per_s"] / row["nfe"])


def test_spectral_cost(bench):
    result = bench("spectral_cost", "--sizes", "16,32", "--batches", "2", "--repeats", "2")
    assert [(r["size"], r["batch"]) for r in result["rows"]] == [(16, 2), (32, 2)]
    for row in result["rows"]:
        for key in ("sqrt_ms", "sample_ms", "normal_ms", "copy_ms", "ns_per_px_log"):
            assert positive(row[key]), key


def test_scaling_on_fake_cpu_devices(bench):
    result = bench("scaling", "--devices", "1,2", "--per_device_batch", "2", "--steps", "1")
    rows = result["rows"]
    assert [r["devices"] for r in rows] == [1, 2] and [r["batch_size"] for r in rows] == [2, 4]
    assert rows[0]["speedup"] == 1.0 and positive(rows[1]["per_device_efficiency"])


def test_remat_memory(bench):
    result = bench("remat_memory", "--batch_size", "2", "--chain_blocks", "3",
                   "--chain_width", "16", "--chain_batch", "32")
    # Before XLA's passes, remat adds one barrier per block and recomputes each block's 4 dots.
    assert result["chain_plain_barriers_before"] == 0
    assert result["chain_remat_barriers_before"] == 3
    assert result["chain_remat_dots_before"] == result["chain_plain_dots_before"] + 3 * 4
    for key in ("chain_plain_temp_bytes", "chain_remat_temp_bytes", "step_plain_temp_bytes",
                "step_remat_temp_bytes"):
        assert positive(result[key]), key
    # The recomputed forward costs FLOPs (whether or not the backend then saves memory).
    assert result["step_remat_flops_per_image"] > result["step_plain_flops_per_image"]


@pytest.mark.parametrize("args, message", [
    (["--config.model.nope=1"], "model.nope"),
    (["--config.model.ch"], "--config.model.ch"),
    (["--config=configs/missing.py"], "configs/missing.py"),
    (["--sizes=16,x"], "--sizes=16,x"),
])
def test_bad_input_is_one_line_before_any_work(args, message, run_cli):
    result = run_cli("benchmarks.spectral_cost", *TINY, *args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert message in lines[0] and lines[0].startswith("error: ")
    assert result.stdout == ""  # nothing measured


def test_unknown_override_key_of_the_default_config_is_refused(run_cli):
    result = run_cli("benchmarks.spectral_cost", "--config.train.nosuchkey=3")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "train.nosuchkey" in lines[0] and result.stdout == ""


def test_existing_json_is_never_overwritten(run_cli, tmp_path):
    out = tmp_path / "result.json"
    out.write_text("{}")
    result = run_cli("benchmarks.spectral_cost", *TINY, "--sizes=16", f"--json={out}")
    assert result.returncode == 2 and "exists" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
    assert out.read_text() == "{}"


def test_peer_benchmark_needs_an_edm_checkout(run_cli, tmp_path):
    result = run_cli("benchmarks.peer_edm", *TINY, "--edm-path", str(tmp_path))
    assert result.returncode == 2 and "NVlabs/edm" in result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_run_from_any_directory(script, repo, tmp_path):
    """``python benchmarks/NAME.py`` from another folder finds the repository's packages (a
    subprocess: the point is a fresh interpreter started on the file)."""
    path = os.path.join(repo, "benchmarks", f"{script}.py")
    done = subprocess.run([sys.executable, path, "--help"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    if script != "common":
        assert "flags:" in done.stdout
