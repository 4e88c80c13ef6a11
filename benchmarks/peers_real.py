"""Calmdown beside peer denoisers on a real recording, scored without ground truth.

A real recording has no clean movie to score against, so every method is scored with the
photon split of ``calmdown evaluate`` (:func:`calmdown.evaluate.split_halves`): the
recording's counts are split into two halves A and B with uncorrelated noise, each method
trains on half A and denoises it (the same half A for every method, from one seed), and its
output is scored against half B. ``E[(dA - B)^2] = MSE(dA) + Var(noise of B)``, so the
estimated PSNR gain over the raw half is ``10 log10(noise var / MSE(dA))``, the gain on a
recording with half this one's photons. Where the recording's noise is correlated between
pixels (registration) the split is Gaussian and the estimate approximate, the same for every
method.

Methods run as in ``benchmarks/peers.py`` (whose runners and helpers this reuses): calmdown
with its defaults in a subprocess of this environment, each peer through its runner in its own
virtual environment (``benchmarks/peers/setup.sh``), one at a time, all with the same training
budget; a centred 5-frame moving average is the reference row. Beside each method's gain the
table gives the paired difference to calmdown's (a block bootstrap over frames of the same
split, so the frames' shared sampling error cancels), training seconds and steps, inference
frames per second and peak memory. Prints one markdown table; writes
``benchmarks/results/peers_real.json`` and ``.txt``.

Usage::

    bash benchmarks/peers/setup.sh           # once: the peers' virtual environments
    python benchmarks/peers_real.py          # ../shared/data optinist recording, 180 s each
    python benchmarks/peers_real.py --movie rec.h5 --key data --budget 60 --peers careamics
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
from metrics import moving_average
from peers import (
    PEER_DIR,
    PEERS,
    add_run_arguments,
    finish_run,
    peer_python,
    run_method,
    setup_run,
)

from calmdown.errors import InputError
from calmdown.evaluate import score_halves, split_halves
from calmdown.io import open_movie
from calmdown.noise import estimate_noise

HERE = Path(__file__).resolve().parent
DEFAULT_MOVIE = HERE.parent.parent / "shared" / "data" / "optinist-mouse2p-top-2000x64x128.tif"
COST = [("train_s", "train s", "{:.0f}"), ("steps", "steps", "{:.0f}")]
COST += [("infer_fps", "infer fps", "{:.1f}"), ("peak_rss_mb", "peak MB", "{:.0f}")]


class MethodFailed(RuntimeError):
    """A method that ran without output (its runner's reason)."""


def paired_difference(
    score_a: np.ndarray, score_b: np.ndarray, var_t: np.ndarray, pixels: int, seed: int
) -> tuple[float, float]:
    """Gain of method A over method B in dB, and its block-bootstrap standard deviation.

    ``score_*`` are per-frame sums of ``(d - B)^2``, ``var_t`` the per-frame sums of half B's
    noise variance, ``pixels`` per frame. Blocks of ``max(8, T // 40)`` frames, as
    :func:`~calmdown.evaluate.estimate_gain`; the same blocks for both methods.
    """
    n_t = len(score_a)
    block = max(8, n_t // 40)
    starts = np.arange(0, n_t, block)
    sums = [np.add.reduceat(s, starts) for s in (score_a, score_b, var_t)]
    frames = np.diff(np.append(starts, n_t)).astype(np.float64)

    def diff(pick: np.ndarray | slice) -> np.ndarray:
        n = frames[pick].sum(axis=-1) * pixels
        v = sums[2][pick].sum(axis=-1) / n
        mse_a = sums[0][pick].sum(axis=-1) / n - v
        mse_b = sums[1][pick].sum(axis=-1) / n - v
        with np.errstate(divide="ignore", invalid="ignore"):
            return 10 * np.log10(mse_b / mse_a)

    rng = np.random.default_rng(seed + 1)
    boot = diff(rng.integers(0, len(starts), (400, len(starts))))
    boot = boot[np.isfinite(boot)]
    return float(diff(slice(None))), float(np.std(boot)) if boot.size > 1 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movie", type=Path, default=DEFAULT_MOVIE)
    parser.add_argument("--key", default=None, help="dataset inside an HDF5 or Zarr file")
    add_run_arguments(parser, HERE / "results" / "peers_real.json")
    args = parser.parse_args()
    if not args.movie.exists():
        sys.exit(
            f"{args.movie}: no such file; give a recording with --movie (the default is the "
            "optinist sample of ../shared/data, beside the checkout)"
        )
    work = setup_run(parser, args)
    peer_args = args.peer_arg

    with open_movie(args.movie, key=args.key) as reader:
        raw = np.asarray(reader.read(0, reader.shape[0]))
    n_t, h, w = raw.shape
    if args.timeout is None:
        args.timeout = 3 * args.budget + 600 + raw.size / 2e4
    noise = estimate_noise(lambda s, e: raw[s:e], n_t)
    # One split for every method: each denoises half A, is scored against half B.
    halves = split_halves(raw, noise, seed=args.seed)
    var_t = 0.5 * np.sum(halves.split_var, axis=(1, 2), dtype=np.float64)
    half_a = work / "half_a.tif"
    tifffile.imwrite(half_a, noise.to_adu(halves.a).astype(np.float32))
    load0 = os.getloadavg()
    print(
        f"{args.movie.name}: {n_t} x {h} x {w}, {halves.method} split, budget "
        f"{args.budget:g} s each",
        flush=True,
    )

    methods: list[tuple[str, str, list[str] | str]] = [
        ("moving average (5)", "reference", []),
        ("calmdown", "method", [sys.executable, str(HERE / "peers.py"), "--worker"]),
    ]
    for peer in args.peers:
        py, why = peer_python(peer)
        cmd = why if py is None else [str(py), str(PEER_DIR / PEERS[peer][1])]
        methods.append((PEERS[peer][0], "method", cmd))
    rows: list[dict] = []
    scores: dict[str, np.ndarray] = {}
    for (label, kind, cmd), key in zip(methods, ["ma", "calmdown", *args.peers], strict=True):
        row: dict = {"method": label, "kind": kind}
        rows.append(row)
        if isinstance(cmd, str):
            row["error"] = cmd
            print(f"  {label}: not run: {cmd}", flush=True)
            continue
        try:
            if key == "ma":
                t0 = time.perf_counter()
                out = moving_average(noise.to_adu(halves.a), 5)
                row["infer_fps"] = n_t / (time.perf_counter() - t0)
            else:
                common = ["--movie", str(half_a), "--budget", str(args.budget)]
                extra = shlex.split(peer_args.get(key, ""))
                res = run_method(
                    [*cmd, *common, "--seed", str(args.seed), *extra], work, key, args.timeout
                )
                if "out" not in res:
                    raise MethodFailed(res.get("error", "no output"))
                row.update({k: v for k, v in res.items() if k != "method"})
                out = tifffile.imread(res["out"]).astype(np.float32)
            d = noise.to_photons(out)
            result = score_halves(halves, d, noise, seed=args.seed)
        except (MethodFailed, InputError) as err:  # its reason goes in its row
            row["error"] = str(err)[:400]
            print(f"  {label}: failed: {row['error']}", flush=True)
            continue
        row |= {
            "gain_db": result.psnr_gain_db,
            "gain_sd": result.psnr_gain_db_sd,
            "split": result.method,
            "photons_per_pixel_half": result.photons_per_pixel_half,
        }
        scores[label] = np.sum(np.square(d.astype(np.float64) - halves.b), axis=(1, 2))
        print(
            f"  {label}: {result.psnr_gain_db:.2f} +- {result.psnr_gain_db_sd:.2f} dB", flush=True
        )
    if "calmdown" in scores:
        for row in rows:
            if row["method"] in scores and row["method"] != "calmdown":
                diff, sd = paired_difference(
                    scores["calmdown"], scores[row["method"]], var_t, h * w, args.seed
                )
                row |= {"calmdown_minus_db": diff, "calmdown_minus_sd": sd}

    def cell(row: dict, key: str, spec: str) -> str:
        v = row.get(key)
        return "—" if v is None or not np.isfinite(v) else spec.format(v)

    heads = ["method", "est. gain dB", "calmdown minus this, dB"] + [h for _, h, _ in COST]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        name = r["method"] if "error" not in r else f"{r['method']}: not run — {r['error']}"
        gain = f"{r['gain_db']:.2f} ± {r['gain_sd']:.2f}" if "gain_db" in r else "—"
        diff = (
            f"{r['calmdown_minus_db']:+.2f} ± {r['calmdown_minus_sd']:.2f}"
            if "calmdown_minus_db" in r
            else "—"
        )
        lines.append(
            "| " + " | ".join([name, gain, diff, *(cell(r, k, s) for k, _, s in COST)]) + " |"
        )
    split = halves.method
    head = (
        f"{args.movie.name}, {n_t} x {h} x {w}; {split} photon split (seed {args.seed}), scored at "
        f"{noise.photons_per_pixel / 2:.3g} photons per pixel per frame (half the recording's); "
        f"training budget {args.budget:g} s each on {os.cpu_count()} CPU(s), threads "
        f"{args.threads or 'default'}; load average {load0[0]:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end"
    )
    report = "\n".join([head, "", *lines])
    payload = {
        "noise_model": noise.to_dict(),
        "load_average": {"start": load0, "end": os.getloadavg()},
        "rows": rows,
    }
    finish_run(args, report, payload, work)


if __name__ == "__main__":
    main()
