"""Peak memory of ``calmdown denoise`` against movie length: flat, as the design promises.

For each case a uint16 movie is written block by block (BigTIFF, HDF5 or Zarr, never held
whole in memory): a simulated movie of ``--base-frames`` frames repeated until the length asked
for. ``calmdown denoise MOVIE -o OUT.zarr --interval 0.9`` then runs in a fresh process (noise
model, mean image, training, calibration, inference, writing the denoised movie and its
interval), and its peak resident memory is read from the operating system when it exits
(``getrusage`` of the child). Training is cut to ``--train-steps`` steps: its memory does not
grow with the steps, and the time goes to inference. Prints a table and writes JSON.

Usage::

    python benchmarks/memory.py                       # the default cases (about an hour)
    python benchmarks/memory.py --cases 128x10000:tif 128x50000:tif
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from calmdown.io import open_writer
from calmdown.simulate import simulate

DEFAULT_CASES = [
    "128x10000:tif",
    "128x50000:tif",
    "512x300:tif",
    "512x300:h5",
    "512x300:zarr",
    "512x1000:tif",
    "512x3000:tif",
]


def write_movie(path: Path, size: int, frames: int, base_frames: int) -> float:
    """Write a ``(frames, size, size)`` uint16 movie block by block; return seconds taken."""
    t0 = time.perf_counter()
    base = simulate("dense", photons=1.0, shape=(base_frames, size, size), seed=0).raw
    base = np.clip(base, 0, 65535).astype(np.uint16)
    with open_writer(path, (frames, size, size), dtype="uint16") as writer:
        for start in range(0, frames, base_frames):
            stop = min(frames, start + base_frames)
            writer.write(start, base[: stop - start])
    return time.perf_counter() - t0


def run_case(
    case: str, workdir: Path, train_steps: int, base_frames: int, interval: float | None
) -> dict:
    """Write the movie of `case` (``SIZExFRAMES:FORMAT``), denoise it, measure the child."""
    shape, fmt = case.split(":")
    size, frames = (int(v) for v in shape.split("x"))
    movie = workdir / f"movie_{size}_{frames}.{fmt}"
    write_s = write_movie(movie, size, frames, base_frames)
    on_disk = sum(f.stat().st_size for f in movie.rglob("*")) if movie.is_dir() else None
    on_disk = on_disk if on_disk is not None else movie.stat().st_size
    out = workdir / "out.zarr"
    cmd = [
        shutil.which("calmdown") or "calmdown", "denoise", str(movie), "-o", str(out),
        "--max-steps", str(train_steps), "--seed", "0",
    ]  # fmt: skip
    if interval is not None:
        cmd += ["--interval", str(interval)]
    log = workdir / "log.txt"
    t0 = time.perf_counter()
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak, not a running max
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    output = log.read_text()
    if proc.returncode != 0:
        raise SystemExit(f"{case}: calmdown denoise failed:\n{output}")
    peak_kb = usage.ru_maxrss
    shutil.rmtree(out, ignore_errors=True)
    for extra in workdir.glob("out.*"):
        shutil.rmtree(extra, ignore_errors=True) if extra.is_dir() else extra.unlink()
    shutil.rmtree(movie, ignore_errors=True) if movie.is_dir() else movie.unlink()
    return {
        "case": case,
        "size": size,
        "frames": frames,
        "format": fmt,
        "interval": interval,
        "movie_mb": on_disk / 2**20,
        "write_s": write_s,
        "denoise_s": seconds,
        "fps_overall": frames / seconds,
        "peak_rss_mb": peak_kb / 1024,
        "output_tail": output.strip().splitlines()[-3:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES)
    parser.add_argument("--train-steps", type=int, default=50)
    parser.add_argument("--base-frames", type=int, default=200)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--interval",
        type=float,
        default=0.9,
        help="--interval of calmdown denoise; 0 writes the denoised movie alone (the lower and "
        "upper movies take 2 x 4 bytes per pixel more disk: 21 GB at 512 x 512 x 10000)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "memory.json"
    )
    args = parser.parse_args()
    rows = []
    cases = args.cases
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for case in cases:
            row = run_case(
                case, Path(tmp), args.train_steps, args.base_frames, args.interval or None
            )
            rows.append(row)
            print(
                f"{row['size']:>4} x {row['size']:<4} x {row['frames']:>6} {row['format']:<5} "
                f"{'interval ' + str(args.interval) if args.interval else 'no interval':<12} "
                f"{row['movie_mb']:8.0f} MB on disk: peak {row['peak_rss_mb']:7.0f} MB, "
                f"{row['denoise_s']:7.0f} s ({row['fps_overall']:.1f} frames/s overall)",
                flush=True,
            )
    record = {
        "command": " ".join(["python", "benchmarks/memory.py", *sys.argv[1:]]),
        "cpu_count": os.cpu_count(),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
