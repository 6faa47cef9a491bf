"""The one family of value checks: each returns the value or raises a one-line ``ValueError``
that starts with the key, e.g. ``train.batch_size=0: must be an integer >= 1``.

``key`` is the full dotted name the user would type (``model.ch``, ``noise.gamma``); every
config section, builder and CLI flag checks its values with these.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections


def fail(key: str, value: Any, requirement: str) -> ValueError:
    """The error ``key=value: requirement`` (raise it)."""
    return ValueError(f"{key}={value!r}: {requirement}")


def is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def lookup(config: Any, key: str, section: str = "") -> Any:
    """``config[key]`` for a dotted ``key`` (``"grf.rho0"``) in nested ConfigDicts or dicts; a
    missing key is the error ``<section>.<key>: missing from the config``.

    Builders read their section through this: ``sagd_jax.config.normalize`` gives every key its
    one default, so a missing key is a bug, never a reason to fall back on another default.
    """
    node = config
    for part in key.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError, IndexError):
            name = f"{section}.{key}" if section else key
            raise ValueError(f"{name}: missing from the config") from None
    return node


def entry(config: Any, key: str, section: str = "") -> tuple[str, Any]:
    """``(full key, value)`` of ``lookup``, to unpack into a check:
    ``integer(*entry(model, "ch", "model"), 4)`` reads ``model.ch`` and names it on error."""
    return (f"{section}.{key}" if section else key), lookup(config, key, section)


def integer(key: str, value: Any, minimum: int | None = None,
            maximum: int | None = None) -> int:
    """An integer (not a bool) in ``[minimum, maximum]``."""
    ok = is_int(value) and (minimum is None or value >= minimum)
    ok = ok and (maximum is None or value <= maximum)
    if not ok:
        bounds = [f">= {minimum}"] if minimum is not None else []
        bounds += [f"<= {maximum}"] if maximum is not None else []
        raise fail(key, value, "must be an integer" + (" " + " and ".join(bounds)
                                                        if bounds else ""))
    return int(value)


def number(key: str, value: Any, lo: float = -math.inf, hi: float = math.inf, *,
           open_lo: bool = False, open_hi: bool = False) -> float:
    """A finite real number (int or float, not a bool) in the interval ``lo..hi``."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    ok = ok and (value > lo if open_lo else value >= lo)
    ok = ok and (value < hi if open_hi else value <= hi)
    if not ok:
        if (lo, hi) == (-math.inf, math.inf):
            raise fail(key, value, "must be a finite number")
        left = "(" if open_lo or lo == -math.inf else "["
        right = ")" if open_hi or hi == math.inf else "]"
        interval = f"{left}{lo:g}, {hi:g}{right}"
        raise fail(key, value, f"must be a finite number in {interval}")
    return float(value)


def one_of(key: str, value: Any, choices: Sequence[Any]) -> Any:
    """One of ``choices``."""
    if value not in choices:
        raise fail(key, value, f"must be one of {', '.join(map(str, choices))}")
    return value


def boolean(key: str, value: Any) -> bool:
    """``True`` or ``False`` (not 0 / 1)."""
    if not isinstance(value, bool):
        raise fail(key, value, "must be True or False")
    return value


def positive_ints(key: str, value: Any, *, allow_empty: bool = False) -> tuple[int, ...]:
    """A sequence (not a string) of positive integers, non-empty unless ``allow_empty``."""
    ok = isinstance(value, Sequence) and not isinstance(value, str)
    ok = ok and all(is_int(v) and v > 0 for v in value) and (allow_empty or len(value) > 0)
    if not ok:
        kind = "a sequence" if allow_empty else "a non-empty sequence"
        raise fail(key, value, f"must be {kind} of positive integers")
    return tuple(int(v) for v in value)


def text(key: str, value: Any, empty: bool = False) -> str:
    """A string, non-empty unless ``empty``."""
    if not isinstance(value, str) or not (value or empty):
        raise fail(key, value, "must be a string" if empty else "must be a non-empty string")
    return value


def mapping(key: str, value: Any) -> dict[str, Any]:
    """A mapping (dict or ConfigDict) with string keys, as a plain ``dict``."""
    ok = isinstance(value, Mapping | ml_collections.ConfigDict)  # FrozenConfigDict included
    if not ok or not all(isinstance(k, str) for k in value.keys()):
        raise fail(key, value, "must be a mapping of names to values")
    return {k: value[k] for k in value.keys()}
