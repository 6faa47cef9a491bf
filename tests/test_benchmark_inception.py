"""``benchmarks/inception_throughput.py`` end to end on tiny settings, in a subprocess: its JSON
fields, a positive ratio against torch-fidelity, the two extractors agreeing, the in-training
evaluation's arithmetic, and its refusals."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
if importlib.util.find_spec("torch_fidelity") is None:
    pytest.skip("torch-fidelity is not installed (pip install --no-deps torch-fidelity)",
                allow_module_level=True)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "inception_throughput.py")
TINY = ["--config=configs/quickstart.py", "--config.model.ch=8", "--config.model.num_groups=2",
        "--config.model.attn_resolutions=()", "--sizes=32", "--batch_size=2", "--rounds=1",
        "--sampler_steps=2", "--repeats=1", "--num_samples=6", "--eval_every=10"]


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.heavy
def test_inception_throughput_records_rates_agreement_and_the_eval_fraction(tmp_path):
    out = tmp_path / "inception.json"
    result = run_script(*TINY, f"--json={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["command"].startswith("python benchmarks/inception_throughput.py")
    assert record["machine"]["cpu_count"] == os.cpu_count()
    assert record["config"] == "configs/quickstart.py"
    assert set(record["versions"]) >= {"torch", "torch-fidelity", "flax", "numpy"}
    assert record["torch_threads"] == os.cpu_count()
    (row,) = record["rows"]
    assert (row["size"], row["images"]) == (32, 2)
    for key in ("ours_img_per_s", "theirs_img_per_s", "ratio", "ratio_best", "ours_resize_ms",
                "ours_network_ms", "network_xla_default_ms", "ynnpack_off_speedup",
                "theirs_resize_ms", "network_gflop_per_img"):
        assert positive(row[key]), key
    # The network compiled with XLA's default options (YNNPACK) computes the same features.
    assert row["xla_default_rel_diff"] < 1e-4
    assert row["ratio"] == pytest.approx(row["ours_img_per_s"] / row["theirs_img_per_s"])
    assert len(row["ours_rounds"]) == len(row["theirs_rounds"]) == 1
    # Same weights, same images: the two networks agree (f32 round-off), and not trivially
    # (a zero difference would mean one side was compared with itself).
    assert 0 < record["max_rel_diff"] < 1e-4
    # Inception-v3 at 299x299 is about 5.7 G multiply-adds per image.
    assert 10 < row["network_gflop_per_img"] < 13

    fraction = record["fraction"]
    assert (fraction["sampler"], fraction["nfe"], fraction["num_samples"]) == ("ddpm", 200, 6)
    assert (fraction["eval_every"], fraction["train_batch_size"]) == (10, 32)
    assert fraction["sample_batch"] == fraction["train_batch_timed"] == 4  # CPU default
    assert fraction["inception_size_used"] == 32  # the measured size closest to 28
    for key in ("sampling_s", "inception_s", "fid_kid_s", "train_s", "train_step_s",
                "sampler_call_s", "reference_s"):
        assert positive(fraction[key]), key
    # The extrapolations, recomputed from the measured figures.
    assert fraction["sampling_s"] == pytest.approx(6 * 200 * fraction["sampler_call_s"] / (4 * 2))
    assert fraction["inception_s"] == pytest.approx(6 / row["ours_img_per_s"])
    assert fraction["train_s"] == pytest.approx(10 * 32 * fraction["train_step_s"] / 4)
    eval_s = fraction["sampling_s"] + fraction["inception_s"] + fraction["fid_kid_s"]
    assert fraction["eval_s"] == pytest.approx(eval_s)
    assert fraction["eval_fraction"] == pytest.approx(eval_s / (eval_s + fraction["train_s"]))
    assert "scaled linearly" in fraction["extrapolated"]
    assert "eval fraction" in result.stdout and "extrapolated" in result.stdout


@pytest.mark.slow
def test_inception_throughput_refuses_bad_input_before_measuring(tmp_path):
    out = tmp_path / "out.json"
    for args, message in (
            (["--sizes=32,0"], "--sizes=32,0"),
            (["--sampler_steps=500"], "--sampler_steps=500"),  # more than the 200 evaluated
            (["--inception_weights=/nonexistent.pth"], "/nonexistent.pth")):
        result = run_script(*TINY, *args, f"--json={out}")
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert message in result.stderr and "Inception features" not in result.stdout, args
    assert not out.exists()
