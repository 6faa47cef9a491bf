"""What a config is: a repeated ``--config.KEY`` takes its last value, a config file that
exits is bad input, ``model.attn_resolutions`` must name a level of the network, and the
resume-identity rule (``config.json``: keys a resume may change, keys it may not unless
``--allow_config_change``, which records the change)."""

from __future__ import annotations

import json

import pytest

from sagd_jax import cli, main
from sagd_jax.config import default_config, flat_keys


def _parse(*args: str):
    """The trainer's ``fv.config`` for ``args`` (after ``--config=quickstart``)."""
    return cli.parse(main.define_flags, ["sagd-train", "--workdir=w", "--config=quickstart",
                                         *args]).config


def test_a_repeated_override_takes_its_last_value():
    assert _parse("--config.model.ch_mult=(1,)", "--config.model.ch_mult=(2,)"
                  ).model.ch_mult == (2,)
    assert _parse("--config.model.ch_mult", "(1,)", "--config.model.ch_mult=(2, 2)",
                  "--config.train.batch_size=3").model.ch_mult == (2, 2)
    config = _parse("--config.train.batch_size=4", "--config.noise.bands=a",
                    "--config.train.batch_size=8", "--config.noise.bands=")
    assert (config.train.batch_size, config.noise.bands) == (8, "")
    assert _parse("--noconfig.model.remat", "--config.model.remat=True").model.remat is True


@pytest.mark.parametrize("where, message", [
    ("import sys\nsys.exit(0)\n", "loading the file called sys.exit(0) (at {path}:2)"),
    ("import sys\n\n\ndef get_config():\n    sys.exit(3)\n",
     "get_config() called sys.exit(3)"),
])
def test_a_config_file_that_exits_is_one_line_exit_2(tmp_path, run_cli, where, message):
    path = tmp_path / "exits.py"
    path.write_text(where)
    out = tmp_path / "run"
    result = run_cli("sagd_jax.main", f"--config={path}", f"--workdir={out}")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [f"error: --config={path}: "
                                          + message.format(path=path)]
    assert not out.exists()


def test_attention_at_no_level_of_the_network_is_one_warning_line(monkeypatch):
    from sagd_jax import console
    from sagd_jax.models import build_model

    said = []
    monkeypatch.setattr(console, "warning", lambda msg, *a: said.append(msg % a))
    config = default_config()
    config.model.update(dict(ch_mult=(1, 2), attn_resolutions=(5,)))
    build_model(config.model, (16, 16, 1))
    assert said == ["model.attn_resolutions=(5,): no such feature-map side, so no attention "
                    "layer; the 16x16 images with model.ch_mult=(1, 2) have 16, 8"]
    config.model.attn_resolutions = (5, 8)  # one entry exists: a config for several sizes
    build_model(config.model, (16, 16, 1))
    assert len(said) == 1


def test_the_may_change_keys_exist_and_are_documented(repo):
    from sagd_jax.config import RESUME_MAY_CHANGE

    keys = flat_keys(default_config())
    text = open(f"{repo}/docs/training.md", encoding="utf-8").read()
    for entry in RESUME_MAY_CHANGE:
        assert any(k == entry or k.startswith(entry + ".") for k in keys), entry
        assert f"`{entry}`" in text, entry


def _listing(path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in path.rglob("*")}


@pytest.mark.slow
def test_resume_identity_rule(tmp_path, run_cli, tiny_cli_overrides):
    """May-change keys resume silently; identity keys are refused in one line naming each
    (nothing written) unless --allow_config_change, which records the change and makes it the
    run's identity. Two training starts of a tiny run."""
    workdir = tmp_path / "run"

    def train(*extra: str):
        return run_cli("sagd_jax.main", "--config=quickstart", f"--workdir={workdir}",
                       *tiny_cli_overrides, "--config.data.name=grf",
                       "--config.data.image_size=16", "--config.data.num_examples=64",
                       "--config.train.checkpoint_every=2", *extra)

    assert train("--config.train.num_steps=2").returncode == 0
    before = _listing(workdir)
    result = train("--config.train.num_steps=3", "--config.train.batch_size=4",
                   "--config.optim.learning_rate=0.002", "--config.seed=1")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: --workdir={workdir}: the run was started with other values of keys a resume "
        "may not change (optim.learning_rate: 0.001 -> 0.002, seed: 0 -> 1, train.batch_size: "
        "8 -> 4); give --allow_config_change to resume with the new values (recorded in "
        "config_changes.jsonl), or use a new workdir"]
    assert _listing(workdir) == before  # nothing written

    result = train("--config.train.num_steps=3", "--config.train.batch_size=4",
                   "--allow_config_change")
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in open(workdir / "config_changes.jsonl")]
    assert len(records) == 1 and records[0]["step"] == 2
    assert records[0]["changes"] == {"train.batch_size": {"old": 8, "new": 4}}  # not num_steps
    saved = json.loads((workdir / "config.json").read_text())
    assert (saved["train"]["batch_size"], saved["train"]["num_steps"]) == (4, 3)
    assert json.loads(open(workdir / "metrics.jsonl").readlines()[-1])["step"] == 3

    # the change is the run's identity now; may-change keys still change silently
    kept = [(workdir / name).read_bytes() for name in ("config.json", "config_changes.jsonl")]
    result = train("--config.train.num_steps=3", "--config.train.batch_size=4",
                   "--config.train.log_every=1", "--config.train.sample_every=7",
                   "--config.eval.num_samples=10", "--config.mesh.fsdp=1",
                   "--config.train.nonfinite=skip", "--config.data.num_workers=1")
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr
    assert [(workdir / name).read_bytes()
            for name in ("config.json", "config_changes.jsonl")] == kept
    result = train("--config.train.num_steps=3")
    assert result.returncode == 2 and "(train.batch_size: 4 -> 8)" in result.stderr
