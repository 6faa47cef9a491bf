"""The one flag system of every tool: help, unknown flags and keys, positional arguments,
a default config, and the exit statuses."""

from __future__ import annotations

import pytest
from absl import flags

from sagd_jax import cli


def _define(fv: flags.FlagValues) -> None:
    cli.define_config(fv, default="configs/quickstart.py")
    flags.DEFINE_integer("count", 1, "How many.", flag_values=fv)


def _body(fv: flags.FlagValues) -> int:
    if fv.count < 0:
        raise ValueError(f"--count={fv.count}: must be >= 0")
    if fv.count == 99:
        raise FloatingPointError("non-finite")
    print(f"batch {fv.config.train.batch_size} count {fv.count}")
    return 0


@pytest.fixture
def tool(capfd, monkeypatch, repo):
    monkeypatch.chdir(repo)

    def call(*args):
        capfd.readouterr()
        code = cli.run("A test tool.", _define, _body, ["tool", *args])
        out = capfd.readouterr()
        return code, out.out, out.err

    return call


def test_default_config_overrides_and_body(tool):
    assert tool("--config.train.batch_size=7", "--count=3") == (0, "batch 7 count 3\n", "")
    assert tool()[1] == "batch 32 count 1\n"  # the quickstart's batch


@pytest.mark.parametrize("args, message", [
    (["--config.train.batchsize=7"], "error: --config.train.batchsize: no such config key; "
                                     "closest: train.batch_size"),
    (["--nosuchflag=1"], "error: Unknown command line flag 'nosuchflag'"),
    (["--count=x"], "error: flag --count=x: invalid literal"),
    (["extra"], "error: unexpected arguments: extra"),
    (["--config=configs/none.py"], "error: --config=configs/none.py: no such file"),
    (["--count=-1"], "error: --count=-1: must be >= 0"),
])
def test_bad_input_is_one_line_and_exit_2(tool, args, message):
    code, out, err = tool(*args)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines


def test_nonfinite_is_exit_3_and_help_lists_every_flag(tool):
    code, _, err = tool("--count=99")
    assert code == 3 and err.strip() == "error: non-finite"
    code, out, _ = tool("--help")
    assert code == 0 and out.startswith("A test tool.")
    assert all(f"--{name}" in out for name in ("config", "count", "verbosity"))


def test_normalize_fills_defaults_and_refuses_unknown_keys():
    from sagd_jax.config import default_config, normalize

    config = normalize({"noise": {"gamma": 2.0},
                        "diffusion": {"schedule_kwargs": {"beta_min": 0.2}}})
    assert config.noise.gamma == 2.0 and config.noise.rho0 == default_config().noise.rho0
    assert config.diffusion.schedule_kwargs.beta_min == 0.2  # free-form schedule arguments
    assert config.model.ch_mult == default_config().model.ch_mult
    for bad, closest in (({"train": {"batchsize": 3}}, "train.batch_size"),
                         ({"diffusion": {"schedule_kwargsx": {}}}, "diffusion.schedule_kwargs")):
        with pytest.raises(ValueError, match=rf"no such config key; closest: {closest}"):
            normalize(bad)
