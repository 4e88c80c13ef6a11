"""What neighbouring planes as context buy (``--plane-context``), on simulated volumes.

A plane is simulated (dense preset, 1 photon per pixel per frame) and its neighbour made in two
ways: the same tissue seen 0.7x as brightly with its own noise (a cell or dendrite that spans
both planes; the best case), and unrelated tissue (another simulated scene: planes far apart;
plane context must then cost nothing). The plane is denoised alone and with the neighbour as
context (given twice, as for a plane at the edge of a volume), with the same number of
training steps, and scored against its ground truth: PSNR of the prior and of the denoised
movie, ROI traces, and the amplitude kept of rare events by class. Prints a table and writes JSON.

Usage::

    python benchmarks/plane_context.py                  # 1000 x 96 x 96, 800 training steps
    python benchmarks/plane_context.py --frames 400 --steps 200
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import calmdown
from calmdown.config import make_config
from calmdown.simulate import record, simulate

sys.path.insert(0, str(Path(__file__).parent))
from metrics import event_kept, events_by_class, psnr, trace_metrics


def score(model: calmdown.TrainedModel, sim, neighbours) -> dict[str, float]:
    """Prior and posterior quality of one model against the ground truth."""
    prior = calmdown.apply(model, sim.raw, neighbours=neighbours, output="prior")
    t0 = time.perf_counter()
    den = calmdown.apply(model, sim.raw, neighbours=neighbours)
    seconds = time.perf_counter() - t0
    kept = events_by_class(event_kept(den, sim))
    return {
        "prior_psnr": psnr(prior, sim),
        "psnr": psnr(den, sim),
        **trace_metrics(den, sim),
        **kept,
        "train_s": model.training["seconds"],
        "steps": model.training["steps"],
        "infer_fps": sim.raw.shape[0] / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--photons", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=800, help="training steps, the same for all")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "plane_context.json"
    )
    args = parser.parse_args()
    shape = (args.frames, args.size, args.size)
    command = (
        f"python benchmarks/plane_context.py --frames {args.frames} --size {args.size} "
        f"--photons {args.photons} --steps {args.steps} --seeds {' '.join(map(str, args.seeds))}"
    )
    print(f"# {command}")
    runs = []
    for seed in args.seeds:
        sim = simulate("dense", photons=args.photons, shape=shape, seed=seed)
        same = record(0.7 * sim.photons, sim.detector, seed=seed + 100)
        unrelated = simulate("dense", photons=args.photons, shape=shape, seed=seed + 1000).raw
        # The same number of steps for each, and no time budget: a loaded machine would give
        # each run a different share of it. (A flat time_budget_s=None is read as "not set".)
        config = make_config(max_steps=args.steps, seed=seed)
        config = config.model_copy(
            update={"train": config.train.model_copy(update={"time_budget_s": None})}
        )
        rows = {"alone": score(calmdown.train(sim.raw, config=config), sim, None)}
        for name, other in (("same tissue 0.7x", same), ("unrelated tissue", unrelated)):
            pair = [other, other]
            rows[name] = score(calmdown.train(sim.raw, neighbours=pair, config=config), sim, pair)
        columns = list(rows["alone"])
        print(f"seed {seed:<13}" + "".join(f"{c:>14}" for c in columns))
        for name, row in rows.items():
            print(f"{name:<18}" + "".join(f"{row[c]:>14.3f}" for c in columns), flush=True)
        runs.append({"seed": seed, "rows": rows})
    summary = {}
    print("\nwith plane context minus alone, mean (sd) over seeds")
    for name in ("same tissue 0.7x", "unrelated tissue"):
        summary[name] = {}
        cells = []
        for column in ("prior_psnr", "psnr", "dff_rmse", "kept_z4-8", "kept_z>=8"):
            d = np.array([r["rows"][name][column] - r["rows"]["alone"][column] for r in runs])
            summary[name][column] = {"mean": float(d.mean()), "sd": float(d.std(ddof=1))}
            cells.append(f"{column} {d.mean():+.3f} ({d.std(ddof=1):.3f})")
        print(f"{name:<18}" + ", ".join(cells))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record_ = {"command": command, "runs": runs, "difference": summary}
    args.out.write_text(json.dumps(record_, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
