"""How far can variance factors on what the data show take the intervals? An oracle check.

``calibration.py`` reports cells outside their bands. This script asks whether a better fit of
the final variance factors could bring them in, and whether the data could tell such a fit.
For each preset and photon level it trains as ``calibration.py`` does (same movie, steps and
seeds), keeps the guarded prior of every pixel, and then:

1. **Oracle factors**: multiplies the prior's variance by factors fitted on the ground truth
   (mean squared error of the prior over its stated variance, where the prior is in charge)
   per group of pixels, the groups chosen by what the data show: brightness of the mean image
   (the rows of calmdown's stages), brightness x the prior's width (quantiles of its
   variance), and those x activity (``|loc - mean image| / sd``). Coverage by the benchmark's
   strata with each. A
   cell these bring into band could be reached by a better fit on those features; one they
   leave out needs more than a factor on them (a biased prior, another feature).
2. **What the data can measure**: calmdown must measure such factors from raw residuals,
   ``(x - loc)^2 - noise variance``, whose noise dwarfs the prior's error at a few photons.
   For the width groups alone: the oracle factor, the prior's error variance over the noise
   variance, and the standard error a factor measured so would have were every frame of the
   movie used (more than calmdown's held-out frames). Where the error is 1 % of the noise
   variance, a factor is known to ``sqrt(2) * 100 / sqrt(n)`` of itself from ``n`` pixels.

Usage::

    python benchmarks/calibration_limits.py --presets sparse --photons 0.5 2
    python benchmarks/calibration_limits.py                              # the full grid

Writes ``results/calibration_limits.json``. It reads calmdown's guarded prior by wrapping the
private ``calmdown.pipeline.guarded_posterior`` (the one call where a pixel's value and its
guarded prior meet), with the guard's row bands widened to whole frames, so it follows the
package's internals: a diagnostic, not an API.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from calibration import TARGETS, add_grid_arguments, run_grid, strata, train_cell
from metrics import write_rows

import calmdown
import calmdown.pipeline as pipeline
from calmdown.calibration import ACTIVITY_EDGES, LEVEL_QUANTILES
from calmdown.posterior import GuardedPosterior, gaussian_posterior
from calmdown.simulate import simulate

WIDTH_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
"""Quantiles of the prior's variance that bound the width groups."""

COLUMNS = [c for c in TARGETS if not c.startswith("roi")] + ["events z>=8, onset"]


def guarded_prior(model: calmdown.TrainedModel, raw: np.ndarray) -> dict[str, np.ndarray]:
    """Every pixel's value and guarded prior (photon units), as the posterior receives them."""
    kept: list[dict[str, torch.Tensor]] = []
    original = pipeline.guarded_posterior

    def spy(x: torch.Tensor, g: Any, noise_var: Any) -> GuardedPosterior:
        loc0, var0, _, _ = g.components()
        kept.append({"x": x, "loc0": loc0, "var0": var0, "p": g.p_surprise})
        kept[-1].update(shift=g.shift, slab=g.slab_var)
        return original(x, g, noise_var)

    bands = pipeline._BAND_PIXELS
    pipeline.guarded_posterior, pipeline._BAND_PIXELS = spy, 1 << 40
    try:
        for _ in calmdown.iter_apply(model, raw, interval=0.9):
            pass
    finally:
        pipeline.guarded_posterior, pipeline._BAND_PIXELS = original, bands
    out = {k: torch.cat([c[k] for c in kept]).cpu().numpy() for k in kept[0]}
    if out["x"].shape != raw.shape:
        raise RuntimeError(f"kept {out['x'].shape} of a {raw.shape} movie: bands not whole")
    return out


def intervals(
    prior: dict[str, np.ndarray], noise: Any, scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Denoised values and 90 % intervals with the prior's variance times ``scale``."""
    t = {k: torch.from_numpy(v) for k, v in prior.items()}
    var0 = t["var0"] * torch.from_numpy(scale)
    loc1, var1 = t["loc0"] + t["shift"], var0 + t["slab"]
    m0, v0 = gaussian_posterior(t["x"], t["loc0"], var0, noise.pixel_variance_photons(t["loc0"]))
    m1, v1 = gaussian_posterior(t["x"], loc1, var1, noise.pixel_variance_photons(loc1))
    post = GuardedPosterior(t["p"], m0, v0, m1, v1)
    # The denoised value as calmdown makes it: the mixture's mean.
    return post.mean.numpy(), post.quantile(0.05).numpy(), post.quantile(0.95).numpy()


def groups(prior: dict[str, np.ndarray], level: np.ndarray, features: tuple[str, ...]) -> Any:
    """Group index of every pixel by the brightness row and ``features``."""
    var = prior["var0"]
    index = np.zeros(var.shape, np.int64)
    for feature in features:
        if feature == "level":
            edges = np.quantile(level, LEVEL_QUANTILES)
            values = np.broadcast_to(level, var.shape)
        elif feature == "width":
            edges = np.quantile(var, WIDTH_QUANTILES)
            values = var
        else:  # activity
            edges = np.asarray(ACTIVITY_EDGES)
            values = np.abs(prior["loc0"] - level) / np.sqrt(var)
        index = index * (len(edges) + 1) + np.searchsorted(edges, values)
    return index


def run(preset: str, photons: float, args: argparse.Namespace) -> dict[str, Any]:
    shape = (args.frames, args.size, args.size)
    sim = simulate(preset, photons=photons, shape=shape, seed=args.seed)
    model = train_cell(sim, args)
    noise = model.noise
    prior = guarded_prior(model, sim.raw)
    truth = noise.to_photons(sim.clean.astype(np.float64)).astype(np.float32)
    level = prior["x"].mean(axis=0)
    in_charge = prior["p"] < 0.01
    err2 = (truth - prior["loc0"]) ** 2

    def to_adu(a: np.ndarray) -> np.ndarray:
        return noise.to_adu(a.astype(np.float64))

    row: dict[str, Any] = {"preset": preset, "photons": photons}
    for name, features in (
        ("as fitted", ()),
        ("oracle: brightness", ("level",)),
        ("oracle: brightness x width", ("level", "width")),
        ("oracle: brightness x width x activity", ("level", "width", "activity")),
    ):
        scale = np.ones_like(prior["var0"])
        if features:
            g = groups(prior, level, features)
            n = int(g.max()) + 1
            num = np.bincount(g[in_charge], err2[in_charge], minlength=n)
            den = np.bincount(g[in_charge], prior["var0"][in_charge], minlength=n)
            factor = np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)
            scale = factor[g].astype(np.float32)
        den_, lo, hi = intervals(prior, noise, scale)
        cov = strata(sim, to_adu(den_), to_adu(lo), to_adu(hi))
        row[name] = {c: cov[c] for c in COLUMNS}
    # How well raw residuals could measure the width groups' factors (every frame). (Not the
    # factors measured so: the width is averaged over neighbouring frames, whose prior saw
    # the pixel's value, so grouping by it selects on the pixel's own noise; calmdown's
    # stages group by features free of it.)
    g = groups(prior, level, ("width",))[in_charge]
    var = prior["var0"][in_charge].astype(np.float64)
    nv = noise.raw_variance_photons(prior["x"][in_charge]).astype(np.float64)
    n = int(g.max()) + 1
    sum_var, sum_nv, sum_nv2 = (np.bincount(g, w, minlength=n) for w in (var, nv, nv**2))
    err = np.bincount(g, err2[in_charge], minlength=n)
    row["width groups"] = {
        "oracle factor": (err / np.maximum(sum_var, 1e-30)).tolist(),
        "error / noise variance": (sum_var / np.maximum(sum_nv, 1e-30)).tolist(),
        "standard error": (np.sqrt(2 * sum_nv2) / np.maximum(sum_var, 1e-30)).tolist(),
    }
    return row


def print_row(row: dict[str, Any]) -> None:
    print(f"\n{row['preset']}, {row['photons']:g} photons")
    print(f"| factors | {' | '.join(COLUMNS)} |")
    print("|---|" + "---|" * len(COLUMNS))
    for name, cov in row.items():
        if not isinstance(cov, dict) or "overall" not in cov:
            continue
        cells = []
        for c in COLUMNS:
            lo, hi = TARGETS.get(c, (-np.inf, np.inf))
            cells.append(f"{cov[c]:.3f}{'' if lo <= cov[c] <= hi else ' (!)'}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    d = row["width groups"]
    print("width groups, narrowest first (quantiles " + ", ".join(map(str, WIDTH_QUANTILES)) + "):")
    for key in ("oracle factor", "error / noise variance", "standard error"):
        print(f"  {key:<24}" + " ".join(f"{v:8.4f}" for v in d[key]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_grid_arguments(parser)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "calibration_limits.json"
    )
    args = parser.parse_args()
    rows = run_grid(args, run, print_row)
    write_rows(args.out, args, rows)


if __name__ == "__main__":
    main()
