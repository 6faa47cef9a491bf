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
SCRIPTS = ["conv_forward", "conv_grad", "input_pipeline", "model_cost", "peer_edm", "profile_step",
           "remat_memory", "sample_throughput", "scaling", "spectral_cost",
           "train_throughput", "compile_cache", "grad_accum_memory", "fsdp_memory"]


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


@pytest.mark.heavy
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


@pytest.mark.heavy
def test_sample_throughput(bench):
    result = bench("sample_throughput", "--batch_size", "4", "--steps", "3", "--repeats", "1",
                   "--samplers", "ddim,ode_heun,dpmpp_2m")
    assert positive(result["forward_img_per_s"])
    rows = {r["sampler"]: r for r in result["samplers"]}
    assert rows["ddim"]["nfe"] == 3 and rows["ode_heun"]["nfe"] == 5
    assert rows["dpmpp_2m"]["nfe"] == 3
    for row in rows.values():
        assert positive(row["img_per_s"]) and positive(row["ratio"])
        assert row["bound_img_per_s"] == pytest.approx(result["forward_img_per_s"] / row["nfe"])


def test_spectral_cost(bench):
    result = bench("spectral_cost", "--sizes", "16,32", "--batches", "2", "--repeats", "2")
    assert [(r["size"], r["batch"]) for r in result["rows"]] == [(16, 2), (32, 2)]
    for row in result["rows"]:
        for key in ("sqrt_ms", "sample_ms", "normal_ms", "copy_ms", "ns_per_px_log"):
            assert positive(row[key]), key


def test_model_cost_of_a_conditional_network_counts_its_label_table(run_cli, tmp_path):
    """A class-conditional network is traced with its labels; it has one more parameter
    table than the unconditional one: (num_classes + 1) x ch, the null label included."""
    def cost(name, *args):
        result = run_cli("benchmarks.model_cost", *TINY, *args, f"--json={tmp_path / name}")
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads((tmp_path / name).read_text())

    plain = cost("plain.json")
    cond = cost("cond.json", "--config.data.num_classes=10", "--config.model.num_classes=10")
    assert cond["params"] - plain["params"] == 11 * 8  # TINY's model.ch = 8
    assert positive(cond["flops_per_image"]) and cond["image_shape"] == plain["image_shape"]


@pytest.mark.heavy
def test_scaling_on_fake_cpu_devices(bench):
    result = bench("scaling", "--devices", "1,2", "--per_device_batch", "2", "--steps", "1")
    rows = result["rows"]
    assert [r["devices"] for r in rows] == [1, 2] and [r["batch_size"] for r in rows] == [2, 4]
    assert rows[0]["speedup"] == 1.0 and positive(rows[1]["per_device_efficiency"])


@pytest.mark.heavy
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


def test_input_pipeline(bench, run_cli, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    result = bench("input_pipeline", "--batch_size", "4", "--batches", "2", "--warmup", "1",
                   "--rounds", "2", "--files", "5", "--examples", "16", "--min_seconds=0.05",
                   f"--image_dir={images}")
    rows = {(r["case"], r["workers"]): r for r in result["rows"]}
    assert sorted(rows) == sorted((c, w) for c in ("memory32", "jpeg64", "jpeg256")
                                  for w in (1, 2))
    for row in rows.values():
        assert positive(row["img_per_s"]) and positive(row["cpu_ms_per_img"])
        assert row["img_per_s_per_worker"] == pytest.approx(row["img_per_s"] / row["workers"])
        runs = row["rounds"]
        assert len(runs) == 2 and row["img_per_s"] == pytest.approx(
            sum(run["img_per_s"] for run in runs) / 2)  # the median of two
        for run in runs:
            assert run["img_per_s"] == pytest.approx(4 * run["batches_timed"]
                                                     / run["seconds_timed"])
            assert run["seconds_timed"] >= 0.05  # more batches timed where 2 took less
            assert run["warmup_batches"] == max(1, row["workers"] * 2)  # the read-ahead
    assert rows[("memory32", 1)]["rounds"][0]["batches_timed"] > 2
    cases = {c["case"]: c for c in result["cases"]}
    for name, size, (lo, hi) in (("jpeg64", 64, (128, 400)), ("jpeg256", 256, (256, 768))):
        case = cases[name]
        assert case["image_size"] == size and case["files"] == 5
        assert lo <= case["shorter_side_min"] <= case["shorter_side_max"] <= hi
        for key in ("shuffle_ms", "read_ms", "decode_ms", "draft_decode_ms", "resize_crop_ms",
                    "stack_ms"):
            assert positive(case[key]), (name, key)
    for case in cases.values():
        per_core = rows[(case["case"], 1)]["img_per_s"]
        assert case["per_core_img_per_s"] == per_core
        assert case["cores_for_target"] == pytest.approx(3200 / per_core)
        assert case["pipeline_ms"] == pytest.approx(1e3 / per_core)
    assert result["target_img_per_s"] == 3200 and result["batch_size"] == 4
    # The JPEGs stay under --image_dir, and a second run reads them as they are.
    written = sorted(p.name for p in (images / "jpeg64").iterdir())
    assert len(written) == 5 and sorted(p.name for p in images.iterdir()) == [
        "jpeg256", "jpeg64"]
    again = run_cli("benchmarks.input_pipeline", *TINY, "--batch_size=2", "--batches=1",
                    "--warmup=1", "--workers=1", "--cases=jpeg64", "--nobreakdown",
                    "--min_seconds=0", f"--image_dir={images}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "wrote" not in again.stdout and "jpeg64" in again.stdout
    assert sorted(p.name for p in (images / "jpeg64").iterdir()) == written
    for args, expected in (
            (["--cases=jpeg64,nope"], "--cases=jpeg64,nope: known cases: memory32, jpeg64, "
                                      "jpeg256"),
            (["--config.data.crop=center"], "--config.data.crop: set by each case here")):
        bad = run_cli("benchmarks.input_pipeline", *TINY, *args)
        assert bad.returncode == 2 and bad.stdout == ""
        assert bad.stderr.strip().startswith(f"error: {expected}"), bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1


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


def test_sampling_peer_needs_an_edm_checkout(run_cli, tmp_path):
    result = run_cli("benchmarks.sample_throughput", "--config=configs/quickstart.py",
                     "--edm_path", str(tmp_path))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "NVlabs/edm" in lines[0]
    assert result.stdout == ""  # refused before anything is measured


@pytest.mark.heavy
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


@pytest.mark.heavy
def test_compile_cache(bench):
    """Two trainer processes (cold, then warm on the same cache): the second loads its step.
    Also the persistent compilation cache's end-to-end test (fresh processes, the trainer's
    own console lines): tests/test_compile_cache.py tests its folder and settings."""
    result = bench("compile_cache", "--batch_size=2", "--nocontrol", "--min_compile_seconds=0")
    starts = {row["start"]: row for row in result["starts"]}
    assert sorted(starts) == ["cold", "warm"] and result["min_compile_seconds"] == 0
    assert starts["cold"]["train_step"] == "compiled" and starts["cold"]["loaded"] == 0
    assert starts["warm"]["train_step"] == "loaded from the compilation cache"
    for row in starts.values():
        assert positive(row["first_step_s"]) and row["process_s"] > row["first_step_s"]
    assert result["warm_over_cold"] == pytest.approx(
        starts["warm"]["first_step_s"] / starts["cold"]["first_step_s"])
    assert result["cache_entries"] >= starts["warm"]["loaded"] >= 1
    assert positive(result["cache_bytes"])


@pytest.mark.heavy
def test_grad_accum_memory(bench, run_cli):
    result = bench("grad_accum_memory", "--batch_size=4", "--accum=1,2",
                   "--config.model.num_res_blocks=1")
    rows = result["rows"]
    assert result["batch_size"] == 4
    assert [(r["accum"], r["microbatch"]) for r in rows] == [(1, 4), (2, 2)]
    for row in rows:
        for key in ("temp_bytes", "argument_bytes", "output_bytes", "compile_s"):
            assert positive(row[key]), key
        assert row["temp_vs_first"] == pytest.approx(row["temp_bytes"] / rows[0]["temp_bytes"])
    assert rows[1]["temp_bytes"] < rows[0]["temp_bytes"]  # half the activations live at once
    assert rows[1]["argument_bytes"] == rows[0]["argument_bytes"]  # the same state and batch
    bad = run_cli("benchmarks.grad_accum_memory", *TINY, "--batch_size=4", "--accum=1,3")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip() == "error: --accum=1,3: 3 does not divide --batch_size=4"


def test_fsdp_memory(repo, tmp_path):
    """Per-device bytes of the cifar10 DDPM++ state fall with mesh.fsdp (a subprocess: the
    script asks for its 4 fake devices before JAX starts; shapes only, nothing compiled)."""
    out = tmp_path / "fsdp.json"
    done = subprocess.run([sys.executable, os.path.join(repo, "benchmarks", "fsdp_memory.py"),
                           "--devices=4", f"--json={out}"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["data"], r["fsdp"]) for r in rows] == [(4, 1), (2, 2), (1, 4)]
    ratios = [r["vs_replicated"] for r in rows]
    assert ratios[0] == 1 and 1.9 < ratios[1] < 2 and 3.8 < ratios[2] < 4  # small arrays whole


@pytest.mark.heavy
@pytest.mark.parametrize("what", ["train", "forward"])
def test_profile_step_sums_the_traced_operations(bench, tmp_path, what):
    result = bench("profile_step", "--batch_size=2", "--steps=1", f"--what={what}",
                   f"--trace_dir={tmp_path / 'trace'}")
    assert result["what"] == what and positive(result["wall_s_per_step"])
    shares = [row["share"] for row in result["kinds"]]
    assert shares and abs(sum(shares) - 1) < 1e-9 and all(s > 0 for s in shares)
    assert all(positive(row["ms_per_step"]) for row in result["top_ops"])


@pytest.mark.heavy
def test_conv_forward_finds_every_convolution_of_the_forward(bench, repo):
    import jax

    from benchmarks.common import default_mesh
    from sagd_jax.config import load_config_file
    from sagd_jax.run import Run

    result = bench("conv_forward", "--batch_size=2", "--repeats=1")
    config = load_config_file(os.path.join(repo, "configs/quickstart.py"),
                              [arg[len("--config."):].split("=", 1) for arg in TINY[1:]])
    params = Run.from_config(config, load_data=False, device_count=1).init_state(
        default_mesh()).ema_params
    # every spatial kernel is one convolution of the forward (1x1 ones run as matmuls)
    kernels = [leaf for leaf in jax.tree.leaves(params) if leaf.ndim == 4 and leaf.shape[0] > 1]
    assert sum(row["count"] for row in result["convolutions"]) == len(kernels)
    assert {row["kernel"] for row in result["convolutions"]} == {
        "x".join(map(str, k.shape)) for k in kernels}
    assert all(row["input"].startswith("2x") for row in result["convolutions"])
    xla, torch = result["xla_conv_ms"], result["torch_conv_ms"]
    assert positive(xla) and positive(torch) and positive(result["forward_ms"])
    assert abs(result["xla_over_torch"] - xla / torch) < 1e-9
