"""``sagd_jax.metrics.torch_weights``: state dicts written by ``torch.save`` (zip and legacy
formats) read back bit for bit without torch, compared to torch's own tensors and
``torch.load``; files that are not plain state dicts refused in one line, no code run."""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile

import numpy as np
import pytest

from sagd_jax.metrics.torch_weights import read_state_dict

torch = pytest.importorskip("torch")

FORMATS = {"zip": True, "legacy": False}


def _save(obj: object, path: str, fmt: str) -> str:
    torch.save(obj, path, _use_new_zipfile_serialization=FORMATS[fmt])
    return path


def _numpy(t: torch.Tensor) -> np.ndarray:
    """Torch's own contiguous copy of ``t`` as numpy (bfloat16 through its bits)."""
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.resolve_conj().numpy()


def _assert_same(got: dict[str, np.ndarray], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for key, tensor in want.items():
        ref = _numpy(tensor)
        arr = got[key].view(np.uint16) if tensor.dtype == torch.bfloat16 else got[key]
        assert arr.dtype == ref.dtype and arr.shape == ref.shape, key
        assert arr.flags.c_contiguous and arr.flags.writeable, key
        np.testing.assert_array_equal(arr, ref, err_msg=key)
        assert arr.tobytes() == ref.tobytes(), key  # bit for bit: NaN payloads, -0.0


def _mixed_state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(5, 6, generator=g)
    special = torch.tensor([np.nan, -0.0, np.inf, -np.inf, 1e-45], dtype=torch.float32)
    return collections.OrderedDict(
        f32=torch.randn(3, 4, generator=g),
        f64=torch.randn(7, generator=g, dtype=torch.float64),
        f16=torch.randn(2, 3, generator=g).half(),
        bf16=torch.randn(4, generator=g).bfloat16(),
        i64=torch.randint(-2**40, 2**40, (3, 2), generator=g),
        i32=torch.randint(-1000, 1000, (5,), generator=g, dtype=torch.int32),
        i8=torch.randint(-128, 127, (6,), generator=g, dtype=torch.int8),
        u8=torch.randint(0, 255, (2, 2), generator=g, dtype=torch.uint8),
        u16=torch.randint(0, 60000, (3,), generator=g).to(torch.uint16),
        c64=torch.randn(3, generator=g, dtype=torch.complex64),
        mask=torch.rand(4, 3, generator=g) > 0.5,
        scalar=torch.tensor(7),
        empty=torch.zeros(0, 3),
        special=special,
        base=base,
        transposed=base.t(),  # shares base's storage
        strided=base[1:4, ::2],  # a slice with offset and stride
        other_transposed=torch.randn(3, 2, generator=g).t(),
        conj=torch.randn(2, generator=g, dtype=torch.complex64).conj(),  # the lazy conj bit
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_bit_for_bit(tmp_path, fmt):
    sd = _mixed_state_dict()
    path = _save(sd, str(tmp_path / "sd.pth"), fmt)
    assert zipfile.is_zipfile(path) == (fmt == "zip")
    _assert_same(read_state_dict(path), sd)


@pytest.mark.parametrize("fmt", FORMATS)
def test_module_state_dict(tmp_path, fmt):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    model(torch.randn(2, 3, 8, 8))  # training mode: moves running stats, num_batches_tracked
    sd = model.state_dict()
    got = read_state_dict(_save(sd, str(tmp_path / "m.pth"), fmt))
    _assert_same(got, sd)
    assert got["1.num_batches_tracked"].shape == () and got["1.num_batches_tracked"] == 1
    # Parameters themselves (keep_vars=True) and a checkpoint wrapping the state dict.
    params = dict(model.state_dict(keep_vars=True))
    _assert_same(read_state_dict(_save(params, str(tmp_path / "p.pth"), fmt)), sd)
    wrapped = {"epoch": 3, "state_dict": sd}
    _assert_same(read_state_dict(_save(wrapped, str(tmp_path / "w.pth"), fmt)), sd)


def test_big_endian_zip_matches_torch_load(tmp_path):
    """A zip whose ``byteorder`` record says big-endian: storages are swapped on reading, as
    ``torch.load`` does."""
    g = torch.Generator().manual_seed(2)
    sd = {"a": torch.randn(3, 2, generator=g), "b": torch.randint(-9, 9, (4,), generator=g),
          "c": torch.randn(2, generator=g, dtype=torch.float64)}
    src = _save(sd, str(tmp_path / "le.pth"), "zip")
    dst = str(tmp_path / "be.pth")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in info.filename and not info.filename.endswith("serialization_id"):
                dtype = _numpy(list(sd.values())[int(info.filename.rsplit("/", 1)[1])]).dtype
                data = np.frombuffer(data, dtype).byteswap().tobytes()
            zout.writestr(info, data)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst) as zout:
        assert zin.read("le/data/0") != zout.read("le/data/0")
    got = read_state_dict(dst)
    _assert_same(got, torch.load(dst, weights_only=True))
    _assert_same(got, sd)


class _Exploit:
    """Pickles to a call of ``os.system``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _legacy_stream(obj_pickle: bytes) -> bytes:
    head = [0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}]
    return b"".join(pickle.dumps(x, protocol=2) for x in head) + obj_pickle + pickle.dumps([])


def _assert_refused(path: str, *words: str) -> str:
    with pytest.raises(ValueError) as info:
        read_state_dict(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    for word in words:
        assert word in message, message
    return message


@pytest.mark.parametrize("fmt", FORMATS)
def test_refuses_code_in_the_pickle(tmp_path, fmt):
    marker = str(tmp_path / "pwned")
    payload = pickle.dumps({"w": _Exploit(marker)}, protocol=2)
    path = str(tmp_path / "evil.pth")
    if fmt == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("evil/data.pkl", payload)
            z.writestr("evil/version", "3\n")
    else:
        with open(path, "wb") as f:
            f.write(_legacy_stream(payload))
    message = _assert_refused(path, "not a plain state dict", "system")
    assert not os.path.exists(marker), message


@pytest.mark.parametrize("fmt", FORMATS)
def test_refuses_what_is_not_a_state_dict(tmp_path, fmt):
    module = torch.nn.Linear(2, 3)
    _assert_refused(_save(module, str(tmp_path / "module.pth"), fmt),
                    "not a plain state dict", "torch.nn")
    _assert_refused(_save([torch.ones(2)], str(tmp_path / "list.pth"), fmt),
                    "not a state dict", "list")
    _assert_refused(_save({"w": torch.ones(2), "name": "x"}, str(tmp_path / "str.pth"), fmt),
                    "'name'", "str")


def test_refuses_a_tensor_beyond_its_storage(tmp_path):
    """A crafted tensor that would read past its storage: refused, not read out of bounds."""

    class Storage:
        pass

    class Tensor:
        def __reduce__(self):
            args = (Storage(), 2, (10,), (1,), False, collections.OrderedDict())
            return torch._utils._rebuild_tensor_v2, args

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", torch.FloatStorage, "0", "cpu", 4)
            return None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({"w": Tensor()})
    path = str(tmp_path / "oob.pth")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("oob/data.pkl", buf.getvalue())
        z.writestr("oob/data/0", np.arange(4, dtype=np.float32).tobytes())
    _assert_refused(path, "'w'", "exceeds its storage")


@pytest.mark.parametrize("fmt", FORMATS)
def test_refuses_truncated_and_foreign_files(tmp_path, fmt):
    src = _save(_mixed_state_dict(), str(tmp_path / "sd.pth"), fmt)
    data = open(src, "rb").read()
    for cut in (len(data) - 1, len(data) // 2, 40):
        path = str(tmp_path / f"cut{cut}.pth")
        with open(path, "wb") as f:
            f.write(data[:cut])
        _assert_refused(path)
    np.save(str(tmp_path / "array.npy"), np.ones(3))
    _assert_refused(str(tmp_path / "array.npy"), "not a PyTorch file")
    (tmp_path / "text.pth").write_text("hello\n")
    _assert_refused(str(tmp_path / "text.pth"), "not a PyTorch file")
    _assert_refused(str(tmp_path / "missing.pth"), "no such file")
