"""An experiment's report: ``results.json``, ``table.md`` (with the seed summary) and its
figures, regenerated from the rows the driver collected."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from experiments.catalog import Experiment
from sagd_jax import console, files

GRIDS = ("grid", "guided_grid")  # the row keys of sample grids (paths) that figures show


def side_by_side(paths: list[str], labels: list[str], out: str) -> None:
    """Sample grids next to each other with a caption row (PIL); grayscale unless a grid is
    in colour."""
    stacked([list(zip(paths, labels, strict=True))], out)


def stacked(lines: list[list[tuple[str, str]]], out: str) -> None:
    """Lines of (sample grid, caption) one above the other, each line's grids next to each
    other under a caption row (PIL); grayscale unless a grid is in colour."""
    from PIL import Image, ImageDraw

    opened = [[(Image.open(p), label) for p, label in line] for line in lines]
    mode = "L" if all(g.mode == "L" for line in opened for g, _ in line) else "RGB"
    white, black = (255, 0) if mode == "L" else ((255, 255, 255), (0, 0, 0))
    caption = 14
    widths = [sum(g.width for g, _ in line) + 8 * (len(line) - 1) for line in opened]
    heights = [max(g.height for g, _ in line) + caption for line in opened]
    canvas = Image.new(mode, (max(widths), sum(heights) + 8 * (len(lines) - 1)), white)
    draw = ImageDraw.Draw(canvas)
    y = 0
    for line, height in zip(opened, heights, strict=True):
        x = 0
        for grid, label in line:
            canvas.paste(grid.convert(mode), (x, y + caption))
            draw.text((x + 2, y + 1), label, fill=black)
            x += grid.width + 8
        y += height + 8
    canvas.save(out)


SEED_COLUMNS = ("loss", "spectrum_err", "spectrum_err_off_band", "fd", "kid_mean",
                "fd_off_band", "kid_off_band_mean", "inception_fid", "inception_kid_mean",
                "class_accuracy")


def seed_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per arm run with several seeds (rows named ``<arm>-seed<k>``, or
    ``<arm>-seed<k> (<setting>)``: the summary row ``<arm> (<setting>)``): for each of
    ``SEED_COLUMNS`` that every seed has, ``"mean +- h"`` with h half the range over the seeds
    (two seeds: half their difference, the seed-to-seed scatter of that number)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        name, paren, setting = row["arm"].partition(" (")
        base, sep, seed = name.rpartition("-seed")
        if sep and seed.isdigit():
            groups.setdefault(base + paren + setting, []).append(row)
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
    "class_accuracy", "fd_off_band", "kid_off_band", "band_energy_ratio", "grf_var_err",
    "grf_var_floor", "fid_in_training", "kid_in_training", "inception_fid", "inception_kid",
    "inception_is")


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
    ratios = guidance_ratios(rows)
    if ratios:
        rho = np.asarray(next(r for r in rows if "spectrum" in r)["spectrum"]["rho"])
        plot_radial(os.path.join(out_dir, "spectra_guidance.png"), rho, ratios,
                    ylabel="power / the unguided samples' power",
                    title="guided over unguided samples, same run (mean over seeds)")
    if exp.score_error_curve and rows:
        plot_score_error(extra, os.path.join(out_dir, "score_error.png"))
    grids = [(r["grid"], r["arm"]) for r in rows if r.get("grid")]
    if grids:
        side_by_side([g for g, _ in grids], [a for _, a in grids],
                     os.path.join(out_dir, "samples.png"))
    guided = guided_lines(rows)
    if guided:
        stacked(guided, os.path.join(out_dir, "samples_guidance.png"))
    return table


def guidance_ratios(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Each guided row's radial power over that of its arm's unguided row (``guided_of``),
    the seeds of an arm (``<arm>-seed<k>``) averaged geometrically: ``{"<arm> (<setting>)":
    ratio per radial bin}`` (what guidance changes in the spectrum, the model held fixed)."""
    own = {r["arm"]: r for r in rows}
    logs: dict[str, list[np.ndarray]] = {}
    for row in rows:
        base = own.get(row.get("guided_of", ""))
        if base is None or "spectrum" not in row or "spectrum" not in base:
            continue
        name, sep, seed = row["guided_of"].rpartition("-seed")
        arm = name if sep and seed.isdigit() else row["guided_of"]
        with np.errstate(invalid="ignore", divide="ignore"):
            logs.setdefault(f"{arm} ({row['guidance']})", []).append(np.log(
                np.asarray(row["spectrum"]["samples"]) / np.asarray(base["spectrum"]["samples"])))
    return {key: np.exp(np.mean(values, axis=0)) for key, values in logs.items()}


def guided_lines(rows: list[dict[str, Any]]) -> list[list[tuple[str, str]]]:
    """``samples_guidance.png``'s lines: for each arm with guided rows (``guided_of``), its
    own grid (unguided, when on disk) then each guided row's, captioned with the setting."""
    own = {r["arm"]: r for r in rows}
    lines: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        if not row.get("guided_grid"):
            continue
        arm = row["guided_of"]
        if arm not in lines:
            base = own.get(arm, {})
            lines[arm] = ([(base["grid"], f"{arm} {base.get('guidance', '')}".rstrip())]
                          if base.get("grid") else [])
        caption = row["guidance"] if lines[arm] else f"{arm} {row['guidance']}"
        lines[arm].append((row["guided_grid"], caption))
    return list(lines.values())


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
