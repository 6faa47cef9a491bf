"""An experiment's report: ``results.json``, ``table.md`` (with the seed summary) and its
figures, regenerated from the rows the driver collected."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from experiments.catalog import Experiment
from sagd_jax import console, files


def side_by_side(paths: list[str], labels: list[str], out: str) -> None:
    """Sample grids next to each other with a caption row (PIL); grayscale unless a grid is
    in colour."""
    from PIL import Image, ImageDraw

    opened = [Image.open(p) for p in paths]
    mode = "L" if all(g.mode == "L" for g in opened) else "RGB"
    grids = [g.convert(mode) for g in opened]
    white, black = (255, 0) if mode == "L" else ((255, 255, 255), (0, 0, 0))
    caption = 14
    width = sum(g.width for g in grids) + 8 * (len(grids) - 1)
    canvas = Image.new(mode, (width, max(g.height for g in grids) + caption), white)
    x = 0
    draw = ImageDraw.Draw(canvas)
    for grid, label in zip(grids, labels, strict=True):
        canvas.paste(grid, (x, caption))
        draw.text((x + 2, 1), label, fill=black)
        x += grid.width + 8
    canvas.save(out)


SEED_COLUMNS = ("loss", "spectrum_err", "spectrum_err_off_band", "fd", "kid_mean",
                "fd_off_band", "kid_off_band_mean", "inception_fid", "inception_kid_mean")


def seed_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per arm run with several seeds (rows named ``<arm>-seed<k>``): for each of
    ``SEED_COLUMNS`` that every seed has, ``"mean +- h"`` with h half the range over the seeds
    (two seeds: half their difference, the seed-to-seed scatter of that number)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        base, sep, seed = row["arm"].rpartition("-seed")
        if sep and seed.isdigit():
            groups.setdefault(base, []).append(row)
    summaries = []
    for base, group in groups.items():
        if len(group) < 2:
            continue
        summary: dict[str, Any] = {"arm": base, "seeds": len(group)}
        for column in SEED_COLUMNS:
            values = np.asarray([r[column] for r in group if r.get(column) is not None], float)
            if len(values) == len(group):
                half = (values.max() - values.min()) / 2
                summary[column] = f"{values.mean():.3g} +- {half:.2g}"
        summaries.append(summary)
    return summaries


TABLE_COLUMNS = (
    "arm", "fitted", "steps", "wall_s", "loss", "loss_t0.00-0.25", "loss_t0.25-0.50",
    "loss_t0.50-0.75", "loss_t0.75-1.00", "spectrum_err", "gaussian_floor",
    "spectrum_err_off_band", "low_freq_power_ratio", "outside_range", "fd", "kid",
    "fd_off_band", "kid_off_band", "band_energy_ratio", "grf_var_err", "grf_var_floor",
    "fid_in_training", "kid_in_training", "inception_fid", "inception_kid", "inception_is")


def report(name: str, exp: Experiment, rows: list[dict[str, Any]], out_dir: str,
           extra: dict[str, Any], write_results: bool = True) -> str:
    """``results.json`` (unless not ``write_results``), ``table.md`` and the figures of an
    experiment in ``out_dir``, regenerated from ``rows`` (atomically: a reader never sees half a
    file); returns the table."""
    from sagd_jax.metrics.spectra import plot_radial

    os.makedirs(out_dir, exist_ok=True)
    seeds = seed_summary(rows)
    if write_results:
        files.write_json(os.path.join(out_dir, "results.json"),
                         {"experiment": name, "rows": rows, "seed_summary": seeds, **extra})
    table = console.table(rows, TABLE_COLUMNS, digits=3, markdown=True)
    if seeds:
        table += ("\nArms with several seeds: mean +- half the range over the seeds\n\n"
                  + console.table(seeds, ("arm", "seeds", *SEED_COLUMNS), digits=3,
                                  markdown=True))
    with files.atomic_open(os.path.join(out_dir, "table.md")) as f:
        f.write(table)
    spectra = {r["arm"]: np.asarray(r["spectrum"]["samples"]) for r in rows if "spectrum" in r}
    if spectra:
        first = next(r for r in rows if "spectrum" in r)["spectrum"]
        spectra["data"] = np.asarray(first["reference"])
        plot_radial(os.path.join(out_dir, "spectra.png"), np.asarray(first["rho"]), spectra,
                    ylabel="power |F x|^2", title=exp.description)
        reference = spectra.pop("data")
        with np.errstate(invalid="ignore", divide="ignore"):
            ratios = {arm: np.where(p / reference > 1e-3, p / reference, np.nan)
                      for arm, p in spectra.items()}
        plot_radial(os.path.join(out_dir, "spectra_ratio.png"), np.asarray(first["rho"]), ratios,
                    ylabel="power / test data's power",
                    title="ratios below 1e-3 (empty bands) left out")
    if exp.score_error_curve and rows:
        plot_score_error(extra, os.path.join(out_dir, "score_error.png"))
    grids = [(r["grid"], r["arm"]) for r in rows if r.get("grid")]
    if grids:
        side_by_side([g for g, _ in grids], [a for _, a in grids],
                     os.path.join(out_dir, "samples.png"))
    return table


def plot_score_error(extra: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for key, curve in extra.items():
        if key.startswith("score_error/"):
            ax.loglog(curve["t"], curve["relative_score_error"], marker="o", markersize=3,
                      label=key.split("/", 1)[1])
    ax.set_xlabel("t")
    ax.set_ylabel("E|P(s_theta - s*)|^2 / E|P s*|^2")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
