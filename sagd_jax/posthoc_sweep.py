"""Post-hoc EMA over several stds: reconstruct each (``sagd_jax.posthoc``), or sample and judge
each and tabulate (what ``python -m sagd_jax.posthoc_ema`` runs)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sagd_jax import console, ema_profiles, files, posthoc, validate
from sagd_jax.evaluation import InceptionRequest, evaluate, summary
from sagd_jax.run import Run
from sagd_jax.sampling import SampleRequest, generate

# The sweep table's columns: (heading, key of evaluation.summary).
COLUMNS = (("FD", "fd"), ("KID", "kid"), ("spectrum err", "spectrum_mean_abs_log_ratio"),
           ("Inception FID", "inception_fid"), ("class acc", "class_accuracy"))


def parse_stds(values: Sequence[str], flag: str = "--std") -> tuple[float, ...]:
    """``--std`` values as floats, each a power profile's relative std, distinct."""
    stds = []
    for value in values:
        try:
            std = float(value)
        except ValueError:
            raise ValueError(f"{flag}={value!r}: not a number") from None
        try:
            ema_profiles.std_to_exponent(std)
        except ValueError as err:
            raise ValueError(f"{flag}={value}: {err}") from None
        stds.append(std)
    if not stds or len(set(stds)) != len(stds):
        raise ValueError(f"{flag}={','.join(values)}: give distinct stds")
    return tuple(stds)


def _checked(workdir: str, stds: Sequence[float], step: int | None
             ) -> tuple[Run, list[posthoc.Reconstruction]]:
    """The run and each std's plan: every request refused in one line before any work."""
    run = Run.from_workdir(workdir, load_data=False)
    return run, [posthoc.plan(run, std, step) for std in stds]


def reconstruct_all(workdir: str, stds: Sequence[float], step: int | None = None
                    ) -> list[dict[str, Any]]:
    """Reconstruct and keep the post-hoc EMA of each std at ``step``; one record per std:
    ``std``, ``step``, ``path`` (where it is kept), ``profile_error``, ``snapshots``."""
    run, plans = _checked(workdir, stds, step)
    mesh = run.mesh(fit=True)
    records = []
    for std, recipe in zip(stds, plans, strict=True):
        _, recipe = posthoc.load(run, mesh, std, step)
        steps = [s for s, _ in recipe.profiles]
        kept = [k for _, k in recipe.profiles]
        error = ema_profiles.profile_error(recipe.coefficients, steps, kept, recipe.step, std)
        path = files.join(run.workdir.path, posthoc.POSTHOC_DIR, f"std{std:g}",
                          str(recipe.step))
        console.info("%s; profile error %.2g; kept in %s", recipe.describe(), error, path)
        records.append({"std": std, "step": recipe.step, "path": path,
                        "profile_error": error, "snapshots": sorted(set(steps))})
    return records


def sweep(workdir: str, stds: Sequence[float], step: int | None = None, *, num_samples: int,
          sampler: str = "ddpm", steps: int = 250, seed: int = 0, chunk_size: int = 256,
          classifier: str = "auto", inception: str = "auto") -> dict[str, Any]:
    """Sample ``num_samples`` images with each std's post-hoc EMA and judge them; returns and
    writes ``{"rows": [{std, set, ...summary}], ...}`` (``DIR/posthoc_ema/sweep-*.json``)."""
    validate.integer("--num_samples", num_samples, 1)
    run, plans = _checked(workdir, stds, step)
    at = plans[0].step
    rows = []
    for std in stds:
        request = SampleRequest(num_samples=num_samples, sampler=sampler, steps=steps,
                                seed=seed, chunk_size=chunk_size, checkpoint_step=step,
                                params=f"posthoc:{std:g}")
        path = generate(run.workdir.path, request)
        results = evaluate(path, classifier=classifier,
                           inception=InceptionRequest(mode=inception))
        rows.append({"std": std, "set": path, **summary(results)})
    table = {"workdir": run.workdir.path, "step": at, "sampler": sampler, "steps": steps,
             "seed": seed, "num_samples": num_samples, "rows": rows}
    out = files.join(run.workdir.path, posthoc.POSTHOC_DIR,
                     f"sweep-{sampler}-{steps}steps-seed{seed}-n{num_samples}-step{at}.json")
    files.write_json(out, table)
    console.info("sweep: %s", out)
    return table


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The sweep as a markdown table: std, then each metric the rows have."""
    columns = [(head, key) for head, key in COLUMNS if any(key in row for row in rows)]

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "nan" if not math.isfinite(value) else f"{value:.4g}"
        return "" if value is None else str(value)

    lines = ["| std | " + " | ".join(head for head, _ in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for row in rows:
        lines.append(f"| {row['std']:g} | "
                     + " | ".join(cell(row.get(key)) for _, key in columns) + " |")
    return "\n".join(lines)
