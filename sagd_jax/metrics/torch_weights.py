"""Reading a PyTorch ``.pth`` state dict into numpy arrays without torch.

Both formats of ``torch.save`` are read: the zip archive (torch >= 1.6: ``<prefix>/data.pkl``
and one raw storage per ``<prefix>/data/<key>`` record) and the legacy stream
(``_use_new_zipfile_serialization=False``: magic number, protocol version, system info, the
object pickle, the sorted list of storage keys, then per key an int64 element count and the
raw little-endian bytes). The pickles go through an unpickler that knows only the few globals a
state dict needs (tensor and parameter rebuilders, storage types, dtypes, ``OrderedDict``) and
refuses any other, so no code from the file runs.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import pickle
import struct
import sys
import zipfile
from typing import IO, Any

import ml_dtypes
import numpy as np

from sagd_jax.errors import one_line

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# ``torch.<Name>Storage`` as pickled by ``TypedStorage._pickle_storage_type``.
_STORAGE_DTYPES: dict[str, Any] = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_, "ComplexFloatStorage": np.complex64,
    "ComplexDoubleStorage": np.complex128,
}
# ``torch.<dtype>`` globals: the dtype argument of ``_rebuild_tensor_v3`` (dtypes that torch
# saves over an untyped byte storage: unsigned ints, float8).
_TORCH_DTYPES: dict[str, Any] = {
    "float64": np.float64, "float32": np.float32, "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16, "int64": np.int64, "int32": np.int32, "int16": np.int16,
    "int8": np.int8, "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32,
    "uint64": np.uint64, "bool": np.bool_, "complex64": np.complex64,
    "complex128": np.complex128, "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e5m2": ml_dtypes.float8_e5m2,
}


class _Refused(Exception):
    """A one-line reason the file is not read (the caller prefixes the path)."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """What ``torch.FloatStorage`` etc. unpickle to: a dtype, not a callable."""

    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _Dtype:
    """What ``torch.uint16`` etc. unpickle to."""

    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _Storage:
    """``numel`` elements of ``dtype`` from element ``offset`` of the root storage ``key``."""

    key: str
    dtype: np.dtype
    offset: int
    numel: int


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """A tensor to build once the storages are read: element offset, shape and strides in
    elements of ``dtype``; ``conj``/``neg``: torch's lazy conjugate/negative bits."""

    storage: _Storage
    dtype: np.dtype
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    conj: bool = False
    neg: bool = False


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(
            type(v) is int and v >= 0 for v in value):
        raise _Refused(f"damaged tensor: {what} {value!r} is not a tuple of ints >= 0")
    return tuple(value)


def _tensor(storage: Any, dtype: np.dtype, offset: Any, size: Any, stride: Any,
            metadata: Any = None) -> _Tensor:
    if not isinstance(storage, _Storage):
        raise _Refused(f"damaged tensor: storage is a {type(storage).__name__}")
    shape, strides = _ints(size, "size"), _ints(stride, "stride")
    (offset,) = _ints((offset,), "storage offset")
    if len(shape) != len(strides):
        raise _Refused(f"damaged tensor: size {shape} and stride {strides} differ in length")
    flags = metadata or {}
    if not isinstance(flags, dict) or not set(flags) <= {"conj", "neg"}:
        raise _Refused(f"unsupported tensor metadata {metadata!r}")
    return _Tensor(storage, dtype, offset, shape, strides,
                   bool(flags.get("conj")), bool(flags.get("neg")))


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> _Tensor:
    return _tensor(storage, getattr(storage, "dtype", None), storage_offset, size, stride)


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any = False, backward_hooks: Any = None,
                       metadata: Any = None) -> _Tensor:
    return _tensor(storage, getattr(storage, "dtype", None), storage_offset, size, stride,
                   metadata)


def _rebuild_tensor_v3(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any, backward_hooks: Any, dtype: Any,
                       metadata: Any = None) -> _Tensor:
    if not isinstance(dtype, _Dtype):
        raise _Refused(f"damaged tensor: dtype is a {type(dtype).__name__}")
    return _tensor(storage, dtype.dtype, storage_offset, size, stride, metadata)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any,
                       state: Any = None) -> _Tensor:
    if not isinstance(data, _Tensor):
        raise _Refused(f"damaged parameter: data is a {type(data).__name__}")
    return data


_FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


def _text(value: Any, what: str) -> str:
    if isinstance(value, bytes):  # Python 2 pickles
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        raise _Refused(f"damaged file: {what} {value!r} is not a string")
    return value


class _Unpickler(pickle.Unpickler):
    """Unpickles only state-dict content; ``roots`` collects the storages referred to (key ->
    dtype and element count), ``legacy`` selects the persistent id layout."""

    def __init__(self, file: IO[bytes], roots: dict[str, tuple[np.dtype, int]],
                 legacy: bool) -> None:
        super().__init__(file)
        self.roots, self.legacy = roots, legacy

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _FUNCTIONS:
            return _FUNCTIONS[module, name]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(np.dtype(_STORAGE_DTYPES[name]))
        if module in ("torch", "torch.storage") and name == "UntypedStorage":
            return _StorageType(np.dtype(np.uint8))
        if module == "torch" and name in _TORCH_DTYPES:
            return _Dtype(np.dtype(_TORCH_DTYPES[name]))
        raise _Refused(f"not a plain state dict: it pickles {module}.{name} "
                       "(refused: no code from a pickle is run)")

    def persistent_load(self, pid: Any) -> _Storage:
        size = 6 if self.legacy else 5
        if not isinstance(pid, tuple) or len(pid) != size or _text(pid[0], "id") != "storage":
            raise _Refused(f"not a plain state dict: unexpected persistent id {pid!r:.80}")
        kind, key, numel = pid[1], _text(pid[2], "storage key"), pid[4]
        if not isinstance(kind, _StorageType) or type(numel) is not int or numel < 0:
            raise _Refused(f"damaged file: bad storage reference {pid!r:.80}")
        known = self.roots.setdefault(key, (kind.dtype, numel))
        if known != (kind.dtype, numel):
            raise _Refused(f"damaged file: storage {key} referenced as {kind.dtype}[{numel}] "
                           f"and {known[0]}[{known[1]}]")
        view = pid[5] if self.legacy else None
        if view is None:
            return _Storage(key, kind.dtype, 0, numel)
        if (not isinstance(view, tuple) or len(view) != 3
                or not all(type(v) is int and v >= 0 for v in view[1:])):
            raise _Refused(f"damaged file: bad storage view {view!r:.80}")
        if view[1] + view[2] > numel:
            raise _Refused(f"damaged file: storage view {view!r:.80} exceeds {numel} elements")
        return _Storage(key, kind.dtype, view[1], view[2])


def _unpickle(file: IO[bytes], roots: dict[str, tuple[np.dtype, int]], legacy: bool) -> Any:
    return _Unpickler(file, roots, legacy).load()


def _read_zip(f: IO[bytes]) -> tuple[Any, dict[str, bytes], bool]:
    """The object, the raw bytes of each root storage and whether they need a byte swap."""
    with zipfile.ZipFile(f) as zf:
        names = zf.namelist()
        pickles = [n for n in names if n == "data.pkl"
                   or (n.endswith("/data.pkl") and n.count("/") == 1)]
        if not pickles:
            raise _Refused("a zip archive without data.pkl: not a torch.save file")
        prefix = pickles[0][:-len("data.pkl")]
        roots: dict[str, tuple[np.dtype, int]] = {}
        obj = _unpickle(io.BytesIO(zf.read(pickles[0])), roots, legacy=False)
        order = "little"
        if prefix + "byteorder" in names:
            order = zf.read(prefix + "byteorder").decode("ascii", "replace")
            if order not in ("little", "big"):
                raise _Refused(f"unknown byte order {order!r}")
        data = {}
        for key, (dtype, numel) in roots.items():
            name = f"{prefix}data/{key}"
            if name not in names:
                raise _Refused(f"damaged file: no record {name}")
            raw = zf.read(name)
            if len(raw) < numel * dtype.itemsize:
                raise _Refused(f"damaged file: record {name} has {len(raw)} bytes, "
                               f"expected {numel * dtype.itemsize}")
            data[key] = raw[:numel * dtype.itemsize]
    return obj, data, order != sys.byteorder


def _read_legacy(f: IO[bytes]) -> tuple[Any, dict[str, bytes], bool]:
    """Like ``_read_zip`` for the legacy stream (storages are always little-endian)."""
    roots: dict[str, tuple[np.dtype, int]] = {}
    try:
        magic = _unpickle(f, roots, legacy=True)
    except _Refused:
        raise
    except Exception as err:
        raise _Refused(f"not a PyTorch file ({one_line(err, 80)})") from err
    if type(magic) is not int or magic != MAGIC_NUMBER:
        raise _Refused("not a PyTorch file (no torch.save magic number)")
    version = _unpickle(f, roots, legacy=True)
    if version != PROTOCOL_VERSION:
        raise _Refused(f"unsupported legacy protocol version {version!r:.40}")
    if not isinstance(_unpickle(f, roots, legacy=True), dict):
        raise _Refused("damaged file: no system info after the protocol version")
    obj = _unpickle(f, roots, legacy=True)
    keys = _unpickle(f, roots, legacy=True)
    if not isinstance(keys, list) or set(keys) != set(roots):
        raise _Refused("damaged file: the storage key list does not match the storages used")
    data = {}
    for key in keys:
        dtype, numel = roots[key]
        head = f.read(8)
        if len(head) < 8:
            raise _Refused(f"truncated file: storage {key} missing")
        (count,) = struct.unpack("<q", head)
        if count != numel:
            raise _Refused(f"damaged file: storage {key} has {count} elements, "
                           f"expected {numel}")
        raw = f.read(numel * dtype.itemsize)
        if len(raw) < numel * dtype.itemsize:
            raise _Refused(f"truncated file: storage {key} has {len(raw)} of "
                           f"{numel * dtype.itemsize} bytes")
        data[key] = raw
    return obj, data, sys.byteorder != "little"


def _array(t: _Tensor, data: dict[str, bytes], swap: bool, name: str) -> np.ndarray:
    """A contiguous copy of tensor ``t`` (bounds checked against its storage)."""
    s = t.storage
    begin = s.offset * s.dtype.itemsize
    buf = memoryview(data[s.key])[begin:begin + s.numel * s.dtype.itemsize]
    size = t.dtype.itemsize
    if 0 not in t.shape:
        last = t.offset + sum((n - 1) * st for n, st in zip(t.shape, t.strides, strict=True))
        if (last + 1) * size > len(buf):
            raise _Refused(f"damaged file: tensor {name!r} {t.shape} at offset {t.offset} "
                           f"with strides {t.strides} exceeds its storage of {len(buf)} bytes")
        view = np.ndarray(t.shape, t.dtype, buffer=buf, offset=t.offset * size,
                          strides=tuple(st * size for st in t.strides))
        out = np.array(view, order="C")
    else:
        out = np.zeros(t.shape, t.dtype)
    if swap:
        out = out.byteswap()
    if t.conj:
        out = np.conj(out)
    if t.neg:
        out = -out
    return out


def _state_dict(obj: Any, data: dict[str, bytes], swap: bool) -> dict[str, np.ndarray]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise _Refused(f"not a state dict: the file holds a {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise _Refused(f"not a state dict: key {key!r:.40} is not a string")
        if isinstance(value, _Tensor):
            out[key] = _array(value, data, swap, key)
        elif isinstance(value, (bool, int, float)):
            out[key] = np.asarray(value)
        else:
            raise _Refused(f"not a plain state dict: entry {key!r} is a {type(value).__name__}")
    return out


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """The tensors of the PyTorch state dict saved at ``path`` (by ``torch.save``, in either
    format; also a dict holding one under ``"state_dict"``), as contiguous numpy arrays of the
    saved dtype and shape (bfloat16/float8 as ``ml_dtypes``), in the saved order; Python
    scalars become 0-d arrays. ``ValueError`` (one line naming ``path``) for a missing, damaged
    or truncated file, or one that holds anything but tensors (an ``nn.Module``, a custom
    class): its pickle is never allowed to run code."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            if not head:
                raise _Refused("empty file")
            is_zip = head == b"PK\x03\x04"  # a legacy file starts with a pickle
            if is_zip and not zipfile.is_zipfile(f):
                raise _Refused("truncated or damaged zip archive")
            f.seek(0)
            obj, data, swap = _read_zip(f) if is_zip else _read_legacy(f)
        return _state_dict(obj, data, swap)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except _Refused as err:
        raise ValueError(f"{path}: {err}") from None
    except (EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: truncated or damaged file ({one_line(err, 100)})") from None
    except Exception as err:  # anything else a hostile or damaged file can provoke
        raise ValueError(f"{path}: not a readable state dict ({one_line(err, 100)})") from None
