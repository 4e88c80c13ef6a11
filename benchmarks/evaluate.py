"""Validate `calmdown evaluate` (the photon-split gain estimate) against the ground truth.

For each photon level P, a scene is simulated at 2P photons, and the same scene is recorded
again at P photons (half its expected photons, new noise, :func:`calmdown.simulate.record`).
The split estimate runs on the 2P movie (its halves have P photons each); the truth is the PSNR
gain of ``calmdown.denoise`` on the P movie against its clean movie,
``10 log10(MSE_raw / MSE_denoised)``. (Until 2026-11-29 the P movie was ``simulate`` at P
photons with the same seed: another scene, whose rare events are scaled to the same oracle z
and so are relatively larger at P photons.) Both trainings use the same fixed number of steps
(no time budget), so the comparison does not depend on how busy the machine is. The table also
shows the true gain on half A itself (the denoised half against the clean half-signal), which
separates the estimator's error from the difference between a split half and a recording
with half the photons.

Usage::

    python benchmarks/evaluate.py                          # 0.5, 1, 2 photons, seed 0
    python benchmarks/evaluate.py --seeds 0 1 2 3 4 5 6 7 8 9   # means over seeds
    python benchmarks/evaluate.py --frames 1000 --size 96 --steps 1000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

import calmdown
from calmdown.evaluate import estimate_gain
from calmdown.noise import estimate_noise
from calmdown.simulate import record, simulate


def _gain(est: np.ndarray, raw: np.ndarray, clean: np.ndarray) -> float:
    """PSNR gain of ``est`` over ``raw`` against ``clean`` (dB)."""
    mse_raw = np.mean((raw.astype(np.float64) - clean) ** 2)
    mse_est = np.mean((est.astype(np.float64) - clean) ** 2)
    return float(10 * np.log10(mse_raw / mse_est))


def run_level(photons: float, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Estimate on the 2P movie, truth on the P movie, for one level and seed."""
    shape = (args.frames, args.size, args.size)
    opts = {
        "max_steps": args.steps,
        "time_budget_s": 1e6,
        "seed": seed,
        "batch_size": args.batch,
        "val_every": args.val_every,
    }
    double = simulate("dense", photons=2 * photons, shape=shape, seed=seed)
    # The same scene at P photons: half the 2P scene's expected photons, recorded again with
    # independent noise. (simulate(photons=P) would not do: it scales the rare events to the
    # same oracle z, so they are relatively larger at P, and such a scene is harder to denoise.)
    single_raw = record(double.photons / 2, double.detector, seed=seed + 1)
    # Its clean movie in ADU equals the clean half-signal in the half's ADU.
    clean_half = (double.clean.astype(np.float64) + double.detector.offset) / 2

    noise = estimate_noise(lambda s, e: double.raw[s:e], shape[0])
    seen: dict[str, np.ndarray] = {}

    def denoiser(movie: np.ndarray) -> np.ndarray:
        out = calmdown.denoise(movie, **opts)
        seen["half"], seen["denoised"] = movie, out
        return out

    t0 = time.perf_counter()
    res = estimate_gain(double.raw, noise=noise, seed=seed, denoiser=denoiser)
    est_s = time.perf_counter() - t0
    # The clean half-signal in the half's ADU, to_adu(to_photons(clean) / 2), with the offset
    # the noise model measured (the half is converted with it).
    half_true = _gain(
        seen["denoised"], seen["half"], (double.clean.astype(np.float64) + noise.offset) / 2
    )

    t0 = time.perf_counter()
    den = calmdown.denoise(single_raw, **opts)
    true_s = time.perf_counter() - t0
    true_gain = _gain(den, single_raw, clean_half)
    return {
        "photons": photons,
        "seed": seed,
        "estimate_on_2P_db": res.psnr_gain_db,
        "estimate_sd_db": res.psnr_gain_db_sd,
        "true_on_P_db": float(true_gain),
        "true_on_half_db": half_true,
        "estimate_minus_true_db": res.psnr_gain_db - float(true_gain),
        "estimate_minus_half_true_db": res.psnr_gain_db - half_true,
        "method": res.method,
        "halves_correlation": res.halves_correlation,
        "halves_neighbour_correlation": res.halves_neighbour_correlation,
        "estimate_seconds": est_s,
        "true_seconds": true_s,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    """Print the comparison."""
    head = (
        f"{'P':>5} {'estimate(2P)':>14} {'true(P)':>9} {'est-true':>9} "
        f"{'true(half A)':>13} {'est-half':>9} {'corr AB':>8}"
    )
    print(f"{'seed':>4} {head}")
    print("-" * (len(head) + 5))
    for r in rows:
        print(
            f"{r['seed']:>4} {r['photons']:>5g} "
            f"{r['estimate_on_2P_db']:>8.2f} +-{r['estimate_sd_db']:<4.2f}"
            f"{r['true_on_P_db']:>9.2f} {r['estimate_minus_true_db']:>+9.2f} "
            f"{r['true_on_half_db']:>13.2f} {r['estimate_minus_half_true_db']:>+9.2f} "
            f"{r['halves_correlation']:>8.4f}"
        )


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard error over seeds of each level's differences (dB)."""
    out = []
    for p in sorted({r["photons"] for r in rows}):
        level = [r for r in rows if r["photons"] == p]
        entry: dict[str, Any] = {"photons": p, "seeds": len(level)}
        for key, values in (
            ("estimate_minus_true_db", [r["estimate_minus_true_db"] for r in level]),
            ("estimate_minus_half_true_db", [r["estimate_minus_half_true_db"] for r in level]),
            ("half_true_minus_true_db", [r["true_on_half_db"] - r["true_on_P_db"] for r in level]),
            ("estimate_sd_db", [r["estimate_sd_db"] for r in level]),
        ):
            v = np.asarray(values)
            entry[key] = float(v.mean())
            entry[key + "_se"] = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else None
        out.append(entry)
        se = entry["estimate_minus_true_db_se"]
        print(
            f"P {p:g}, {len(level)} seeds: estimate - true {entry['estimate_minus_true_db']:+.2f}"
            + (f" +- {se:.2f} (se)" if se is not None else "")
            + f", estimate - true(half A) {entry['estimate_minus_half_true_db']:+.2f}, "
            f"true(half A) - true(P) {entry['half_true_minus_true_db']:+.2f}, "
            f"stated sd {entry['estimate_sd_db']:.2f}"
        )
    return out


def main() -> None:
    """Run every seed and level, print the table and the means over seeds, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photons", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100, help="training steps (both runs)")
    parser.add_argument("--batch", type=int, default=8, help="patches per training step")
    parser.add_argument("--val-every", type=int, default=25)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "evaluate.json"
    )
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        for p in args.photons:
            rows.append(run_level(p, seed, args))
            print_table(rows)
            print(flush=True)
    summary = summarise(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"args": vars(args) | {"out": str(args.out)}, "rows": rows, "summary": summary},
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
