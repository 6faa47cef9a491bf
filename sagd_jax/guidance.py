"""Guided class-conditional sampling (docs/math.md section 12).

A class-conditional denoiser ``cond_fn(x, t, labels) -> eps_hat`` predicts white noise
(shapes of ``x``; ``labels`` int32 ``(B,)``), the label ``null_label`` (= ``num_classes``)
meaning "no label": the unconditional prediction. With EDM2's convention the guided
prediction is

    eps = eps_u + W (eps_c - eps_u)

``W = 1``: the conditional model; ``W = 0``: the unconditional one; ``W > 1`` guides.

* Classifier-free guidance (``guide_fn=None``): ``eps_c`` and ``eps_u`` come from ONE call of
  ``cond_fn`` on the doubled batch ``[x, x]``, ``[t, t]``, ``[labels, null]``.
* Autoguidance (Karras et al. 2024): ``guide_fn(x, t, labels)`` is a weaker model of the same
  task; ``eps = eps_guide + W (eps_main - eps_guide)`` (two calls). An unconditional model
  (``labels=None``, both functions called with ``labels=None``) can be autoguided too.
* ``W`` exactly 1: one plain call of ``cond_fn`` (no doubled batch, no guide call).
* Frequency-shaped weight: one ``W_k`` per rfft bin, applied in white space,
  ``eps = eps_u + irfft(W_k rfft(eps_c - eps_u))``; ``band_weight`` builds it from
  ``--guidance_band`` (W inside the band, 1 outside). A per-bin weight that is the same in
  every bin is stored as that number, so it is plain guidance bit for bit.
* Interval (Kynkaanniemi et al. 2024): guidance only where the noise level
  ``r = sigma_t / alpha_t`` (the scalar schedule's, also under a per-frequency schedule) lies
  in ``[lo, hi]``; elsewhere the plain conditional prediction (weight 1). A step whose batch
  lies wholly outside the interval makes the single conditional call only (``lax.cond``).

``guided_eps_fn`` returns a ``jax.tree_util.Partial`` usable as any sampler's ``eps_fn``:
the models (``Partial``s: their parameters), the labels, the weight and the interval's bounds
are traced leaves, so a new checkpoint, new labels, another weight of the same kind or another
interval reuse the compiled sampler.
Static (part of the compiled program): whether ``W`` is exactly 1, scalar or per bin,
whether there is an interval, and whether there is a guide.

Labels for a batch: ``balanced_labels``, ``random_labels``, ``parse_labels`` (``--labels``);
flag values: ``parse_interval`` (``--guidance_interval``), ``band_weight``
(``--guidance_band``); ``make_guidance`` turns the three flags into a ``Guidance``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from sagd_jax import validate
from sagd_jax.process import DiffusionProcess, expand_to
from sagd_jax.samplers import as_pytree_fn
from sagd_jax.spectral import apply_multiplier, first_odd_bin, frequency_mask

CondFn = Callable[[jax.Array, jax.Array, Any], jax.Array]


# --- the guidance weight ---------------------------------------------------------------------
@struct.dataclass
class Guidance:
    """The guidance weight and where it acts.

    weight: a Python float (the same ``W`` in every frequency bin), or a per-bin weight,
      float32 ``(H, W // 2 + 1)`` on the rfft half-plane (even: a bin and its mirror image
      equal), applied in white space. A pytree leaf (traced under ``jit``: another weight of
      the same kind does not recompile); build it with ``create``, which stores a per-bin
      weight that is the same everywhere as that float, so it is plain guidance bit for bit.
    interval: ``None`` (every noise level) or ``(lo, hi)``, ``0 <= lo < hi <= inf``: guide
      only where ``sigma_t / alpha_t`` lies in ``[lo, hi]`` (compared in float32), weight 1
      elsewhere. Its bounds are leaves too (another interval does not recompile); ``None``
      against an interval is a different program.
    """

    weight: Any
    interval: tuple[float, float] | None = None

    @classmethod
    def create(cls, weight: Any, interval: Any = None) -> Guidance:
        """Checked on the host: ``weight`` a finite number or a 2-D array of finite numbers
        (uniform -> its float), ``interval`` ``None``, ``(lo, hi)`` or a ``"LO:HI"`` string.
        One-line ``ValueError``s naming ``--guidance`` / ``--guidance_interval``."""
        if isinstance(interval, str):
            interval = parse_interval(interval)
        elif interval is not None:
            interval = check_interval(interval)
        if isinstance(weight, str | bool | np.bool_):
            raise validate.fail("--guidance", weight, "must be a finite number")
        if np.ndim(weight) == 0:
            try:
                value = float(weight)
            except (TypeError, ValueError):
                raise validate.fail("--guidance", weight, "must be a finite number") from None
            return cls(weight=validate.number("--guidance", value), interval=interval)
        values = np.asarray(weight)
        if values.ndim != 2 or not np.issubdtype(values.dtype, np.number):
            raise ValueError(f"--guidance: a per-bin weight must be a numeric (H, W // 2 + 1) "
                             f"array, got shape {values.shape} of {values.dtype}")
        values = values.astype(np.float32)
        if not np.all(np.isfinite(values)):
            raise ValueError("--guidance: the per-bin weight has a non-finite value")
        first = values.flat[0]
        if np.all(values == first):  # uniform: plain guidance, bit for bit
            return cls(weight=float(first), interval=interval)
        return cls(weight=jnp.asarray(values), interval=interval)

    @property
    def per_bin(self) -> bool:
        """Whether the weight differs between frequency bins (an ``(H, W // 2 + 1)`` array)."""
        return np.ndim(self.weight) == 2

    @property
    def unguided(self) -> bool:
        """Whether the weight is a number (not an array: it may be traced) exactly 1: the plain
        conditional model, one call."""
        weight = self.weight
        return (isinstance(weight, numbers.Real) and not isinstance(weight, bool)
                and float(weight) == 1.0)


def make_guidance(weight: float, height: int, width: int, *, band: str | None = None,
                  interval: str | tuple[float, float] | None = None) -> Guidance:
    """The ``Guidance`` of the flags ``--guidance=W``, ``--guidance_band=SPEC`` (None or "":
    every bin) and ``--guidance_interval=LO:HI`` (None or "": every noise level)."""
    weight = validate.number("--guidance", weight)
    if band is not None and str(band).strip():
        return Guidance.create(band_weight(band, weight, height, width), interval)
    return Guidance.create(weight, interval)


def band_weight(spec: Any, weight: float, height: int, width: int) -> np.ndarray:
    """The per-bin weight of ``--guidance_band=SPEC``, float32 ``(H, W // 2 + 1)``:
    ``1 + (weight - 1) m_k``, so ``weight`` where the mask ``m_k = 1`` and 1 (unguided) where
    ``m_k = 0``.

    ``SPEC``: the ``noise.bands`` syntax (``kind:lo:hi[:edge]`` joined by ``+``; ``m`` the
    product of the masks, the code the noise bands use, in [0, 1]; "" = every bin), or
    ``powerlaw:GAMMA[:RHO0]``: ``m = ((rho + rho0) / rho0)^-gamma`` (1 at ``rho = 0``, falling
    with frequency; ``GAMMA >= 0``, ``RHO0 > 0``, default 0.1; use a highpass band for the
    opposite); parsed by ``spectral.frequency_mask``. One-line ``ValueError``s naming
    ``--guidance_band``.
    """
    weight = validate.number("--guidance", weight)
    mask = frequency_mask(spec, height, width, "--guidance_band")
    return (1.0 + (weight - 1.0) * mask).astype(np.float32)


def check_interval(interval: Sequence[float]) -> tuple[float, float]:
    """``(lo, hi)`` with ``0 <= lo < hi`` (``hi`` may be ``inf``), one-line errors naming
    ``--guidance_interval``."""
    flag = f"--guidance_interval={interval!r}"
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"{flag}: expected LO:HI (two numbers)") from None
    if not (math.isfinite(lo) and lo >= 0):
        raise ValueError(f"{flag}: LO={lo:g} must be a finite number >= 0")
    if math.isnan(hi) or hi <= lo:
        raise ValueError(f"{flag}: HI={hi:g} must be > LO={lo:g} (inf allowed)")
    return lo, hi


def parse_interval(spec: str | None) -> tuple[float, float] | None:
    """``--guidance_interval=LO:HI`` -> ``(lo, hi)`` in noise levels ``sigma_t / alpha_t``
    (``0 <= LO < HI``, ``HI`` may be ``inf``); None or "" -> None (every noise level)."""
    if spec is None or not str(spec).strip():
        return None
    fields = str(spec).split(":")
    if len(fields) != 2:
        raise ValueError(f"--guidance_interval={spec!r}: expected LO:HI (e.g. 0.28:2.9)")
    try:
        values = tuple(float(f) for f in fields)
    except ValueError:
        raise ValueError(f"--guidance_interval={spec!r}: LO and HI must be numbers "
                         "(HI may be inf)") from None
    try:
        return check_interval(values)
    except ValueError as err:
        raise ValueError(f"--guidance_interval={spec!r}:{str(err).split(':', 1)[1]}") from None


# --- labels ----------------------------------------------------------------------------------
def check_labels(labels: Any, num_classes: int, *, allow_null: bool = False,
                 flag: str = "labels") -> np.ndarray:
    """``labels`` as int32 ``(B,)``, each in ``0 .. num_classes - 1`` (``.. num_classes``, the
    null label, with ``allow_null``); one-line ``ValueError``s naming ``flag``."""
    num_classes = validate.integer("num_classes", num_classes, 1)
    values = np.asarray(labels)
    if values.ndim != 1 or not (np.issubdtype(values.dtype, np.integer) or values.size == 0):
        raise ValueError(f"{flag}: expected integer class labels of shape (B,), got shape "
                         f"{values.shape} of {values.dtype}")
    top = num_classes if allow_null else num_classes - 1
    bad = values[(values < 0) | (values > top)]
    if bad.size:
        raise ValueError(f"{flag}: label {int(bad[0])} is out of range 0 .. {top} "
                         f"(num_classes={num_classes})")
    return values.astype(np.int32)


def balanced_labels(count: int, num_classes: int, start: int = 0) -> np.ndarray:
    """int32 ``(count,)``: label ``i % num_classes`` for samples ``i = start .. start + count
    - 1``."""
    count = validate.integer("count", count, 0)
    num_classes = validate.integer("num_classes", num_classes, 1)
    return ((start + np.arange(count)) % num_classes).astype(np.int32)


def random_labels(key_or_seed: Any, count: int, num_classes: int) -> np.ndarray:
    """int32 ``(count,)`` uniform on ``0 .. num_classes - 1``, from a JAX key or an int seed."""
    count = validate.integer("count", count, 0)
    num_classes = validate.integer("num_classes", num_classes, 1)
    key = jax.random.key(key_or_seed) if validate.is_int(key_or_seed) else key_or_seed
    return np.asarray(jax.random.randint(key, (count,), 0, num_classes), np.int32)


def parse_labels(spec: str, count: int, num_classes: int, key_or_seed: Any = 0,
                 start: int = 0) -> np.ndarray:
    """``--labels=balanced|random|N,M,...`` -> int32 ``(count,)``, the labels of samples
    ``i = start .. start + count - 1``.

    ``balanced``: sample ``i`` has class ``i % num_classes``; ``random``: uniform, drawn from
    ``key_or_seed``; a list: sample ``i`` has entry ``i % len(list)`` (cycled; ``--labels=3``:
    every sample class 3). One-line ``ValueError``s naming ``--labels``.
    """
    count = validate.integer("count", count, 0)
    num_classes = validate.integer("num_classes", num_classes, 1)
    text = str(spec).strip() if spec is not None else ""
    if text == "balanced":
        return balanced_labels(count, num_classes, start)
    if text == "random":
        return random_labels(key_or_seed, count, num_classes)
    try:
        values = np.array([int(v) for v in text.split(",")], np.int64)
    except ValueError:
        raise ValueError(f"--labels={spec!r}: expected balanced, random or a list of class "
                         "numbers N,M,...") from None
    values = check_labels(values, num_classes, flag=f"--labels={spec!r}")
    return values[(start + np.arange(count)) % len(values)]


# --- the guided prediction ---------------------------------------------------------------------
def guided_eps_fn(cond_fn: CondFn, labels: Any, guidance: Guidance | float,
                  process: DiffusionProcess, null_label: int,
                  guide_fn: CondFn | None = None) -> jax.tree_util.Partial:
    """The guided prediction as a sampler's ``eps_fn(x, t)`` (module docstring).

    cond_fn: ``cond_fn(x, t, labels)`` (a ``Partial`` keeps its parameters traced);
    labels: int ``(B,)`` in ``0 .. null_label`` (the sampling batch's), or None for an
      unconditional model (then only weight 1 or autoguidance; both models get ``None``);
    guidance: a ``Guidance`` or a weight (a number);
    process: gives the noise level ``sigma_t / alpha_t`` of ``guidance.interval``;
    null_label: the model's "no label" (its ``num_classes``; 0 for an unconditional one);
    guide_fn: autoguidance's weaker model ``guide_fn(x, t, labels)``, None for
      classifier-free guidance.
    """
    # An unconditional model (no labels) has no null label: its classes are 0.
    null_label = validate.integer("null_label", null_label, 0 if labels is None else 1)
    if not isinstance(guidance, Guidance):
        guidance = Guidance.create(guidance)
    if guidance.per_bin:
        _check_bin_weight(guidance.weight, process.cov.height, process.cov.width)
    if labels is not None:
        if not isinstance(labels, jax.core.Tracer):
            labels = check_labels(labels, null_label, allow_null=True)
        labels = jnp.asarray(labels, jnp.int32)
    cond_fn = as_pytree_fn(cond_fn)
    if guidance.unguided:
        return jax.tree_util.Partial(_conditional_eps, cond_fn, labels)
    if guide_fn is not None:
        return jax.tree_util.Partial(_autoguided_eps, cond_fn, as_pytree_fn(guide_fn), labels,
                                     guidance, process)
    if labels is None:
        raise ValueError(f"--guidance={guidance.weight if not guidance.per_bin else 'per bin'}"
                         ": classifier-free guidance needs class labels (an unconditional "
                         "model can only be autoguided: give a guide model)")
    return jax.tree_util.Partial(_cfg_eps, cond_fn, labels,
                                 jnp.full_like(labels, null_label), guidance, process)


def _check_bin_weight(weight: Any, height: int, width: int) -> None:
    """A per-bin weight of the process's half-plane, even (when concrete)."""
    expected = (height, width // 2 + 1)
    if tuple(np.shape(weight)) != expected:
        raise ValueError(f"--guidance_band: the per-bin weight has shape {np.shape(weight)}, "
                         f"the process's half-plane is {expected}")
    if isinstance(weight, jax.core.Tracer):
        return
    odd = first_odd_bin(np.asarray(weight), width)
    if odd is not None:
        row, column, mirror = odd
        raise ValueError(f"--guidance_band: the per-bin weight is not even: bin "
                         f"({row}, {column}) differs from its mirror ({mirror}, {column})")


def _check_batch(labels: jax.Array | None, x: jax.Array) -> None:
    if labels is not None and labels.shape != (x.shape[0],):
        raise ValueError(f"labels: shape {labels.shape} does not match the batch of x "
                         f"{x.shape} (expected ({x.shape[0]},))")


def _times(t: jax.Array, x: jax.Array) -> jax.Array:
    return jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))


def _guide(base: jax.Array, target: jax.Array, weight: Any) -> jax.Array:
    """``base + W (target - base)``: ``W`` a scalar, or per rfft bin in white space."""
    diff = target - base
    if jnp.ndim(weight) == 0:
        return (base + weight * diff).astype(target.dtype)
    return (base + apply_multiplier(diff, weight)).astype(target.dtype)


def _in_interval(guidance: Guidance, process: DiffusionProcess, t: jax.Array,
                 guided: Callable[[], tuple[jax.Array, jax.Array]],
                 conditional: Callable[[], jax.Array]) -> jax.Array:
    """``guided()[0]`` where ``sigma_t / alpha_t`` lies in the interval, the conditional
    prediction elsewhere (``guided()[1]`` in a batch partly inside, else ``conditional()``
    alone: a step wholly outside makes one plain call)."""
    if guidance.interval is None:
        return guided()[0]
    lo, hi = guidance.interval
    alpha, sigma = process.coefficients(t)
    level = sigma / alpha
    inside = (level >= lo) & (level <= hi)

    def mixed() -> jax.Array:
        eps, eps_c = guided()
        return jnp.where(expand_to(inside, eps), eps, eps_c)

    return jax.lax.cond(jnp.any(inside), mixed, conditional)


def _conditional_eps(cond_fn: jax.tree_util.Partial, labels: jax.Array | None, x: jax.Array,
                     t: jax.Array) -> jax.Array:
    _check_batch(labels, x)
    return cond_fn(x, _times(t, x), labels)


def _cfg_eps(cond_fn: jax.tree_util.Partial, labels: jax.Array, nulls: jax.Array,
             guidance: Guidance, process: DiffusionProcess, x: jax.Array, t: jax.Array
             ) -> jax.Array:
    _check_batch(labels, x)
    t = _times(t, x)
    batch = x.shape[0]

    def guided() -> tuple[jax.Array, jax.Array]:
        both = cond_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                       jnp.concatenate([labels, nulls]))
        eps_c, eps_u = both[:batch], both[batch:]
        return _guide(eps_u, eps_c, guidance.weight), eps_c

    return _in_interval(guidance, process, t, guided, lambda: cond_fn(x, t, labels))


def _autoguided_eps(cond_fn: jax.tree_util.Partial, guide_fn: jax.tree_util.Partial,
                    labels: jax.Array | None, guidance: Guidance, process: DiffusionProcess,
                    x: jax.Array, t: jax.Array) -> jax.Array:
    _check_batch(labels, x)
    t = _times(t, x)

    def guided() -> tuple[jax.Array, jax.Array]:
        eps_main = cond_fn(x, t, labels)
        return _guide(guide_fn(x, t, labels), eps_main, guidance.weight), eps_main

    return _in_interval(guidance, process, t, guided, lambda: cond_fn(x, t, labels))
