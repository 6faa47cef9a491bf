"""Several sample sets of one model, FID as papers report it (issue 37): ``sagd-sample
--sets=K`` makes the sets of seeds s .. s+K-1, ``sagd-evaluate --fid_sets=K`` (or
``--samples=A,B,C``) judges each and summarises them (mean, std with ddof=1, min, max)."""

from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import pytest

from sagd_jax import evaluation
from sagd_jax.workdir import Workdir

SAMPLE = ["--model=exact", "--num_samples=8", "--sampler=ddpm", "--steps=2", "--chunk_size=8"]
JUDGE = ["--max_reference=64", "--num_subsets=2", "--subset_size=4"]


@pytest.fixture(scope="module")
def exact_run(tmp_path_factory, tiny_config):
    """A tiny grf workdir: its exact Gaussian model samples with no training."""
    workdir = tmp_path_factory.mktemp("exact")
    Workdir(str(workdir)).prepare(tiny_config())
    return workdir


def _tree(folder) -> dict[str, int]:
    """Every file under ``folder`` with its modification time (ns)."""
    return {os.path.join(root, name): os.stat(os.path.join(root, name)).st_mtime_ns
            for root, _, names in os.walk(folder) for name in names}


def _one_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), lines
    assert result.stdout == ""
    return lines[0]


def _no_sampling(monkeypatch):
    import sagd_jax.samplers

    def refuse(name):
        raise AssertionError("sampled again")

    monkeypatch.setattr(sagd_jax.samplers, "get_sampler", refuse)


@pytest.fixture(scope="module")
def three_sets(exact_run):
    """The CLI's outputs: one set without ``--sets`` (seed 5), then ``--sets=3 --seed=5``."""
    from sagd_jax.sample import main

    outputs = []
    for extra in ([], ["--sets=3"]):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["sagd_jax.sample", f"--workdir={exact_run}", *SAMPLE, "--seed=5",
                         *extra]) == 0
        outputs.append(out.getvalue().split())
    return outputs


def test_sets_have_consecutive_seeds_differ_and_a_rerun_samples_nothing(
        exact_run, three_sets, run_cli, monkeypatch):
    (single,), paths = three_sets
    generated = exact_run / "generated"
    assert paths == [str(generated / f"ddpm-2steps-seed{seed}-exact" / "samples.npz")
                     for seed in (5, 6, 7)]
    assert single == paths[0]  # the first set is the one a plain call makes
    manifests = [json.loads((generated / f"ddpm-2steps-seed{s}-exact" / "manifest.json")
                            .read_text()) for s in (5, 6, 7)]
    assert [m.pop("seed") for m in manifests] == [5, 6, 7]
    assert manifests[0] == manifests[1] == manifests[2]
    images = [np.load(path)["arr_0"] for path in paths]
    for i in range(3):
        assert images[i].shape == (8, 16, 16, 1)
        for j in range(i):
            assert not np.array_equal(images[i], images[j])
    before = _tree(generated)
    _no_sampling(monkeypatch)
    again = run_cli("sagd_jax.sample", f"--workdir={exact_run}", *SAMPLE, "--seed=5", "--sets=3")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.split() == paths
    one = run_cli("sagd_jax.sample", f"--workdir={exact_run}", *SAMPLE, "--seed=5", "--sets=1")
    assert one.returncode == 0 and one.stdout.split() == [single], one.stderr[-3000:]
    assert _tree(generated) == before


def test_sets_with_out_go_to_seed_folders_and_sets_1_to_out_itself(exact_run, tmp_path,
                                                                   run_cli):
    result = run_cli("sagd_jax.sample", f"--workdir={exact_run}", *SAMPLE, "--sets=2",
                     f"--out={tmp_path / 'sets'}", f"--png_dir={tmp_path / 'png'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [str(tmp_path / "sets" / f"seed{s}" / "samples.npz")
                                     for s in (0, 1)]
    assert sorted(os.listdir(tmp_path / "png")) == ["seed0", "seed1"]
    assert len(os.listdir(tmp_path / "png" / "seed1")) == 8
    one = run_cli("sagd_jax.sample", f"--workdir={exact_run}", *SAMPLE, "--sets=1",
                  f"--out={tmp_path / 'one'}")
    assert one.stdout.split() == [str(tmp_path / "one" / "samples.npz")], one.stderr[-3000:]
    with np.load(tmp_path / "one" / "samples.npz") as a, \
            np.load(tmp_path / "sets" / "seed0" / "samples.npz") as b:
        np.testing.assert_array_equal(a["arr_0"], b["arr_0"])
    before = _tree(tmp_path)
    for bad, message in (
            (["--sets=2", f"--out={tmp_path / 'one'}"],
             f"error: --out={tmp_path / 'one'}: holds a sample set; --sets=2 writes "
             f"{tmp_path / 'one' / 'seed0'}, ...: use another --out"),
            (["--sets=0"], "error: --sets=0: must be an integer >= 1")):
        assert _one_error(run_cli("sagd_jax.sample", f"--workdir={exact_run}", *SAMPLE,
                                  *bad)).startswith(message)
    assert _tree(tmp_path) == before


def _metric(results: dict, keys: tuple[str, ...]):
    for key in keys:
        results = results[key]
    return results


def test_the_summary_is_numpys_statistics_over_each_sets_evaluation(exact_run, three_sets,
                                                                    run_cli, tmp_path):
    _, paths = three_sets
    result = run_cli("sagd_jax.evaluate", f"--samples={paths[0]}", "--fid_sets=3", *JUDGE)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = os.path.dirname(paths[0])
    out = os.path.join(folder, "fid_sets_3.json")
    summary = json.load(open(out))
    judged = [json.load(open(os.path.join(os.path.dirname(p), "evaluation.json")))
              for p in paths]
    assert summary["seeds"] == [5, 6, 7] and summary["num_samples"] == 8
    assert [s["evaluation"] for s in summary["sets"]] == [
        os.path.join(os.path.dirname(p), "evaluation.json") for p in paths]
    assert summary["std_ddof"] == 1 and "ddof=1" in summary["statistics"]
    assert "seed" not in summary["sampling"] and summary["sampling"]["steps"] == 2
    names = dict(evaluation.SET_METRICS)
    assert set(summary["metrics"]) == {"spectrum_mean_abs_log_ratio",
                                       "grf_variance_mean_abs_log_ratio"}
    for name, stats in summary["metrics"].items():
        values = np.array([_metric(j, names[name]) for j in judged])
        assert stats["values"] == values.tolist()
        assert stats["mean"] == pytest.approx(values.mean(), rel=1e-12)
        assert stats["std"] == pytest.approx(values.std(ddof=1), rel=1e-12)
        assert stats["min"] == values.min() and stats["max"] == values.max()
        assert stats["std"] > 0  # the sets differ
    printed = json.loads(result.stdout)
    assert printed["seeds"] == [5, 6, 7] and printed["std_ddof"] == 1
    assert printed["spectrum_mean_abs_log_ratio"] == summary["metrics"][
        "spectrum_mean_abs_log_ratio"]
    # Again: the stored summary, nothing judged or written; the same sets named one by one
    # (the notebook API) reuse every set's evaluation.json.
    before = _tree(exact_run / "generated")
    again = run_cli("sagd_jax.evaluate", f"--samples={paths[0]}", "--fid_sets=3", *JUDGE)
    assert again.returncode == 0 and json.loads(again.stdout) == printed
    import sagd_jax

    listed = sagd_jax.evaluate(paths, out=str(tmp_path / "listed.json"), max_reference=64,
                               num_subsets=2, subset_size=4, quiet=True)
    assert listed["metrics"] == summary["metrics"]
    assert _tree(exact_run / "generated") == before


def test_the_api_makes_and_judges_several_sets(exact_run, tmp_path):
    import sagd_jax

    paths = sagd_jax.sample(str(exact_run), 8, "ddpm", 2, model="exact", chunk_size=8, seed=20,
                            sets=2, out=str(tmp_path / "sets"), quiet=True)
    assert paths == [str(tmp_path / "sets" / f"seed{s}" / "samples.npz") for s in (20, 21)]
    summary = sagd_jax.evaluate(paths[0], fid_sets=2, max_reference=64, num_subsets=2,
                                subset_size=4, quiet=True)
    assert summary["seeds"] == [20, 21]
    assert os.path.exists(tmp_path / "sets" / "seed20" / "fid_sets_2.json")


def test_bad_sets_are_refused_in_one_line_before_any_work(exact_run, three_sets, run_cli,
                                                          tmp_path, monkeypatch):
    _, paths = three_sets
    # A set of other settings (4 steps), of another size, of another shape, without manifest.
    other = run_cli("sagd_jax.sample", f"--workdir={exact_run}", *SAMPLE, "--steps=4",
                    "--seed=6", f"--out={tmp_path / 'steps4'}")
    assert other.returncode == 0, other.stderr[-3000:]
    steps4 = str(tmp_path / "steps4" / "samples.npz")
    external = tmp_path / "external"
    external.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 1), dtype=np.uint8)
    np.savez(external / "a.npz", arr_0=pixels)
    np.savez(external / "small.npz", arr_0=pixels[:4])
    np.savez(external / "wide.npz", arr_0=np.zeros((8, 16, 16, 3), np.uint8))

    def no_work(*args, **kwargs):
        raise AssertionError("work started on bad input")

    monkeypatch.setattr(evaluation, "reference_images", no_work)
    monkeypatch.setattr(evaluation, "evaluate", no_work)
    gen = os.path.dirname
    cases = [
        ([f"--samples={paths[0]}", "--fid_sets=0"], "--fid_sets=0: must be an integer >= 1"),
        ([f"--samples={paths[0]}", "--fid_sets=4"],
         f"--fid_sets=4: no set of seed 8 beside --samples={paths[0]}: "
         f"{gen(gen(paths[0]))}/ddpm-2steps-seed8-exact/samples.npz is missing"),
        ([f"--samples={paths[0]},{paths[1]}", "--fid_sets=3"],
         "--fid_sets=3: --samples names 2 sets"),
        ([f"--samples={paths[0]},{steps4}"],
         f"--samples: {steps4} was made with other settings than {paths[0]} (steps)"),
        ([f"--samples={paths[0]},{paths[0]}"], f"--samples: {paths[0]} named twice"),
        ([f"--samples={paths[0]},{external / 'a.npz'}"],
         f"--samples: {external / 'a.npz'} has no manifest.json beside it, {paths[0]} has"),
        ([f"--samples={external / 'a.npz'},{external / 'small.npz'}"],
         f"--samples: {external / 'small.npz'} holds 4 images, {external / 'a.npz'} 8"),
        ([f"--samples={external / 'a.npz'},{external / 'wide.npz'}"],
         f"--samples: {external / 'wide.npz'} holds images (16, 16, 3), "
         f"{external / 'a.npz'} (16, 16, 1)"),
        ([f"--samples={external / 'a.npz'}", "--fid_sets=2"],
         f"--fid_sets=2: --samples={external / 'a.npz'} has no manifest.json"),
        ([f"--samples={steps4}", "--fid_sets=2"],
         f"--fid_sets=2: --samples={steps4} is not in a folder of sagd_jax.sample --sets"),
        ([f"--samples={paths[0]},{external / 'missing.npz'}"],
         f"--samples={external / 'missing.npz'}: no such file or folder"),
    ]
    before = _tree(tmp_path), _tree(exact_run)
    for args, message in cases:
        line = _one_error(run_cli("sagd_jax.evaluate", *args, *JUDGE))
        assert line.startswith(f"error: {message}"), (line, message)
    assert (_tree(tmp_path), _tree(exact_run)) == before


def _results(seed: int, fid: float | None, accuracy: float, **extra) -> dict:
    return {"samples": f"/sets/seed{seed}/samples.npz", "num_samples": 100,
            "sampling": {"seed": seed, "steps": 10}, "reference": "ref", "classifier": "c",
            "fd": 10.0 + seed, "kid": {"mean": 0.01 * seed, "std": 0.1},
            "class_accuracy": accuracy,
            "inception": {"fid": fid, "kid": {"mean": 0.002 * seed},
                          "inception_score": {"mean": 9.0 - seed, "std": 0.1},
                          "inception_reference": "train", "inception_weights": "w"}, **extra}


def test_summarize_sets_takes_numpys_statistics_of_every_headline():
    results = [_results(0, 2.08, 0.8), _results(1, 2.04, 0.9), _results(2, 2.05, 0.85)]
    summary = evaluation.summarize_sets(results)
    assert summary["seeds"] == [0, 1, 2] and summary["sampling"] == {"steps": 10}
    assert set(summary["metrics"]) == {"fd", "kid", "class_accuracy", "inception_fid",
                                       "inception_kid", "inception_score"}
    names = dict(evaluation.SET_METRICS)
    for name, stats in summary["metrics"].items():
        values = np.array([_metric(r, names[name]) for r in results])
        assert stats == {"mean": pytest.approx(values.mean()),
                         "std": pytest.approx(values.std(ddof=1)), "min": values.min(),
                         "max": values.max(), "values": values.tolist()}
    assert summary["metrics"]["inception_fid"]["min"] == 2.04
    # A null (non-finite) value: listed, no statistics; one set: no spread.
    nulls = evaluation.summarize_sets([_results(0, None, 0.8), _results(1, 2.0, 0.9)])
    assert nulls["metrics"]["inception_fid"] == {"mean": None, "std": None, "min": None,
                                                 "max": None, "values": [None, 2.0]}
    assert evaluation.summarize_sets(results[:1])["metrics"]["fd"]["std"] is None
    # Sets judged unalike (another reference) are not summarised together.
    with pytest.raises(ValueError, match=r"^/sets/seed1/samples.npz: judged with "
                                         r"reference='other', /sets/seed0/samples.npz with "
                                         r"'ref'; pass --overwrite"):
        evaluation.summarize_sets([results[0], {**results[1], "reference": "other"}])



def test_max_chunks_counts_per_set_and_a_rerun_finishes_them(exact_run, tmp_path, run_cli):
    args = [f"--workdir={exact_run}", *SAMPLE, "--chunk_size=4", "--sets=2",
            f"--out={tmp_path / 'sets'}"]
    stopped = run_cli("sagd_jax.sample", *args, "--max_chunks=1")
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert stopped.stdout.splitlines() == [
        f"set of seed {s}: stopped early (--max_chunks); run again to continue" for s in (0, 1)]
    for s in (0, 1):
        assert os.listdir(tmp_path / "sets" / f"seed{s}" / "chunks") == ["chunk_00000.npz"]
    done = run_cli("sagd_jax.sample", *args)
    assert done.stdout.split() == [str(tmp_path / "sets" / f"seed{s}" / "samples.npz")
                                   for s in (0, 1)], done.stderr[-3000:]


def test_the_sets_after_the_first_take_the_checkpoint_it_resolved(tmp_path, monkeypatch):
    """A run still training may save a checkpoint between two sets: "latest" is resolved once,
    by the first set, so all sets come from one network."""
    from sagd_jax import sampling

    asked = []

    def fake_generate(workdir, request, out, config, max_chunks, **kwargs):
        asked.append(request.checkpoint_step)
        folder = tmp_path / f"seed{request.seed}"
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps({"checkpoint_step": 7 + len(asked)}))
        return str(folder / "samples.npz")

    monkeypatch.setattr(sampling, "generate", fake_generate)
    request = sampling.SampleRequest(num_samples=4, sampler="ddpm", steps=2)
    paths = sampling.generate_sets("run", request, 3)
    assert asked == [None, 8, 8]
    assert paths == [str(tmp_path / f"seed{s}" / "samples.npz") for s in (0, 1, 2)]
    asked.clear()
    fixed = sampling.SampleRequest(num_samples=4, sampler="ddpm", steps=2, seed=3,
                                   checkpoint_step=2)
    monkeypatch.setattr(sampling, "generate", lambda *a, **k: asked.append(a[1]) or None)
    assert sampling.generate_sets("run", fixed, 2) == [None, None]
    assert [(r.seed, r.checkpoint_step) for r in asked] == [(3, 2), (4, 2)]
