"""The sampling library: images from a trained run, in resumable chunks, sharded over all
devices (``SampleRequest``, ``generate``); ``python -m sagd_jax.sample`` is its command line.

Loads the EMA weights of the latest (or the chosen) checkpoint of ``DIR`` (``--model=exact``:
the exact Gaussian model of ``grf`` data, no checkpoint needed) and writes into ``OUTDIR``
(default ``DIR/generated/<sampler>-<steps>steps-seed<K>-<checkpoint>``):

* ``samples.npz``: ``arr_0`` uint8 NHWC (the layout FID tools read), for a class-conditional
  run ``arr_1`` int64 ``(N,)``, each sample's class label (ADM's layout), and with ``float32``
  also ``float32`` (model units, unquantised), plus ``grid.png`` of the first 64. A latent
  run's (``data.autoencoder``) samples are decoded on the run's devices first: ``arr_0`` holds
  the autoencoder's ``decode`` of them, of the data's shape, and ``float32`` its
  ``decode_float`` (the decoder's output in [-1, 1] pixel units, unclipped; ``arr_0`` is then
  its quantisation), never the latents;
* ``chunks/chunk_<i>.npz``: the ``chunk_size`` images of chunk i (uint8, or float32 with
  ``float32``), each written atomically once done, while the set is being made; removed once
  ``samples.npz`` is written and read back sound (kept with ``keep_chunks``);
* ``manifest.json``: the settings (everything but ``num_samples``); a later call with other
  settings is refused once the folder holds samples (before that, a failed first attempt's
  manifest is replaced), one with the same settings and a larger ``num_samples`` grows it;
* ``checksums.json``: the SHA-256 of ``samples.npz`` as written; a file that no longer matches
  is set aside and the set made again (``sagd_jax.evaluate`` refuses it);
* ``lock``: held while a sampler writes here (``sagd_jax.lock``); a second one is refused;
* with ``png_dir``: every sample as ``png_dir/NNNNNN.png`` (``sagd_jax.sample_files``).

Band-conditional generation (``--condition``, ``--known_band``): ``FILE.npz`` holds images
``(N, H, W, C)`` of the run's size (its ``images`` array, or its only one; float in model units
[-1, 1], or uint8); ``SPEC`` names the known frequency bins as a band of ``noise.bands``'
syntax (``lowpass::0.25``: everything up to a quarter of Nyquist; several joined by ``+``
multiply; bins where the mask is >= 0.5 are known). Sample ``j`` keeps the known bands of image
``j mod N`` and fills in the rest (``sagd_jax.samplers.Condition``): spectral super-resolution
(a low-pass band known) and band inpainting (a damaged band unknown: ``bandstop:LO:HI``).

Class-conditional runs (``model.num_classes = K > 0``): ``labels`` is ``balanced`` (the
default: sample ``j`` has class ``j mod K``), ``random`` (uniform, chunk ``i``'s drawn from
``fold_in(stream(seed, rng.SAMPLE_LABELS), i)``) or a list ``N,M,...`` (sample ``j`` has
entry ``j mod length``): a pure function of (settings, j), so grown and resumed sets agree.
``guidance`` is the weight ``W`` of ``eps_u + W (eps_c - eps_u)`` (1: none),
``guidance_interval`` ``LO:HI`` limits it to noise levels ``sigma / alpha`` in that interval,
``guidance_band`` shapes it in frequency, and ``guide_workdir`` (``guide_step``: its
checkpoint, latest by default) guides with that run's EMA model instead of the unconditional
prediction (autoguidance; unconditional runs take it too). ``sagd_jax.guidance`` has the maths.

Several sets (``generate_sets``, ``--sets=K``): the same settings with the seeds ``seed`` ..
``seed + K - 1``, each a set as above, in its default folder or in ``OUTDIR/seed<S>``
(``set_folder``); ``sibling_set`` finds a set's siblings by that layout (``sagd_jax.evaluate
--fid_sets``).

``DIR`` and ``OUTDIR`` are local paths, ``file://`` URLs or object-store URLs (``gs://``): every
file goes through ``sagd_jax.files``.

Sample ``j`` is image ``j mod chunk_size`` of chunk ``j // chunk_size``, whose randomness is
``fold_in(seed stream, chunk)`` over a full chunk of ``chunk_size`` images, whatever
``num_samples`` is. So a killed run continues where it stopped and gives bit for bit the
images of an uninterrupted one, and a set grown from N to M samples holds its N unchanged
(they are copied from the old ``samples.npz``) followed by those a fresh M-sample set has.
Nothing is trusted for existing: a chunk counts as done, and ``samples.npz`` as complete, only
if every array reads in full (each ``.npz`` member carries a CRC-32, checked at the end of the
read) with the expected shape and dtype. A damaged file is renamed to ``<name>.damaged`` (kept,
never deleted) with one warning line, then recomputed (a chunk: the same images, bit for bit);
a damaged ``samples.npz`` is set aside and the set made again.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from sagd_jax import console, files, validate
from sagd_jax.console import Progress
from sagd_jax.errors import one_line
from sagd_jax.images import save_grid, to_float, to_uint8
from sagd_jax.lock import Lock

LAYOUT = 2  # 2: chunks of chunk_size uint8 (or float32) images, growable sets


@dataclasses.dataclass(frozen=True)
class SampleRequest:
    """What to generate; ``checkpoint_step=None`` means latest, ``model="exact"`` no network."""

    num_samples: int
    sampler: str
    steps: int
    seed: int = 0
    eta: float | None = None
    checkpoint_step: int | None = None
    chunk_size: int = 256
    model: str = "ema"
    clip_x0: float | None = None  # ddpm, ddim: x0_hat clipped to [-c, c] (samplers module)
    time_grid: str = "auto"  # auto | uniform | edm | snr | logsnr (sagd_jax.time_grids)
    condition: str | None = None  # band-conditional: the known images (.npz)
    known_band: str | None = None  # ... and their known bins (a band spec)
    float32: bool = False  # also keep the unquantised float32 samples (model units)
    labels: str | None = None  # conditional runs: balanced (None) | random | N,M,...
    guidance: float = 1.0  # the guidance weight W (1: none)
    guidance_interval: str | None = None  # LO:HI in sigma / alpha
    guidance_band: str | None = None  # the weight shaped in frequency (a band spec, powerlaw)
    guide_workdir: str | None = None  # autoguidance: the guiding run ...
    guide_step: int | None = None  # ... and its checkpoint (latest: None)
    params: str = "ema"  # ema | posthoc:STD (the post-hoc EMA at snapshot checkpoint_step)

    def validate(self, device_count: int) -> None:
        from sagd_jax.samplers import SAMPLERS

        validate.integer("--num_samples", self.num_samples, 1)
        validate.one_of("--sampler", self.sampler, SAMPLERS)
        validate.integer("--steps", self.steps, 1)
        validate.integer("--seed", self.seed, 0)
        if self.eta is not None:
            if self.sampler != "ddim":
                raise validate.fail("--eta", self.eta, "only the ddim sampler takes eta")
            validate.number("--eta", self.eta, 0.0, 1.0)
        chunk = validate.integer("--chunk_size", self.chunk_size, 1)
        if chunk % device_count:
            raise validate.fail("--chunk_size", chunk, "must be a positive multiple of the "
                                f"device count ({device_count})")
        if self.clip_x0 is not None:
            if self.sampler not in ("ddpm", "ddim"):
                raise validate.fail("--clip_x0", self.clip_x0,
                                    "only the ddpm and ddim samplers clip")
            validate.number("--clip_x0", self.clip_x0, 0.0, open_lo=True)
        validate.one_of("--model", self.model, ("ema", "exact"))
        from sagd_jax.posthoc import parse_params

        if parse_params(self.params) is not None and self.model == "exact":
            raise validate.fail("--params", self.params, "needs the network (--model=ema)")
        from sagd_jax.time_grids import GRIDS

        validate.one_of("--time_grid", self.time_grid, ("auto", *GRIDS))
        if (self.condition is None) != (self.known_band is None):
            given = "--condition" if self.known_band is None else "--known_band"
            raise ValueError(f"{given}: band-conditional sampling needs both --condition and "
                             "--known_band")
        validate.number("--guidance", self.guidance, 0.0)
        if self.guide_step is not None and self.guide_workdir is None:
            raise validate.fail("--guide_step", self.guide_step, "needs --guide_workdir")
        if self.guidance == 1.0 and (self.guidance_interval or self.guidance_band
                                     or self.guide_workdir):
            given = ("--guidance_interval" if self.guidance_interval else "--guidance_band"
                     if self.guidance_band else "--guide_workdir")
            raise ValueError(f"{given}: needs a guidance weight (--guidance=W, W != 1)")
        if self.known_band is not None:
            from sagd_jax.spectral import parse_bands

            try:
                if not parse_bands(self.known_band):
                    raise ValueError("names no band")
            except ValueError as err:
                raise ValueError(f"--known_band={self.known_band!r}: {err}") from None

    @property
    def grid(self) -> str:
        """The time grid, ``auto`` resolved for the sampler (``time_grids.resolve``)."""
        from sagd_jax.time_grids import resolve

        return resolve(self.time_grid, self.sampler)

    @property
    def num_chunks(self) -> int:
        return -(-self.num_samples // self.chunk_size)

    def default_dirname(self, checkpoint_step: int | None) -> str:
        sampler = self.sampler + (f"-eta{self.eta:g}" if self.eta is not None else "")
        sampler += f"-clip{self.clip_x0:g}" if self.clip_x0 is not None else ""
        sampler += f"-{self.grid}" if self.grid != "uniform" else ""
        from sagd_jax.posthoc import params_name

        source = ("exact" if self.model == "exact"
                  else f"step{checkpoint_step}{params_name(self.params)}")
        conditioned = ("" if self.condition is None else
                       f"-given-{os.path.splitext(os.path.basename(self.condition))[0]}-"
                       f"{_name_part(self.known_band)}")
        guided = "" if self.guidance == 1.0 else f"-w{self.guidance:g}"
        guided += "" if self.guidance_band is None else f"-band-{_name_part(self.guidance_band)}"
        guided += ("" if self.guidance_interval is None
                   else f"-interval-{_name_part(self.guidance_interval)}")
        if self.guide_workdir is not None:
            guide = os.path.basename(os.path.normpath(self.guide_workdir))
            guided += f"-guide-{guide}" + ("" if self.guide_step is None
                                           else f"-step{self.guide_step}")
        labels = "" if self.labels in (None, "balanced") else f"-labels-{_name_part(self.labels)}"
        return f"{sampler}-{self.steps}steps-seed{self.seed}-{source}{conditioned}{guided}{labels}"


def _name_part(spec: str) -> str:
    """A spec (band, interval, label list) as part of a folder name."""
    return spec.replace(":", "_").replace("+", "_").replace(",", "_")


def chunk_labels(spec: str, seed: int, chunk: int, size: int, num_classes: int) -> np.ndarray:
    """int64 ``(size,)``: the labels of chunk ``chunk`` (samples ``chunk * size ..``) under
    ``--labels=spec`` (module docstring); a pure function of its arguments."""
    import jax

    from sagd_jax import rng
    from sagd_jax.guidance import parse_labels

    key = jax.random.fold_in(rng.stream_key(seed, rng.SAMPLE_LABELS), chunk)
    return parse_labels(spec, size, num_classes, key, start=chunk * size).astype(np.int64)


def known_bins(spec: str, height: int, width: int) -> np.ndarray:
    """The 0/1 mask ``(H, W // 2 + 1)`` of the bins a band spec names (mask >= 0.5)."""
    from sagd_jax.spectral import parse_bands, radial_frequency

    rho = radial_frequency(height, width)
    mask = np.ones_like(rho)
    for band in parse_bands(spec):
        mask = mask * band.mask(rho)
    known = (mask >= 0.5).astype(np.float32)
    if not known.any() or known.all():
        raise ValueError(f"--known_band={spec!r}: the band must leave some bins known and "
                         f"some unknown on a {height}x{width} grid")
    return known


def load_condition(path: str, image_shape: tuple[int, ...]) -> np.ndarray:
    """The known images of ``--condition``: float32 ``(N, H, W, C)`` in model units."""
    try:
        with files.open_file(path, "rb") as f, np.load(f) as archive:
            names = archive.files
            name = "images" if "images" in names else (names[0] if len(names) == 1 else None)
            if name is None:
                raise ValueError(f"holds {names}: name the array 'images'")
            images = archive[name]
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"--condition={path}: {one_line(err)}") from None
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(image_shape) or not len(images):
        raise ValueError(f"--condition={path}: images of shape {images.shape}, the run's are "
                         f"(N, {', '.join(map(str, image_shape))})")
    if images.dtype == np.uint8:
        return to_float(images)
    if not np.issubdtype(images.dtype, np.floating) or not np.isfinite(images).all():
        raise ValueError(f"--condition={path}: expected finite float or uint8 images, got "
                         f"{images.dtype}")
    return images.astype(np.float32)


def _holds_samples(out_dir: str) -> bool:
    """Whether ``out_dir`` holds anything of a sample set beyond its manifest and lock: a
    chunk, ``samples.npz`` (sound or set aside), ... (hidden temporaries do not count)."""
    for folder, skip in ((out_dir, {"manifest.json", "lock", "chunks"}),
                         (files.join(out_dir, "chunks"), set())):
        if files.isdir(folder) and any(not name.startswith(".") and name not in skip
                                       for name in files.listdir(folder)):
            return True
    return False


def _check_manifest(out_dir: str, manifest: dict[str, Any], replace: bool = False) -> bool:
    """Write ``manifest.json`` in a new ``out_dir``, or refuse one made with other settings
    when the folder holds samples. Returns whether the manifest there is of other settings
    but nothing was made with them (a failed first attempt): with ``replace`` (under the
    lock) it is then replaced, with one info line."""
    path = files.join(out_dir, "manifest.json")
    if not files.exists(path):
        files.makedirs(out_dir)
        try:
            files.write_json(path, manifest, exclusive=True)
            return False
        except FileExistsError:  # another sampler wrote it first: compare with that one
            pass
    try:
        previous = files.read_json(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"--out={out_dir}: unreadable {path} ({one_line(err)}); use "
                         "another --out") from None
    if isinstance(previous, dict) and previous.get("layout") != manifest["layout"]:
        raise ValueError(f"--out={out_dir}: holds a sample set of an earlier layout (float32 "
                         "chunks of num_samples images); use another --out")
    if previous == manifest:
        return False
    differing = sorted(k for k in manifest if not isinstance(previous, dict)
                       or previous.get(k) != manifest[k])
    if _holds_samples(out_dir):
        raise ValueError(f"--out={out_dir}: holds samples made with other settings "
                         f"({', '.join(differing)}); use another --out")
    if replace:
        files.write_json(path, manifest)
        console.info("%s: no samples made yet with its settings; %s replaced (%s now as "
                     "given)", out_dir, "manifest.json", ", ".join(differing))
    return True


Expected = dict[str, tuple[tuple[int | None, ...], Any]]  # name: (shape, None = any; dtype)


def read_verified(path: str, expected: Expected) -> dict[str, np.ndarray]:
    """The arrays ``{name: (shape, dtype)}`` of the ``.npz`` at ``path``, each read in full
    (which checks its CRC-32); a ``None`` in a shape matches any length. Raises ``ValueError``
    naming ``path`` and what is wrong."""
    try:
        with np.load(files.loadable(path), allow_pickle=False) as data:
            arrays = {name: data[name] for name in expected}
    except Exception as err:  # a damaged zip raises many kinds: BadZipFile, EOFError,
        # OSError, KeyError, ValueError and tokenize errors from the .npy header, ...
        raise ValueError(f"{path}: unreadable ({one_line(err)})") from None
    for name, (shape, dtype) in expected.items():
        got = arrays[name]
        if (got.dtype != np.dtype(dtype) or got.ndim != len(shape)
                or any(n is not None and n != g for n, g in zip(shape, got.shape, strict=True))):
            wanted = tuple("N" if n is None else n for n in shape)
            raise ValueError(f"{path}: {name} is {got.dtype} {got.shape}, expected "
                             f"{np.dtype(dtype)} {wanted}".replace("'N'", "N"))
    lengths = {len(a) for a in arrays.values()}
    if len(lengths) > 1:
        raise ValueError(f"{path}: its arrays hold {sorted(lengths)} images")
    return arrays


def _sound_or_set_aside(path: str, expected: Expected, redo: str) -> bool:
    """Whether ``path`` is there and sound; a damaged one is renamed to ``<path>.damaged``
    (``.damaged.1``, ... if taken: nothing is deleted) with one warning line."""
    if not files.exists(path):
        return False
    try:
        read_verified(path, expected)
        return True
    except ValueError as err:
        reason = str(err).removeprefix(f"{path}: ")
    try:
        aside = files.set_aside(path)
    except OSError as err:
        raise ValueError(f"{path}: damaged ({reason}) and cannot be moved aside "
                         f"({one_line(err)})") from None
    console.warning("%s: damaged (%s); moved to %s, %s", path, reason,
                    os.path.basename(aside), redo)
    return False


def _set_aside_if_changed(final: str) -> None:
    """A sound ``samples.npz`` that is not the file recorded in ``checksums.json`` (rewritten
    since) is set aside like a damaged one, with one warning line."""
    from sagd_jax.sample_files import CHECKSUMS, recorded_sha256, sha256

    try:
        expected = recorded_sha256(final)
    except ValueError:
        return  # an unreadable record: the arrays' own checks stand
    if expected is not None and sha256(final) != expected:
        aside = files.set_aside(final)
        console.warning("%s: not the file this sampler wrote (SHA-256 differs from %s); moved "
                        "to %s, making the set again", final, CHECKSUMS,
                        os.path.basename(aside))


def held(path: str) -> int:
    """How many images the ``samples.npz`` at ``path`` holds (its ``arr_0``'s length, read
    from the header alone), 0 when there is none."""
    import zipfile

    if not files.exists(path):
        return 0
    with zipfile.ZipFile(files.loadable(path)) as archive, archive.open("arr_0.npy") as f:
        version = np.lib.format.read_magic(f)
        header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        return int(header(f)[0][0])


def generate(workdir: str, request: SampleRequest, out_dir: str | None = None,
             config: Any = None, max_chunks: int | None = None, *,
             png_dir: str | None = None, keep_chunks: bool = False) -> str | None:
    """Generate ``request`` from the run in ``workdir``; returns ``samples.npz``'s path, or None
    if ``max_chunks`` (chunks to compute in this call) stopped it before the end.

    ``config``: when given, must have the workdir's data, noise, diffusion and model sections.
    ``png_dir``: also write every sample there as a PNG file; ``keep_chunks``: keep the chunk
    files once ``samples.npz`` is written. A set of the same settings already in ``out_dir``
    grows to ``num_samples`` (one that holds as many or more is returned as it is). Raises a
    one-line ``ValueError`` for bad input before anything is computed or written.
    """
    import jax

    from sagd_jax import posthoc
    from sagd_jax.distributed import on_process0
    from sagd_jax.run import Run

    request.validate(jax.device_count())
    run = Run.from_workdir(workdir)
    if config is not None:
        run.workdir.check_compatible(config, run.config)
    if png_dir is not None and files.exists(png_dir) and not files.isdir(png_dir):
        raise ValueError(f"--png_dir={png_dir}: exists and is not a folder")
    condition = None
    if request.condition is not None and run.latent is not None:
        raise ValueError(f"--condition={request.condition}: not for a latent run "
                         f"(data.autoencoder={run.latent.path}): its known bands would be "
                         "latent frequencies")
    if request.condition is not None:
        condition = (load_condition(request.condition, run.image_shape),
                     known_bins(request.known_band, *run.image_shape[:2]))
    labels, guidance, guide_run = _check_guidance(request, run, workdir)
    mesh = run.mesh(fit=True)  # any device count: the run's mesh, else a data mesh
    guide_step = None
    if request.model == "exact":
        exact = run.exact_model()
        plain, step = exact.eps_fn(run.process), None
        spectrum = np.asarray(exact.spectrum)  # the snr grid on the exact model's spectrum

        def eps_for(chunk: int) -> tuple[Any, np.ndarray | None]:
            return plain, None
    else:
        spectrum = None
        params, step, _ = posthoc.params(run, mesh, request.params, request.checkpoint_step)
        guide = None
        if guide_run is not None:
            try:
                guide_state = guide_run.restore(mesh, request.guide_step)
            except ValueError as err:
                raise _guide_error(err, request) from None
            guide_step = int(jax.device_get(guide_state.step))
            guide = (guide_run, guide_state.ema_params)

        def eps_for(chunk: int) -> tuple[Any, np.ndarray | None]:
            chunk_labels_ = (None if labels is None else chunk_labels(
                labels, request.seed, chunk, request.chunk_size, run.num_classes))
            return run.eps_fn(params, chunk_labels_, guidance=guidance,
                              guide=guide), chunk_labels_
    times = (None if request.grid == "uniform"
             else run.time_grid(request.steps, request.grid, spectrum))
    out_dir = (files.normalize(out_dir) if out_dir
               else run.workdir.generated(request.default_dirname(step)))
    manifest = {**dataclasses.asdict(request), "checkpoint_step": step,
                "workdir": files.absolute(workdir), "time_grid": request.grid,
                "layout": LAYOUT, "labels": labels,
                "guide_workdir": (None if guide_run is None
                                  else files.absolute(request.guide_workdir)),
                "guide_step": guide_step}
    del manifest["num_samples"]  # a set grows: its size is what samples.npz holds
    for key, default in (("clip_x0", None), ("condition", None), ("known_band", None),
                         ("time_grid", "uniform"), ("labels", None), ("guidance", 1.0),
                         ("guidance_interval", None), ("guidance_band", None),
                         ("guide_workdir", None), ("guide_step", None), ("params", "ema")):
        if manifest[key] == default:  # the manifests of sets without the option stay lean
            del manifest[key]
    lock = Lock(files.join(out_dir, "lock"), f"--out={out_dir}", "sampler")

    def check_and_lock() -> None:
        if not _check_manifest(out_dir, manifest):
            lock.acquire()
            return
        lock.acquire()  # other settings, nothing made with them: replaced once locked
        try:
            _check_manifest(out_dir, manifest, replace=True)
        except BaseException:
            lock.release()
            raise

    on_process0(check_and_lock, "sagd-sample-lock")
    try:
        try:
            final = _sample_into(out_dir, request, run, eps_for, mesh, max_chunks, condition,
                                 times, keep_chunks)
        except jax.errors.JaxRuntimeError as err:
            if "RESOURCE_EXHAUSTED" not in str(err):
                raise
            raise ValueError(_out_of_memory(out_dir, request)) from None
        if final is not None and png_dir is not None and jax.process_index() == 0:
            from sagd_jax.sample_files import write_pngs

            with np.load(files.loadable(final)) as f:
                written = write_pngs(f["arr_0"], png_dir)
            console.info("%s: %d PNG files written", png_dir, written)
        return final
    finally:
        lock.release()


def set_folder(out_dir: str, seed: int) -> str:
    """The folder of the seed-``seed`` set of several made into ``out_dir`` (``--sets=K``
    with ``--out=DIR``): ``DIR/seed<S>``."""
    return files.join(out_dir, f"seed{seed}")


def generate_sets(workdir: str, request: SampleRequest, sets: int = 1,
                  out_dir: str | None = None, config: Any = None,
                  max_chunks: int | None = None, *, png_dir: str | None = None,
                  keep_chunks: bool = False) -> list[str | None]:
    """``sets`` sample sets of ``request`` with seeds ``request.seed, request.seed + 1, ...``
    (what a published FID is taken over): each ``generate``'s set, in its default folder, or
    with ``out_dir`` in ``set_folder(out_dir, seed)`` (``png_dir`` likewise); ``sets=1`` is
    ``generate`` into ``out_dir`` itself. Returns each set's ``samples.npz`` (None: stopped
    by ``max_chunks``, which counts per set). A finished set is returned as it is, so a rerun
    samples only what is missing; the sets after the first take the checkpoint it resolved."""
    validate.integer("--sets", sets, 1)
    if (sets > 1 and out_dir is not None
            and files.exists(files.join(out_dir, "manifest.json"))):
        raise ValueError(f"--out={out_dir}: holds a sample set; --sets={sets} writes "
                         f"{set_folder(out_dir, request.seed)}, ...: use another --out")
    paths: list[str | None] = []
    for seed in range(request.seed, request.seed + sets):
        one = dataclasses.replace(request, seed=seed)
        out = out_dir if sets == 1 or out_dir is None else set_folder(out_dir, seed)
        png = png_dir if sets == 1 or png_dir is None else set_folder(png_dir, seed)
        path = generate(workdir, one, out, config, max_chunks, png_dir=png,
                        keep_chunks=keep_chunks)
        paths.append(path)
        if (sets > 1 and path is not None and request.checkpoint_step is None
                and request.model != "exact"):
            step = files.read_json(files.join(files.dirname(path), "manifest.json"))
            request = dataclasses.replace(request, checkpoint_step=step["checkpoint_step"])
    return paths


def sibling_set(samples_path: str, manifest: dict[str, Any], seed: int) -> str | None:
    """Where ``generate_sets`` put the seed-``seed`` set of the settings of the set at
    ``samples_path`` (whose ``manifest.json`` is ``manifest``): beside it in ``DIR/seed<S>``,
    or in its default folder (``...-<steps>steps-seed<S>-...``); None when the set is in
    neither layout."""
    folder = files.dirname(files.absolute(samples_path))
    parent, name = files.dirname(folder), os.path.basename(folder)
    own = manifest.get("seed")
    if name == f"seed{own}":
        name = f"seed{seed}"
    else:
        mark = f"-{manifest.get('steps')}steps-seed{own}-"
        if mark not in name:
            return None
        name = name.replace(mark, f"-{manifest.get('steps')}steps-seed{seed}-", 1)
    return files.join(parent, name, os.path.basename(samples_path))


def _check_guidance(request: SampleRequest, run: Any, workdir: str
                    ) -> tuple[str | None, Any, Any]:
    """The labels spec (None: an unconditional run), the ``Guidance`` and the guide run
    (None: classifier-free or no guidance) of ``request`` on ``run``, checked: one line for a
    label out of range, guidance on an unconditional run without a guide, a guide of another
    image shape, process or class count."""
    from sagd_jax.guidance import make_guidance

    if not run.conditional:
        if request.labels is not None:
            raise ValueError(f"--labels={request.labels}: the run in {workdir} is unconditional "
                             "(model.num_classes=0)")
        if request.guidance != 1.0 and request.guide_workdir is None:
            raise ValueError(f"--guidance={request.guidance:g}: the run in {workdir} is "
                             "unconditional (model.num_classes=0); guide it with a weaker "
                             "model instead (--guide_workdir, autoguidance)")
    labels = None
    if run.conditional:
        labels = request.labels or "balanced"
        chunk_labels(labels, request.seed, 0, 1, run.num_classes)  # a bad list: one line
    if request.model == "exact" and request.guidance != 1.0:
        raise ValueError(f"--guidance={request.guidance:g}: not with --model=exact")
    guidance = make_guidance(request.guidance, *run.image_shape[:2],
                             band=request.guidance_band, interval=request.guidance_interval)
    guide_run = None
    if request.guide_workdir is not None:
        from sagd_jax.run import Run

        where = f"--guide_workdir={request.guide_workdir}"
        try:
            guide_run = Run.from_workdir(request.guide_workdir)
        except ValueError as err:
            raise _guide_error(err, request) from None
        if guide_run.image_shape != run.image_shape:
            raise ValueError(f"{where}: its images are {guide_run.image_shape}, the run's "
                             f"{run.image_shape}")
        if guide_run.num_classes != run.num_classes:
            raise ValueError(f"{where}: model.num_classes={guide_run.num_classes}, the run's "
                             f"{run.num_classes}")
        from sagd_jax.config import identity_changes

        process = ("noise", "diffusion")  # the keys that make the process
        changes = identity_changes({k: run.config[k].to_dict() for k in process},
                                   {k: guide_run.config[k].to_dict() for k in process})
        if changes:
            key, (mine, theirs) = next(iter(changes.items()))
            raise ValueError(f"{where}: another process ({key}={theirs!r}, the run's "
                             f"{mine!r})")
    return labels, guidance, guide_run


def _guide_error(err: ValueError, request: SampleRequest) -> ValueError:
    """A workdir's one line (``--workdir=DIR: ...``) about the guide, naming
    ``--guide_workdir`` instead."""
    message, prefix = str(err), f"--workdir={request.guide_workdir}: "
    if message.startswith(prefix):
        message = f"--guide_workdir={request.guide_workdir}: {message.removeprefix(prefix)}"
    return ValueError(message)


def _out_of_memory(out_dir: str, request: SampleRequest) -> str:
    """The one line for a chunk that does not fit in device memory."""
    import jax

    where = ("with another --out (this one holds samples of this chunk size)"
             if _holds_samples(out_dir) else "(the same --out takes it: it holds no samples)")
    return (f"out of device memory sampling --chunk_size={request.chunk_size} images "
            f"({request.chunk_size // jax.device_count()} per device on "
            f"{jax.device_count()} device(s)); try a smaller --chunk_size {where}")


def _sample_into(out_dir: str, request: SampleRequest, run: Any, eps_for: Any, mesh: Any,
                 max_chunks: int | None,
                 condition: tuple[np.ndarray, np.ndarray] | None = None,
                 times: np.ndarray | None = None, keep_chunks: bool = False) -> str | None:
    """``generate``'s work in ``out_dir`` (locked): verify what is there, compute the chunks
    that are missing or damaged, assemble ``samples.npz`` (the samples it held, then the new
    ones). ``eps_for(i)``: chunk i's ``(eps_fn, labels or None)``; ``condition``: (known
    images, known-bin mask) of band-conditional sampling; ``times``: the sampler's time
    grid."""
    import jax
    from jax.experimental import multihost_utils

    from sagd_jax import rng
    from sagd_jax.distributed import barrier
    from sagd_jax.samplers import Condition, get_sampler
    from sagd_jax.sharding import batch_sharding

    final = files.join(out_dir, "samples.npz")
    size, wanted = request.chunk_size, request.num_samples
    chunk_path = [files.join(out_dir, "chunks", f"chunk_{i:05d}.npz")
                  for i in range(request.num_chunks)]
    chunk_dtype = np.float32 if request.float32 else np.uint8
    chunk_arrays: Expected = {"images": ((size, *run.data_shape), chunk_dtype)}
    final_arrays: Expected = {"arr_0": ((None, *run.data_shape), np.uint8)}
    if run.conditional:
        chunk_arrays["labels"] = ((size,), np.int64)
        final_arrays["arr_1"] = ((None,), np.int64)
    if request.float32:
        final_arrays["float32"] = ((None, *run.data_shape), np.float32)
    if jax.process_index() == 0 and _sound_or_set_aside(final, final_arrays,
                                                        "making the set again"):
        _set_aside_if_changed(final)
    barrier("sagd-sample-final-verified")
    before = held(final)
    if before >= wanted:
        console.info("%s: already complete (%d samples%s)", final, before,
                     f"; the first {wanted} are those asked for" if before > wanted else "")
        return final
    needed = range(before // size, request.num_chunks)
    if jax.process_index() == 0:
        for i in needed:
            _sound_or_set_aside(chunk_path[i], chunk_arrays, "recomputing it")
        files.makedirs(files.join(out_dir, "chunks"))
    barrier("sagd-sample-verified")  # process 0 has set damaged files aside
    todo = [i for i in needed if not files.exists(chunk_path[i])]
    barrier("sagd-sample-start")  # all agree on what is done before anyone writes
    sampler = get_sampler(request.sampler)
    options = {k: v for k, v in (("eta", request.eta), ("clip_x0", request.clip_x0))
               if v is not None}
    base = rng.stream_key(request.seed, rng.SAMPLE_CLI)
    shape = (size, *run.image_shape)
    progress = Progress("sampling", total=len(needed), unit="chunk",
                        done=len(needed) - len(todo))
    for i in todo[:max_chunks] if max_chunks is not None else todo:
        given = None
        if condition is not None:  # sample j keeps the known bands of image j mod N
            known_images, known = condition
            index = (i * size + np.arange(size)) % len(known_images)
            given = Condition.create(known_images[index], known)
        eps_fn, labels = eps_for(i)
        images = sampler(run.process, eps_fn, jax.random.fold_in(base, i), shape, request.steps,
                         sharding=batch_sharding(mesh), condition=given, times=times,
                         **options)
        images = np.asarray(multihost_utils.process_allgather(images, tiled=True))
        if run.latent is not None:  # latents -> pixels, decoded on the mesh
            images = run.decoder(mesh)(images, uint8=not request.float32)
        if jax.process_index() == 0:
            files.write_npz(chunk_path[i], images=(images.astype(np.float32) if request.float32
                                                   else to_uint8(images)
                                                   if images.dtype != np.uint8 else images),
                            **({} if labels is None else {"labels": labels}))
        progress.update(1)
    barrier("sagd-sample-end")
    if not all(files.exists(chunk_path[i]) for i in needed):
        return None
    if jax.process_index() == 0:
        _assemble(final, final_arrays, [chunk_path[i] for i in needed], chunk_arrays,
                  before, wanted, size, keep_chunks)
    barrier("sagd-sample-assembled")
    return final


def _assemble(final: str, final_arrays: Expected, chunks: list[str], chunk_arrays: Expected,
              before: int, wanted: int, size: int, keep_chunks: bool) -> None:
    """Write ``samples.npz`` with the ``before`` samples it holds and those of ``chunks``
    (the first of which starts at sample ``before // size * size``) up to ``wanted``; read it
    back, then remove the chunks (unless ``keep_chunks``) and redraw the grid if it grew."""
    first = before // size * size
    try:
        parts = [read_verified(path, chunk_arrays) for path in chunks]
    except ValueError as err:  # damaged since it was checked or written: a rerun redoes it
        raise ValueError(f"{err}; run the same command again to recompute it") from None
    window = slice(before - first, wanted - first)
    new = np.concatenate([part["images"] for part in parts])[window]
    arrays = ({"arr_0": to_uint8(new), "float32": new} if "float32" in final_arrays
              else {"arr_0": new})
    if "arr_1" in final_arrays:
        arrays["arr_1"] = np.concatenate([part["labels"] for part in parts])[window]
    if before:
        old = read_verified(final, final_arrays)
        arrays = {k: np.concatenate([old[k], arrays[k]]) for k in final_arrays}
    files.write_npz(final, **arrays)  # atomic: the old set until the new one is whole
    written = len(read_verified(final, final_arrays)["arr_0"])
    if written != wanted:
        raise ValueError(f"{final}: holds {written} samples after writing {wanted}; run the "
                         "same command again")
    from sagd_jax.sample_files import record_sha256

    record_sha256(final, num_samples=wanted)
    if not keep_chunks:
        files.rmtree(files.join(files.dirname(final), "chunks"))
    grid = files.join(files.dirname(final), "grid.png")
    if before < 64 and files.exists(grid):
        files.remove(grid)  # drawn again from the grown set's first 64
    save_grid(to_float(arrays["arr_0"][:64]), grid)
