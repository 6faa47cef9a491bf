"""The frequency-diagonal noise covariance ``Sigma = F^H diag(w) F`` (docs/math.md sec. 1).

Images are real arrays ``(..., H, W, C)``; the 2-D DFT acts on the two spatial axes and channels
are independent. Because ``w`` is real and even (``w(k) = w(-k)``), ``Sigma`` is real, symmetric,
PSD and circulant, and every operator is a real multiplier on the ``rfft2`` half-plane of shape
``(H, W // 2 + 1)``. Weights are built once on the host in float64; the operators are pure ``jnp``
functions (jit, vmap and grad friendly) that compute in float32 and return the input dtype.

Radial frequency: ``rho = sqrt(fy^2 + fx^2) / 0.5`` with ``fy = fftfreq(H)``, ``fx = fftfreq(W)``
in cycles/pixel, so the axis Nyquist is 1 and the corner is sqrt(2).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from sagd_jax import validate

RHO_MAX = math.sqrt(2.0)
BAND_KINDS = ("lowpass", "highpass", "bandpass", "bandstop")
# Mask values below this are snapped to exactly 0 so that the support {w > 0} is well defined
# (a raised-cosine edge evaluated in floating point can leave values like 1e-17).
MASK_FLOOR = 1e-9
POWERLAW_RHO0 = 0.1  # frequency_mask's powerlaw:GAMMA default rho0 (noise.rho0's default)


def radial_frequency(height: int, width: int, *, half: bool = True) -> np.ndarray:
    """Radial frequency ``rho`` of each DFT bin, float64.

    Shape ``(H, W // 2 + 1)`` on the rfft half-plane (``half=True``) or ``(H, W)`` on the full
    grid. Units: fraction of the axis Nyquist frequency (axis Nyquist = 1, corner = sqrt(2)).
    """
    fy = np.fft.fftfreq(height)[:, None]
    fx = (np.fft.rfftfreq(width) if half else np.fft.fftfreq(width))[None, :]
    return np.sqrt(fy**2 + fx**2) / 0.5


def half_plane_multiplicity(height: int, width: int) -> np.ndarray:
    """How many full-grid bins each rfft half-plane column stands for, shape ``(1, W//2+1)``.

    Column 0 and (for even W) the Nyquist column stand for themselves; every other column also
    stands for its mirror ``W - j``. ``sum(mult * ones((H, W//2+1))) == H * W``.
    """
    mult = np.full((1, width // 2 + 1), 2.0)
    mult[0, 0] = 1.0
    if width % 2 == 0:
        mult[0, -1] = 1.0
    return mult


def first_odd_bin(values: np.ndarray, width: int) -> tuple[int, int, int] | None:
    """The first bin ``(row, column, mirror row)`` where a half-plane array ``(H, W // 2 + 1)``
    is not even: columns 0 and ``W / 2`` (``W`` even) hold both halves of their frequencies,
    row ``i`` and row ``-i mod H``, which must be equal; None when it is even."""
    height = values.shape[0]
    rows = (-np.arange(height)) % height
    for column in (0, width // 2) if width % 2 == 0 else (0,):
        odd = np.flatnonzero(values[:, column] != values[rows, column])
        if odd.size:
            return int(odd[0]), column, int(rows[odd[0]])
    return None


def full_grid_mean(values: np.ndarray | jax.Array, width: int) -> Any:
    """Mean over all ``H * W`` DFT bins of an even function given on the half-plane."""
    height = values.shape[0]
    mult = half_plane_multiplicity(height, width)
    return (values * mult).sum() / (height * width)


def _cosine_step_down(rho: np.ndarray, cutoff: float, edge: float) -> np.ndarray:
    """1 below ``cutoff``, 0 above, raised-cosine transition of width ``edge`` centred on it."""
    if edge == 0.0:
        return (rho <= cutoff).astype(np.float64)
    u = np.clip((rho - (cutoff - edge / 2)) / edge, 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * u))


@dataclasses.dataclass(frozen=True)
class Band:
    """A radial band mask ``m(rho) in [0, 1]``.

    kind: ``lowpass`` keeps ``rho <= hi``; ``highpass`` keeps ``rho >= lo``; ``bandpass`` keeps
      ``lo <= rho <= hi``; ``bandstop`` removes ``lo <= rho <= hi``.
    lo, hi: band edges in units of the axis Nyquist (``0 <= lo <= hi <= sqrt(2)``). ``lowpass``
      uses only ``hi`` (``lo`` must stay 0), ``highpass`` only ``lo`` (``hi`` must stay sqrt(2)).
    edge: width of a raised-cosine transition centred on each used edge; 0 gives hard edges
      (edges inclusive).
    """

    kind: str
    lo: float = 0.0
    hi: float = RHO_MAX
    edge: float = 0.0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the offending field (``lo=0.5: must be <= hi=0.2``)."""
        validate.one_of("kind", self.kind, BAND_KINDS)
        for name in ("lo", "hi", "edge"):
            value = validate.number(name, getattr(self, name))
            if name != "edge" and not 0.0 <= value <= RHO_MAX + 1e-12:
                raise validate.fail(name, value, "must lie in [0, sqrt(2)]")
        if self.lo > self.hi:
            raise validate.fail("lo", self.lo, f"must be <= hi={self.hi}")
        if self.edge < 0:
            raise validate.fail("edge", self.edge, "must be >= 0")
        if self.kind == "lowpass" and self.lo != 0.0:
            raise validate.fail("lo", self.lo, "a lowpass band uses only hi (use bandpass)")
        if self.kind == "highpass" and abs(self.hi - RHO_MAX) > 1e-12:
            raise validate.fail("hi", self.hi, "a highpass band uses only lo (use bandpass)")

    def mask(self, rho: np.ndarray) -> np.ndarray:
        """The mask ``m(rho)``, float64, same shape as ``rho``."""
        below_hi = _cosine_step_down(rho, self.hi, self.edge)
        # "at or above lo": the mirror image of a step down at lo (hard edge inclusive).
        if self.edge == 0.0:
            above_lo = (rho >= self.lo).astype(np.float64)
        else:
            above_lo = 1.0 - _cosine_step_down(rho, self.lo, self.edge)
        if self.kind == "lowpass":
            m = below_hi
        elif self.kind == "highpass":
            m = above_lo
        elif self.kind == "bandpass":
            m = above_lo * below_hi
        else:
            m = 1.0 - above_lo * below_hi
        return np.where(m < MASK_FLOOR, 0.0, m)


def parse_bands(spec: Any) -> tuple[Band, ...]:
    """Bands from a config value.

    Accepts ``Band`` objects, mappings ``{kind, lo, hi, edge}``, sequences
    ``(kind, lo, hi[, edge])``, or a command-line string ``"kind:lo:hi[:edge]+kind:lo:hi"``
    (empty fields take defaults, e.g. ``"lowpass::0.5"``). ``None`` or ``""`` mean no band.
    """
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return ()
    if isinstance(spec, str):
        items: Iterable[Any] = [s.strip() for s in spec.split("+")]
    elif isinstance(spec, (Band, Mapping)):
        items = [spec]
    else:
        items = spec
    bands = []
    for i, item in enumerate(items):
        try:
            bands.append(_parse_band(item))
        except (TypeError, ValueError) as err:
            raise ValueError(f"bands[{i}]={item!r}: {err}") from None
    return tuple(bands)


def _parse_band(item: Any) -> Band:
    if isinstance(item, Band):
        band = item
    elif isinstance(item, Mapping):
        band = Band(**dict(item))
    else:
        if isinstance(item, str):
            fields = item.split(":")
            kind, numbers = fields[0].strip(), fields[1:]
        else:
            kind, numbers = item[0], list(item[1:])
        if len(numbers) > 3:
            raise ValueError("expected kind, lo, hi[, edge]")
        names = ("lo", "hi", "edge")
        kwargs = {n: float(v) for n, v in zip(names, numbers, strict=False) if str(v).strip()}
        band = Band(kind, **kwargs)
    band.validate()
    return band


def power_law(rho: np.ndarray, gamma: float, rho0: float) -> np.ndarray:
    """The power-law weighting ``p = (rho + rho0)^(-gamma)``, float64."""
    if gamma == 0.0:
        return np.ones_like(rho)
    return (rho + rho0) ** (-gamma)


def profile_weights(rho: np.ndarray, knots: Sequence[float] | np.ndarray,
                    values: Sequence[float] | np.ndarray) -> np.ndarray:
    """A radial profile ``values`` given at ``knots`` (increasing, > 0; axis Nyquist = 1)
    evaluated at ``rho`` (any shape), float64: linear interpolation of ``log value`` against
    ``log rho`` (exact for a power law), constant beyond the first and last knot (DC takes
    the first knot's value). A profile of ones gives exactly 1."""
    knots = np.asarray(knots, np.float64)
    r = np.clip(np.asarray(rho, np.float64), knots[0], knots[-1])
    return np.exp(np.interp(np.log(r), np.log(knots), np.log(np.asarray(values, np.float64))))


def check_profile(profile: Any, profile_rho: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(profile, profile_rho)`` checked: both empty, or equally long (>= 2) sequences of
    finite numbers, ``profile > 0`` and ``profile_rho`` strictly increasing in
    ``(0, sqrt(2)]``. A one-line ``ValueError`` naming the key and the first bad value."""
    values = []
    for name, seq in (("profile", profile), ("profile_rho", profile_rho)):
        if isinstance(seq, str) or not isinstance(seq, Sequence):
            raise validate.fail(name, seq, "must be a sequence of numbers (or ())")
        for i, v in enumerate(seq):
            validate.number(f"{name}[{i}]", v, 0.0, RHO_MAX + 1e-12 if name == "profile_rho"
                            else math.inf, open_lo=True)
        values.append(tuple(float(v) for v in seq))
    profile, profile_rho = values
    if len(profile) != len(profile_rho):
        raise ValueError(f"profile_rho: has {len(profile_rho)} values, profile has "
                         f"{len(profile)}; they must match")
    if len(profile) == 1:
        raise ValueError("profile: needs at least 2 values (or none)")
    for i in range(1, len(profile_rho)):
        if profile_rho[i] <= profile_rho[i - 1]:
            raise validate.fail(f"profile_rho[{i}]", profile_rho[i],
                                f"must be > profile_rho[{i - 1}]={profile_rho[i - 1]!r} "
                                "(strictly increasing)")
    return profile, profile_rho


def spectral_weights(
    height: int,
    width: int,
    *,
    gamma: float = 0.0,
    rho0: float = 0.1,
    bands: Sequence[Band] | str | None = (),
    normalize: bool = True,
    profile: Sequence[float] = (),
    profile_rho: Sequence[float] = (),
) -> np.ndarray:
    """The SAGD weights ``w = prod(masks) * power_law`` on the rfft half-plane, float64.

    Shape ``(H, W // 2 + 1)``. With ``normalize`` the mean over all ``H * W`` bins is 1, so
    ``trace(Sigma) = H * W`` per channel (the noise energy of isotropic diffusion).
    A non-empty ``profile`` (values at the radial knots ``profile_rho``, see
    ``profile_weights``; fitted by ``sagd_jax.noise_fit``) replaces the power law: ``gamma`` and
    ``rho0`` are then checked but unused; the bands still multiply.
    Raises ``ValueError`` naming the offending parameter (``gamma=nan: must be a finite number``).
    """
    height = validate.integer("height", height, 1)
    width = validate.integer("width", width, 1)
    gamma = validate.number("gamma", gamma)
    rho0 = validate.number("rho0", rho0)
    if rho0 < 0 or (gamma > 0 and rho0 <= 0):
        raise validate.fail("rho0", rho0, "must be > 0 when gamma > 0 (and never negative)")
    normalize = validate.boolean("normalize", normalize)
    band_list = parse_bands(bands)
    profile, profile_rho = check_profile(profile, profile_rho)
    rho = radial_frequency(height, width)
    if profile:
        w = profile_weights(rho, profile_rho, profile)
    else:
        w = power_law(rho, gamma, rho0)
    for band in band_list:
        w = w * band.mask(rho)
    if not np.any(w > 0):
        raise ValueError(f"bands={band_list}: the masks remove every frequency")
    if normalize:
        w = w / full_grid_mean(w, width)
    return w


def frequency_mask(spec: Any, height: int, width: int, key: str) -> np.ndarray:
    """A per-bin mask ``m_k`` in ``[0, 1]`` on the rfft half-plane, float64 ``(H, W // 2 + 1)``,
    from a spec string (``--guidance_band``, ``diffusion.frequency_loss_weights``).

    ``spec``: bands in the ``noise.bands`` syntax (``kind:lo:hi[:edge]`` joined by ``+``; ``m``
    the product of their masks, the code the noise bands use; "" = 1 in every bin), or
    ``powerlaw:GAMMA[:RHO0]``: ``m = ((rho + rho0) / rho0)^-gamma`` (1 at ``rho = 0``, falling
    with frequency; ``GAMMA >= 0``, ``RHO0 > 0``, default ``POWERLAW_RHO0``; a highpass band
    gives the opposite). ``key`` names the setting in the one-line ``ValueError``s, which read
    ``KEY='SPEC': ...``.
    """
    height = validate.integer("height", height, 1)
    width = validate.integer("width", width, 1)
    flag = f"{key}={spec!r}"
    if isinstance(spec, str) and spec.strip().split(":")[0].strip() == "powerlaw":
        fields = [f.strip() for f in spec.strip().split(":")[1:]]
        if not 1 <= len(fields) <= 2 or not fields[0]:
            raise ValueError(f"{flag}: expected powerlaw:GAMMA[:RHO0]")
        try:
            gamma = float(fields[0])
            rho0 = float(fields[1]) if len(fields) == 2 and fields[1] else POWERLAW_RHO0
        except ValueError:
            raise ValueError(f"{flag}: GAMMA and RHO0 must be numbers "
                             "(powerlaw:GAMMA[:RHO0])") from None
        if not (math.isfinite(gamma) and gamma >= 0):
            raise ValueError(f"{flag}: GAMMA={gamma:g} must be a finite number >= 0 (a weight "
                             "falling with frequency; for the opposite use a highpass band)")
        if not (math.isfinite(rho0) and rho0 > 0):
            raise ValueError(f"{flag}: RHO0={rho0:g} must be a finite number > 0")
        rho = radial_frequency(height, width)
        return ((rho + rho0) / rho0) ** -gamma
    if not isinstance(spec, str):
        raise ValueError(f"{flag}: expected a band spec (kind:lo:hi[:edge]+...) or "
                         "powerlaw:GAMMA[:RHO0]")
    try:
        return spectral_weights(height, width, bands=spec, normalize=False)
    except ValueError as err:
        raise ValueError(f"{flag}: {err}") from None


def apply_multiplier(x: jax.Array, multiplier: jax.Array) -> jax.Array:
    """``irfft2(multiplier * rfft2(x))`` over the spatial axes of ``x: (..., H, W, C)``.

    ``multiplier``: real, shape ``(..., H, W // 2 + 1)`` broadcastable against the leading
    dims of ``x`` (a trailing channel axis is added here). Computes in float32, returns
    ``x.dtype``.
    """
    if x.ndim < 3:
        raise ValueError(f"expected an image array (..., H, W, C), got shape {x.shape}")
    height, width = x.shape[-3], x.shape[-2]
    spectrum = jnp.fft.rfft2(x.astype(jnp.float32), axes=(-3, -2))
    spectrum = spectrum * multiplier[..., None].astype(jnp.float32)
    return jnp.fft.irfft2(spectrum, s=(height, width), axes=(-3, -2)).astype(x.dtype)


def _safe_power(w: jax.Array, power: float) -> jax.Array:
    """``w ** power`` on the support ``w > 0`` and 0 off it, gradient-safe."""
    support = w > 0
    return jnp.where(support, jnp.where(support, w, 1.0) ** power, 0.0)


@struct.dataclass
class SpectralCovariance:
    """``Sigma = F^H diag(w) F`` as an immutable pytree (usable inside ``jit``).

    weights: ``w`` on the rfft half-plane, float32 ``(H, W // 2 + 1)``, even and >= 0.
    height, width: the image size (static pytree metadata).
    identity, full_support: static facts about ``w`` found by ``create`` (all ones; no zeros).
    They let ``apply`` and ``project`` skip their FFTs where the operator is the identity, so
    isotropic diffusion costs no FFT at all and SAGD without bands none in ``project``. A
    covariance built directly from (possibly traced) weights keeps both False: always exact.
    Every operator takes real ``x: (..., H, W, C)`` (any leading batch dims, float32 or
    bfloat16), computes in float32 and returns ``x.dtype``.
    """

    weights: jax.Array
    height: int = struct.field(pytree_node=False)
    width: int = struct.field(pytree_node=False)
    identity: bool = struct.field(pytree_node=False, default=False)
    full_support: bool = struct.field(pytree_node=False, default=False)

    @classmethod
    def create(
        cls,
        height: int,
        width: int,
        *,
        gamma: float = 0.0,
        rho0: float = 0.1,
        bands: Sequence[Band] | str | None = (),
        normalize: bool = True,
        profile: Sequence[float] = (),
        profile_rho: Sequence[float] = (),
    ) -> SpectralCovariance:
        """Power law ``(rho + rho0)^-gamma`` times band masks, normalised to mean 1 by default.

        ``gamma > 0`` puts more noise in low frequencies, ``gamma < 0`` in high ones,
        ``gamma = 0`` with no bands is isotropic diffusion (``Sigma = I``). A non-empty
        ``profile`` on the knots ``profile_rho`` replaces the power law (``spectral_weights``).
        """
        w = spectral_weights(
            height, width, gamma=gamma, rho0=rho0, bands=bands, normalize=normalize,
            profile=profile, profile_rho=profile_rho,
        )
        w32 = np.asarray(w, np.float32)
        return cls(weights=jnp.asarray(w32), height=height, width=width,
                   identity=bool(np.all(w32 == 1.0)), full_support=bool(np.all(w32 > 0)))

    @classmethod
    def from_config(cls, noise: Any, height: int, width: int) -> SpectralCovariance:
        """Build from a full ``noise`` config section: ``gamma``, ``rho0``, ``bands``,
        ``normalize`` and ``profile`` / ``profile_rho`` (a fitted profile that replaces the
        power law when non-empty), each read as it is (their one default:
        ``default_config().noise``).

        Errors name the key, e.g. ``noise.gamma=nan: must be a finite number`` or
        ``noise.rho0: missing from the config``.
        """
        values = {key: validate.lookup(noise, key, "noise")
                  for key in ("gamma", "rho0", "bands", "normalize", "profile", "profile_rho")}
        try:
            return cls.create(height, width, **values)
        except ValueError as err:
            message = str(err)
            if not message.startswith(("height", "width")):
                message = f"noise.{message}"
            raise ValueError(message) from None

    @classmethod
    def isotropic(cls, height: int, width: int) -> SpectralCovariance:
        """``Sigma = I``: plain isotropic diffusion."""
        return cls.create(height, width)

    # --- derived quantities -------------------------------------------------------------
    @property
    def support(self) -> jax.Array:
        """Boolean ``(H, W // 2 + 1)``: the bins where ``w > 0``."""
        return self.weights > 0

    @property
    def support_fraction(self) -> jax.Array:
        """Fraction of the ``H * W`` DFT bins in the support (``trace(P) / (H * W)``)."""
        return full_grid_mean(self.support.astype(jnp.float32), self.width)

    def full_weights(self) -> jax.Array:
        """``w`` on the full ``(H, W)`` DFT grid, using ``w(k) = w(-k)`` for the missing half."""
        rows = np.arange(self.height)[:, None]
        cols = np.arange(self.width)[None, :]
        in_half = cols <= self.width // 2
        src_rows = np.where(in_half, rows, (-rows) % self.height)
        src_cols = np.where(in_half, cols, self.width - cols)
        return self.weights[src_rows, src_cols]

    # --- operators --------------------------------------------------------------------
    def _check(self, x: jax.Array) -> None:
        if x.ndim < 3 or x.shape[-3:-1] != (self.height, self.width):
            raise ValueError(
                f"expected x of shape (..., {self.height}, {self.width}, C), got {x.shape}"
            )

    def apply(self, x: jax.Array, power: float = 1.0) -> jax.Array:
        """``Sigma^power x`` (pseudo-inverse for negative powers: 0 off the support)."""
        self._check(x)
        if self.identity:
            return x
        return apply_multiplier(x, _safe_power(self.weights, power))

    def sqrt(self, x: jax.Array) -> jax.Array:
        """``Sigma^{1/2} x``."""
        return self.apply(x, 0.5)

    def inv_sqrt(self, x: jax.Array) -> jax.Array:
        """``Sigma^{-1/2} x`` (pseudo-inverse: ``1/sqrt(w)`` on ``w > 0``, 0 elsewhere)."""
        return self.apply(x, -0.5)

    def inv(self, x: jax.Array) -> jax.Array:
        """``Sigma^{-1} x`` (pseudo-inverse)."""
        return self.apply(x, -1.0)

    def project(self, x: jax.Array) -> jax.Array:
        """``P x``: the orthogonal projection onto the support ``{w > 0}``."""
        self._check(x)
        if self.full_support:
            return x
        return apply_multiplier(x, self.support.astype(jnp.float32))

    def sample(
        self, key: jax.Array, shape: Sequence[int], dtype: jnp.dtype = jnp.float32
    ) -> jax.Array:
        """``xi = Sigma^{1/2} eps`` with ``eps ~ N(0, I)`` of ``shape = (..., H, W, C)``.

        The covariance of ``xi`` is exactly ``Sigma`` (per channel).
        """
        eps = jax.random.normal(key, tuple(shape), jnp.float32)
        return self.sqrt(eps).astype(dtype)
