"""Calmdown beside peer denoisers at the same CPU training budget, on the same simulated movies.

The peers (DeepCAD-RT, Noise2Void through CAREamics, DeepInterpolation) each run in their own
virtual environment made by ``benchmarks/peers/setup.sh``, through their runner scripts in
``benchmarks/peers/`` (one subprocess each, one at a time); calmdown runs the same way in a
subprocess of this environment, so that peak memory is measured per method. Every output is
scored with the functions of ``benchmarks/metrics.py`` that ``benchmarks/quality.py`` uses,
beside the raw movie and a centred 5-frame moving average. A peer that is not installed or
fails shows its reason in its row. Prints one markdown table and writes
``benchmarks/results/peers.json`` and ``peers.txt``.

Usage::

    bash benchmarks/peers/setup.sh           # once: the peers' virtual environments
    python benchmarks/peers.py               # dense, 1 photon, 2000 x 128 x 128, 180 s each
    python benchmarks/peers.py --frames 300 --size 64 --budget 20   # smoke test
    python benchmarks/peers.py --peers careamics --peer-arg careamics="--batch-size 8"
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from metrics import all_metrics, moving_average, quiet_mask

HERE = Path(__file__).resolve().parent
PEER_DIR = HERE / "peers"
PEERS = {
    "deepcad": ("DeepCAD-RT", "run_deepcad.py"),
    "careamics": ("Noise2Void (CAREamics)", "run_careamics.py"),
    "deepinterpolation": ("DeepInterpolation", "run_deepinterpolation.py"),
}
# (key, header, better): +1 higher is better, -1 lower, 0 nearer 1.
QUALITY = [
    ("psnr", "PSNR dB", +1),
    ("trace_corr", "trace r", +1),
    ("wobble", "wobble", -1),
    ("kept_z<4", "kept z<4", 0),
    ("kept_z4-8", "4-8", 0),
    ("kept_z>=8", "z>=8", 0),
    ("dff_rmse", "dF/F RMSE", -1),
]
COST = [("train_s", "train s", "{:.0f}"), ("steps", "steps", "{:.0f}")]
COST += [("infer_fps", "infer fps", "{:.1f}"), ("peak_rss_mb", "peak MB", "{:.0f}")]


def calmdown_worker(args: argparse.Namespace) -> None:
    """Train and apply calmdown on ``args.movie`` (run as a subprocess by :func:`run_method`)."""
    import torch

    import calmdown

    sys.path.insert(0, str(PEER_DIR))
    from rss import peak_rss_mb  # the runners' measure: ru_maxrss carries over exec

    torch.manual_seed(args.seed)
    movie = tifffile.imread(args.movie)
    t0 = time.perf_counter()
    model = calmdown.train(movie, time_budget_s=args.budget, seed=args.seed)
    train_s = time.perf_counter() - t0
    rss_train = peak_rss_mb()
    t0 = time.perf_counter()
    post = calmdown.apply(model, movie)
    infer_s = time.perf_counter() - t0
    tifffile.imwrite(args.out, post.astype(np.float32))
    result = {
        "method": "calmdown",
        "train_s": train_s,
        "infer_s": infer_s,
        "infer_fps": movie.shape[0] / infer_s,
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_train_mb": rss_train,
        "steps": model.training["steps"],
        "training": {k: v for k, v in model.training.items() if not isinstance(v, list | dict)},
        "settings": {"time_budget_s": args.budget, "seed": args.seed, "defaults": True},
        "threads": torch.get_num_threads(),
        "versions": {"calmdown": calmdown.__version__, "torch": torch.__version__},
    }
    args.json.write_text(json.dumps(result, indent=2))


def peer_python(peer: str) -> tuple[Path | None, str]:
    """Return the peer venv's python, or None and why it cannot run."""
    venv = PEER_DIR / ".venvs" / peer
    failed = venv / "FAILED"
    if failed.exists():
        text = " ".join(failed.read_text().split())
        return None, f"install failed ({venv.relative_to(HERE.parent)}/FAILED): {text}"
    if not (venv / ".ok").exists():
        return None, f"not installed: run `bash benchmarks/peers/setup.sh {peer}`"
    return venv / "bin" / "python", ""


def failure_reason(returncode: int, log: Path) -> str:
    """Return the last error line of a runner's log (or its last line), with the exit status."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception|Exit)\b", ln)]
    last = errors[-1] if errors else (lines[-1] if lines else "no output")
    return f"exit status {returncode}: {last[:400]}"


def run_method(cmd: list[str], work: Path, name: str, timeout: float) -> dict:
    """Run one runner; returns its JSON result (+ ``out``) or ``{"error": reason}``."""
    out, res, log = work / f"{name}.tif", work / f"{name}.json", work / f"{name}.log"
    cmd = [*cmd, "--out", str(out), "--json", str(res)]
    print(f"  running {name}: log {log}", flush=True)
    t0 = time.perf_counter()
    try:
        with log.open("w") as fh:
            proc = subprocess.run(
                cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, check=False
            )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "log": str(log)}
    if proc.returncode != 0 or not res.exists():
        return {"error": failure_reason(proc.returncode, log), "log": str(log)}
    result = json.loads(res.read_text())
    result |= {"out": str(out), "log": str(log), "wall_s": time.perf_counter() - t0}
    return result


def run_level(photons: float, args: argparse.Namespace, work: Path) -> list[dict]:
    from calmdown.simulate import simulate

    shape = (args.frames, args.size, args.size)
    sim = simulate(args.preset, photons=photons, shape=shape, seed=args.seed)
    mask = quiet_mask(sim)
    raw_tif = work / f"raw_{photons:g}.tif"
    tifffile.imwrite(raw_tif, sim.raw)
    rows: list[dict] = []

    def score(name: str, est: np.ndarray | None, kind: str, **extra) -> None:
        row = {"photons": photons, "method": name, "kind": kind, **extra}
        if est is not None:
            if est.shape != sim.raw.shape:
                row["error"] = f"output shape {est.shape}, expected {sim.raw.shape}"
            else:
                row |= all_metrics(est, sim, mask)
        rows.append(row)
        print(f"  {name}: " + ", ".join(f"{k}={row[k]:.3f}" for k, *_ in QUALITY if k in row))

    score("raw", sim.raw, "reference")
    t0 = time.perf_counter()
    ma = moving_average(sim.raw, 5)
    score("moving average (5)", ma, "reference", infer_fps=args.frames / (time.perf_counter() - t0))

    common = ["--movie", str(raw_tif), "--budget", str(args.budget), "--seed", str(args.seed)]
    tag = f"{photons:g}"
    methods = [("calmdown", [sys.executable, str(Path(__file__).resolve()), "--worker"])]
    for peer in args.peers:
        py, why = peer_python(peer)
        cmd = None if py is None else [str(py), str(PEER_DIR / PEERS[peer][1])]
        methods.append((peer, cmd or why))
    for key, cmd in methods:
        label = "calmdown" if key == "calmdown" else PEERS[key][0]
        if isinstance(cmd, str):
            score(label, None, "method", error=cmd)
            continue
        extra = shlex.split(args.peer_arg.get(key, ""))
        res = run_method([*cmd, *common, *extra], work, f"{key}_{tag}", args.timeout)
        est = tifffile.imread(res["out"]) if "out" in res else None
        res.pop("method", None)
        score(label, est, "method", **res)
    return rows


def fmt(row: dict, key: str, spec: str = "{:.3f}") -> str:
    v = row.get(key)
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "—"
    return spec.format(v)


def table(rows: list[dict]) -> str:
    heads = ["photons", "method"] + [h for _, h, _ in QUALITY] + [h for _, h, _ in COST]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        name = r["method"] if "error" not in r else f"{r['method']}: not run — {r['error']}"
        cells = [f"{r['photons']:g}", name]
        cells += [fmt(r, k, "{:.2f}" if k == "psnr" else "{:.3f}") for k, _, _ in QUALITY]
        cells += [fmt(r, k, spec) for k, _, spec in COST]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def checks(rows: list[dict]) -> list[str]:
    """Check the issue's goals per photon level.

    Calmdown best on every quality column among the trained methods that ran, and at least
    5x the fastest peer's inference fps.
    """
    out = []
    for p in sorted({r["photons"] for r in rows}):
        ran = [r for r in rows if r["photons"] == p and r["kind"] == "method" and "psnr" in r]
        cd = next((r for r in ran if r["method"] == "calmdown"), None)
        peers = [r for r in ran if r["method"] != "calmdown"]
        if cd is None or not peers:
            out.append(f"photons {p:g}: calmdown or every peer missing; no comparison")
            continue
        lost = []
        for key, head, better in QUALITY:
            vals = [r[key] for r in peers if np.isfinite(r.get(key, np.nan))]
            if not vals or not np.isfinite(cd[key]):
                continue
            if better == 0:
                ok = abs(1 - cd[key]) <= min(abs(1 - v) for v in vals)
            else:
                ok = better * cd[key] >= max(better * v for v in vals)
            if not ok:
                lost.append(head)
        fastest = max(peers, key=lambda r: r["infer_fps"])
        ratio = cd["infer_fps"] / fastest["infer_fps"]
        verdict = "best on every quality column" if not lost else "not best on: " + ", ".join(lost)
        out.append(
            f"photons {p:g}: calmdown {verdict}; inference {ratio:.1f}x the fastest peer's fps "
            f"({fastest['method']}, {fastest['infer_fps']:.1f} fps; goal >= 5x)"
        )
    return out


def add_run_arguments(parser: argparse.ArgumentParser, out: Path) -> None:
    """Add the options every peer comparison takes: budget, seed, peers, threads, output."""
    parser.add_argument("--budget", type=float, default=180.0, help="training seconds, each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peers", nargs="*", choices=list(PEERS), default=list(PEERS))
    parser.add_argument(
        "--peer-arg",
        action="append",
        default=[],
        metavar="PEER=ARGS",
        help="extra arguments for a runner, e.g. deepcad='--patch-t 64' (see its --help)",
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds per method (default: ample)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of every method (OMP_NUM_THREADS etc.; default: each one's own)",
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep movies and logs here")
    parser.add_argument("--out", type=Path, default=out, help="also writes .txt")


def setup_run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Path:
    """Check ``--peer-arg`` (into a dict), set the thread variables; return the work folder."""
    peer_args = {}
    for item in args.peer_arg:
        key, _, val = item.partition("=")
        if key not in PEERS:
            parser.error(f"--peer-arg {item!r}: unknown peer {key!r}")
        peer_args[key] = val
    args.peer_arg = peer_args
    if args.threads is not None:  # inherited by every subprocess; see run_deepinterpolation
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    work = Path(tempfile.mkdtemp(prefix="peers_")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    return work


def finish_run(args: argparse.Namespace, report: str, payload: dict, work: Path) -> None:
    """Print the report, write ``args.out`` (JSON) and its ``.txt``, remove an unkept ``work``."""
    print()
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        **payload,
    }
    args.out.write_text(json.dumps(payload, indent=2, default=str))
    args.out.with_suffix(".txt").write_text(report + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.txt')}")
    if args.keep is None:
        for f in work.iterdir():
            f.unlink()
        work.rmdir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photons", type=float, nargs="+", default=[1.0])
    parser.add_argument("--preset", default="dense")
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--size", type=int, default=128)
    add_run_arguments(parser, HERE / "results" / "peers.json")
    # Internal: the calmdown subprocess.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--movie", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out-tif", dest="out_tif", type=Path, help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    if "--worker" in argv:  # the runners' shared interface: --out is the denoised tif
        argv = ["--out-tif" if a == "--out" else a for a in argv]
    args = parser.parse_args(argv)
    if args.worker:
        args.out = args.out_tif
        calmdown_worker(args)
        return

    work = setup_run(parser, args)
    if args.timeout is None:  # training, plus generous time for CPU inference and set-up
        args.timeout = 3 * args.budget + 600 + args.frames * args.size**2 / 2e4
    load0 = os.getloadavg()
    rows = []
    for p in args.photons:
        print(f"photons {p:g}: {args.frames} x {args.size} x {args.size}, budget {args.budget} s")
        rows.extend(run_level(p, args, work))
    text = table(rows)
    notes = checks(rows)
    head = (
        f"{args.preset}, {args.frames} x {args.size} x {args.size}, seed {args.seed}, "
        f"training budget {args.budget:g} s each on {os.cpu_count()} CPU(s), threads "
        f"{args.threads or 'default'}; load average "
        f"{load0[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end"
    )
    report = "\n".join([head, "", text, "", *notes])
    load = {"start": load0, "end": os.getloadavg()}
    finish_run(args, report, {"load_average": load, "rows": rows, "checks": notes}, work)


if __name__ == "__main__":
    main()
