"""Training and inference speed of the default model on this machine.

Inference is timed end to end through :func:`calmdown.iter_apply` (noise model and mean image
already computed, network, guard, correction, posterior, conversion to ADU) on simulated movies
of 128 x 128 and 512 x 512 pixels, reported as frames per second with a 5-frame moving average
timed in the same process as the baseline. Prints a table and writes JSON.

Usage::

    python benchmarks/speed.py
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from scipy.ndimage import uniform_filter1d

import calmdown
from calmdown.simulate import simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument(
        "--runtimes",
        nargs="+",
        default=["onnxruntime", "torch"],
        choices=["onnxruntime", "torch"],
        help="what runs the network at inference (timed one after the other on one model)",
    )
    parser.add_argument(
        "--guard",
        nargs="+",
        default=["compiled", "torch"],
        choices=["compiled", "torch"],
        help="what runs the guard and calibration: compiled loops (Numba, calmdown[fast]) or "
        "PyTorch (CALMDOWN_NO_NUMBA=1); timed one after the other on one model",
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512])
    parser.add_argument(
        "--interval",
        type=float,
        default=None,
        help="also time inference that writes this credible interval (lower and upper ends)",
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=0,
        help="also time inference that draws this many joint samples of every frame",
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "speed.json"
    )
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        sim = simulate("dense", photons=1.0, shape=(args.frames, size, size), seed=0)
        model = calmdown.train(sim.raw, max_steps=args.train_steps, time_budget_s=None, seed=0)
        prep = calmdown.prepare(sim.raw, model.config)
        extras = [(None, 0)]
        if args.interval is not None:
            extras.append((args.interval, 0))
        if args.samples:
            extras.append((None, args.samples))
        runs = [(r, g, *e) for r in args.runtimes for g in args.guard for e in extras]
        for runtime, guard, interval, samples in runs:
            os.environ["CALMDOWN_NO_NUMBA"] = "1" if guard == "torch" else "0"
            # Warm-up: the compiled loops load from Numba's cache (or compile) on first use.
            for _ in calmdown.iter_apply(model, sim.raw, prepared=prep, frames=(0, 8)):
                pass
            t0 = time.perf_counter()
            n = sum(
                c.stop - c.start
                for c in calmdown.iter_apply(
                    model,
                    sim.raw,
                    prepared=prep,
                    runtime=runtime,
                    interval=interval,
                    samples=samples,
                )
            )
            infer_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            uniform_filter1d(sim.raw, 5, axis=0, mode="nearest")
            ma_s = time.perf_counter() - t0
            rows.append(
                {
                    "size": size,
                    "frames": n,
                    "runtime": runtime,
                    "guard": guard,
                    "interval": interval,
                    "samples": samples,
                    "threads": torch.get_num_threads(),
                    "train_s_per_step": model.training["loop_seconds"] / model.training["steps"],
                    "train_total_s": model.training["seconds"],
                    "infer_fps": n / infer_s,
                    "moving_average_fps": n / ma_s,
                }
            )
            r = rows[-1]
            print(
                f"{size:>4} x {size:<4} {n} frames, {runtime:>11}, guard {guard:>8}"
                f"{'' if interval is None else f', interval {interval:g}'}"
                f"{f', {samples} samples' if samples else ''}: inference "
                f"{r['infer_fps']:7.1f} frames/s "
                f"(moving average {r['moving_average_fps']:9.0f} frames/s), training "
                f"{r['train_s_per_step']:.3f} s/step (batch 16 x 64 x 64; "
                f"{r['train_total_s']:.0f} s with noise model, mean image and calibration)",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
