"""What ROI traces with credible corridors cost beside denoising, and their peak memory.

``calmdown traces`` denoises the movie and draws joint Monte-Carlo samples of it (64 by
default) for the corridors. For each preset this simulates a movie (512 x 512 by default),
trains a short model, then times, in one worker process per preset, the plain denoising
(``calmdown.apply``) and ``roi_traces`` with the simulator's cell masks as ROIs; the ratio of
their frame rates is the price of the corridors (read within one process: this machine's
speed varies). Peak resident memory is the worker's (``ru_maxrss``) after the traces, with
the movie and model in it. The corridors are checked to be finite.

The dense preset's cells cover about three quarters of a frame, the sparse one's about a
twelfth (a suite2p segmentation of a cortical field lies between).

Usage::

    python benchmarks/traces_speed.py                        # dense and sparse, 512 x 512 x 48
    python benchmarks/traces_speed.py --presets sparse --frames 96 --samples 32
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def worker(args: argparse.Namespace) -> None:
    """Time denoising and ROI traces on one preset; print one JSON line."""
    import calmdown
    from calmdown.io.rois import read_rois
    from calmdown.simulate import simulate
    from calmdown.traces import roi_traces

    torch.set_num_threads(args.threads)
    size, frames = args.size, args.frames
    sim = simulate(args.presets[0], photons=1.0, shape=(frames, size, size), seed=0)
    model = calmdown.train(sim.raw, seed=0, max_steps=args.steps, time_budget_s=None)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "labels.npy"
        np.save(path, sim.labels)
        rois = read_rois(path, (size, size))
    calmdown.apply(model, sim.raw[:20])  # warm: compiled loops, runtime session
    t0 = time.perf_counter()
    calmdown.apply(model, sim.raw)
    denoise_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tr = roi_traces(model, sim.raw, rois, samples=args.samples)
    traces_s = time.perf_counter() - t0
    corridors = (tr.f_lower, tr.f_upper, tr.dff_lower, tr.dff_upper)
    print(
        json.dumps(
            {
                "preset": args.presets[0],
                "rois": len(rois.masks),
                "roi_pixel_share": float((sim.labels > 0).mean()),
                "denoise_fps": frames / denoise_s,
                "traces_fps": frames / traces_s,
                "ratio": denoise_s / traces_s,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "finite": bool(all(np.isfinite(c).all() for c in corridors)),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["dense", "sparse"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30, help="training steps of the model")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "traces_speed.json"
    )
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    for preset in args.presets:
        cmd = [sys.executable, __file__, "--worker", "--presets", preset]
        for name in ("size", "frames", "samples", "steps", "threads"):
            cmd += [f"--{name}", str(getattr(args, name))]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(
        f"# {args.size} x {args.size} x {args.frames}, {args.samples} samples, "
        f"{args.threads} threads, a {args.steps}-step model"
    )
    print(
        f"{'preset':>8} {'ROIs':>5} {'ROI px':>7} {'denoise fps':>12} {'traces fps':>11} "
        f"{'ratio':>6} {'peak MB':>8} {'finite':>7}"
    )
    for r in rows:
        print(
            f"{r['preset']:>8} {r['rois']:>5} {r['roi_pixel_share']:>7.2f} "
            f"{r['denoise_fps']:>12.2f} {r['traces_fps']:>11.2f} {r['ratio']:>6.2f} "
            f"{r['peak_rss_mb']:>8.0f} {r['finite']!s:>7}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"args": {**vars(args), "out": str(args.out)}, "rows": rows}, indent=2)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
