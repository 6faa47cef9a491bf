"""Each benchmark script end to end on tiny settings: its JSON keys, its ratios, its refusals."""

from __future__ import annotations

import importlib
import json
import math
import os
import sys

import pytest
from test_train import REPO

sys.path.insert(0, os.path.join(REPO, "benchmarks"))

TINY = ["--config", "configs/quickstart.py", "--set", "model.ch=8", "--set", "model.num_groups=2",
        "--set", "model.attn_resolutions=()", "--set", "data.num_examples=64"]
HAS_FASHION = os.path.isdir("/usr/share/datasets/fashion-mnist")


def run(name, tmp_path, *args):
    out = tmp_path / f"{name}.json"
    assert importlib.import_module(name).main([*TINY, *args, "--json", str(out)]) == 0
    with open(out) as f:
        return json.load(f)


def positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.skipif(not HAS_FASHION, reason="the loop reads Debian's dataset-fashion-mnist")
def test_train_throughput(tmp_path):
    from sagd_jax.config import load_config_file
    from sagd_jax.models import build_model, flops_per_image

    result = run("train_throughput", tmp_path, "--batch_size", "4", "--steps", "1", "--blocks",
                 "2", "--loop_log_every", "2", "--loop_checkpoint_every", "2",
                 "--loop_steps", "4")
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
    # A train step costs about 3 forward passes (forward, input and weight gradients).
    config = load_config_file(os.path.join(REPO, "configs/quickstart.py"),
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


def test_sample_throughput(tmp_path):
    result = run("sample_throughput", tmp_path, "--batch_size", "4", "--steps", "3",
                 "--repeats", "1")
    assert positive(result["forward_img_per_s"])
    rows = {r["sampler"]: r for r in result["samplers"]}
    assert rows["ddim"]["nfe"] == 3 and rows["ode_heun"]["nfe"] == 5
    for row in rows.values():
        assert positive(row["img_per_s"]) and positive(row["ratio"])
        assert row["bound_img_per_s"] == pytest.approx(result["forward_img_per_s"] / row["nfe"])


def test_spectral_cost(tmp_path):
    result = run("spectral_cost", tmp_path, "--sizes", "16,32", "--batches", "2",
                 "--repeats", "2")
    assert [(r["size"], r["batch"]) for r in result["rows"]] == [(16, 2), (32, 2)]
    for row in result["rows"]:
        for key in ("sqrt_ms", "sample_ms", "normal_ms", "copy_ms", "ns_per_px_log"):
            assert positive(row[key]), key


def test_scaling_on_fake_cpu_devices(tmp_path):
    result = run("scaling", tmp_path, "--devices", "1,2", "--per_device_batch", "2",
                 "--steps", "1")
    rows = result["rows"]
    assert [r["devices"] for r in rows] == [1, 2] and [r["batch_size"] for r in rows] == [2, 4]
    assert rows[0]["speedup"] == 1.0 and positive(rows[1]["per_device_efficiency"])


def test_remat_memory(tmp_path):
    result = run("remat_memory", tmp_path, "--batch_size", "2", "--chain_blocks", "3",
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
    (["--set", "model.nope=1"], "model.nope"),
    (["--set", "model.ch"], "KEY=VALUE"),
    (["--config", "configs/missing.py"], "configs/missing.py"),
])
def test_bad_input_is_one_line_before_any_work(args, message, capsys):
    import spectral_cost

    with pytest.raises(SystemExit) as info:
        spectral_cost.main([*TINY, *args])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_existing_json_is_never_overwritten(tmp_path):
    import spectral_cost

    out = tmp_path / "result.json"
    out.write_text("{}")
    with pytest.raises(SystemExit, match="exists"):
        spectral_cost.main([*TINY, "--json", str(out)])
    assert out.read_text() == "{}"


def test_peer_benchmark_needs_an_edm_checkout(tmp_path):
    import peer_edm

    with pytest.raises(SystemExit, match="NVlabs/edm"):
        peer_edm.main([*TINY, "--edm-path", str(tmp_path)])
