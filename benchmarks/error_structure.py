"""Can the prior's error level be read from the data without the noise model? A check.

At a few photons the prior's error variance is 0.4-1.5 % of the noise variance, so its level,
read from held-out raw residuals as ``(x - loc)^2 - noise variance``, is only as good as the
noise model (``calibration_limits.py`` measures that route). Another route needs no noise
model: detector noise is independent between pixels (in a raw movie) and the context network
never sees frame ``t``, so the same-frame cross-covariance of the residuals ``x - loc`` between
two different pixels is the cross-covariance of the prior's errors alone. It gives the level
only if the error's covariance at lag 0 can be reached from lags 1, 2, ... by extrapolation.

This script measures whether it can, with ground truth. For each preset and photon level it
trains as ``calibration.py`` does (same movie, steps and seed), predicts the network's prior
(``output="prior"``: before the guard and the calibration) of the movie and of ``--realisations
- 1`` more recordings of the same scene (:func:`calmdown.simulate.record`), and splits the
prior's error into

* the propagated noise: each recording's deviation from the mean prior over the recordings
  (what calmdown's noise probes measure), and
* the bias: the mean prior minus the truth (what the network gets wrong with any noise).

It prints each part's spatial covariance at lags 0-3 (mean over the y and x axes, photons^2,
every pixel and frame), the residuals' same-frame cross-covariance against the error's, and the
level a noise-model-free estimate would read: the propagated part at lag 0 plus the bias's
lag-0 covariance extrapolated exponentially from its lags 1 and 2 (the residuals' minus the
propagated part's), over the true error variance.

Usage::

    python benchmarks/error_structure.py --presets dense sparse --photons 0.5 10
    python benchmarks/error_structure.py --presets dense --photons 0.5 --steps 5000

Writes ``results/error_structure.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from calibration import train_cell

import calmdown
from calmdown.simulate import record, simulate

LAGS = (0, 1, 2, 3)


def spatial_covariance(a: np.ndarray, b: np.ndarray | None = None) -> list[float]:
    """Mean of ``a * b`` at same-frame spatial lags :data:`LAGS`, averaged over y and x."""
    b = a if b is None else b
    out = [float(np.mean(a * b))]
    for d in LAGS[1:]:
        along_x = np.mean(a[..., :, d:] * b[..., :, :-d])
        along_y = np.mean(a[..., d:, :] * b[..., :-d, :])
        out.append(float(0.5 * (along_x + along_y)))
    return out


def network_prior(model: calmdown.TrainedModel, raw: np.ndarray) -> np.ndarray:
    """Predict the context network's prior of every frame, in photons."""
    den = np.concatenate([c.denoised for c in calmdown.iter_apply(model, raw, output="prior")])
    return (den.astype(np.float64) - model.noise.offset) / model.noise.gain


def run(preset: str, photons: float, args: argparse.Namespace) -> dict[str, Any]:
    shape = (args.frames, args.size, args.size)
    sim = simulate(preset, photons=photons, shape=shape, seed=args.seed)
    t0 = time.perf_counter()
    model = train_cell(sim, args)
    train_s = time.perf_counter() - t0
    nm = model.noise
    clean = (sim.clean.astype(np.float64) - nm.offset) / nm.gain
    x = (sim.raw.astype(np.float64) - nm.offset) / nm.gain
    prior = network_prior(model, sim.raw)
    priors = [prior]
    for i in range(1, args.realisations):
        again = record(sim.photons, sim.detector, seed=args.seed + 1000 + i)
        priors.append(network_prior(model, again))
    n = len(priors)
    mean_prior = np.mean(priors, axis=0)
    error = prior - clean
    c_error = spatial_covariance(error)
    # Each recording's deviation from the mean, scaled to the propagated noise's variance.
    c_prop = np.mean(
        [spatial_covariance((p - mean_prior) * np.sqrt(n / (n - 1))) for p in priors], axis=0
    )
    # The mean prior still holds 1/n of the propagated noise.
    c_bias = np.asarray(spatial_covariance(mean_prior - clean)) - c_prop / n
    del priors, mean_prior
    resid = x - prior
    resid -= resid.mean()
    c_resid = spatial_covariance(resid)
    b1, b2 = c_resid[1] - c_prop[1], c_resid[2] - c_prop[2]
    bias0_est = b1 * b1 / b2 if b1 > 0 and b2 > 0 else float("nan")
    b_true = c_bias[1] * c_bias[1] / c_bias[2] if c_bias[1] > 0 and c_bias[2] > 0 else np.nan
    return {
        "preset": preset,
        "photons": photons,
        "steps": args.steps,
        "train_s": train_s,
        "noise variance": float(np.mean(nm.raw_variance_photons(x))),
        "error cov": c_error,
        "propagated cov": [float(v) for v in c_prop],
        "bias cov": [float(v) for v in c_bias],
        "residual cov": c_resid,
        "residual / error at lags 1-3": [c_resid[i] / c_error[i] for i in LAGS[1:]],
        "propagated share": float(c_prop[0] / c_error[0]),
        "bias extrapolated (truth) / bias": float(b_true / c_bias[0]),
        "bias extrapolated (data) / bias": float(bias0_est / c_bias[0]),
        "level estimate / error variance": float((c_prop[0] + bias0_est) / c_error[0]),
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| preset | photons | steps | error var / noise var | propagated share | "
        "bias C(1)/C(0) | bias C(2)/C(1) | residual/error cov, lags 1-3 | "
        "bias extrapolated from truth / data | level estimate / true |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        b = r["bias cov"]
        ratios = " / ".join(f"{v:.2f}" for v in r["residual / error at lags 1-3"])
        lines.append(
            f"| {r['preset']} | {r['photons']:g} | {r['steps']} | "
            f"{r['error cov'][0] / r['noise variance']:.4f} | {r['propagated share']:.2f} | "
            f"{b[1] / b[0]:.2f} | {b[2] / b[1]:.2f} | {ratios} | "
            f"{r['bias extrapolated (truth) / bias']:.2f} / "
            f"{r['bias extrapolated (data) / bias']:.2f} | "
            f"{r['level estimate / error variance']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["dense", "sparse"])
    parser.add_argument("--photons", nargs="+", type=float, default=[0.5, 10.0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--realisations", type=int, default=4)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "error_structure.json"
    )
    args = parser.parse_args()
    if args.realisations < 2:
        parser.error("--realisations must be 2 or more")
    rows = []
    for preset in args.presets:
        for photons in args.photons:
            rows.append(run(preset, photons, args))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=1))
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
