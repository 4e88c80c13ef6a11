"""When does training reach its plateau? Default training against a long run, same movie.

Trains the default model on a simulated 128 x 128 x 3000 movie (dense, 1 photon per pixel per
frame) several times with the same seed, so every run sees the same held-out frames: with the
default time budget, with other budgets, and with a long budget and no early stopping. The
held-out loss is a negative log-likelihood (it can be negative), so "within 1 % of the best" is
measured on the
improvement: the gap to the long run's best held-out loss as a fraction of the improvement from
the untrained network (which predicts the mean image) to that best. Reported for each run: the
first time its held-out loss came within 1 % (and within 5 %) of that improvement, and the
prior's PSNR against the ground truth on the first 300 frames, so the plateau is also seen in
quality. Prints a table and writes JSON.

Usage::

    python benchmarks/training_plateau.py                 # 180 s (default), 300 s, 600 s
    python benchmarks/training_plateau.py --long 900
    python benchmarks/training_plateau.py --default-budget 240 --budgets \
        --reference benchmarks/results/training_plateau.json    # no long run: its best from there
    python benchmarks/training_plateau.py --budgets --init-budget 900 --fine-tune 120 300 \
        --reference benchmarks/results/training_plateau_s22.json

With ``--init-budget`` a model is first trained on an earlier session of the same preparation
(``--init-budget`` seconds, no early stopping), and the ``--fine-tune`` runs start from its
network (``calmdown.train(..., init=model)``). That session is the second half of a movie twice
as long simulated with the same seed: the simulator draws the cells first, so it holds the same
cells with other activity and noise. Its training is a one-time cost, reported apart.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import calmdown
from calmdown.device import training_dtype
from calmdown.pipeline import Prepared, make_trainer, prepare
from calmdown.simulate import simulate
from calmdown.train import TrainProgress


def _psnr(estimate: np.ndarray, clean: np.ndarray) -> float:
    peak = float(clean.max() - clean.min())
    return float(10 * np.log10(peak**2 / np.mean((estimate - clean) ** 2)))


def _first_within(history: list[dict], best: float, initial: float, fraction: float) -> float:
    """Seconds of training at the first evaluation within ``fraction`` of the improvement."""
    bound = best + fraction * (initial - best)
    for h in history:
        if h["val_loss"] <= bound:
            return float(h["seconds"])
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--photons", type=float, default=1.0)
    parser.add_argument("--default-budget", type=float, default=180.0)
    parser.add_argument("--long", type=float, default=600.0, help="budget of the long run (s)")
    parser.add_argument(
        "--budgets",
        type=float,
        nargs="*",
        default=[300.0],
        help="more runs with these time budgets (default settings otherwise)",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="JSON of an earlier run on the same movie: take the long run's best loss from it "
        "and skip the long run",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="step cap of the default and budget runs (default: the config's); the long run "
        "has none",
    )
    parser.add_argument(
        "--init-budget",
        type=float,
        default=None,
        help="train a model this long (s) on an earlier session (same cells) and fine-tune from it",
    )
    parser.add_argument(
        "--fine-tune",
        type=float,
        nargs="*",
        default=[120.0, 300.0],
        help="time budgets of the runs fine-tuned from that model (with --init-budget)",
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "float32", "bfloat16"],
        default="auto",
        help="arithmetic of the training steps (TrainConfig.precision)",
    )
    parser.add_argument(
        "--width", type=int, default=None, help="channels of the network (default: the model's)"
    )
    parser.add_argument("--eval-frames", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).parent / "results" / "training_plateau.json",
    )
    args = parser.parse_args()
    sim = simulate(
        "dense", photons=args.photons, shape=(args.frames, args.size, args.size), seed=args.seed
    )
    cap = {} if args.max_steps is None else {"max_steps": args.max_steps}
    runs: dict[str, dict] = {"default": {"time_budget_s": args.default_budget, **cap}}
    for budget in args.budgets:
        runs[f"{budget:g} s"] = {"time_budget_s": budget, **cap}
    if args.reference is None:
        runs["long"] = {
            "time_budget_s": args.long,
            "max_steps": 1_000_000,
            "patience": 10_000,
        }
    results = {}
    width = {} if args.width is None else {"width": args.width}
    config = calmdown.make_config(seed=args.seed, precision=args.precision, **width)
    init = None
    init_info: dict = {}
    if args.init_budget is not None:
        first = simulate(
            "dense",
            photons=args.photons,
            shape=(2 * args.frames, args.size, args.size),
            seed=args.seed,
        ).raw[args.frames :]
        t0 = time.perf_counter()
        init = calmdown.train(
            first,
            seed=args.seed,
            time_budget_s=args.init_budget,
            max_steps=1_000_000,
            patience=10_000,
        )
        init_info = {
            "movie": f"frames {args.frames}-{2 * args.frames - 1} of the same seed's 2x movie",
            "budget_s": args.init_budget,
            "steps": init.training["steps"],
            "total_seconds": time.perf_counter() - t0,
            "best_val_loss_own_movie": init.training["best_val_loss"],
        }
        del first
        for budget in args.fine_tune:
            runs[f"tuned {budget:g} s"] = {"time_budget_s": budget, **cap, "init": init}
    t0 = time.perf_counter()
    prep = prepare(sim.raw, config)
    prepare_s = time.perf_counter() - t0
    initial = _untrained_loss(prep, config)
    for name, options in runs.items():
        history: list[dict] = []

        def keep(info: TrainProgress, history: list[dict] = history) -> None:
            history.append({"step": info.step, "seconds": info.seconds, "val_loss": info.val_loss})

        t0 = time.perf_counter()
        model = calmdown.train(sim.raw, config=config, prepared=prep, progress=keep, **options)
        wall = time.perf_counter() - t0
        prior = calmdown.apply(model, sim.raw[: args.eval_frames], output="prior")
        results[name] = {
            "options": {k: v for k, v in options.items() if k != "init"},
            "fine_tuned": "init" in options,
            "start_val_loss": model.training["start_val_loss"],
            "steps": model.training["steps"],
            "loop_seconds": model.training["loop_seconds"],
            "total_seconds": wall + prepare_s,
            "stopped_because": model.training["stopped_because"],
            "best_val_loss": model.training["best_val_loss"],
            "prior_psnr": _psnr(prior, sim.clean[: args.eval_frames]),
            "history": history,
        }
    prep.close()
    best = min(r["best_val_loss"] for r in results.values())
    if args.reference is not None:
        reference = json.loads(args.reference.read_text())
        best = min(best, reference["best_val_loss"])
        print(f"# long run's best held-out loss from {args.reference}")
    print(
        f"# {args.size} x {args.size} x {args.frames}, dense, {args.photons:g} photons, "
        f"{torch.get_num_threads()} threads, network width {config.model.width}, training "
        f"precision {args.precision} "
        f"({training_dtype(torch.device('cpu'), args.precision) or torch.float32}); untrained "
        f"held-out loss {initial:.5f}, "
        f"best {best:.5f}"
    )
    print(f"# first pass (noise model, mean image) {prepare_s:.0f} s, counted in 'total s'")
    print(
        f"{'run':>12} {'steps':>6} {'train s':>8} {'total s':>8} {'best loss':>10} "
        f"{'gap %':>6} {'1 % at s':>9} {'5 % at s':>9} {'prior PSNR':>11}"
    )
    if init_info:
        print(
            f"# fine-tuned runs ('tuned'): from a model trained {init_info['total_seconds']:.0f} s "
            f"({init_info['steps']} steps) on an earlier session ({init_info['movie']}: the same "
            "cells); a one-time cost, not counted in their times"
        )
    for name, r in results.items():
        r["gap_fraction"] = (r["best_val_loss"] - best) / (initial - best)
        r["within_1pct_s"] = _first_within(r["history"], best, initial, 0.01)
        r["within_5pct_s"] = _first_within(r["history"], best, initial, 0.05)
        if r["fine_tuned"]:
            start = (r["start_val_loss"] - best) / (initial - best)
            print(f"# {name}: {100 * start:.2f} % short at the start (the given network)")
        print(
            f"{name:>12} {r['steps']:>6} {r['loop_seconds']:>8.0f} {r['total_seconds']:>8.0f} "
            f"{r['best_val_loss']:>10.5f} {100 * r['gap_fraction']:>6.2f} "
            f"{r['within_1pct_s']:>9.0f} {r['within_5pct_s']:>9.0f} {r['prior_psnr']:>11.2f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "precision": args.precision,
                "width": config.model.width,
                "initial_val_loss": initial,
                "best_val_loss": best,
                "init_model": init_info,
                "runs": results,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


def _untrained_loss(prep: Prepared, config: calmdown.Config) -> float:
    """Held-out loss of the untrained network (it predicts the mean image)."""
    return float(make_trainer(prep, config, torch.device("cpu")).validate())


if __name__ == "__main__":
    main()
