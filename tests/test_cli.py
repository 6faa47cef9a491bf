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
                                           "known: sagd, iso, bandstop, cond, dit"),
    ("configs/cifar10_ddpmpp.py:gpu", "config variant 'gpu': known: full, cpu, cond"),
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


# --- built-in configs: --config=NAME[:VARIANT] from any directory ----------------------------
QUICKSTART_LOCAL = """from sagd_jax.config import default_config


def get_config():
    c = default_config()
    c.train.batch_size = 5
    return c
"""


def _trainer_config(*args):
    """The trainer's ``fv.config`` for ``args``, as ``config_flags`` loads it."""
    from sagd_jax import main

    return cli.parse(main.define_flags, ["sagd-train", "--workdir=w", *args]).config


def _define_builtin_default(fv: flags.FlagValues) -> None:
    cli.define_config(fv, default="quickstart")
    flags.DEFINE_integer("count", 1, "How many.", flag_values=fv)


def test_a_builtin_name_is_the_shipped_config_from_any_directory(repo, tmp_path, monkeypatch,
                                                                 capfd):
    import os

    from sagd_jax.config import builtin_configs, load_config_file

    monkeypatch.chdir(tmp_path)  # no configs/ here
    shipped = sorted(n[:-3] for n in os.listdir(os.path.join(repo, "configs")) if n.endswith(".py"))
    assert builtin_configs() == shipped and "quickstart" in shipped
    for spec in ("quickstart", "cifar10_ddpmpp:cpu", "ffhq:256"):
        name, _, variant = spec.partition(":")
        expected = load_config_file(os.path.join(repo, "configs", f"{name}.py") +
                                    (f":{variant}" if variant else "")).to_dict()
        assert load_config_file(spec).to_dict() == expected, spec
        assert _trainer_config(f"--config={spec}").to_dict() == expected, spec
    assert load_config_file("ffhq:256").data.image_size == 256  # the variant is applied
    config = _trainer_config("--config", "quickstart", "--config.train.batch_size=7")
    assert config.train.batch_size == 7 and config.optim.ema_decay == 0.99
    capfd.readouterr()  # a tool's default may be a built-in name
    assert cli.run("t", _define_builtin_default, _body, ["tool", "--count=2"]) == 0
    assert capfd.readouterr().out == "batch 32 count 2\n"
    monkeypatch.chdir(repo)  # in the repository, configs/NAME.py is the same file
    assert (_trainer_config("--config=configs/quickstart.py").to_dict()
            == load_config_file("quickstart").to_dict())


def test_an_unknown_builtin_name_is_one_line_listing_the_names(tmp_path, monkeypatch, capfd):
    from sagd_jax.config import builtin_configs, load_config_file

    monkeypatch.chdir(tmp_path)
    names = ", ".join(builtin_configs())
    with pytest.raises(ValueError) as err:
        load_config_file("quickstrat:x")
    assert str(err.value) == ("--config=quickstrat:x: no such file or built-in config "
                              f"'quickstrat' (closest: quickstart); built-in: {names}")
    for args, message in (
            (["--config=nosuch"], f"--config=nosuch: no such file or built-in config 'nosuch'; "
                                  f"built-in: {names}"),
            (["--config", "nosuch"], f"--config=nosuch: no such file or built-in config "
                                     f"'nosuch'; built-in: {names}"),
            # outside the repository, the docs' configs/NAME.py points at the built-in config
            (["--config=configs/cifar10_ddpmpp.py:cpu"], "--config=configs/cifar10_ddpmpp.py:cpu: "
             "no such file configs/cifar10_ddpmpp.py (the built-in config: "
             "--config=cifar10_ddpmpp:cpu)")):
        capfd.readouterr()
        assert cli.run("t", _define_builtin_default, _body, ["tool", *args]) == 2
        out = capfd.readouterr()
        assert out.out == "" and out.err.splitlines() == [f"error: {message}"], args


def test_a_local_file_of_that_name_wins_and_a_folder_does_not(tmp_path, monkeypatch):
    from sagd_jax.config import load_config_file

    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart").write_text(QUICKSTART_LOCAL)
    assert load_config_file("quickstart").train.batch_size == 5
    assert _trainer_config("--config=quickstart").train.batch_size == 5
    (tmp_path / "quickstart").unlink()
    (tmp_path / "quickstart").mkdir()  # a workdir named like the config, say
    assert load_config_file("quickstart").train.batch_size == 32
    assert _trainer_config("--config=quickstart").train.batch_size == 32


# --- console.Progress: the first update (compilation, warm-up) is not in the rate ------------
class _Clock:
    """A fake ``time.perf_counter``: ``advance(seconds)``."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class _Terminal:
    """A stream that says it is a terminal and keeps what was written."""

    def __init__(self) -> None:
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


def test_progress_rate_and_eta_leave_out_the_first_item():
    """The first chunk takes 10 s (compilation), the others 1 s: the rate is 1 chunk/s, the ETA
    the chunks left at that rate; the first line gives the first chunk's time and no ETA; the
    last the total time."""
    import io

    from sagd_jax.console import Progress

    clock, stream = _Clock(), io.StringIO()
    progress = Progress("sampling", total=5, unit="chunk", stream=stream, clock=clock)
    for seconds in (10, 1, 1, 1, 1):
        clock.advance(seconds)
        progress.update(1)
    assert stream.getvalue().splitlines() == [
        "sampling: 1/5 chunks, first chunk 10s (with warm-up), ETA ?",
        "sampling: 2/5 chunks, 1 chunk/s, ETA 3s",
        "sampling: 3/5 chunks, 1 chunk/s, ETA 2s",
        "sampling: 4/5 chunks, 1 chunk/s, ETA 1s",
        "sampling: 5/5 chunks, 1 chunk/s, done in 14s"]
    # Resumed at 2 of 10, 100 images a batch (2 s each after a first of 30 s), every 2nd line.
    clock, stream = _Clock(), io.StringIO()
    progress = Progress("likelihood", total=700, unit="image", done=200, every=200,
                        stream=stream, clock=clock)
    for seconds in (30, 2, 2, 2, 2):
        clock.advance(seconds)
        progress.update(100, note="x")
    assert stream.getvalue().splitlines() == [
        "likelihood: 300/700 images, first 100 images 30s (with warm-up), ETA ?  x",
        "likelihood: 400/700 images, 50 image/s, ETA 6s  x",
        "likelihood: 600/700 images, 50 image/s, ETA 2s  x",
        "likelihood: 700/700 images, 50 image/s, done in 38s  x"]


def test_progress_on_a_terminal_rewrites_one_line_and_close_ends_it():
    from sagd_jax.console import Progress

    clock, terminal = _Clock(), _Terminal()
    progress = Progress("demo", total=4, unit="run", stream=terminal, clock=clock)
    for seconds in (8, 2):
        clock.advance(seconds)
        progress.update(1)
    assert terminal.text.count("\r") == 2 and "\n" not in terminal.text
    assert terminal.text.split("\r")[-1].rstrip() == "demo: 2/4 runs, 0.5 run/s, ETA 4s"
    clock.advance(5)
    progress.close("stopped early")
    last = terminal.text.split("\r")[-1]
    assert last.endswith("\n") and last.rstrip() == "demo: 2/4 runs in 15s  stopped early"
    progress.done = 4
    progress.close()  # finished: its last line said it all
    assert terminal.text.split("\r")[-1] == last
