"""The Python API of a notebook: train a run, sample it, judge the samples (``sagd_jax.train``,
``sagd_jax.sample``, ``sagd_jax.evaluate``; ``sagd_jax.Run`` for anything else).

    import sagd_jax

    sagd_jax.train("quickstart", "workdirs/quickstart", {"train.num_steps": 200})
    samples = sagd_jax.sample("workdirs/quickstart", num_samples=64, steps=100)
    results = sagd_jax.evaluate(samples)
    paths = sagd_jax.sample("workdirs/quickstart", num_samples=64, steps=100, sets=3)
    fid = sagd_jax.evaluate(paths)  # each set judged, then mean/std/min over the 3 seeds

The same work as the command lines, with their checks: bad input raises a one-line
``ValueError`` before anything is written. Each call prints the run's progress to stderr as the
tools do (the libraries' INFO logs stay off); ``quiet=True`` leaves only warnings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from sagd_jax import console

Overrides = Mapping[str, Any]


def load_config(config: Any, overrides: Overrides | None = None) -> Any:
    """A config: a ``ConfigDict`` (copied), a built-in name (``"quickstart"``,
    ``"cifar10_ddpmpp:cpu"``) or a file (``"configs/NAME.py[:VARIANT]"``), with the dotted
    ``overrides`` (``{"train.num_steps": 100}``) set; an unknown key is a one-line
    ``ValueError`` naming the closest ones."""
    from sagd_jax.config import check_keys, load_config_file, parent_of

    config = (load_config_file(config) if isinstance(config, str)
              else config.copy_and_resolve_references())
    overrides = dict(overrides or {})
    check_keys(list(overrides), config)
    for key, value in overrides.items():
        node, leaf = parent_of(config, key)
        try:
            node[leaf] = value
        except (TypeError, ValueError) as err:
            raise ValueError(f"{key}={value!r}: {str(err).splitlines()[0]}") from None
    return config


def train(config: Any, workdir: str, overrides: Overrides | None = None, *,
          quiet: bool = False) -> Any:
    """Train (or resume) the run of ``config`` (as ``load_config`` takes it) in ``workdir``;
    returns the final ``TrainState``. As ``python -m sagd_jax.main``: a workdir of another run
    is refused, a finished one returns at once."""
    from sagd_jax.train.loop import train_and_evaluate

    config = load_config(config, overrides)
    with console.quiet(quiet):
        return train_and_evaluate(config, workdir)


def sample(workdir: str, num_samples: int, sampler: str = "ddpm", steps: int = 250, *,
           out: str | None = None, png_dir: str | None = None, keep_chunks: bool = False,
           sets: int | None = None, quiet: bool = False, **options: Any) -> str | list[str]:
    """Draw ``num_samples`` images from the run in ``workdir``; returns the path of the set's
    ``samples.npz``. ``options``: the rest of ``sampling.SampleRequest`` (``seed``, ``eta``,
    ``clip_x0``, ``checkpoint_step``, ``chunk_size``, ``model``, ``time_grid``, ``float32``,
    ``condition``, ``known_band``, ...); ``out``, ``png_dir``, ``keep_chunks`` as
    ``python -m sagd_jax.sample`` takes them. A set of the same settings grows. ``sets=K``:
    K sets of the seeds ``seed`` .. ``seed + K - 1`` (``--sets``); returns their paths, a
    list (for ``evaluate``)."""
    from sagd_jax.sampling import SampleRequest, generate_sets

    _known("sample", options, [f.name for f in dataclasses.fields(SampleRequest)])
    request = SampleRequest(num_samples=num_samples, sampler=sampler, steps=steps, **options)
    with console.quiet(quiet):
        paths = generate_sets(workdir, request, 1 if sets is None else sets, out,
                              png_dir=png_dir, keep_chunks=keep_chunks)
    assert None not in paths  # only max_chunks stops early
    return paths[0] if sets is None else [str(path) for path in paths]


def evaluate(samples: str | Sequence[str], config: Any = None, *, out: str | None = None,
             classifier: str = "auto", inception: str = "auto",
             inception_weights: str | None = None, reference_stats: str | None = None,
             fid_sets: int | None = None, overwrite: bool = False, quiet: bool = False,
             **options: Any) -> dict[str, Any]:
    """Judge the sample set ``samples`` (an npz, a PNG/JPEG folder or a zip) against
    ``config``'s data (as ``load_config`` takes it; default: the run in the set's manifest);
    returns the results, also written to ``out`` (default beside the set). ``options``:
    ``band``, ``filter_band``, ``max_reference``, ``num_subsets``, ``subset_size``,
    ``model_units``, as ``python -m sagd_jax.evaluate`` takes them. Several sets (a list, as
    ``sample(..., sets=K)`` returns, or one set and ``fid_sets=K``: it and its K - 1 sibling
    seeds): each judged, then the summary over them (mean, std with ddof=1, min, max per
    metric; ``evaluation.evaluate_sets``), written to ``out``, is returned."""
    from sagd_jax.evaluation import InceptionRequest, evaluate_sets, split_sets
    from sagd_jax.evaluation import evaluate as judge

    _known("evaluate", options, EVALUATE_OPTIONS)
    request = InceptionRequest(inception, inception_weights, reference_stats)
    config = None if config is None else load_config(config)
    with console.quiet(quiet):
        if fid_sets is not None or len(split_sets(samples)) > 1:
            return evaluate_sets(samples, fid_sets, out, classifier=classifier,
                                 inception=request, config=config, overwrite=overwrite,
                                 **options)
        one = samples if isinstance(samples, str) else split_sets(samples)[0]
        return judge(one, out, classifier=classifier, inception=request, config=config,
                     overwrite=overwrite, **options)


EVALUATE_OPTIONS = ("band", "filter_band", "max_reference", "num_subsets", "subset_size",
                    "model_units")


def _known(function: str, options: Mapping[str, Any], known: Any) -> None:
    """A one-line ``ValueError`` for an option ``function`` does not take."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"{function}: no option {', '.join(unknown)} (options: "
                         f"{', '.join(sorted(known))})")
