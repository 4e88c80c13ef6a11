"""Are calmdown's credible intervals calibrated? Coverage of the clean movie, by strata.

For each preset and photon level: train calmdown on a simulated movie, take the central 90 %
posterior interval of every pixel in every frame, and measure how often it holds the ground
truth, overall and within groups of pixels chosen by what the data show (dim / bright mean
image, narrow / wide predicted interval, quiet / active in the denoised movie) and by the
truth (quiet / active clean value, pixels of rare events by oracle z). Also the sharpness:
mean interval width over the width of the raw data's own 90 % noise interval. Prints one
table and writes JSON.

Usage::

    python benchmarks/calibration.py                                  # full grid (slow)
    python benchmarks/calibration.py --photons 1 --presets dense --frames 1000 --steps 700
    python benchmarks/calibration.py --photons 1 --presets dense --seeds 0 1 2 3 4  # 5 movies
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import calmdown
from calmdown.io.rois import Rois
from calmdown.samples import ErrorCorrelation
from calmdown.simulate import SimulatedMovie, simulate
from calmdown.traces import roi_traces
from calmdown.train import held_out_mask

TARGETS = {
    "overall": (0.88, 0.92),
    "dim": (0.88, 0.92),
    "bright": (0.88, 0.92),
    "narrow": (0.88, 0.92),
    "wide": (0.88, 0.92),
    "quiet (denoised)": (0.88, 0.92),
    "active (denoised)": (0.88, 0.92),
    "quiet (truth)": (0.85, 0.95),
    "active (truth)": (0.85, 0.95),
    "events z>=8": (0.85, 1.0),
    "roi F": (0.85, 0.95),
    "roi dF/F": (0.85, 0.95),
}


def _active(movie: np.ndarray, sd: np.ndarray, k: float = 3.0) -> np.ndarray:
    """Pixels whose value departs from their temporal median by more than ``k`` sd."""
    return np.abs(movie - np.median(movie, axis=0)) > k * sd


def strata(
    sim: SimulatedMovie,
    den: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    p_surprise: np.ndarray | None = None,
) -> dict[str, float]:
    """Coverage of ``sim.clean`` by ``[lower, upper]`` overall and per stratum.

    With the guard's ``p_surprise``: at clear events, its mean and the coverage where the
    guard handed the pixel to the data (above 0.5) and where it did not.
    """
    clean = sim.clean
    inside = (clean >= lower) & (clean <= upper)
    width = upper - lower
    mean_img = sim.raw.mean(axis=0)
    bright = np.broadcast_to(mean_img > np.median(mean_img), clean.shape)
    # The brightest tenth: in a sparse movie mostly cell pixels, which the halves hide.
    top = np.broadcast_to(mean_img > np.quantile(mean_img, 0.9), clean.shape)
    q1, q3 = np.quantile(width, [0.25, 0.75])
    post_sd = width / (2 * 1.6449)
    det = sim.detector
    # Raw noise sd at the clean value: (gain x excess noise factor) ADU per photon, plus read.
    noise_sd = np.sqrt(
        det.excess_noise_factor * det.gain * np.clip(clean - det.offset, 0, None)
        + det.read_noise**2
    )
    act_den = _active(den, np.maximum(post_sd, 1e-6))
    act_true = _active(clean, noise_sd * 0.5)
    # How the truth misses: above the interval, below it, and the spread of the standardised
    # error (1 for a calibrated Gaussian); a miss on one side is a biased centre, misses on both
    # sides an interval too narrow.
    zerr = (clean - den) / np.maximum(post_sd, 1e-9)
    out = {
        "overall": inside.mean(),
        "dim": inside[~bright].mean(),
        "bright": inside[bright].mean(),
        "brightest 10 %": inside[top].mean(),
        "narrow": inside[width <= q1].mean(),
        "wide": inside[width >= q3].mean(),
        "quiet (denoised)": inside[~act_den].mean(),
        "active (denoised)": inside[act_den].mean() if act_den.any() else float("nan"),
        "quiet (truth)": inside[~act_true].mean(),
        "active (truth)": inside[act_true].mean() if act_true.any() else float("nan"),
        "width / raw noise width": float(width.mean() / (2 * 1.6449 * noise_sd).mean()),
    }
    # Where the active (denoised) pixels miss: inside the cells (ROI masks), or outside them,
    # where the prior spreads a cell's activity into its neighbours.
    in_cell = np.broadcast_to(sim.labels > 0, clean.shape)
    for label, mask in (("in cells", act_den & in_cell), ("outside cells", act_den & ~in_cell)):
        out[f"active (denoised) {label}"] = inside[mask].mean() if mask.any() else float("nan")
        out[f"active (denoised) {label}: share"] = mask.sum() / max(int(act_den.sum()), 1)
    for label, mask in (
        ("overall", np.ones(clean.shape, bool)),
        ("active (denoised)", act_den),
        ("bright", bright),
        ("narrow", width <= q1),
    ):
        out.update(_miss_shape(label, zerr[mask], (clean > upper)[mask], (clean < lower)[mask]))
    for label, lo, hi in (("events z<4", 0, 4), ("events z4-8", 4, 8), ("events z>=8", 8, 1e9)):
        hits, onset = [], []
        above, below, zs = [], [], []
        for ev in sim.events:
            if lo <= ev.z_oracle < hi:
                # During the event's upper half, at the pixels where it is at least half its peak.
                frames = ev.t_start + np.flatnonzero(ev.time_course >= 0.5 * ev.peak_photons)
                px = ev.weights >= 0.5
                where = (frames[:, None], ev.ys[px][None], ev.xs[px][None])
                hits.append(inside[where].ravel())
                # Its first frames (up to one after the peak), where only the later ones vouch
                # for it: the guard's evidence windows leave out the frame being denoised.
                first = frames[frames <= ev.t_start + int(np.argmax(ev.time_course)) + 1]
                onset.append(inside[first[:, None], ev.ys[px][None], ev.xs[px][None]].ravel())
                above.append((clean > upper)[where].ravel())
                below.append((clean < lower)[where].ravel())
                zs.append(zerr[where].ravel())
        out[label] = float(np.concatenate(hits).mean()) if hits else float("nan")
        if label == "events z>=8" and hits and p_surprise is not None:
            out.update(_by_surprise(label, sim, np.concatenate(hits), p_surprise, lo, hi))
        onset_hits = np.concatenate(onset) if onset else np.zeros(0, bool)
        out[f"{label}, onset"] = float(onset_hits.mean()) if onset_hits.size else float("nan")
        if label == "events z>=8" and hits:
            out.update(_miss_shape(label, *(np.concatenate(v) for v in (zs, above, below))))
    return {k: float(v) for k, v in out.items()}


def _by_surprise(
    label: str, sim: SimulatedMovie, hits: np.ndarray, p: np.ndarray, lo: float, hi: float
) -> dict[str, float]:
    """Mean surprise probability at the events' pixels, and coverage split at p = 0.5."""
    ps = []
    for ev in sim.events:
        if lo <= ev.z_oracle < hi:  # the same pixels, in the same order, as the hits
            frames = ev.t_start + np.flatnonzero(ev.time_course >= 0.5 * ev.peak_photons)
            px = ev.weights >= 0.5
            ps.append(p[frames[:, None], ev.ys[px][None], ev.xs[px][None]].ravel())
    pv = np.concatenate(ps)
    handed = pv > 0.5
    return {
        f"{label}: p_surprise": float(pv.mean()),
        f"{label}: share p>0.5": float(handed.mean()),
        f"{label}, p>0.5": float(hits[handed].mean()) if handed.any() else float("nan"),
        f"{label}, p<=0.5": float(hits[~handed].mean()) if (~handed).any() else float("nan"),
    }


def _miss_shape(
    label: str, zerr: np.ndarray, above: np.ndarray, below: np.ndarray
) -> dict[str, float]:
    """Fractions of the truth above and below the interval, and the sd of the standardised error."""
    if zerr.size == 0:
        return {}
    return {
        f"{label}: above": float(above.mean()),
        f"{label}: below": float(below.mean()),
        f"{label}: sd z": float(np.std(zerr)),
    }


def roi_coverage(model: calmdown.TrainedModel, sim: SimulatedMovie) -> dict[str, float]:
    """Coverage of the clean ROI traces (F and dF/F) by the 90 % corridors."""
    if sim.labels.max() == 0:
        return {}
    ids = np.unique(sim.labels[sim.labels > 0])
    masks = []
    for i in ids:
        ys, xs = np.nonzero(sim.labels == i)
        masks.append((ys, xs, np.ones(len(ys), np.float32)))
    rois = Rois(ids=ids, masks=masks, shape=sim.labels.shape)
    clean = sim.roi_traces[ids - 1]
    clean_dff = (clean - np.median(clean, axis=1, keepdims=True)) / np.median(
        clean, axis=1, keepdims=True
    )
    indep = dataclasses.replace(model, error_correlation=ErrorCorrelation.independent())
    out = {}
    for name, mdl, calibrate in (
        ("roi", model, True),
        ("roi joint unscaled", model, False),
        ("roi independent unscaled", indep, False),
    ):
        tr = roi_traces(mdl, sim.raw, rois, samples=32, calibrate=calibrate)
        out[f"{name} F"] = float(np.mean((clean >= tr.f_lower) & (clean <= tr.f_upper)))
        out[f"{name} dF/F"] = float(
            np.mean((clean_dff >= tr.dff_lower) & (clean_dff <= tr.dff_upper))
        )
        if calibrate:
            out["roi corridor factor"] = tr.corridor_factor
    return out


def train_cell(sim: SimulatedMovie, args: argparse.Namespace) -> calmdown.TrainedModel:
    """Train a grid cell's model: ``--steps`` steps, ``--seed``, ``--precision``, ``--width``."""
    width = {} if args.width is None else {"width": args.width}
    return calmdown.train(
        sim.raw,
        max_steps=args.steps,
        time_budget_s=1e6,
        seed=args.seed,
        precision=args.precision,
        **width,
    )


def run(preset: str, photons: float, args: argparse.Namespace) -> dict:
    shape = (args.frames, args.size, args.size)
    sim = simulate(preset, photons=photons, shape=shape, seed=args.seed)
    t0 = time.perf_counter()
    model = train_cell(sim, args)
    train_s = time.perf_counter() - t0
    chunks = list(calmdown.iter_apply(model, sim.raw, interval=0.9))
    den = np.concatenate([c.denoised for c in chunks])
    lower = np.concatenate([c.lower for c in chunks])
    upper = np.concatenate([c.upper for c in chunks])
    p_surprise = np.concatenate([c.p_surprise for c in chunks])
    row = {
        "preset": preset,
        "photons": photons,
        "train_s": train_s,
        **strata(sim, den, lower, upper, p_surprise),
    }
    row.update(roi_coverage(model, sim))
    row.update(_by_frame_use(sim, model, lower, upper))
    row["heldout_raw_coverage"] = model.heldout["coverage"]
    row["heldout_pit_ks"] = model.heldout["pit_ks"]
    return row


def _by_frame_use(
    sim: SimulatedMovie, model: calmdown.TrainedModel, lower: np.ndarray, upper: np.ndarray
) -> dict[str, float]:
    """Coverage of the truth on the frames training held out and on those it trained on.

    A network that memorised its training targets' noise would cover the truth worse on the
    frames it trained on; the held-out check (and a user) sees only the held-out ones.
    """
    n = sim.clean.shape[0]
    held = held_out_mask(np.arange(n), model.config.train.val_fraction, n)
    inside = (sim.clean >= lower) & (sim.clean <= upper)
    mem = model.heldout.get("memorisation", {})
    out = {
        "overall, held-out frames": float(inside[held].mean()),
        "overall, trained-on frames": float(inside[~held].mean()),
    }
    for key in ("excess_ratio_heldout", "excess_ratio_trained"):
        if key in mem:
            out[key] = float(mem[key])
    return out


def _print_values(heading: str, cols: list[str], rows: list[dict]) -> None:
    """Print ``heading`` and a Markdown table of ``cols`` for each row (no bands marked)."""
    print("\n" + heading)
    print("| preset | photons | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for r in rows:
        cells = [f"{r.get(c, float('nan')):.3f}" for c in cols]
        print(f"| {r['preset']} | {r['photons']:g} | " + " | ".join(cells) + " |")


def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the grid's options: presets, photon levels, movie shape and training steps."""
    parser.add_argument("--presets", nargs="+", default=["dense", "sparse"])
    parser.add_argument("--photons", nargs="+", type=float, default=[0.5, 1.0, 2.0, 10.0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the simulated movie and of training (another movie: other cells and events)",
    )
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="arithmetic of the training steps (calmdown's --precision)",
    )
    parser.add_argument(
        "--width", type=int, default=None, help="channels of the network (calmdown's --width)"
    )


def run_grid(
    args: argparse.Namespace,
    cell: Callable[[str, float, argparse.Namespace], dict],
    show: Callable[[dict], None],
) -> list[dict]:
    """Rows of ``cell`` for every preset and photon level of the grid, each shown as it ends."""
    torch.manual_seed(args.seed)
    rows = []
    for preset in args.presets:
        for photons in args.photons:
            rows.append(cell(preset, photons, args))
            show(rows[-1])
    return rows


def pooled(rows: list[dict]) -> list[dict]:
    """Mean of every numeric column over the seeds of each (preset, photons) cell."""
    cells: dict[tuple[str, float], list[dict]] = {}
    for row in rows:
        cells.setdefault((row["preset"], row["photons"]), []).append(row)
    out = []
    for (preset, photons), group in cells.items():
        keys = [k for k in group[0] if k not in ("preset", "photons", "seed")]
        mean = {k: float(np.nanmean([r.get(k, np.nan) for r in group])) for k in keys}
        out.append({"preset": preset, "photons": photons, "seeds": len(group), **mean})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_grid_arguments(parser)
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="several movies per cell (overrides --seed): the tables show their mean, the JSON "
        "each seed's rows too (a cell's clear events are 8 events of one movie)",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    seeds = args.seeds or [args.seed]
    per_seed = []
    for seed in seeds:
        args.seed = seed
        # Each row printed as it ends: progress, in case a long run is cut short.
        for row in run_grid(args, run, lambda row: print(json.dumps(row), flush=True)):
            per_seed.append({"seed": seed, **row})
    rows = per_seed if len(seeds) == 1 else pooled(per_seed)
    if len(seeds) > 1:
        print(f"Means over seeds {', '.join(map(str, seeds))}:")
    cols = [
        *TARGETS,
        "brightest 10 %",
        "events z<4",
        "events z4-8",
        "width / raw noise width",
        "roi joint unscaled F",
        "roi independent unscaled F",
        "roi corridor factor",
    ]
    print("| preset | photons | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, float("nan"))
            band = TARGETS.get(c)
            flag = "" if band is None or np.isnan(v) or band[0] <= v <= band[1] else " (!)"
            cells.append(f"{v:.3f}{flag}")
        print(f"| {r['preset']} | {r['photons']:g} | " + " | ".join(cells) + " |")
    shape_cols = [
        f"{g}: {k}"
        for g in ("overall", "active (denoised)", "bright", "narrow", "events z>=8")
        for k in ("above", "below", "sd z")
    ]
    _print_values(
        "How the truth misses (fraction above / below the 90 % interval, each 0.05 if\n"
        "calibrated; sd of (truth - denoised) / posterior sd, 1 if calibrated):",
        shape_cols,
        rows,
    )
    where_cols = [
        "active (denoised) in cells",
        "active (denoised) in cells: share",
        "active (denoised) outside cells",
        "active (denoised) outside cells: share",
        "events z>=8, onset",
    ]
    _print_values(
        "Where the misses are: active (denoised) pixels inside the cells and outside them\n"
        "(coverage, share of the active pixels), and clear events in their first frames:",
        where_cols,
        rows,
    )
    guard_cols = [
        "events z>=8: p_surprise",
        "events z>=8: share p>0.5",
        "events z>=8, p>0.5",
        "events z>=8, p<=0.5",
    ]
    _print_values(
        "Clear events as the guard saw them: mean surprise probability at their pixels, the\n"
        "share it handed to the data (p > 0.5), and the coverage there and elsewhere:",
        guard_cols,
        rows,
    )
    _print_values(
        "Frames training held out (what the held-out check sees) and those it trained on, and\n"
        "the prior's residual excess over noise on each (relative to its predicted variance):",
        [
            "overall, held-out frames",
            "overall, trained-on frames",
            "excess_ratio_heldout",
            "excess_ratio_trained",
        ],
        rows,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "calibration.json"
    payload = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
    if len(seeds) > 1:
        payload["per_seed"] = per_seed
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
