"""One object owns a run: its config, data, process, model, optimizer, workdir, state and the
compiled step. Every CLI, driver and benchmark builds on it.

    run = Run.from_config(config, workdir)      # normalised and validated once, in one line
    run = Run.from_workdir(workdir)             # the run a workdir holds (its config.json)
    mesh = run.mesh()                           # (data, fsdp) of mesh.*
    state = run.init_state(mesh)                # created directly onto its shardings
    state = run.restore(mesh, step=None)        # a checkpoint (latest by default)
    step = run.train_step(mesh)                 # the jitted, sharded, donated update
    state, metrics = step(state, run.global_batch(s, mesh))  # (images, labels): conditional
    images = sampler(run.process, run.eps_fn(state.ema_params), key, shape, steps)
    images = sampler(run.process, run.eps_fn(params, labels, guidance=2.0), ...)  # classes

Two shapes: ``run.image_shape`` is the model's input (what the model, the process, the train
step, the samplers and the compile tool see) and ``run.data_shape`` the data's images in
pixels (what sample sets, grids, spectra and FID hold). They are one shape for a pixel run; a
latent run (``data.autoencoder``, ``sagd_jax.data.latent_space``) has the latent grid
``(S / d, S / d, c)`` as ``image_shape``: its batches are cached latents
(``sagd_jax.data.latent_cache``) and its samples go through ``run.decoder(mesh)`` to pixels.

Everything that can be wrong with the input is checked in ``from_config``, before anything
is loaded, compiled or written: a one-line ``ValueError`` naming the key (a latent run's
missing autoencoder file too, naming what to download; not with ``load_data=False``, which
builds the model and state shapes from the config alone).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sagd_jax import checkpoint, console, files, noise_fit, rng
from sagd_jax.config import mesh_shape, normalize, posthoc_profiles, validate_config
from sagd_jax.data import batch_options, batches, get_source, grf_model, iterate, read_image
from sagd_jax.data.config import get_channels
from sagd_jax.data.latent_cache import LatentDataset, encoded_dataset, latent_batches
from sagd_jax.data.latent_space import LatentDecoder, LatentSpace
from sagd_jax.data.pipeline import batch_labels
from sagd_jax.data.sources import ImageSource, check_labels
from sagd_jax.errors import DamagedCheckpoint
from sagd_jax.gaussian import GaussianData
from sagd_jax.metrics.spectra import radial_power_spectrum
from sagd_jax.models import build_model
from sagd_jax.models.autoencoder import Autoencoder
from sagd_jax.process import DiffusionProcess
from sagd_jax.samplers import get_sampler
from sagd_jax.schedules import time_grid
from sagd_jax.sharding import (
    batch_sharding,
    global_batch,
    make_mesh,
    replicated,
    state_sharding,
)
from sagd_jax.time_grids import make_grid, resolve
from sagd_jax.train_state import TrainState, create_train_state, make_optimizer
from sagd_jax.train_step import make_eps_fn, train_step
from sagd_jax.workdir import Workdir

REFERENCE_IMAGES = 512  # data images behind the reference power spectrum
FIT_CHUNK = 250  # images read at a time to measure the spectrum of noise.fit


def _fit_noise(config: ml_collections.ConfigDict, examples: int,
               stream: Callable[[int], Any] | None, width: int,
               workdir: Workdir | None) -> None:
    """Set the fitted keys of ``config.noise`` (``noise.fit``; ``sagd_jax.noise_fit``). A
    workdir that already holds a run with the same fit gives its saved values (a resume,
    sampling: no refit; a run with another fit is left for ``Workdir.prepare`` to refuse);
    a new run fits them on the first ``noise.fit_images`` of the ``examples`` training images
    (``stream(size)``: the whole batches of the training stream from (data, seed), the same
    images on every process and every start; a latent run's latents) of ``width`` columns."""
    noise = config.noise
    if workdir is not None and (files.exists(workdir.config_path)
                                or workdir.latest_step() is not None):
        noise.update(noise_fit.saved_fit(noise, workdir.saved_config().noise))
        return
    if stream is None:
        raise ValueError(f"noise.fit={noise.fit!r}: needs the training data (load_data=False)")
    count = min(noise.fit_images, examples)
    chunk = min(count, FIT_CHUNK)
    batches_ = stream(chunk)
    parts = (batches_[s][:count - s * chunk] for s in range(-(-count // chunk)))
    power, images = noise_fit.mean_power(parts)
    values, summary = noise_fit.fit_noise(noise, power, width, images)
    noise.update(values)
    console.info("noise: fitted %s", summary)


class Run:
    """A validated run. ``config``: the normalised config (every key of ``default_config``);
    ``workdir``: its ``Workdir`` (None for a run without files: benchmarks, tests)."""

    def __init__(self, config: ml_collections.ConfigDict, process: DiffusionProcess,
                 model: Any, tx: optax.GradientTransformation, workdir: Workdir | None,
                 source: ImageSource | None, latent: LatentSpace | None = None,
                 autoencoder: Autoencoder | None = None):
        self.config, self.process, self.model, self.tx = config, process, model, tx
        self.workdir = workdir
        self.latent = latent  # None: a pixel run
        self._source = source
        self._autoencoder = autoencoder
        self._latent_data: LatentDataset | None = None
        self._decoders: dict[jax.sharding.Mesh, LatentDecoder] = {}
        self._batches: dict[int, Any] = {}
        self._labels: dict[int, Any] = {}
        self._power_spectrum: np.ndarray | None = None

    @classmethod
    def from_config(cls, config: Any, workdir: str | Workdir | None = None, *,
                    load_data: bool = True, device_count: int | None = None,
                    writable: bool = True) -> Run:
        """Normalise ``config`` onto the defaults and validate every section, across sections
        too; ``load_data=False`` skips opening the data source (benchmarks on shapes only);
        ``writable``: the workdir must take writes (a run to train). A latent run
        (``data.autoencoder``) reads its autoencoder here unless ``load_data=False``. Raises a
        one-line ``ValueError``; writes nothing (a new run with ``noise.fit`` and an
        autoencoder: the latent cache, to fit on)."""
        if isinstance(workdir, str):
            workdir = Workdir(workdir)
        if workdir is not None and writable:
            workdir.check_writable()
        config = normalize(config)
        validate_config(config, device_count)
        latent = LatentSpace.from_config(config.data)
        autoencoder = None
        if load_data and latent is not None:  # the file first: one line if it is missing
            autoencoder = latent.load_autoencoder(get_channels(config.data))
        source = get_source(config.data) if load_data else None
        if source is None:  # the keys alone
            batch_options(config.data)
        else:  # can this source's images become image_size x image_size training images?
            dtype = read_image(source, 0).dtype
            shape, what = source.image_shape, source.name
            if shape is None and hasattr(source, "smallest"):  # sizes vary: the smallest
                path, shape = source.smallest
                what = f"{source.name} (the smallest: {path})"
            batch_options(config.data, shape, what, dtype)
            check_labels(source, config.data)
            if latent is not None and np.dtype(dtype) != np.uint8:
                raise ValueError(f"data.autoencoder={latent.path}: {source.name} gives "
                                 f"{np.dtype(dtype)} images; the autoencoder encodes uint8 "
                                 "pixels")
        image_shape = (latent.shape if latent is not None else
                       (config.data.image_size, config.data.image_size, config.data.channels))
        process = DiffusionProcess.from_config(config, image_shape[0], image_shape[1])
        model = build_model(config.model, image_shape)
        try:
            time_grid(process.schedule, config.train.sample_steps)
        except ValueError as err:
            raise ValueError(f"train.sample_steps={config.train.sample_steps}: "
                             f"{str(err).split(': ', 1)[-1]} (diffusion.schedule)") from None
        run = cls(config, process, model, make_optimizer(config.optim), workdir, source, latent,
                  autoencoder)
        if config.noise.fit:  # the input is good: now the fit's data may be read
            _fit_noise(config, 0 if source is None else len(source),
                       None if source is None else run._whole_batches, image_shape[1], workdir)
            run.process = DiffusionProcess.from_config(config, image_shape[0], image_shape[1])
        config.lock()
        return run

    @classmethod
    def from_workdir(cls, workdir: str | Workdir, **kwargs: Any) -> Run:
        """The run a workdir holds, from its ``config.json`` (on today's defaults), to read on
        any number of devices: the batch's divisibility by the devices is the trainer's
        check (``device_count=1`` unless given). Reading needs no writes: a read-only workdir
        is fine (``writable=True`` to require them)."""
        workdir = Workdir(workdir) if isinstance(workdir, str) else workdir
        kwargs.setdefault("device_count", 1)
        kwargs.setdefault("writable", False)
        return cls.from_config(workdir.saved_config(), workdir, **kwargs)

    # --- data -----------------------------------------------------------------------------
    @property
    def source(self) -> ImageSource:
        if self._source is None:
            self._source = get_source(self.config.data)
        return self._source

    @property
    def num_classes(self) -> int:
        """The classes of a class-conditional model (``model.num_classes``; 0: unconditional,
        which reads no labels). The null label of guidance is this number."""
        return int(self.config.model.num_classes)

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of the model's images: what the model, the process, the train step
        and the samplers see. A latent run's latent grid ``(S / d, S / d, c)``, else
        ``data_shape``."""
        return self.latent.shape if self.latent is not None else self.data_shape

    @property
    def data_shape(self) -> tuple[int, int, int]:
        """``(S, S, C)`` of the data's images, in pixels: what sample sets, grids, spectra and
        FID hold (a latent run's samples decoded)."""
        data = self.config.data
        return (data.image_size, data.image_size, data.channels)

    @property
    def autoencoder(self) -> Autoencoder:
        """A latent run's autoencoder (read on first use after ``load_data=False``)."""
        if self.latent is None:
            raise ValueError("a pixel run (data.autoencoder='') has no autoencoder")
        if self._autoencoder is None:
            self._autoencoder = self.latent.load_autoencoder(get_channels(self.config.data))
        return self._autoencoder

    @property
    def latent_data(self) -> LatentDataset:
        """A latent run's encoded training set, encoded into the cache on first use
        (``sagd_jax.data.latent_cache``)."""
        if self._latent_data is None:
            assert self.latent is not None, "a pixel run has no latents"
            self._latent_data = encoded_dataset(self.source, self.config.data, self.autoencoder,
                                                self.latent.shape, self.config.data.random_flip)
        return self._latent_data

    def decoder(self, mesh: jax.sharding.Mesh | None = None) -> LatentDecoder:
        """A latent run's decoder on ``mesh`` (default: every device), latents to pixels."""
        mesh = self.mesh(fit=True) if mesh is None else mesh
        if mesh not in self._decoders:
            self._decoders[mesh] = LatentDecoder(self.autoencoder, mesh)
        return self._decoders[mesh]

    def _make_batches(self, size: int, process_index: int, process_count: int) -> Any:
        """Process ``process_index``'s slice of the training batches of global size
        ``size``: images, or a latent run's latents."""
        data, seed = self.config.data, self.config.seed
        if self.latent is None:
            return batches(self.source, data, seed, size, process_index, process_count)
        return latent_batches(self.latent_data, seed, size, data.random_flip, process_index,
                              process_count)

    def _whole_batches(self, size: int) -> Any:
        """The whole training batches of ``size`` (every process the same): the fit's."""
        return self._make_batches(size, 0, 1)

    def batches(self, batch_size: int | None = None) -> Any:
        """This process's batches as a ``grain.MapDataset``: ``[s]`` is float32
        ``(B / processes, H, W, C)`` (``image_shape``: a latent run's latents) of step s, a
        pure function of (seed, s, process); ``batch_size`` defaults to the global
        ``train.batch_size``."""
        size = self.config.train.batch_size if batch_size is None else batch_size
        if size not in self._batches:
            self._batches[size] = self._make_batches(size, jax.process_index(),
                                                     jax.process_count())
        return self._batches[size]

    def load_batch(self, step: int, batch_size: int | None = None) -> np.ndarray:
        """This process's slice of the batch of ``step`` (``batches(batch_size)[step]``)."""
        return self.batches(batch_size)[step]

    def load_labels(self, step: int, batch_size: int | None = None) -> np.ndarray:
        """int32 ``(B / processes,)``: the class labels of ``load_batch(step, batch_size)``,
        example by example (read without the images)."""
        size = self.config.train.batch_size if batch_size is None else batch_size
        if size not in self._labels:
            self._labels[size] = batch_labels(self.source, self.config.data, self.config.seed,
                                              size, jax.process_index(), jax.process_count())
        return self._labels[size][step]

    def training_batches(self) -> Any:
        """The trainer's inputs per step as a ``grain.MapDataset``: ``[s]`` is
        ``load_batch(s)``, or ``(load_batch(s), load_labels(s))`` for a conditional model."""
        dataset = self.batches()
        if not self.conditional:
            return dataset
        return dataset.map_with_index(lambda step, images: (images, self.load_labels(step)))

    def batch_iterator(self, start: int, stop: int) -> Iterator[Any]:
        """The inputs (``training_batches``) of steps ``start .. stop - 1``, read ahead by
        ``data.num_workers`` threads."""
        data = self.config.data
        return iterate(self.training_batches(), start, stop, data.num_workers, data.prefetch)

    def global_batch(self, step: int, mesh: jax.sharding.Mesh) -> Any:
        """The train step's input of ``step`` sharded over the mesh's ``data`` axis: the batch
        as one array, or for a conditional model ``(images, labels)``, both split so."""
        if self.conditional:
            return global_batch((self.load_batch(step), self.load_labels(step)), mesh)
        return global_batch(self.load_batch(step), mesh)

    def reference_spectrum(self) -> np.ndarray:
        """Radially averaged power spectrum of a fixed set of training images, in pixels
        (``data_shape``; a latent run's too: its samples are judged decoded)."""
        count = min(len(self.source), REFERENCE_IMAGES)
        if self.latent is None:
            return radial_power_spectrum(self.load_batch(0, count))[1]
        pixels = batches(self.source, self.config.data, self.config.seed, count,
                         jax.process_index(), jax.process_count())[0]
        return radial_power_spectrum(pixels)[1]

    # --- state ----------------------------------------------------------------------------
    def mesh(self, devices: list[jax.Device] | None = None, *, fit: bool = False
             ) -> jax.sharding.Mesh:
        """The ``(data, fsdp)`` mesh of ``mesh.*`` over ``devices`` (default: all); a one-line
        ``ValueError`` if the shape does not fit them, unless ``fit``: then a plain data mesh
        (reading a run on other devices than it trained on: sampling, evaluation)."""
        devices = jax.devices() if devices is None else devices
        try:
            _, fsdp = mesh_shape(self.config, len(devices))
        except ValueError:
            if not fit:
                raise
            fsdp = 1
        return make_mesh(devices, fsdp)

    @property
    def posthoc_stds(self) -> tuple[float, ...]:
        """The relative stds of the post-hoc EMA profiles the run keeps (``()``: none)."""
        return posthoc_profiles(self.config)

    def _make_state(self, key: jax.Array) -> TrainState:
        return create_train_state(self.model, self.tx, key, image_shape=self.image_shape,
                                  posthoc_profiles=len(self.posthoc_stds))

    @functools.cached_property
    def _state_shapes(self) -> TrainState:
        """The state's ``jax.ShapeDtypeStruct`` leaves, traced once per run."""
        return jax.eval_shape(self._make_state, rng.init_key(self.config.seed))

    def abstract_state(self, mesh: jax.sharding.Mesh | None = None) -> TrainState:
        """The state's shapes and dtypes (``jax.ShapeDtypeStruct``), with their shardings on
        ``mesh`` when given; nothing is computed."""
        if mesh is None:
            return self._state_shapes
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            self._state_shapes, self.state_sharding(mesh))

    def state_sharding(self, mesh: jax.sharding.Mesh) -> Any:
        """The ``NamedSharding`` of every leaf of the state (``sharding.state_sharding``)."""
        return state_sharding(self._state_shapes, mesh)

    def init_state(self, mesh: jax.sharding.Mesh) -> TrainState:
        """Step 0, initialised from (seed, ``rng.INIT``) directly onto its shardings."""
        make = jax.jit(self._make_state, out_shardings=self.state_sharding(mesh))
        return make(rng.init_key(self.config.seed))

    def restore(self, mesh: jax.sharding.Mesh, step: int | None = None, *,
                set_aside_damaged: bool = False) -> TrainState:
        """Checkpoint ``step`` (latest by default) of the workdir, restored onto its shardings
        on ``mesh`` and verified. With ``step=None`` a damaged checkpoint is reported in one
        warning line and the previous complete one is tried (``set_aside_damaged``: the
        damaged one is renamed ``<step>.damaged``, so the run can save that step again). A step
        folder that is not a complete checkpoint is one warning line, ignored (set aside
        likewise with ``set_aside_damaged``). A
        one-line ``ValueError`` when there is no such checkpoint, or none that reads back."""
        workdir = self._require_workdir()
        for bad, why in checkpoint.incomplete_steps(workdir.path).items():  # not checkpoints
            where = files.join(workdir.checkpoint_dir, str(bad))
            if set_aside_damaged and jax.process_index() == 0:
                console.warning("%s: not a complete checkpoint (%s); set aside as %s", where,
                                why, checkpoint.set_aside(workdir.path, bad))
            else:
                console.warning("%s: not a complete checkpoint (%s); ignored", where, why)
        steps = workdir.checkpoint_steps()
        if not steps or (step is not None and step not in steps):
            raise ValueError(f"--workdir={workdir.path}: no checkpoint"
                             + ("" if step is None else f" of step {step}")
                             + f" under {workdir.checkpoint_dir}")
        candidates = [step] if step is not None else steps[::-1]
        checkpointer = workdir.checkpointer()
        try:
            for i, candidate in enumerate(candidates):
                try:
                    return checkpointer.restore(self.abstract_state(mesh), candidate)
                except DamagedCheckpoint as err:
                    if i + 1 == len(candidates):
                        earlier = "" if step is not None else "; no earlier complete checkpoint"
                        raise DamagedCheckpoint(f"{err}{earlier}") from None
                    console.warning("%s; restoring step %d instead", err, candidates[i + 1])
                    if set_aside_damaged and jax.process_index() == 0:
                        console.warning("set aside as %s",
                                        checkpoint.set_aside(workdir.path, candidate))
        finally:
            checkpointer.close()
        raise AssertionError("unreachable")

    def _require_workdir(self) -> Workdir:
        if self.workdir is None:
            raise ValueError("this run has no workdir")
        return self.workdir

    # --- computation ----------------------------------------------------------------------
    def train_step(self, mesh: jax.sharding.Mesh) -> Any:
        """The jitted update ``(state, batch) -> (state, metrics)``: state on its shardings
        (donated), batch ``(B, H, W, C)`` (a conditional model: ``(images, labels)``, labels
        int32 ``(B,)``) split over ``data``, metrics replicated; its randomness is
        ``fold_in(stream(seed, rng.TRAIN), state.step)``."""
        config = self.config
        state_sh = self.state_sharding(mesh)
        conditional = self.conditional

        def step(state: TrainState, batch: Any) -> tuple[TrainState, dict[str, Any]]:
            images, labels = batch if conditional else (batch, None)
            return train_step(state, images, rng.stream_key(config.seed, rng.TRAIN),
                              model=self.model, tx=self.tx, process=self.process,
                              ema_decay=config.optim.ema_decay,
                              grad_accum_steps=config.train.grad_accum_steps,
                              labels=labels, label_dropout=config.train.label_dropout,
                              posthoc_stds=self.posthoc_stds)

        return jax.jit(step, in_shardings=(state_sh, batch_sharding(mesh)),
                       out_shardings=(state_sh, replicated(mesh)), donate_argnums=0)

    def eps_fn(self, params: Any, labels: Any = None, *, guidance: Any = 1.0,
               guide: tuple[Run, Any] | None = None) -> jax.tree_util.Partial:
        """The network with ``params`` as a sampler's ``eps_fn(x, t)`` (parameters traced:
        no recompile per checkpoint). A conditional model needs ``labels`` (int ``(B,)`` in
        0 .. num_classes - 1, the sampling batch's) and takes ``guidance`` (a weight, 1 =
        none, or a ``Guidance``: classifier-free, in frequency, in an interval); ``guide``:
        ``(run, params)`` of a weaker model of the same task (autoguidance)."""
        if not self.conditional and labels is not None:
            raise ValueError("labels given to an unconditional model (model.num_classes=0)")
        if self.conditional and labels is None:
            raise ValueError(f"a class-conditional model (model.num_classes="
                             f"{self.num_classes}) needs labels")
        from sagd_jax.guidance import Guidance, guided_eps_fn

        if not isinstance(guidance, Guidance):  # a number: classifier-free, every frequency
            guidance = Guidance.create(guidance)
        if guide is None and not self.conditional:
            if not guidance.unguided:
                raise ValueError("guidance needs a class-conditional model or a guide model")
            return make_eps_fn(self.model, self.process, params)
        guide_fn = None if guide is None else make_eps_fn(guide[0].model, guide[0].process,
                                                           guide[1])
        return guided_eps_fn(make_eps_fn(self.model, self.process, params), labels, guidance,
                             self.process, self.num_classes, guide_fn=guide_fn)

    def exact_model(self) -> GaussianData:
        """The exact distribution of a ``grf`` run's data (``--model=exact``); a one-line
        ``ValueError`` for any other data."""
        if self.config.data.name != "grf":
            raise ValueError(f"--model=exact: needs data.name=grf, the run has "
                             f"{self.config.data.name!r}")
        return grf_model(self.config.data)

    def power_spectrum(self) -> np.ndarray:
        """Mean power per rfft bin ``(H, W // 2 + 1)`` of the first training batch of
        ``reference_spectrum``'s size on the model's grid (a latent run's latents; computed
        once): the ``snr`` time grid's data spectrum ``c``."""
        if self._power_spectrum is None:
            count = min(len(self.source), REFERENCE_IMAGES)
            self._power_spectrum, _ = noise_fit.mean_power([self.load_batch(0, count)])
        return self._power_spectrum

    def data_gaussian(self) -> GaussianData:
        """The stationary Gaussian with the training data's power per bin
        (``power_spectrum``): the data's second-order statistics, for the exact recursions of
        ``sagd_jax.gaussian`` (a perfect model of them under this run's process)."""
        height, width, _ = self.image_shape
        return GaussianData(spectrum=jnp.asarray(self.power_spectrum(), jnp.float32),
                            height=height, width=width)

    def time_grid(self, steps: int, grid: str = "uniform",
                  spectrum: np.ndarray | None = None) -> np.ndarray:
        """The sampler times of ``grid`` (``time_grids.make_grid``); ``snr`` uses ``spectrum``
        (default: the run's ``power_spectrum``)."""
        if grid == "snr" and spectrum is None:
            spectrum = self.power_spectrum()
        return make_grid(self.process, steps, grid, spectrum)

    def periodic_samples(self, params: Any, step: int) -> np.ndarray:
        """The trainer's ``train.num_samples`` samples at ``step`` (``train.sampler``,
        ``train.sample_steps`` on ``train.time_grid``), float32 ``(N, *data_shape)`` in model
        units (a latent run's decoded: ``decode_float``, unclipped); the key is
        ``fold_in(stream(seed, rng.SAMPLE), step)``."""
        cfg = self.config.train
        key = jax.random.fold_in(rng.stream_key(self.config.seed, rng.SAMPLE), step)
        sampler = get_sampler(cfg.sampler)
        grid = resolve(cfg.time_grid, cfg.sampler)
        times = None if grid == "uniform" else self.time_grid(cfg.sample_steps, grid)
        images = sampler(self.process, self.sample_eps_fn(params, cfg.num_samples), key,
                         (cfg.num_samples, *self.image_shape), cfg.sample_steps, times=times)
        images = np.asarray(jax.device_get(images))
        if self.latent is not None:
            images = self.decoder()(images, uint8=False)
        return images

    def sample_eps_fn(self, params: Any, count: int, start: int = 0
                      ) -> jax.tree_util.Partial:
        """The ``eps_fn`` of the trainer's samples and evaluation for samples ``start ..
        start + count - 1`` of a set: balanced labels (sample ``i`` has label ``i mod
        num_classes``) and ``train.guidance`` for a conditional model, the plain network
        otherwise."""
        if not self.conditional:
            return self.eps_fn(params)
        from sagd_jax.guidance import balanced_labels

        labels = balanced_labels(count, self.num_classes, start)
        return self.eps_fn(params, labels, guidance=self.config.train.guidance)
