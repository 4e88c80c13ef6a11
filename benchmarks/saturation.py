"""What a saturation ceiling does to calmdown's intervals and denoising, on simulated movies.

A simulated movie (dense preset, 4 photons per pixel per frame in cells at rest, where bright
transients reach a ceiling) is clipped at a quantile of its raw values, as a detector or a
digitiser that saturates would, and denoised with a 90 % interval; the same movie unclipped is
the reference. Scored against the ground truth: coverage over all values, over the measured
(unclipped) ones, at the clipped ones and in the brightest tenth of the pixels, and the PSNR of
the denoised movie. Prints a table and writes JSON.

Usage::

    python benchmarks/saturation.py                     # 600 x 64 x 64, 500 training steps
    python benchmarks/saturation.py --clipped 0.005 0.01 --seeds 3 4
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
from metrics import psnr, write_rows

import calmdown
from calmdown.simulate import simulate


def score(sim, raw: np.ndarray, ceiling: float | None, steps: int, seed: int) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the ceiling's warning, said once per run
        model = calmdown.train(raw, max_steps=steps, time_budget_s=1e6, seed=seed)
        chunks = list(calmdown.iter_apply(model, raw, interval=0.9))
    den, lo, up = (
        np.concatenate([c.output(k) for c in chunks]) for k in ("denoised", "lower", "upper")
    )
    inside = (sim.clean >= lo) & (sim.clean <= up)
    clipped = raw >= ceiling if ceiling is not None else np.zeros(raw.shape, bool)
    level = raw.mean(axis=0)
    top = np.broadcast_to(level > np.quantile(level, 0.9), raw.shape) & ~clipped
    return {
        "ceiling found": getattr(model.noise, "clip_high", None),  # None before session 42
        "coverage": float(inside.mean()),
        "coverage measured": float(inside[~clipped].mean()),
        "coverage clipped": float(inside[clipped].mean()) if clipped.any() else float("nan"),
        "coverage brightest 10 %": float(inside[top].mean()),
        "psnr": float(psnr(den, sim)),
        "nan interval ends": int(np.isnan(lo).sum() + np.isnan(up).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--photons", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--clipped", type=float, nargs="+", default=[0.005, 0.01])
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 4])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "saturation.json"
    )
    args = parser.parse_args()

    rows = []
    for seed in args.seeds:
        sim = simulate(
            "dense", photons=args.photons, shape=(args.frames, args.size, args.size), seed=seed
        )
        rows.append({"seed": seed, "clipped": 0.0, **score(sim, sim.raw, None, args.steps, 0)})
        for share in args.clipped:
            ceiling = float(np.quantile(sim.raw, 1 - share))
            raw = np.minimum(sim.raw, ceiling)
            rows.append({"seed": seed, "clipped": share, **score(sim, raw, ceiling, args.steps, 0)})
    cols = ["coverage", "coverage measured", "coverage clipped", "coverage brightest 10 %", "psnr"]
    shape = f"{args.frames} x {args.size} x {args.size}"
    print(f"dense, {args.photons:g} photons, {shape}, {args.steps} training steps")
    print("| seed | clipped | " + " | ".join(cols) + " | NaN ends |")
    print("|---|---|" + "---|" * (len(cols) + 1))
    for r in rows:
        cells = " | ".join(f"{r[c]:.3f}" if c != "psnr" else f"{r[c]:.2f}" for c in cols)
        print(f"| {r['seed']} | {100 * r['clipped']:.1f} % | {cells} | {r['nan interval ends']} |")
    write_rows(args.out, args, rows)


if __name__ == "__main__":
    main()
