"""Quality of calmdown against ground truth on simulated movies, beside simple baselines.

For each photon level: raw, a centred 5-frame moving average, calmdown (posterior with the
surprise guard), calmdown's plain posterior (guard off), calmdown's prior only, and calmdown
trained without the mean-image channel. Prints one table and writes JSON.

Usage::

    python benchmarks/quality.py                       # dense, 0.5 / 1 / 4 photons, 2000x128x128
    python benchmarks/quality.py --photons 1 --frames 1000 --budget 60   # quicker
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from metrics import all_metrics, moving_average, quiet_mask

import calmdown
from calmdown.simulate import simulate

COLUMNS = ["psnr", "wobble", "trace_corr", "dff_rmse", "kept_z<4", "kept_z4-8", "kept_z>=8"]


def run_level(photons: float, args: argparse.Namespace) -> list[dict]:
    sim = simulate(
        args.preset, photons=photons, shape=(args.frames, args.size, args.size), seed=args.seed
    )
    mask = quiet_mask(sim)
    rows = []

    def add(name: str, est: np.ndarray, **extra: float) -> None:
        row = {"photons": photons, "method": name, **all_metrics(est, sim, mask), **extra}
        rows.append(row)

    add("raw", sim.raw)
    add("moving average (5)", moving_average(sim.raw, 5))
    t0 = time.perf_counter()
    width = {} if args.width is None else {"width": args.width}
    model = calmdown.train(sim.raw, time_budget_s=args.budget, seed=args.seed, **width)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    post = calmdown.apply(model, sim.raw)
    fps = sim.raw.shape[0] / (time.perf_counter() - t0)
    add("calmdown", post, train_s=train_s, infer_fps=fps, steps=model.training["steps"])
    add("calmdown, guard off", calmdown.apply(model, sim.raw, enabled=False))
    add("calmdown prior only", calmdown.apply(model, sim.raw, output="prior"))
    if not args.skip_no_mean:
        t0 = time.perf_counter()
        model_nm = calmdown.train(
            sim.raw, time_budget_s=args.budget, seed=args.seed, use_mean_image=False, **width
        )
        add(
            "calmdown, no mean image",
            calmdown.apply(model_nm, sim.raw),
            train_s=time.perf_counter() - t0,
        )
    return rows


def print_table(rows: list[dict]) -> None:
    head = f"{'photons':>7} {'method':<26}" + "".join(f"{c:>11}" for c in COLUMNS)
    head += f"{'train s':>9}{'fps':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        line = f"{r['photons']:>7g} {r['method']:<26}" + "".join(f"{r[c]:>11.3f}" for c in COLUMNS)
        line += f"{r.get('train_s', float('nan')):>9.0f}{r.get('infer_fps', float('nan')):>7.0f}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photons", type=float, nargs="+", default=[0.5, 1.0, 4.0])
    parser.add_argument("--preset", default="dense")
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--budget", type=float, default=180.0, help="training seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-no-mean", action="store_true")
    parser.add_argument(
        "--width", type=int, default=None, help="channels of the network (calmdown's --width)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "quality.json"
    )
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    rows = []
    for p in args.photons:
        rows.extend(run_level(p, args))
        print_table(rows)
        print(flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"args": vars(args) | {"out": str(args.out)}, "rows": rows}, indent=2)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
