"""Files a run writes get the permissions the umask gives (as ``open()``), not the 0600 of
``tempfile.mkstemp``: colleagues and TensorBoard on shared storage can read them."""

from __future__ import annotations

import contextlib
import os
import stat

import numpy as np
import pytest

from sagd_jax import files


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755),
                                                        (0o077, 0o600, 0o700),
                                                        (0o002, 0o664, 0o775)],
                         ids=["umask022", "umask077", "umask002"])
def test_written_files_get_the_umasks_permissions(tmp_path, mask, file_mode, dir_mode):
    out = tmp_path / "out"
    with _umask(mask):
        with files.atomic_open(out / "a.txt") as f:  # creates the folder too
            f.write("a")
        with files.atomic_open(out / "b.bin", "wb", exclusive=True) as f:
            f.write(b"b")
        files.write_json(out / "c.json", {"c": 1})
        files.write_json(out / "d.json", {"d": 1}, exclusive=True)
        files.write_npz(out / "e.npz", x=np.zeros(3))
        files.write_npz(out / "f.npz", exclusive=True, x=np.zeros(3))
        files.write_bytes(out / "g.bin", b"g")
        files.write_bytes(out / "h.bin", b"h", exclusive=True)
        files.append_jsonl(out / "i.jsonl", {"i": 1})
        files.makedirs(out / "sub" / "deeper")
        os.chmod(out / "c.json", 0o600)  # a replaced file takes the new file's mode
        files.write_json(out / "c.json", {"c": 2})
    names = sorted(os.listdir(out))
    assert names == ["a.txt", "b.bin", "c.json", "d.json", "e.npz", "f.npz", "g.bin", "h.bin",
                     "i.jsonl", "sub"]  # no temporary file left
    modes = {name: oct(_mode(out / name)) for name in names if name != "sub"}
    assert modes == dict.fromkeys(modes, oct(file_mode))
    for folder in (out, out / "sub", out / "sub" / "deeper"):
        assert _mode(folder) == dir_mode, folder


@pytest.mark.slow
def test_a_training_run_and_its_samples_are_readable_by_others(tmp_path, run_cli,
                                                               tiny_cli_overrides):
    """Under umask 022, everything a tiny run (checkpoints, logs, TensorBoard, sample grids),
    a sample set (with its PNG files) and its evaluation write is readable by others, every
    folder listable."""
    workdir, samples = tmp_path / "run", tmp_path / "samples"
    with _umask(0o022):
        result = run_cli("sagd_jax.main", "--config=configs/quickstart.py",
                         f"--workdir={workdir}", "--config.data.name=grf",
                         "--config.data.image_size=16", *tiny_cli_overrides,
                         "--config.train.num_steps=2", "--config.train.checkpoint_every=2",
                         "--config.train.sample_every=2")
        assert result.returncode == 0, result.stderr[-3000:]
        result = run_cli("sagd_jax.sample", f"--workdir={workdir}", "--num_samples=4",
                         "--sampler=ddim", "--steps=2", "--chunk_size=2", f"--out={samples}",
                         f"--png_dir={samples / 'png'}")
        assert result.returncode == 0, result.stderr[-3000:]
        result = run_cli("sagd_jax.evaluate", f"--samples={samples / 'samples.npz'}",
                         "--max_reference=16", "--num_subsets=2", "--subset_size=4")
        assert result.returncode == 0, result.stderr[-3000:]
    seen = {"files": 0, "json": 0, "npz": 0}
    for top in (workdir, samples):
        for root, _, names in os.walk(top):
            mode = _mode(root)
            assert mode & stat.S_IROTH and mode & stat.S_IXOTH, f"{root}: {oct(mode)}"
            for name in names:
                mode = _mode(os.path.join(root, name))
                assert mode & stat.S_IROTH, f"{os.path.join(root, name)}: {oct(mode)}"
                seen["files"] += 1
                seen["json"] += name.endswith(".json")
                seen["npz"] += name.endswith(".npz") and top == samples
    # The walk saw what this project writes itself (config.json, the samples), not only
    # Orbax's and TensorBoard's files.
    assert os.path.isfile(workdir / "config.json") and seen["npz"] >= 1, seen
    assert os.path.isfile(samples / "evaluation.json") and len(os.listdir(samples / "png")) == 4
    assert seen["files"] >= 10 and seen["json"] >= 2, seen
