"""Inference throughput in one process against Dask local clusters of 1 and 2 workers.

The movie is simulated, written to Zarr and denoised three ways, each writing Zarr: in this
process (:func:`calmdown.iter_apply` into a :class:`calmdown.io.MovieWriter`, as ``calmdown
denoise`` without ``--dask``), and with :func:`calmdown.distributed.dask_apply` on local
clusters of worker processes (one task at a time per worker; PyTorch threads = cores /
workers). Inference fps excludes the first pass (noise model and mean image, made once on the
client in every mode) and, for Dask, the cluster start, reported apart. The load average is
recorded: on a shared machine it says how much the numbers can be trusted.

Usage::

    python benchmarks/dask_scaling.py [--frames 600 --size 128 --workers 1 2 --repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import calmdown
from calmdown.distributed import _usable_cores, dask_apply
from calmdown.io import MovieWriter, save_array
from calmdown.pipeline import iter_apply, prepare
from calmdown.simulate import simulate


def single_process(model: Any, raw: Path, out: Path, prep: Any) -> float:
    """Denoise into Zarr in this process; return seconds."""
    t0 = time.perf_counter()
    with MovieWriter(out, prep.reader.shape, dtype="float32") as writer:
        for chunk in iter_apply(model, raw, prepared=prep):
            writer.write(chunk.start, chunk.denoised)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2, help="Runs per mode; the best counts.")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "dask_scaling.json"
    )
    args = parser.parse_args()
    cores = _usable_cores()
    default_threads = torch.get_num_threads()
    shape = (args.frames, args.size, args.size)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="calmdown-dask-") as tmp:
        folder = Path(tmp)
        sim = simulate("dense", photons=1.0, shape=shape, seed=0)
        raw = save_array(folder / "raw.zarr", sim.raw)
        del sim
        model = calmdown.train(raw, max_steps=args.train_steps, time_budget_s=None, seed=0)
        prep = prepare(raw, model.config)
        try:
            torch.set_num_threads(default_threads)
            for rep in range(args.repeats):
                load = os.getloadavg()[0]
                seconds = single_process(model, raw, folder / "single.zarr", prep)
                rows.append(
                    {
                        "mode": "single process",
                        "workers": 1,
                        "torch_threads": torch.get_num_threads(),
                        "repeat": rep,
                        "startup_s": 0.0,
                        "infer_s": seconds,
                        "fps": args.frames / seconds,
                        "fps_with_startup": args.frames / seconds,
                        "load_avg_1min": load,
                    }
                )
                for n in args.workers:
                    load = os.getloadavg()[0]
                    result = dask_apply(
                        model, raw, folder / f"dask{n}.zarr", workers=n, prepared=prep
                    )
                    rows.append(
                        {
                            "mode": f"--dask, {n} worker{'s' if n > 1 else ''}",
                            "workers": n,
                            "torch_threads": max(1, cores // n),
                            "repeat": rep,
                            "tasks": result.n_tasks,
                            "frames_per_task": result.frames_per_task,
                            "startup_s": result.startup_seconds,
                            "infer_s": result.seconds,
                            "fps": result.frames_per_second,
                            "fps_with_startup": args.frames
                            / (result.seconds + result.startup_seconds),
                            "load_avg_1min": load,
                        }
                    )
        finally:
            prep.close()
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["mode"] not in best or row["fps"] > best[row["mode"]]["fps"]:
            best[row["mode"]] = row
    base = best["single process"]["fps"]
    lines = [
        f"{args.frames} x {args.size} x {args.size} frames, {cores} cores, best of "
        f"{args.repeats}; load average (1 min) {min(r['load_avg_1min'] for r in rows):.1f} to "
        f"{max(r['load_avg_1min'] for r in rows):.1f}",
        f"{'mode':<22}{'torch thr':>10}{'tasks':>7}{'start s':>9}{'infer s':>9}{'fps':>8}"
        f"{'fps+start':>11}{'speed-up':>10}",
    ]
    for mode, row in best.items():
        lines.append(
            f"{mode:<22}{row['torch_threads']:>10}{row.get('tasks', '-')!s:>7}"
            f"{row['startup_s']:>9.1f}{row['infer_s']:>9.1f}{row['fps']:>8.1f}"
            f"{row['fps_with_startup']:>11.1f}{row['fps'] / base:>9.2f}x"
        )
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "shape": list(shape),
                "cores": cores,
                "machine": platform.processor() or platform.machine(),
                "torch": torch.__version__,
                "calmdown": calmdown.__version__,
                "best": best,
                "runs": rows,
                "table": lines,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
