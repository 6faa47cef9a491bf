"""FID Inception-v3 features per second against torch-fidelity's, and what in-training FID costs.

    python benchmarks/inception_throughput.py                   # sizes 32, 256; DDPM++ 64 ch
    python benchmarks/inception_throughput.py --sizes=32 --rounds=5 --json=out.json
    python benchmarks/inception_throughput.py --config=configs/quickstart.py --num_samples=50000

1. Features: ``sagd_jax.metrics.inception.InceptionFeatures`` (jitted; one warm-up call compiles
   it) against torch-fidelity's ``FeatureExtractorInceptionV3`` (pure torch, ``no_grad``, eval,
   ``torch.set_num_threads(os.cpu_count())``, one warm-up call), both asked for the 2048-d pool
   features and the bias-free logits, with the same weights (``random_state_dict(--seed)``
   written to an ``.npz`` and a ``.pth``, or ``--inception_weights``) on the same uint8 images
   (random smooth images, one set per size of ``--sizes``, ``--batches`` batches of
   ``--batch_size``). Timed in ``--rounds`` alternating blocks (the order swaps every round),
   img/s = median over the rounds; ``ratio`` = ours / theirs (> 1: ours is faster);
   ``ratio_best`` = the best round of each (on a shared machine: the least contended). Each block
   includes the host work of its side (ours: padding, transfer, the arrays back; theirs: NHWC
   -> NCHW). ``features_rel_diff`` / ``logits_rel_diff``: max |ours - theirs| / max |theirs|
   over every image (``max_rel_diff``: the largest; a ``Failed`` above ``--tolerance``). Also:
   ours split into its resize (``preprocess``) and network programs timed alone,
   torch-fidelity's resize timed alone, and the FLOP rate of each (XLA's count of the network,
   per image) against the f32 matmul rate. On a CPU, ours is compiled with
   ``inception.CPU_COMPILER_OPTIONS`` (XLA's own convolution kernels instead of YNNPACK's), and
   the network alone is also timed with XLA's default options (``network_xla_default_ms``;
   ``ynnpack_off_speedup`` = that / ours, ``xla_default_rel_diff`` its output's difference).
2. In-training FID as a fraction of a run (the config, default ``configs/cifar10_ddpmpp.py:cpu``):
   one evaluation = ``--num_samples`` samples (default ``eval.num_samples``) through the
   evaluation sampler (``eval.sampler`` / ``eval.steps``, else ``train.sampler`` /
   ``train.sample_steps``: NFE network evaluations each) + their Inception features (our rate
   at the measured size closest to the config's) + FID/KID from the features (timed on random
   features of that count); training between evaluations = ``--eval_every`` steps (default
   ``train.eval_every``, else 20,000) of ``train.batch_size``. The sampler is timed at
   ``--sample_batch`` with ``--sampler_steps`` steps and the train step (``Run.train_step``, a
   fresh init) at ``--train_batch``: both small on a CPU, scaled linearly in images and (the
   sampler) in NFE, which the output says. ``eval_fraction`` = eval / (train + eval). The
   one-time Inception statistics of the reference (``eval.reference_images``) at the start of a
   run are reported apart (``reference_s``).

The load average before and after is recorded: on a shared machine a contended block shows as a
spread between rounds (all are in the JSON).
"""

from __future__ import annotations

import copy
import importlib.util
import os
import sys
import tempfile
import time
import types
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/NAME.py`` from anywhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from absl import flags

from benchmarks import common
from sagd_jax import console

FEATURES_LIST = ["2048", "logits_unbiased"]
DEFAULT_EVAL_EVERY = 20_000
CPU_BATCH = 4  # the default sample / train batch on a CPU (scaled linearly to the config's)
# XLA:CPU (jaxlib 0.10) sends convolutions to YNNPACK by default; with this per-program option
# they run on XLA's own kernels instead: a candidate setting for the Inception program only.
XLA_DEFAULT: dict[str, str] = {}  # the compiler options of a plain jax.jit
NFE = {"ddpm": lambda s: s, "ddim": lambda s: s, "ode_euler": lambda s: s,
       "ode_heun": lambda s: 2 * s - 1, "sde": lambda s: s}  # as sample_throughput.py


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_list("sizes", ["32", "256"], "Image sizes (square, RGB).", flag_values=fv)
    flags.DEFINE_integer("batch_size", 50, "Inception batch, both sides.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("batches", 1, "Batches per timed block.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("rounds", 3, "Alternating ours/theirs blocks per size (medians).",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed of the random weights and images.", flag_values=fv)
    flags.DEFINE_string("inception_weights", None, "A FID Inception .pth state dict for both "
                        "sides (default: random weights with the real tensor names).",
                        flag_values=fv)
    flags.DEFINE_boolean("compare", True, "Time torch-fidelity too (needs torch and "
                         "torch-fidelity); --nocompare: ours alone.", flag_values=fv)
    flags.DEFINE_float("tolerance", 1e-3, "Largest relative difference of features or logits "
                       "accepted.", lower_bound=0.0, flag_values=fv)
    flags.DEFINE_boolean("fraction", True, "Measure the in-training FID cost (part 2).",
                         flag_values=fv)
    flags.DEFINE_integer("num_samples", None, "Samples per evaluation (default: "
                         "eval.num_samples).", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("eval_every", None, "Train steps between evaluations (default: "
                         f"train.eval_every, else {DEFAULT_EVAL_EVERY}).", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("sample_batch", None, "Batch the sampler is timed at (default: "
                         f"eval.batch_size; on a CPU at most {CPU_BATCH}).", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("sampler_steps", 2, "Sampler steps timed (scaled by NFE to the "
                         "evaluation's).", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("train_batch", None, "Batch the train step is timed at (default: "
                         f"train.batch_size; on a CPU at most {CPU_BATCH}).", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("repeats", 2, "Timed sampler calls and train steps (medians).",
                         lower_bound=1, flag_values=fv)


# --- images and weights ----------------------------------------------------------------------

def smooth_images(count: int, size: int, seed: int) -> np.ndarray:
    """Random smooth uint8 images ``(count, size, size, 3)``: coarse noise (a quarter of the
    size) upsampled by nearest neighbours, plus a diagonal gradient and fine noise."""
    rng = np.random.default_rng(seed)
    cells = max(size // 4, 2)
    coarse = rng.uniform(0, 255, (count, cells, cells, 3))
    index = (np.linspace(0, 1, size) * (cells - 1)).round().astype(int)
    ramp = np.linspace(0, 1, size)
    image = coarse[:, index][:, :, index] * 0.7 + 60 * (ramp[:, None] + ramp[None, :])[..., None]
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def torch_fidelity_inception() -> Any:
    """torch-fidelity's ``feature_extractor_inceptionv3`` module, imported without the
    package ``__init__`` (which imports torchvision); ``Failed`` when it is not installed."""
    if importlib.util.find_spec("torch") is None:
        raise common.Failed("torch is not installed (--nocompare times ours alone)")
    if "torch_fidelity" not in sys.modules:
        spec = importlib.util.find_spec("torch_fidelity")
        if spec is None:
            raise common.Failed("torch-fidelity is not installed (pip install --no-deps "
                                "torch-fidelity; --nocompare times ours alone)")
        package = types.ModuleType("torch_fidelity")
        package.__spec__ = spec
        package.__path__ = list(spec.submodule_search_locations or [])
        sys.modules["torch_fidelity"] = package
    import torch_fidelity.feature_extractor_inceptionv3 as module

    return module


def weight_files(folder: str, given: str | None, seed: int, compare: bool) -> tuple[str, str]:
    """Paths of the same weights for ours and for torch-fidelity: ``given`` for both, else
    ``random_state_dict(seed)`` as ``.npz`` (ours) and ``.pth`` (torch, when ``compare``)."""
    if given:
        if not os.path.isfile(given):
            raise ValueError(f"--inception_weights={given}: no such file")
        return given, given
    from sagd_jax.metrics.inception import random_state_dict

    state = random_state_dict(seed)
    ours, theirs = os.path.join(folder, "inception.npz"), os.path.join(folder, "inception.pth")
    np.savez(ours, **state)
    if compare:
        import torch

        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, theirs)
    return ours, theirs


# --- part 1: the two feature extractors ----------------------------------------------------

class Theirs:
    """torch-fidelity's extractor on uint8 NHWC numpy batches."""

    def __init__(self, path: str, batch_size: int):
        import torch

        module = torch_fidelity_inception()
        torch.set_num_threads(os.cpu_count() or 1)
        self.torch, self.batch_size = torch, batch_size
        self.net = module.FeatureExtractorInceptionV3("inception-v3-compat", FEATURES_LIST,
                                                      feature_extractor_weights_path=path)
        self.net.eval()

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feats, logits = [], []
        with self.torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                x = self.torch.from_numpy(images[start:start + self.batch_size])
                f, g = self.net(x.permute(0, 3, 1, 2).contiguous())
                feats.append(f.numpy())
                logits.append(g.numpy())
        return np.concatenate(feats), np.concatenate(logits)

    def resize_seconds(self, images: np.ndarray) -> float:
        """Seconds of torch-fidelity's TF1 resize of ``images`` alone (its first step)."""
        from torch_fidelity.interpolate_compat_tensorflow import (
            interpolate_bilinear_2d_like_tensorflow1x,
        )

        with self.torch.no_grad():
            start = time.perf_counter()
            for i in range(0, len(images), self.batch_size):
                x = self.torch.from_numpy(images[i:i + self.batch_size])
                interpolate_bilinear_2d_like_tensorflow1x(
                    x.permute(0, 3, 1, 2).contiguous().float(), size=(299, 299),
                    align_corners=False)
            return time.perf_counter() - start


def relative(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def timed_block(fn: Any, images: np.ndarray) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn(images)
    return len(images) / (time.perf_counter() - start), out


def our_parts(path: str, images: np.ndarray, batch_size: int) -> dict[str, Any]:
    """ms per image of our two programs timed alone on one batch (the first of ``images``):
    the resize (``preprocess``: uint8 -> 299x299 float) and the network; the network's XLA
    FLOP count per image; on a CPU also the network compiled with XLA's defaults (alternating with
    the default, medians of 3) and its largest relative difference from the default's
    features and logits."""
    import jax

    from sagd_jax.metrics.inception import (
        CPU_COMPILER_OPTIONS,
        InceptionV3,
        preprocess,
        read_weights,
    )

    variables, _ = read_weights(path)
    batch = jax.device_put(images[:batch_size])
    cpu = jax.devices()[0].platform == "cpu"
    resize = jax.jit(preprocess)
    network = jax.jit(InceptionV3().apply,  # as InceptionFeatures compiles it
                      compiler_options=CPU_COMPILER_OPTIONS if cpu else None)
    x = jax.block_until_ready(resize(batch))
    reference = jax.block_until_ready(network(variables, x))
    cost = network.lower(variables, x).cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    count = len(batch)
    out: dict[str, Any] = {
        "ours_resize_ms": 1e3 * common.median(common.timed(lambda: resize(batch), 3)) / count,
        "network_gflop_per_img": float(cost["flops"]) / count / 1e9}
    variants = {"ours_network_ms": network}
    if cpu:
        default = jax.jit(InceptionV3().apply)
        other = default(variables, x)
        variants["network_xla_default_ms"] = default
        out["xla_default_rel_diff"] = max(relative(np.asarray(a), np.asarray(b))
                                          for a, b in zip(other, reference, strict=True))
    times: dict[str, list[float]] = {key: [] for key in variants}
    for _ in range(3):
        for key, fn in variants.items():
            times[key] += common.timed(lambda fn=fn: fn(variables, x), 1)
    out |= {key: 1e3 * common.median(t) / count for key, t in times.items()}
    if "network_xla_default_ms" in out:
        out["ynnpack_off_speedup"] = out["network_xla_default_ms"] / out["ours_network_ms"]
    return out


def measure_features(fv: flags.FlagValues, sizes: list[int], folder: str
                     ) -> list[dict[str, Any]]:
    """Part 1: a row per size (see the module docstring)."""
    from sagd_jax.metrics.inception import InceptionFeatures

    ours_path, theirs_path = weight_files(folder, fv.inception_weights, fv.seed, fv.compare)
    ours = InceptionFeatures.from_file(ours_path, batch_size=fv.batch_size,
                                       mesh=common.default_mesh())
    theirs = Theirs(theirs_path, fv.batch_size) if fv.compare else None
    rows = []
    for size in sizes:
        images = smooth_images(fv.batch_size * fv.batches, size, fv.seed + size)
        ours.features_and_logits(images[:fv.batch_size])  # warm-up: compiles
        if theirs is not None:
            theirs(images[:fv.batch_size])
        rates: dict[str, list[float]] = {"ours": [], "theirs": []}
        outs: dict[str, Any] = {}
        for r in range(fv.rounds):
            sides = [("ours", ours.features_and_logits)]
            if theirs is not None:
                sides.append(("theirs", theirs))
            for name, fn in sides if r % 2 == 0 else sides[::-1]:
                rate, outs[name] = timed_block(fn, images)
                rates[name].append(rate)
            print(f"size {size}, round {r + 1}: ours {rates['ours'][-1]:.3g} img/s"
                  + (f", theirs {rates['theirs'][-1]:.3g} img/s" if theirs else ""), flush=True)
        row: dict[str, Any] = {"size": size, "images": len(images),
                               "ours_img_per_s": common.median(rates["ours"]),
                               "ours_best_img_per_s": max(rates["ours"]),
                               "ours_rounds": rates["ours"]}
        row |= our_parts(ours_path, images, fv.batch_size)
        row["ours_gflops"] = row["network_gflop_per_img"] * row["ours_img_per_s"]
        if theirs is not None:
            feats, logits = outs["ours"]
            row |= {"theirs_img_per_s": common.median(rates["theirs"]),
                    "theirs_best_img_per_s": max(rates["theirs"]),
                    "theirs_rounds": rates["theirs"],
                    "features_rel_diff": relative(feats, outs["theirs"][0]),
                    "logits_rel_diff": relative(logits, outs["theirs"][1]),
                    "theirs_resize_ms": 1e3 * theirs.resize_seconds(images) / len(images)}
            row["ratio"] = row["ours_img_per_s"] / row["theirs_img_per_s"]
            row["ratio_best"] = row["ours_best_img_per_s"] / row["theirs_best_img_per_s"]
            row["theirs_gflops"] = row["network_gflop_per_img"] * row["theirs_img_per_s"]
            print(f"size {size}: ratio ours/theirs {row['ratio']:.3f}; max relative "
                  f"difference: features {row['features_rel_diff']:.2g}, logits "
                  f"{row['logits_rel_diff']:.2g}", flush=True)
        rows.append(row)
    return rows


# --- part 2: in-training evaluation against training ---------------------------------------

def default_batch(given: int | None, configured: int) -> int:
    import jax

    if given is not None:
        return given
    return min(configured, CPU_BATCH) if jax.devices()[0].platform == "cpu" else configured


def sampler_seconds(run: Any, params: Any, sampler_name: str, batch: int, steps: int,
                    repeats: int) -> float:
    """Median seconds of one jitted sampler call (``steps`` steps, ``batch`` images; compiled
    by a first call)."""
    import jax

    from sagd_jax.samplers import get_sampler

    sampler = get_sampler(sampler_name)
    eps_fn = run.eps_fn(params)
    shape = (batch, *run.image_shape)

    def draw() -> Any:
        return sampler(run.process, eps_fn, jax.random.key(1), shape, steps)

    jax.block_until_ready(draw())
    return common.median(common.timed(draw, repeats))


def train_step_seconds(run: Any, state: Any, mesh: Any, batch: int, repeats: int) -> float:
    """Median seconds of the trainer's step (``Run.train_step``) at ``batch`` after a warm-up
    step that compiles it."""
    import jax

    from sagd_jax.sharding import batch_sharding

    x = jax.device_put(jax.random.uniform(jax.random.key(0), (batch, *run.image_shape),
                                          minval=-1.0, maxval=1.0), batch_sharding(mesh))
    step = run.train_step(mesh)
    state, metrics = step(state, x)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, metrics = step(state, x)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return common.median(times)


def metrics_seconds(num_samples: int, reference: int, seed: int) -> float:
    """Seconds of FID and KID from ``num_samples`` features against ``reference`` reference
    features (random; the arithmetic does not depend on the values), as the evaluation
    computes them."""
    from sagd_jax.metrics.features import GaussianStats, frechet_distance, kernel_distance

    rng = np.random.default_rng(seed)
    features = rng.normal(size=(num_samples, 2048)).astype(np.float32)
    ref = rng.normal(size=(reference, 2048)).astype(np.float32)
    ref_stats = GaussianStats.of(ref)  # cached with the reference in a run: not timed
    start = time.perf_counter()
    frechet_distance(GaussianStats.of(features), ref_stats)
    kernel_distance(features, ref, subset_size=min(1000, num_samples))
    return time.perf_counter() - start


def eval_plan(fv: flags.FlagValues) -> dict[str, Any]:
    """Part 2's settings from the flags and the config; a one-line ``ValueError`` on bad ones
    (checked before anything is measured)."""
    cfg_eval, cfg_train = fv.config.eval, fv.config.train
    sampler = cfg_eval.sampler or cfg_train.sampler
    if sampler not in NFE:
        raise ValueError(f"eval.sampler / train.sampler={sampler!r}: known: {', '.join(NFE)}")
    steps = cfg_eval.steps or cfg_train.sample_steps
    if NFE[sampler](fv.sampler_steps) > NFE[sampler](steps):
        raise ValueError(f"--sampler_steps={fv.sampler_steps}: more than the evaluation's "
                         f"{steps} steps")
    return {"sampler": sampler, "steps": steps,
            "num_samples": fv.num_samples or cfg_eval.num_samples,
            "eval_every": fv.eval_every or cfg_train.eval_every or DEFAULT_EVAL_EVERY,
            "train_batch_config": cfg_train.batch_size,
            "sample_batch": default_batch(fv.sample_batch, cfg_eval.batch_size),
            "train_batch": default_batch(fv.train_batch, cfg_train.batch_size)}


def measure_fraction(fv: flags.FlagValues, inception_rows: list[dict[str, Any]]
                     ) -> dict[str, Any]:
    """Part 2 (see the module docstring)."""
    from benchmarks.train_throughput import bare_run

    plan = eval_plan(fv)
    sampler_name, steps, num_samples = plan["sampler"], plan["steps"], plan["num_samples"]
    eval_every, train_batch_config = plan["eval_every"], plan["train_batch_config"]
    sample_batch, train_batch = plan["sample_batch"], plan["train_batch"]
    config = copy.deepcopy(fv.config)
    config.train.batch_size = train_batch
    config.train.grad_accum_steps = 1
    config.train.eval_every = 0  # the run needs no Inception weights here
    run = bare_run(config)
    mesh = common.default_mesh()
    state = run.init_state(mesh)
    print(f"fraction: {config.model.ch}-channel network on {run.image_shape}; sampler "
          f"{sampler_name} x{fv.sampler_steps} steps at batch {sample_batch}; train step at "
          f"batch {train_batch}", flush=True)
    sample_s = sampler_seconds(run, state.ema_params, sampler_name, sample_batch,
                               fv.sampler_steps, fv.repeats)
    step_s = train_step_seconds(run, state, mesh, train_batch, fv.repeats)
    size = run.image_shape[0]
    row = min(inception_rows, key=lambda r: (abs(r["size"] - size), r["size"]))
    inception_rate = row["ours_img_per_s"]
    reference_images = fv.config.eval.reference_images
    metric_s = metrics_seconds(num_samples, min(reference_images, num_samples), fv.seed)

    timed_nfe, nfe = NFE[sampler_name](fv.sampler_steps), NFE[sampler_name](steps)
    per_image_nfe_s = sample_s / (sample_batch * timed_nfe)
    sampling_s = num_samples * nfe * per_image_nfe_s
    inception_s = num_samples / inception_rate
    eval_s = sampling_s + inception_s + metric_s
    train_s = eval_every * train_batch_config * step_s / train_batch
    result = {
        "sampler": sampler_name, "eval_steps": steps, "nfe": nfe, "num_samples": num_samples,
        "eval_every": eval_every, "train_batch_size": train_batch_config,
        "sample_batch": sample_batch, "sampler_steps_timed": fv.sampler_steps,
        "sampler_call_s": sample_s, "sample_img_per_s_per_nfe": 1 / per_image_nfe_s,
        "train_batch_timed": train_batch, "train_step_s": step_s,
        "train_img_per_s": train_batch / step_s,
        "inception_size_used": row["size"], "inception_img_per_s": inception_rate,
        "sampling_s": sampling_s, "inception_s": inception_s, "fid_kid_s": metric_s,
        "eval_s": eval_s, "train_s": train_s, "eval_fraction": eval_s / (train_s + eval_s),
        "inception_share_of_eval": inception_s / eval_s,
        "reference_images": reference_images, "reference_s": reference_images / inception_rate,
        "extrapolated": (f"sampler timed at batch {sample_batch} x {timed_nfe} NFE, scaled "
                         f"linearly to {num_samples} samples x {nfe} NFE; train step timed at "
                         f"batch {train_batch}, scaled linearly to {eval_every} steps of "
                         f"{train_batch_config}"),
    }
    print(f"one evaluation of {num_samples} samples ({sampler_name}, {nfe} NFE): sampling "
          f"{console.duration(sampling_s)} + Inception {console.duration(inception_s)} + "
          f"FID/KID {console.duration(metric_s)} = {console.duration(eval_s)}; training "
          f"{eval_every} steps of {train_batch_config}: {console.duration(train_s)}; eval "
          f"fraction {result['eval_fraction']:.3f}", flush=True)
    print(f"(extrapolated: {result['extrapolated']})", flush=True)
    return result


# --- the script --------------------------------------------------------------------------

def versions(compare: bool) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("flax", "numpy", *(("torch", "torch-fidelity") if compare else ())):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


def measure(fv: flags.FlagValues, command: common.Command) -> dict[str, Any]:
    sizes = common.int_list(fv.sizes, "--sizes", distinct=True)
    if fv.inception_weights and not os.path.isfile(fv.inception_weights):
        raise ValueError(f"--inception_weights={fv.inception_weights}: no such file")
    if fv.fraction:
        eval_plan(fv)
    if fv.compare:
        torch_fidelity_inception()  # Failed before anything runs when missing
    import jax

    load_before = os.getloadavg()
    print(f"Inception features: sizes {sizes}, batch {fv.batch_size} x {fv.batches}, "
          f"{fv.rounds} rounds, {os.cpu_count()} CPUs, {jax.devices()[0].device_kind}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="inception_throughput.") as folder:
        rows = measure_features(fv, sizes, folder)
    result: dict[str, Any] = {
        "sizes": sizes, "batch_size": fv.batch_size, "batches": fv.batches,
        "rounds": fv.rounds, "weights": fv.inception_weights or f"random_state_dict({fv.seed})",
        "versions": versions(fv.compare), "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "matmul_gflops": common.matmul_gflops(), "rows": rows}
    if fv.compare:
        import torch

        result["torch_threads"] = torch.get_num_threads()
        result["min_ratio"] = min(row["ratio"] for row in rows)
        result["max_rel_diff"] = max(max(row["features_rel_diff"], row["logits_rel_diff"])
                                     for row in rows)
    print(console.table(rows, ["size", "ours_img_per_s", "theirs_img_per_s", "ratio",
                               "ratio_best", "features_rel_diff", "logits_rel_diff",
                               "ours_resize_ms", "ours_network_ms", "network_xla_default_ms",
                               "ynnpack_off_speedup", "theirs_resize_ms", "ours_gflops",
                               "theirs_gflops"]))
    if fv.fraction:
        result["fraction"] = measure_fraction(fv, rows)
    result["load_average_before"], result["load_average_after"] = load_before, os.getloadavg()
    if fv.compare and result["max_rel_diff"] > fv.tolerance:
        raise common.Failed(f"ours and torch-fidelity's features differ by "
                            f"{result['max_rel_diff']:.3g} (relative) > --tolerance="
                            f"{fv.tolerance}")
    return result


def main(argv: list[str] | None = None) -> int:
    return common.main(__doc__, __file__, define_flags, measure, argv,
                       "configs/cifar10_ddpmpp.py:cpu")


if __name__ == "__main__":
    sys.exit(main())
