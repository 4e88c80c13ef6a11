"""What blank frames in the middle of a movie cost: the frames beside a gap, and the extra pass.

A simulated movie (dense preset, 1 photon per pixel per frame) is denoised whole and with runs
of frames blanked (set to 0, as an acquisition fills a dropped frame) in its middle: one frame,
3, 10 and 30. calmdown reads such a movie without its blank frames, so the frames on either side
of a gap serve as each other's context; this measures what that costs against the whole movie
(the same trained network, so only the gap differs): PSNR against the ground truth and coverage
of the 90 % intervals, over the frames within 5 of the gap and over all measured frames. The
first pass's cost is timed too: :func:`calmdown.prepare` on the movie with and without a gap
(the gap makes one more pass to find every blank frame). Prints a table and writes JSON.

Usage::

    python benchmarks/blank_frames.py                   # 1000 x 96 x 96, 700 training steps
    python benchmarks/blank_frames.py --frames 400 --steps 200
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from metrics import psnr, write_rows

import calmdown
from calmdown.simulate import SimulatedMovie, simulate

NEAR = 5
"""Frames on each side of a gap counted as beside it."""


def run(model: calmdown.TrainedModel, raw: np.ndarray) -> tuple[np.ndarray, ...]:
    chunks = list(calmdown.iter_apply(model, raw, interval=0.9))
    return tuple(
        np.concatenate([c.output(k) for c in chunks]) for k in ("denoised", "lower", "upper")
    )


def scores(
    sim: SimulatedMovie, den: np.ndarray, lo: np.ndarray, up: np.ndarray, frames: np.ndarray
) -> dict:
    clean = sim.clean[frames]
    inside = (clean >= lo[frames]) & (clean <= up[frames])
    return {"psnr": float(psnr(den, sim, frames)), "coverage": float(inside.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--gaps", type=int, nargs="+", default=[1, 3, 10, 30])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "blank_frames.json"
    )
    args = parser.parse_args()

    sim = simulate("dense", photons=1.0, shape=(args.frames, args.size, args.size), seed=args.seed)
    model = calmdown.train(sim.raw, max_steps=args.steps, time_budget_s=1e6, seed=args.seed)
    whole = run(model, sim.raw)
    mid = args.frames // 2
    rows = []
    for length in args.gaps:
        gap = np.arange(mid, mid + length)
        raw = sim.raw.copy()
        raw[gap] = 0
        measured = np.setdiff1d(np.arange(args.frames), gap)
        beside = np.concatenate(
            [np.arange(mid - NEAR, mid), np.arange(mid + length, mid + length + NEAR)]
        )
        got = run(model, raw)
        assert (got[0][gap] == 0).all(), "blank frames are passed through"
        timings = {}
        for name, movie in (("whole", sim.raw), ("gap", raw)):
            t0 = time.perf_counter()
            calmdown.prepare(movie, model.config).close()
            timings[name] = time.perf_counter() - t0
        row = {"gap": length}
        for label, frames in (("beside", beside), ("measured", measured)):
            for name, out in (("whole", whole), ("gap", got)):
                for k, v in scores(sim, *out, frames).items():
                    row[f"{label} {name} {k}"] = v
        row["prepare s whole"], row["prepare s gap"] = timings["whole"], timings["gap"]
        rows.append(row)

    print(
        f"dense, 1 photon, {args.frames} x {args.size} x {args.size}, {args.steps} training steps;"
    )
    print(f"a gap of N frames at frame {mid}; 'beside': the {NEAR} frames on each side of it")
    print(
        "| gap | beside: PSNR whole | PSNR gap | coverage whole | coverage gap "
        "| all measured: PSNR whole | PSNR gap | prepare s whole | gap |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['gap']:4d} | {r['beside whole psnr']:.2f} | {r['beside gap psnr']:.2f} | "
            f"{r['beside whole coverage']:.3f} | {r['beside gap coverage']:.3f} | "
            f"{r['measured whole psnr']:.2f} | {r['measured gap psnr']:.2f} | "
            f"{r['prepare s whole']:.2f} | {r['prepare s gap']:.2f} |"
        )
    write_rows(args.out, args, rows)


if __name__ == "__main__":
    main()
