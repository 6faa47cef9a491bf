"""Generate images from a trained run, in resumable chunks, sharded over all devices.

    python -m sagd_jax.sample --workdir=DIR --num_samples=N --sampler=ddpm --steps=S \\
        [--config=configs/NAME.py] [--seed=K] [--eta=E] [--clip_x0=C] [--checkpoint_step=STEP] \\
        [--chunk_size=C] [--out=OUTDIR] [--model=ema|exact] [--float32] [--png_dir=DIR] \\
        [--keep_chunks] [--time_grid=auto|uniform|edm|snr|logsnr] \\
        [--condition=FILE.npz --known_band=SPEC] \\
        [--labels=balanced|random|N,M,...] [--guidance=W] [--guidance_interval=LO:HI] \\
        [--guidance_band=SPEC] [--guide_workdir=DIR [--guide_step=STEP]] [--sets=K] \\
        [--params=ema|posthoc:STD]

Writes the sample set ``sagd_jax.sampling`` describes (``samples.npz``: ``arr_0`` uint8 pixels,
the layout FID tools read; ``grid.png``; ``manifest.json``) and prints its path; a stopped call
continues where it stopped, bit for bit, and the same command with a larger ``--num_samples``
grows the set (its samples unchanged, then the new ones). ``--float32`` also keeps the
unquantised samples in model units; ``--png_dir`` writes every sample as a PNG file there.
A class-conditional run's samples carry their labels (``arr_1``); ``--guidance=W`` guides them
(classifier-free, or with a weaker run's model: ``--guide_workdir``).

``--params=posthoc:STD`` samples with the post-hoc EMA of relative std STD (a run trained with
``ema.snapshot_every``; reconstructed once and kept: ``python -m sagd_jax.posthoc_ema``), ending
at snapshot ``--checkpoint_step`` (default the last); the set's name ends ``-posthoc<STD>``.

``--sets=K`` makes K such sets with the seeds ``--seed``, ``--seed``+1, ..., +K-1 (a published FID
is the mean or minimum over a few seeds: ``python -m sagd_jax.evaluate --fid_sets=K`` judges
them): each in its default folder (the seed is part of its name), or with ``--out=DIR`` in
``DIR/seed<S>`` (``--png_dir=P``: ``P/seed<S>``); one path printed per set. A rerun samples only
what is missing; ``--max_chunks`` counts per set. ``--sets=1`` (the default) is one set, as
without the flag.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

from sagd_jax import cli, validate
from sagd_jax.sampling import SampleRequest, generate_sets


def define_flags(fv: flags.FlagValues) -> None:
    cli.define_config(fv, required=False, help_text="Optional: the run's config file; must "
                      "match the workdir's run.")
    flags.DEFINE_string("workdir", None, "The training workdir (--workdir of "
                        "python -m sagd_jax.main).", flag_values=fv, required=True)
    flags.DEFINE_integer("num_samples", None, "Number of images.", flag_values=fv,
                         required=True)
    flags.DEFINE_string("sampler", "ddpm", "ddpm | ddim | ode_euler | ode_heun | sde | dpmpp_2m",
                        flag_values=fv)
    flags.DEFINE_integer("steps", 250, "Sampler iterations.", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Sampling seed (independent of the training seed).",
                         flag_values=fv)
    flags.DEFINE_float("eta", None, "DDIM's eta (0: deterministic, 1: DDPM's posterior).",
                       flag_values=fv)
    flags.DEFINE_float("clip_x0", None, "ddpm, ddim: clip x0_hat to [-C, C] at every step "
                       "(the data range is 1); default: no clipping.", flag_values=fv)
    flags.DEFINE_integer("checkpoint_step", None, "Checkpoint to load (default: latest).",
                         flag_values=fv)
    flags.DEFINE_integer("chunk_size", 256, "Images per chunk (a multiple of the devices).",
                         flag_values=fv)
    flags.DEFINE_string("out", None, "Output directory (default DIR/generated/...).",
                        flag_values=fv)
    flags.DEFINE_enum("model", "ema", ["ema", "exact"], "EMA network, or the exact Gaussian "
                      "model of grf data (no checkpoint).", flag_values=fv)
    flags.DEFINE_integer("max_chunks", None, "Compute at most this many chunks in this call "
                         "(of each set, with --sets).",
                         flag_values=fv)
    flags.DEFINE_enum("time_grid", "auto", ["auto", "uniform", "edm", "snr", "logsnr"],
                      "Sampler times: uniform in t, EDM's rho = 7 noise levels, EDM's rule per "
                      "frequency on the run's data spectrum, or uniform in log SNR; auto: "
                      "logsnr for ddim and dpmpp_2m, else uniform (sagd_jax.time_grids).",
                      flag_values=fv)
    flags.DEFINE_string("condition", None, "Band-conditional: an .npz of known images "
                        "(N, H, W, C); sample j keeps the known bands of image j mod N.",
                        flag_values=fv)
    flags.DEFINE_string("known_band", None, "With --condition: the known bins as a band spec "
                        "(noise.bands syntax), e.g. lowpass::0.25.", flag_values=fv)
    flags.DEFINE_boolean("float32", False, "Also keep the unquantised float32 samples (model "
                         "units) in samples.npz (a setting of the set).", flag_values=fv)
    flags.DEFINE_string("png_dir", None, "Also write every sample as DIR/NNNNNN.png (files "
                        "already there are kept).", flag_values=fv)
    flags.DEFINE_boolean("keep_chunks", False, "Keep the chunk files once samples.npz is "
                         "written and verified (default: removed).", flag_values=fv)
    flags.DEFINE_string("labels", None, "Class-conditional runs: balanced (default: sample j "
                        "has class j mod K) | random | N,M,... (sample j has entry j mod the "
                        "list's length).", flag_values=fv)
    flags.DEFINE_float("guidance", 1.0, "Guidance weight W of eps_u + W (eps_c - eps_u): 1 = "
                       "none (the conditional model), 0 = unconditional, > 1 guides.",
                       flag_values=fv)
    flags.DEFINE_string("guidance_interval", None, "LO:HI: guide only at noise levels "
                        "sigma/alpha in [LO, HI] (Kynkaanniemi et al. 2024).", flag_values=fv)
    flags.DEFINE_string("guidance_band", None, "Guidance shaped in frequency: W inside the "
                        "band (noise.bands syntax, e.g. lowpass::0.25) or powerlaw:GAMMA[:RHO0], "
                        "1 outside.", flag_values=fv)
    flags.DEFINE_string("guide_workdir", None, "Autoguidance: guide with this run's EMA model "
                        "(a weaker model of the same task: smaller, or trained less) instead "
                        "of the unconditional prediction.", flag_values=fv)
    flags.DEFINE_integer("guide_step", None, "The guide's checkpoint (default: its latest).",
                         flag_values=fv)
    flags.DEFINE_string("params", "ema", "The network's weights: ema (optim.ema_decay's EMA of "
                        "--checkpoint_step) | posthoc:STD (the post-hoc EMA of relative std STD "
                        "ending at snapshot --checkpoint_step, default the last: "
                        "sagd_jax.posthoc_ema).", flag_values=fv)
    flags.DEFINE_integer("sets", 1, "Make K sets, seeds --seed .. --seed+K-1 (FID over seeds: "
                         "sagd_jax.evaluate --fid_sets=K), each in its default folder or, with "
                         "--out=DIR, in DIR/seed<S>.", flag_values=fv)
    cli.define_distributed(fv)


def sample(fv: flags.FlagValues) -> None:
    request = SampleRequest(
        num_samples=fv.num_samples, sampler=fv.sampler, steps=fv.steps, seed=fv.seed,
        eta=fv.eta, clip_x0=fv.clip_x0, checkpoint_step=fv.checkpoint_step,
        chunk_size=fv.chunk_size, model=fv.model, time_grid=fv.time_grid,
        condition=fv.condition,
        known_band=fv.known_band, float32=fv.float32, labels=fv.labels,
        guidance=fv.guidance, guidance_interval=fv.guidance_interval,
        guidance_band=fv.guidance_band, guide_workdir=fv.guide_workdir,
        guide_step=fv.guide_step, params=fv.params)
    validate.integer("--sets", fv.sets, 1)
    cli.initialize_distributed(fv)
    paths = generate_sets(fv.workdir, request, fv.sets, fv.out, fv.config, fv.max_chunks,
                          png_dir=fv.png_dir, keep_chunks=fv.keep_chunks)
    for seed, path in enumerate(paths, fv.seed):
        stopped = "stopped early (--max_chunks); run again to continue"
        print(path or (stopped if fv.sets == 1 else f"set of seed {seed}: {stopped}"))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sampling CLI on ``argv`` (default ``sys.argv``); returns the exit status."""
    return cli.run(__doc__, define_flags, sample, argv)


def run() -> None:
    """Console-script entry point (``sagd-sample``)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
