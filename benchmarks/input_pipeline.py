"""Images per second of the input pipeline alone (no model), and the host cores a fast step needs.

    python benchmarks/input_pipeline.py
    python benchmarks/input_pipeline.py --batch_size 256 --workers 1,2,4 --json out.json
    python benchmarks/input_pipeline.py --cases jpeg64 --image_dir DIR   # keep the JPEGs in DIR

The trainer's own pipeline (``sagd_jax.data.pipeline.batches`` read ahead by
``pipeline.iterate`` with ``data.num_workers`` threads) on three cases, each with random crops
and random flips:

* ``memory32``: CIFAR-shaped data, ``--examples`` random uint8 32x32x3 images in memory
  (an ``ArraySource``): no decode, no resize; what is left is the per-element work
  (shuffle, scale to [-1, 1], flip, batching);
* ``jpeg64``: 64x64 from a ``data.name = "folder"`` of ``--files`` JPEGs of varied sizes
  (shorter side 128-400 pixels, aspect 1-1.6 either way): decode + antialiased resize of the
  shorter side + random crop + flip;
* ``jpeg256``: 256x256 likewise from larger JPEGs (shorter side 256-768).

The JPEGs (quality 90) are crops of scikit-image's bundled colour photographs at random
positions, sizes and aspect ratios, resampled to the drawn size, written once into a
temporary folder (or under ``--image_dir``, kept and reused: an existing ``jpeg64`` /
``jpeg256`` folder there is read as it is, so real photographs can be put there instead).
After ``--warmup`` batches, ``--batches`` batches of ``--batch_size`` are timed for each
thread count of ``--workers`` (more, in a new run, while that takes under ``--min_seconds``),
in ``--rounds`` alternating rounds; each figure is the median over the rounds (all are in the
JSON). The files are in the page cache (no disk reads). ``cpu_ms_per_img`` is the process's
CPU time per image over the timed window.

``per_core_img_per_s`` is the rate of one worker thread, and ``cores_for_target`` =
``--target_img_per_s`` (3200: the H100 goal for the CIFAR-10 DDPM++ step in
benchmarks/RESULTS.md) over it: the host cores a step at that rate would keep busy. Unless
``--nobreakdown``, each case's per-image cost is also split by stage, in the caller's thread on
the first ``--breakdown_images`` images: ``shuffle`` (the lookup of an example in its epoch's
cached permutation, alone), ``read`` (``source.read``: file + JPEG decode), ``decode`` (the
same bytes decoded from memory with Pillow), ``draft_decode`` (Pillow with JPEG DCT-domain
downscaling to at least twice the training size, as ``Image.thumbnail`` does: what a source
could do; not used by the pipeline), ``resize_crop`` (``Preprocess``), ``float_flip`` (uint8 ->
float32 [-1, 1], flip), ``stack`` (``np.stack`` of a batch of those, per image, median of 3),
and ``rest`` = the pipeline's time per image at one thread (``pipeline``) minus all of these
but decode and draft_decode: grain's per-element bookkeeping, the thread hand-off, and the
cache misses of a pipeline that holds a whole batch.

The config (default ``configs/cifar10_ddpmpp.py``) gives the other ``data.*`` keys
(``prefetch``, ``resize``, ``center_crop_fraction``, ``corruption``); each case sets ``name``,
``root``, ``image_size``, ``channels`` (3), ``crop`` (random), ``random_flip`` (on) and
``num_workers``.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import math
import os
import resource
import shutil
import sys
import tempfile
import time
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/NAME.py`` from anywhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from absl import flags

from benchmarks import common
from sagd_jax import console


@dataclasses.dataclass(frozen=True)
class Case:
    """One pipeline: training size, and for JPEG cases the range of the files' shorter side."""

    name: str
    image_size: int
    shorter_side: tuple[int, int] | None  # None: in-memory uint8 images of image_size

    @property
    def jpeg(self) -> bool:
        return self.shorter_side is not None


CASES = {case.name: case for case in (
    Case("memory32", 32, None),
    Case("jpeg64", 64, (128, 400)),
    Case("jpeg256", 256, (256, 768)),
)}
ASPECT = (1.0, 1.6)  # longer over shorter side of the JPEGs, landscape or portrait
JPEG_QUALITY = 90


def case_list(values: list[str]) -> list[Case]:
    unknown = [v for v in values if v not in CASES]
    if not values or unknown:
        raise ValueError(f"--cases={','.join(values)}: known cases: {', '.join(CASES)}")
    return [CASES[v] for v in dict.fromkeys(values)]


def write_jpegs(folder: str, count: int, shorter_side: tuple[int, int], seed: int) -> None:
    """``count`` RGB JPEGs into the new folder ``folder`` (written beside it, then renamed):
    crops of skimage's colour photographs at random positions, sizes (shorter side uniform in
    ``shorter_side``) and aspect ratios (``ASPECT``), resampled with Lanczos."""
    from PIL import Image

    from sagd_jax.data.natural_patches import load_photographs

    photos = list(load_photographs(3).values())
    rng = np.random.default_rng(seed)
    partial = tempfile.mkdtemp(prefix=os.path.basename(folder) + ".partial.",
                               dir=os.path.dirname(folder))
    try:
        for i in range(count):
            photo = photos[int(rng.integers(len(photos)))]
            short = int(rng.integers(shorter_side[0], shorter_side[1] + 1))
            long = round(short * rng.uniform(*ASPECT))
            height, width = (short, long) if rng.random() < 0.5 else (long, short)
            scale = min(photo.shape[0] / height, photo.shape[1] / width) * rng.uniform(0.6, 1)
            crop_h, crop_w = max(1, round(height * scale)), max(1, round(width * scale))
            top = int(rng.integers(0, photo.shape[0] - crop_h + 1))
            left = int(rng.integers(0, photo.shape[1] - crop_w + 1))
            image = Image.fromarray(photo[top:top + crop_h, left:left + crop_w])
            image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
            image.save(os.path.join(partial, f"{i:05d}.jpg"), quality=JPEG_QUALITY)
        os.rename(partial, folder)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def file_stats(paths: list[str]) -> dict[str, Any]:
    """Count, mean pixels, shorter-side range and mean bytes of image files (headers only)."""
    from PIL import Image

    sizes = []
    for path in paths:
        with Image.open(path) as image:
            sizes.append(image.size)
    pixels = [w * h for w, h in sizes]
    return {"files": len(paths), "mean_megapixels": float(np.mean(pixels)) / 1e6,
            "shorter_side_min": min(min(s) for s in sizes),
            "shorter_side_max": max(min(s) for s in sizes),
            "mean_file_kb": float(np.mean([os.path.getsize(p) for p in paths])) / 1e3}


CASE_KEYS = ("name", "root", "image_size", "channels", "crop", "random_flip", "num_workers")


def case_data(base: Any, case: Case, root: str) -> Any:
    """The config's ``data`` section with the case's keys set."""
    data = copy.deepcopy(base)  # the keys of CASE_KEYS are the case's
    if case.jpeg:
        data.name, data.root = "folder", root
    data.image_size, data.channels = case.image_size, 3
    data.crop, data.random_flip = "random", True
    return data


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pipeline_rate(source: Any, data: Any, batch_size: int, workers: int, warmup: int,
                  count: int, min_seconds: float) -> dict[str, float]:
    """img/s and process CPU ms per image of ``count`` batches read through
    ``pipeline.iterate`` with ``workers`` threads after ``warmup`` batches (at least the
    read-ahead, ``workers * data.prefetch``: batches read ahead at the start are not timed);
    timed again on more batches (a new iterator, at most 10 times as many) while the timed
    window is shorter than ``min_seconds``."""
    from sagd_jax.data import pipeline

    data = copy.deepcopy(data)
    data.num_workers = workers
    prefetch = pipeline.batch_options(data, source.image_shape, source.name).prefetch
    dataset = pipeline.batches(source, data, seed=0, global_batch_size=batch_size)
    warmup = max(warmup, workers * prefetch)
    while True:
        batches = pipeline.iterate(dataset, 0, warmup + count, workers, prefetch)
        for _ in range(warmup):
            next(batches)
        cpu0, start = cpu_seconds(), time.perf_counter()
        for _ in range(count):
            batch = next(batches)
        wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
        if wall >= min_seconds:
            break
        count = math.ceil(count * min(10.0, 1.2 * min_seconds / max(wall, 1e-9)))
    size = data.image_size
    if batch.shape != (batch_size, size, size, 3) or batch.dtype != np.float32:
        raise common.Failed(f"{source.name}: batch {batch.dtype} {batch.shape}, expected "
                            f"float32 {(batch_size, size, size, 3)}")
    if not (np.isfinite(batch).all() and -1.0 <= batch.min() and batch.max() <= 1.0):
        raise common.Failed(f"{source.name}: batch values outside [-1, 1]")
    images = count * batch_size
    return {"img_per_s": images / wall, "cpu_ms_per_img": 1e3 * cpu / images,
            "warmup_batches": warmup, "batches_timed": count, "seconds_timed": wall}


def stage_times(source: Any, data: Any, count: int, batch_size: int) -> dict[str, float]:
    """ms per image of each stage, over the first ``count`` examples in the caller's thread
    (see the module docstring); ``stack`` batches the first ``batch_size`` of them."""
    from PIL import Image

    from sagd_jax.data.pipeline import batch_options
    from sagd_jax.data.sources import read_image
    from sagd_jax.images import to_float

    preprocess = batch_options(data, source.image_shape, source.name).preprocess
    rng = np.random.default_rng(0)
    seconds = dict.fromkeys(("read", "decode", "draft_decode", "resize_crop", "float_flip"),
                            0.0)
    paths = getattr(source, "paths", None)
    size = data.image_size
    batch = []
    for i in range(count):
        start = time.perf_counter()
        image = read_image(source, i)
        seconds["read"] += time.perf_counter() - start
        if paths is not None:
            with open(paths[i], "rb") as file:
                encoded = file.read()
            for key, draft in (("decode", False), ("draft_decode", True)):
                start = time.perf_counter()
                with Image.open(io.BytesIO(encoded)) as pil:
                    if draft:
                        pil.draft("RGB", (2 * size, 2 * size))
                    np.asarray(pil.convert("RGB"))
                seconds[key] += time.perf_counter() - start
        start = time.perf_counter()
        image = preprocess(image, rng)
        seconds["resize_crop"] += time.perf_counter() - start
        start = time.perf_counter()
        x = to_float(image)
        if rng.random() < 0.5:
            x = x[:, ::-1]
        x = np.ascontiguousarray(x)
        seconds["float_flip"] += time.perf_counter() - start
        if len(batch) < batch_size:
            batch.append(x)
    times = {f"{key}_ms": 1e3 * value / count for key, value in seconds.items()}
    stack = []
    for _ in range(3):
        start = time.perf_counter()
        np.stack(batch)
        stack.append(time.perf_counter() - start)
    times["stack_ms"] = 1e3 * common.median(stack) / len(batch)
    if paths is None:
        del times["decode_ms"], times["draft_decode_ms"]
    return times


def shuffle_ms(length: int, calls: int = 100) -> float:
    """ms per element of the pipeline's shuffle over ``length`` elements (the position ->
    example lookup in the cached permutation of its epoch, ``pipeline.epoch_permutation``)."""
    from sagd_jax.data.pipeline import epoch_permutation

    epoch_permutation(length, 0, 0)  # drawn once per epoch: not a per-element cost
    start = time.perf_counter()
    for i in range(calls):
        epoch, offset = divmod(i, length)
        int(epoch_permutation(length, 0, epoch)[offset])
    return 1e3 * (time.perf_counter() - start) / calls


def make_source(case: Case, data: Any, examples: int) -> Any:
    if case.jpeg:
        from sagd_jax.data import get_source

        return get_source(data)
    from sagd_jax.data import ArraySource

    images = np.random.default_rng(0).integers(0, 256, (examples, 32, 32, 3), dtype=np.uint8)
    return ArraySource(f"memory/random{examples}x32x32x3", images)


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("batch_size", 128, "Global batch.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("batches", 16, "Timed batches per case, thread count and round.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("rounds", 3, "Rounds over the thread counts, alternating (medians).",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_float("min_seconds", 2.0, "Time more batches (a new run) while the timed "
                       "window is shorter.", lower_bound=0.0, flag_values=fv)
    flags.DEFINE_integer("warmup", 2, "Batches read before timing (at least workers * "
                         "data.prefetch).", lower_bound=1, flag_values=fv)
    flags.DEFINE_list("workers", ["1", "2"], "Worker thread counts (data.num_workers).",
                      flag_values=fv)
    flags.DEFINE_list("cases", list(CASES), f"Cases, of {', '.join(CASES)}.", flag_values=fv)
    flags.DEFINE_integer("files", 2000, "JPEG files per JPEG case (when written).",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("examples", 50_000, "In-memory images of memory32.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_string("image_dir", None, "Keep the JPEGs in DIR/jpeg64 and DIR/jpeg256 "
                        "(written when missing, reused as they are when present); default: a "
                        "temporary folder, removed afterwards.", flag_values=fv)
    flags.DEFINE_boolean("breakdown", True, "Time each stage per image in the caller's "
                         "thread.", flag_values=fv)
    flags.DEFINE_integer("breakdown_images", 512, "Images (the first ones) the stages are "
                         "timed on.", lower_bound=1, flag_values=fv)
    flags.DEFINE_float("target_img_per_s", 3200.0, "Step rate the host must feed "
                       "(cores_for_target).", lower_bound=1e-9, flag_values=fv)


def prepare_root(case: Case, image_dir: str, files: int) -> str:
    """The folder of the JPEG case ``case`` under ``image_dir``, written when missing."""
    root = os.path.join(image_dir, case.name)
    if not os.path.isdir(root):
        start = time.perf_counter()
        write_jpegs(root, files, case.shorter_side, seed=list(CASES).index(case.name))
        print(f"{case.name}: wrote {files} JPEGs to {root} in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
    return root


def measure_case(fv: flags.FlagValues, case: Case, workers: list[int], image_dir: str
                 ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One case: a row per thread count, and the case's summary (files, per-core rate,
    cores for the target, stage times)."""
    root = prepare_root(case, image_dir, fv.files) if case.jpeg else ""
    data = case_data(fv.config.data, case, root)
    source = make_source(case, data, fv.examples)
    summary: dict[str, Any] = {"case": case.name, "image_size": case.image_size}
    summary |= file_stats(source.paths) if case.jpeg else {"examples": len(source)}
    rates: dict[int, list[dict[str, float]]] = {count: [] for count in workers}
    for _ in range(fv.rounds):  # alternating thread counts: slow drifts hit each alike
        for count in workers:
            rate = pipeline_rate(source, data, fv.batch_size, count, fv.warmup, fv.batches,
                                 fv.min_seconds)
            rates[count].append(rate)
            print(f"{case.name}, {count} worker(s): {rate['img_per_s']:.1f} img/s, "
                  f"{rate['cpu_ms_per_img']:.3g} CPU ms/img", flush=True)
    rows = []
    for count, runs in rates.items():
        img_per_s = common.median([run["img_per_s"] for run in runs])
        rows.append({"case": case.name, "image_size": case.image_size, "workers": count,
                     "img_per_s": img_per_s, "img_per_s_per_worker": img_per_s / count,
                     "cpu_ms_per_img": common.median([run["cpu_ms_per_img"] for run in runs]),
                     "rounds": runs})
    if 1 in rates:
        per_core = rows[workers.index(1)]["img_per_s"]
        summary |= {"per_core_img_per_s": per_core,
                    "cores_for_target": fv.target_img_per_s / per_core,
                    "pipeline_ms": 1e3 / per_core}
        for row in rows:
            row["speedup_over_1"] = row["img_per_s"] / per_core
    if fv.breakdown:
        summary |= stage_times(source, data, min(len(source), fv.breakdown_images),
                               fv.batch_size)
        summary["shuffle_ms"] = shuffle_ms(len(source))
        if 1 in rates:
            parts = ("shuffle_ms", "read_ms", "resize_crop_ms", "float_flip_ms", "stack_ms")
            summary["rest_ms"] = summary["pipeline_ms"] - sum(summary[k] for k in parts)
    return rows, summary


def measure(fv: flags.FlagValues, command: common.Command) -> dict[str, Any]:
    from sagd_jax.data.pipeline import batch_options

    workers, cases = common.int_list(fv.workers, "--workers", distinct=True), case_list(fv.cases)
    for item in command.overrides:
        key = item.split("=", 1)[0]
        if key in {f"data.{k}" for k in CASE_KEYS}:
            raise ValueError(f"--config.{key}: set by each case here (see --cases, --workers)")
    if fv.image_dir is not None and not os.path.isdir(fv.image_dir):
        raise ValueError(f"--image_dir={fv.image_dir}: not an existing folder")
    for case in cases:  # the keys, checked before anything is written or measured
        batch_options(case_data(fv.config.data, case, ""), None, case.name)
    print(f"{command.config_spec} {' '.join(command.overrides)}: batch {fv.batch_size}, "
          f"{fv.warmup} + {fv.batches} batches, workers {workers}, {os.cpu_count()} CPUs",
          flush=True)
    rows: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="input_pipeline.") as scratch:
        for case in cases:
            case_rows, summary = measure_case(fv, case, workers, fv.image_dir or scratch)
            rows += case_rows
            summaries.append(summary)
    print(console.table(rows, ["case", "workers", "img_per_s", "img_per_s_per_worker",
                               "speedup_over_1", "cpu_ms_per_img"]))
    print(console.table(summaries, ["case", "per_core_img_per_s", "cores_for_target",
                                    "pipeline_ms", "shuffle_ms", "read_ms", "decode_ms",
                                    "draft_decode_ms", "resize_crop_ms", "float_flip_ms",
                                    "stack_ms", "rest_ms"]))
    return {"batch_size": fv.batch_size, "batches": fv.batches, "warmup": fv.warmup,
            "rounds": fv.rounds,
            "target_img_per_s": fv.target_img_per_s, "rows": rows, "cases": summaries}


def main(argv: list[str] | None = None) -> int:
    return common.main(__doc__, __file__, define_flags, measure, argv,
                       "configs/cifar10_ddpmpp.py")


if __name__ == "__main__":
    sys.exit(main())
