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


# --- a config file that does not load: one line naming it, exit 2, nothing written -----------
BAD_CONFIGS = {  # file name -> its text
    "syntax.py": "from sagd_jax.config import default_config\ndef get_config(:\n    pass\n",
    "raises.py": "def get_config():\n    data = {}\n    return data['missing']\n",
    "imports.py": "import sagd_jax.nosuchmodule\n",
    "none.py": "def get_config():\n    pass\n",
}


def _bad_config(tmp_path, name: str) -> str:
    """``configs/...`` specs as given; a ``BAD_CONFIGS`` name written to ``tmp_path``."""
    if name not in BAD_CONFIGS:
        return name
    path = tmp_path / "configs" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(BAD_CONFIGS[name])
    return str(path)


@pytest.mark.parametrize("module, flags", [
    ("sagd_jax.main", ["--workdir={out}"]),
    ("sagd_jax.sample", ["--workdir={out}", "--num_samples=4"]),
    ("launch.sweep", ["--root={out}", "--sweep=seed=0,1"]),
    ("benchmarks.spectral_cost", ["--json={out}"]),
])
@pytest.mark.parametrize("spec, message", [
    ("configs/nope.py", "no such file configs/nope.py"),
    ("configs", "configs is a directory, not a config file"),
    ("syntax.py", "syntax error at {path}:2: invalid syntax"),
    ("raises.py", "get_config() raised KeyError: 'missing' (at {path}:3)"),
    ("imports.py", "loading the file raised ModuleNotFoundError: No module named "
                   "'sagd_jax.nosuchmodule' (at {path}:1)"),
    ("none.py", "get_config() returned NoneType, not a ConfigDict"),
    ("configs/fashion_mnist.py:bandstopp", "no such variant 'bandstopp' (closest: bandstop); "
                                           "known: sagd, iso, bandstop"),
    ("configs/cifar10_ddpmpp.py:gpu", "config variant 'gpu': known: full, cpu"),
    ("configs/quickstart.py:small", "no variant 'small': this config has none (its "
                                    "get_config() takes no argument)"),
])
def test_a_config_that_does_not_load_is_one_line_naming_it(run_cli, tmp_path, module, flags,
                                                           spec, message):
    spec = _bad_config(tmp_path, spec)
    out = tmp_path / "out"
    result = run_cli(module, f"--config={spec}", *(f.format(out=out) for f in flags))
    assert result.returncode == 2 and result.stdout == ""
    path = spec.partition(":")[0]
    assert result.stderr.splitlines() == [f"error: --config={spec}: {message.format(path=path)}"]
    assert not out.exists()  # nothing written
